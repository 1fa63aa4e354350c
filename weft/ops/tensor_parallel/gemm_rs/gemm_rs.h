// GEMM + ReduceScatter (row-parallel linear), fused so the reduce-scatter hides behind the GEMM.
//
//   rank r holds A_r [m, k] (its slice of the input features) and B_r [n, k];
//   out_r = rows [r * m/W, (r+1) * m/W) of sum_q A_q * B_q^T, out_r [m/W, n],
//   summed over q = 0, 1, ..., W-1 in that order with fp32 accumulation: bit-identical results from
//   run to run (and on every rank for the rows it owns), whatever order the partials arrive in.
//   (gather_inputs sums in another fixed order, q = r, r+1, ..., rounding after each term: also
//   bit-identical from run to run.)
//
//   weft::tp::GemmRs op(world, {.max_m = 8192, .max_n = 8192});   // collective
//   auto plan = op.run({.a = A, .b = B, .out = out, .m = 8192, .n = 8192, .k = 7168}, stream);
//
// Strategies (README.md and docs/perf.md "GEMM-RS analysis" have the reasoning and the figures):
//   fused_ce     the weft GEMM (every SM) computes the partial product into a local buffer in
//                destination order (rank+1's rows first, its own last, hook a) and raises a
//                per-m-block signal as tiles complete (hook c). A side stream waits for each
//                destination's m-blocks (cuStreamWaitValue64) and sends its rows by copy engine
//                (0 SMs) into that rank's receive slot, then writes its ready flag there. After
//                the GEMM, a reduction kernel waits for the W-1 flags and sums in rank order.
//   fused_push   one weft GEMM per destination whose epilogue stores the tiles straight into the
//                destination's receive slot over NVLink and raises per-m-block flags there
//                (hook c, direct store to a peer pointer); then the same reduction.
//   decomposed   cuBLASLt per destination chunk, each chunk sent by copy engine as soon as it is
//                computed (events), then the reduction.
//   decomposed_cols  cuBLASLt per block of N/P columns over all M rows (B read once in all, A
//                P times, where decomposed reads B W times), each block's rows for every peer sent
//                by copy engine (pitched) as soon as it is computed, then the reduction. For thin
//                M/W against N x K/W (M = 1024, K = 28672 on 4 ranks: decomposed's 256-row chunks
//                re-read a 117 MB B each and are memory-bound on H100); the last block's sends are
//                not hidden, so P is a trade (GemmRsOptions::col_chunks, or the model's choice).
//   gather_inputs  no partial products and no reduction pass: each rank computes its own rows
//                over the whole K. It sends every peer that peer's rows of its A and all of its B
//                by copy engine (one peer at a time, ring order) and sums the K slices as they
//                arrive: its own slice first, then rank+1's, ..., each cuBLASLt GEMM adding the
//                previous one's bf16/fp16 result (C = A_q B_q^T + S). Moves (M/W + N) x K/W
//                elements per peer where the others move M/W x N, so it pays off when M/W + N is
//                not much above N and the GEMMs are long enough to hide the sends (2 ranks at
//                8192^3); uses the receive slots as its buffer, so only when they hold
//                (W-1) x (M/W + N) x K/W elements (gather_inputs_fits).
//   push_reduce  small problems (partial product <= push_reduce_max_bytes per rank): one cuBLASLt
//                GEMM, then GEMM-AR's two-shot kernel without its second half: each rank pushes
//                every peer's rows to that peer with SM stores and sums its own rows in rank
//                order as they land. Epoch-based (no prologue, no barrier, double-buffered
//                receive slots): the fixed costs of the other strategies dominate small calls.
//
// Contract: as AgGemm (collective, same shapes everywhere, asynchronous, graph-capturable after
// one eager call per shape, one stream at a time per object, ready flags re-armed by each call's
// prologue behind a device barrier, which the fused and gather_inputs GEMMs wait for: a barrier
// kernel queued beside the persistent GEMM could not start until the GEMM ended; decomposed's
// chunk GEMMs write local memory only and start at once, the sends waiting for the barrier).
// push_reduce is the exception: GEMM-AR's epoch-based kernel with its own slots, flags and device
// call counter.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "weft/ops/tensor_parallel/common/tp_common.h"
#include "weft/runtime/last_call.h"
#include "weft/runtime/validate.h"
#include "weft/runtime/world.h"

