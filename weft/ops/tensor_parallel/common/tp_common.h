// Shared vocabulary of the tensor-parallel operators (AG-GEMM, GEMM-RS, GEMM-AR): element types,
// small integer helpers, the machine figures the planners reason with, and the barrier indices the
// operators use. Plain C++ (host compilers include it; no CUDA types beyond cuda_runtime's).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "weft/gemm/gemm.h"
#include "weft/runtime/error.h"

namespace weft::tp {

// bf16 and fp16 are the operators' element types (fp32 is not offered: the GEMM engine and the
// collectives' users run 16-bit activations and weights).
using gemm::DType;

inline int64_t element_bytes(DType t) { return gemm::dtype_size(t); }
inline bool is_16bit(DType t) { return t == DType::kBF16 || t == DType::kFP16; }

// How an operator's B lies in memory. kNK: row-major [n, k] (ldb >= k), a Linear weight as it is
// stored; every strategy takes it. kKN: row-major [k, n] (ldb >= n), i.e. the transpose of such a
// weight taken without a copy (a tensor-parallel layer's backward multiplies by W, where the
// operator computes A * Bᵀ); only the cuBLASLt-based strategies take it (the weft GEMM engine's
// TMA and wgmma path reads K-major B).
enum class BLayout { kNK, kKN };
inline const char* to_string(BLayout l) { return l == BLayout::kNK ? "[n, k]" : "[k, n]"; }

inline constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

inline bool is_aligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

// Pointers an operator remembers as checked (weft::DevicePointerChecker): calls that reuse their
// buffers skip the driver query.
inline constexpr size_t kRememberedPointers = 64;

// The most ranks one node's team may hold for these operators (fixed-size tables in kernel
// parameters). NVLink domains in use have 8 GPUs; 64 leaves room.
inline constexpr int kMaxWorld = 64;

// Figures the planners' cost estimates use. Defaults: measured on the lent 4x H200 (NV18 full
// mesh), DESIGN.md and bench/results/primitives.jsonl. They only steer the automatic choice; every
// operator's choice can be overridden (options, per call, or an environment variable).
struct MachineModel {
  int sms = 132;
  double gemm_tflops = 770;      // full-GPU dense bf16 GEMM (cuBLAS 8192^3 on H200)
  double ce_peer_gbps = 391;     // copy engine, one GPU to one peer (every rank at once, ring)
  double sm_push_gbps = 357;     // SM stores / TMA to all peers at once, aggregate out of a GPU
  double hbm_gbps = 3500;        // local streaming copy (read + write counted once each)
  double launch_us = 3;          // kernel / stream-operation issue gap on a stream
  double barrier_us = 4.3;       // device barrier as a one-block launch
  // Fitted to the GEMM-RS rows of bench/results/gemm_rs.jsonl (2x and 4x H200, docs/perf.md
  // "GEMM-RS analysis"); they steer GEMM-RS's fused-or-decomposed choice only.
  double hook_tile_us = 8.0;     // weft hook GEMM with per-tile signals: time each tile slot takes
                                 // beyond its main loop (epilogue not overlapped, TMA-store drain,
                                 // system-scope fence and signal before the next tile)
  double chunk_gemm_overhead = 0.06;  // cuBLAS on a 1/W row slice of more than one wave: extra
                                      // time over its share of one launch (ramp, drain), fraction
  // GEMM-RS gather_inputs (docs/perf.md, "GEMM-RS at 8192^3 on 4 GPUs: where decomposed's time
  // goes" and "two reduction passes folded into cuBLAS's epilogue"):
  double ce_busy_gbps = 345;    // copy engine to one peer while cuBLAS runs on the same GPU
                                // (decomposed's sends: 340-355 GB/s on H200)
  double addend_exposed = 1.0;  // share of a cuBLAS addend's read (beta = 1) that its time shows
                                // (+20 us for a 4096 x 8192 bf16 addend on H100: all of it)
  // GEMM-RS: a copy-engine transfer's fixed cost beside its bytes, where a send is on the
  // critical path (decomposed_cols' pitched 256 x 2048 bf16 pieces took 6-10 us each on 4x H100,
  // 1 MB at ce_peer_gbps being 2.7; fused_ce's exposed last sends at 1024 x 8192 x 28672).
  double ce_op_us = 5.0;
};

// The model for a device with `sms` SMs and, when known (> 0), a peak DRAM bandwidth of
// `peak_memory_gbps` (World::min_memory_gbps): hbm_gbps keeps the H200's ratio of measured
// streaming rate to peak (3500 of 4800). The other figures stay the measured ones.
MachineModel machine_model_for(int sms, double peak_memory_gbps = 0);

// Time estimates (microseconds) from the model, used in the planners' reasons.
// A full-GPU GEMM of 2*m*n*k flops, inflated by the wave quantization of `tiles` CTA tiles on
// `sms` SMs (tiles <= 0: no quantization).
double estimate_gemm_us(const MachineModel& mm, int64_t m, int64_t n, int64_t k, int64_t tiles,
                        int sms);
// `bytes` over a link of `gbps`.
double transfer_us(double bytes, double gbps);

// ---- strategies (each operator's enum has kAuto and a to_string) --------------------------

// Throws InvalidArgument naming `where`: "unknown <op> strategy '<name>'; choose one of <names>".
[[noreturn]] void throw_unknown_strategy(std::string_view name, const char* op,
                                         const std::string& names, const char* where);

// The strategy among `all` whose to_string is `name`; otherwise throw_unknown_strategy with the
// names of `all`, in order.
template <class S>
S parse_strategy(std::string_view name, std::initializer_list<S> all, const char* op,
                 const char* where) {
  std::string names;
  for (S s : all) {
    if (name == to_string(s)) return s;
    names += (names.empty() ? "" : ", ") + std::string(to_string(s));
  }
  throw_unknown_strategy(name, op, names, where);
}

// WEFT_TP_TRACE=1: operators keep a StreamTimeline of their last eager call (side_stream.h).
inline bool tp_trace_from_env() {
  const char* env = std::getenv("WEFT_TP_TRACE");
  return env != nullptr && env[0] == '1' && env[1] == '\0';
}

// The strategy the environment variable `var` names (read by `parse`), kAuto when unset or empty;
// an unknown name throws InvalidArgument naming the variable (the operator's constructor reads it).
template <class S>
S strategy_from_env(const char* var, S (*parse)(std::string_view)) {
  const char* env = std::getenv(var);
  if (env == nullptr || *env == '\0') return S::kAuto;
  try {
    return parse(env);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(var, e.detail());
  }
}

// The strategy a call asks for: its own, else the operator's options', else the environment's
// (kAuto throughout: the planner chooses).
template <class S>
S requested_strategy(S per_call, S from_options, S from_env) {
  S requested = per_call;
  if (requested == S::kAuto) requested = from_options;
  if (requested == S::kAuto) requested = from_env;
  return requested;
}

// ---- arguments ----------------------------------------------------------------------------------

// InvalidArgument naming `where` unless `t` is one of the operators' element types.
void check_dtype(DType t, const char* where);

// The checks every operator makes on its operands after its shape checks, naming `where`: lda
// (0: k) >= k and ldb (0: B's row length, k for kNK and n for kKN) >= that row length, both
// multiples of 8, ldo (0: n) >= n; A, B and the output non-null and 16-byte aligned; the output
// ([out_rows, n]) apart from A ([a_rows, k]) and B. `out_name` and `ldo_name` name the output and
// its leading dimension ("C" and "ldc").
void check_operands(const void* a, int64_t lda, const void* b, int64_t ldb, const void* out,
                    int64_t ldo, int64_t a_rows, int64_t out_rows, int64_t n, int64_t k, DType t,
                    const char* out_name, const char* ldo_name, const char* where,
                    BLayout b_layout = BLayout::kNK);

// B's leading dimension as given (0: its row length, k for kNK, n for kKN).
inline int64_t b_ld(int64_t ldb, int64_t n, int64_t k, BLayout l) {
  return ldb != 0 ? ldb : l == BLayout::kNK ? k : n;
}

// Bytes a row-major [rows, cols] operand with leading dimension ld spans, from its first element
// to just past its last (saturating: a huge ld gives INT64_MAX).
int64_t span_bytes(int64_t rows, int64_t cols, int64_t ld, DType t);

// Bytes from B's first element to just past its last (ldb as given; 0: its row length).
int64_t b_span_bytes(int64_t n, int64_t k, int64_t ldb, BLayout l, DType t);

// Arguments of the weft GEMM C[m, n] (ldc) = A[m, k] (lda) * B[n, k]^T (ldb), all of type `t`.
gemm::GemmArgs gemm_args(const void* a, int64_t lda, const void* b, int64_t ldb, void* c,
                         int64_t ldc, int64_t m, int64_t n, int64_t k, DType t);

// ---- planning -----------------------------------------------------------------------------------

// The options of an operator with fused strategies: fused_min_waves >= 0, and `gemm_config` (when
// not empty) a shipped kernel with the overlap hooks, for bf16 and fp16 (InvalidArgument at
// `where` otherwise).
void check_fused_options(double fused_min_waves, const std::string& gemm_config, const char* where);

// The weft GEMM configuration (with hooks) for an m x n x k GEMM on `sms` SMs, or the one `forced`
// names (the options' gemm_config) when it is not empty.
gemm::Config hook_config(const std::string& forced, int64_t m, int64_t n, int64_t k, DType t,
                         int sms);

// Why the automatic choice fused (waves >= min_waves) or not, for the plan's reason:
// "<waves> waves of <block_m>x<block_n> tiles >= <min_waves>: <why>" (or "< ...").
std::string waves_reason(double waves, const gemm::Config& cfg, double min_waves,
                         std::string_view why);

// The strategy AG-GEMM's planner runs, and why: `requested` unless it is kAuto;
// then `decomposed` on one rank (`one_rank_why`), else `fused` when the GEMM fills at least
// `min_waves` waves of `cfg`'s tiles on the GPU and `decomposed` when it does not (waves_reason
// with `fused_why` / `decomposed_why`).
template <class S>
std::pair<S, std::string> choose_fused_or_decomposed(S requested, S fused, S decomposed, int world,
                                                     double waves, const gemm::Config& cfg,
                                                     double min_waves,
                                                     std::string_view one_rank_why,
                                                     std::string_view fused_why,
                                                     std::string_view decomposed_why) {
  if (requested != S::kAuto) return {requested, "requested"};
  if (world == 1) return {decomposed, std::string(one_rank_why)};
  if (waves >= min_waves) return {fused, waves_reason(waves, cfg, min_waves, fused_why)};
  return {decomposed, waves_reason(waves, cfg, min_waves, decomposed_why)};
}

// Barrier index for an operator instance: instances take indices downwards from the top of the
// user range [0, barrier_count), one per instance (round robin over the top 48), in construction
// order. Every rank constructs its operators in the same order, so indices agree across ranks.
// Two instances whose calls may overlap in time (different streams) must not share an index:
// pass an explicit index in the options when more than 48 instances live at once.
int next_barrier_index(int barrier_count);

}  // namespace weft::tp