namespace weft::tp {

class LtGemm;
class CallCheck;
class PushWorkspace;
class SideStream;
class StreamTimeline;

enum class GemmRsStrategy {
  kAuto = 0,
  kFusedCopyEngine,  // "fused_ce"
  kFusedPush,        // "fused_push"
  kDecomposed,       // "decomposed"
  kDecomposedCols,   // "decomposed_cols"
  kPushReduce,       // "push_reduce"
  kGatherInputs,     // "gather_inputs"
};
const char* to_string(GemmRsStrategy s);
GemmRsStrategy parse_gemm_rs_strategy(std::string_view name);
// WEFT_GEMM_RS_STRATEGY, or kAuto when unset/empty.
GemmRsStrategy gemm_rs_strategy_from_env();

struct GemmRsOptions {
  // Workspace: the partial product [m, n] (local memory) and W receive slots of [m/W, n]
  // (symmetric), for m <= max_m, n <= max_n.
  int64_t max_m = 8192;
  int64_t max_n = 8192;
  GemmRsStrategy strategy = GemmRsStrategy::kAuto;  // kAuto: WEFT_GEMM_RS_STRATEGY, else planner
  double fused_min_waves = 1.5;  // planner: fused only when the GEMM has at least this many
                                 // waves, and then only when the cost model says it is faster
  std::string gemm_config;       // fused: weft GEMM config string ("" = heuristic)
  // push_reduce: the largest partial product per rank (m x n x element bytes) it takes; its
  // workspace is 2 x W receive slots of that / W (symmetric). 0 disables it.
  int64_t push_reduce_max_bytes = int64_t(8) << 20;
  // decomposed_cols: column blocks per call (0: the planner's choice, 2 or 4;
  // WEFT_GEMM_RS_COL_CHUNKS overrides a 0 here).
  int col_chunks = 0;
  int barrier_index = -1;        // -1 = next_barrier_index()
};

struct GemmRsArgs {
  const void* a = nullptr;  // [m, k], leading dimension lda (0 = k)
  int64_t lda = 0;
  const void* b = nullptr;  // [n, k], leading dimension ldb (0 = k); or, with b_layout kKN,
  int64_t ldb = 0;          // [k, n] with ldb (0 = n) >= n: decomposed, decomposed_cols and
                            // push_reduce then (not gather_inputs: it sends B's rows)
  // (The same on every rank, as the shapes are: it takes part in choosing the strategy.)
  BLayout b_layout = BLayout::kNK;
  void* out = nullptr;      // [m / W, n], leading dimension ldo (0 = n)
  int64_t ldo = 0;
  int64_t m = 0, n = 0, k = 0;
  DType dtype = DType::kBF16;
  GemmRsStrategy strategy = GemmRsStrategy::kAuto;  // per-call override
};

struct GemmRsPlan {
  GemmRsStrategy strategy = GemmRsStrategy::kAuto;
  gemm::Config config;  // fused strategies (fused_push: the per-destination GEMMs)
  double waves = 0;
  double est_fused_us = 0, est_decomposed_us = 0, est_gather_us = 0;  // 0: does not fit
  double est_cols_us = 0;  // decomposed_cols with col_chunks blocks
  int col_chunks = 0;      // decomposed_cols: column blocks of col_width columns (the last fewer)
  int64_t col_width = 0;
  // push_reduce: the kernel's grid and work items (see gemm_ar.h)
  int push_blocks = 0;
  int64_t push_slice_elems = 0;
  int32_t push_slices = 0;
  std::string reason;
};

struct GemmRsProblem {
  int64_t m = 0, n = 0, k = 0;
  DType dtype = DType::kBF16;
  // kKN: neither the fused strategies (weft's GEMM) nor gather_inputs (it sends B as [n, k] rows)
  BLayout b_layout = BLayout::kNK;
  int world = 1;
  int sms = 132;
};

// Whether push_reduce can take this problem: W > 1, each rank's share ((M/W) x N elements) a
// multiple of 8, and the partial product within push_reduce_max_bytes.
bool push_reduce_fits(const GemmRsProblem& p, const GemmRsOptions& options);

// Elements of one of the W receive slots GemmRs allocates (ceil(max_m / W) x max_n, rounded up to
// a multiple of 8).
int64_t gemm_rs_slot_elems(const GemmRsOptions& options, int world);

// Whether gather_inputs can take this problem: W > 1, B as [n, k], and the W receive slots
// (gemm_rs_slot_elems each, about max_m x max_n in all) hold the W-1 steps' (M/W + N) x k elements
// (A rows, then B; k = p.k, the per-rank K).
bool gather_inputs_fits(const GemmRsProblem& p, const GemmRsOptions& options);

GemmRsPlan plan_gemm_rs(const GemmRsProblem& p, GemmRsStrategy requested,
                        const GemmRsOptions& options, const MachineModel& mm);

// decomposed_cols' column blocks: width a multiple of 8 (16-byte aligned blocks), about n / want
// columns each; the count is what that width leaves (<= want, >= 1).
struct ColumnBlocks {
  int count = 1;
  int64_t width = 0;
};
ColumnBlocks column_blocks(int64_t n, int want);

// The planner's cost model (microseconds; docs/perf.md "GEMM-RS analysis" derives and fits it).
//   fused_ce:   a re-arm launch + the hook GEMM (`slots` tile slots per SM of tile_us +
//               mm.hook_tile_us each; chunk sends at the copy-engine rate, one at a time, each
//               after the slots that complete its m-blocks) + the reduction
//   decomposed: W cuBLAS launches of M/W rows (wave quantization, + mm.chunk_gemm_overhead above
//               one wave, + a launch each; chunks sent as computed) + the reduction
//   decomposed_cols: P cuBLAS launches of M rows x N/P columns, each block's remote rows sent as
//               computed (the W-1 peers' pieces one after another, mm.ce_op_us each beside its
//               bytes), then the reduction
//   GEMM launches are priced by a soft roofline, (t_flops^4 + t_bytes^4)^(1/4) with every operand
//   read from HBM once (mm.hbm_gbps): a thin 256-row chunk of a 7168-deep GEMM moves as many bytes
//   as it has flops to hide them behind, a column block of 1024 rows does not.
//   gather_inputs: the prologue (launch + barrier, on the caller's stream), then W cuBLAS
//               launches of M/W rows, the s-th waiting for step s's (M/W + N) x K/W elements at
//               mm.ce_busy_gbps (sent one step at a time after the barrier) and paying
//               mm.addend_exposed of its addend's read
struct GemmRsCosts {
  double one_gemm_us = 0;    // the whole M x N x K/W GEMM as one cuBLAS launch (for comparison)
  double tile_us = 0;        // one tile's main loop on one SM at the full-GPU rate
  int64_t slots = 0;         // tiles per SM of the fused GEMM (ceil)
  double fused_gemm_us = 0;  // slots x (tile_us + hook_tile_us)
  double chunk_gemm_us = 0;  // one cuBLAS chunk launch
  double send_us = 0;        // one chunk by copy engine to one peer
  double reduce_us = 0;      // the fixed-order reduction (W + 1 chunk passes over HBM)
  double gather_send_us = 0;  // gather_inputs: one step's A rows and B to one peer
  double col_gemm_us = 0;     // decomposed_cols: one column block's launch
  double fused_us = 0, decomposed_us = 0, gather_us = 0, cols_us = 0;
};
GemmRsCosts gemm_rs_costs(const GemmRsProblem& p, const gemm::Config& fused_config,
                          const MachineModel& mm, int col_chunks = 2);

// Checks that need no GPU; throws weft::InvalidArgument naming `where`. The shape checks (dtype,
// sizes, the workspace's limits, B's layout against the strategy asked for) are those plan()
// makes; run() makes them and then checks the operands (leading dimensions, pointers, alignment,
// overlap).
void validate_gemm_rs_shape(const GemmRsArgs& a, int world, int64_t max_m, int64_t max_n,
                            const char* where);
void validate_gemm_rs_args(const GemmRsArgs& a, int world, int64_t max_m, int64_t max_n,
                           const char* where);

class GemmRs {
 public:
  // Collective: allocates W receive slots of ceil(max_m / W) x max_n elements (symmetric), the
  // flags, and push_reduce's 2 x W slots of min(max_m * max_n, push_reduce_max_bytes / 2) / W
  // elements (16 MiB with the defaults); the partial product (max_m x max_n) is local memory.
  explicit GemmRs(World& world, const GemmRsOptions& options = {});
  // Waits until its last eager call is done (an event recorded after it), not for graph replays:
  // destroy the operator when no replay of a graph holding its calls can still be running.
  ~GemmRs();
  GemmRs(const GemmRs&) = delete;
  GemmRs& operator=(const GemmRs&) = delete;

  // What run() would do for these arguments (no GPU work); checks the shape as run() does (not
  // the operands' pointers), so a shape run() rejects throws here too.
  GemmRsPlan plan(const GemmRsArgs& args) const;
  GemmRsPlan run(const GemmRsArgs& args, cudaStream_t stream);

  // What run() queues when one of this rank's own checks fails (its shape, a pointer), public for
  // wrappers that check arguments of their own before they call run() (the Python package): lets
  // the peers fail at once with a call mismatch naming this rank instead of timing out, whichever
  // exchange their plan uses (it steps both on). Call it where the wrapped call would have been,
  // then throw (weft::checks_or_abandon does both; never while the stream is captured). Best
  // effort. Ranks that all abandon a call, at whichever check, stay in step with each other.
  void abandon(cudaStream_t stream) noexcept;

  const GemmRsOptions& options() const { return options_; }
  int barrier_index() const { return barrier_index_; }
  // Diagnostics: with WEFT_TP_TRACE=1 at construction, when each step of the last eager call of
  // the copy-engine strategies ended on its stream (GEMMs, sends, reduction), in microseconds
  // after the call's start; "" otherwise. Synchronize the stream first.
  std::string trace_report() const;

  // The cuBLASLt algorithm this operator keeps for an m x n x k GEMM (the decomposed chunks:
  // m = M / W), as LtGemm::describe says it; "" before its first call.
  std::string describe_gemm(int64_t m, int64_t n, int64_t k, DType dtype) const;

 private:
  GemmRsPlan plan_checked(const GemmRsArgs& args) const;  // plan() after its shape checks
  World& world_;
  GemmRsOptions options_;
  dev::Context ctx_;
  int rank_, world_size_, sms_;
  int barrier_index_;
  MachineModel model_;
  GemmRsStrategy env_strategy_;
  int env_col_chunks_ = 0;        // WEFT_GEMM_RS_COL_CHUNKS (0: unset)
  int64_t slot_stride_ = 0;       // elements per receive slot (multiple of 8)
  int64_t mblocks_per_chunk_ = 0; // flags per source for fused_push
  int64_t max_mblocks_ = 0;       // tile flags for fused_ce
  SymmetricBuffer<uint16_t> recv_;
  SymmetricBuffer<signal_t> tile_flags_;       // fused_ce: per m-block, local
  SymmetricBuffer<signal_t> recv_flags_;       // per source (copy-engine strategies)
  SymmetricBuffer<signal_t> recv_tile_flags_;  // [W][mblocks_per_chunk_] (fused_push)
  std::unique_ptr<PushWorkspace> push_;  // push_reduce (epoch-based, GEMM-AR's kernel)
  std::unique_ptr<CallCheck> call_check_;      // the prologue's signature slots
  void* partial_ = nullptr;                    // local [max_m, max_n]
  int32_t* order_ = nullptr;
  int64_t order_capacity_ = 0;
  std::unique_ptr<LtGemm> lt_;
  std::unique_ptr<SideStream> side_;
  LastCall last_call_;  // the destructor waits for it first
  AbandonFence abandon_fence_;  // a barrier before the call after an abandoned one
  std::unique_ptr<StreamTimeline> timeline_;
  std::unique_ptr<DevicePointerChecker> checker_;
};

}  // namespace weft::tp
