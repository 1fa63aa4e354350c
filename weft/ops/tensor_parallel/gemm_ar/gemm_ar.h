// GEMM + AllReduce for decode (M <= a few hundred rows), where latency rules.
//
//   rank r holds A_r [m, k] and B_r [n, k]; every rank gets out = sum_q A_q * B_q^T, [m, n],
//   summed over q = 0, 1, ..., W-1 in that order with fp32 accumulation: every rank holds the same
//   bits, and a repeated call gives the same bits.
//
//   weft::tp::GemmAr op(world, {.max_m = 256, .max_n = 8192});   // collective
//   op.run({.a = A, .b = B, .out = out, .m = 64, .n = 8192, .k = 2048}, stream);
//
// One call = a GEMM into a local buffer (cuBLASLt, or the weft GEMM) + one all-reduce kernel:
//   oneshot   every rank pushes its whole partial product into every peer's receive slot with
//             16-byte SM stores and raises one flag per slice there; each rank then sums all W
//             partials in rank order. One synchronization, (W-1) x the bytes per rank.
//   twoshot   reduce-scatter by push (rank q's share of every partial goes to rank q), each rank
//             sums its share in rank order and pushes the result to every peer; two
//             synchronizations, 2 (W-1)/W x the bytes per rank.
// The kernel is epoch-based: a counter in device memory, advanced by the kernel itself, numbers
// the calls; flags carry the epoch (monotonic, never re-armed) and the receive slots alternate by
// epoch parity, so there is no barrier, no host synchronization and no memset, and CUDA graph
// replays advance the epoch on their own. Work is handed out through a device queue in phase
// order (all pushes before any wait), so the kernel cannot deadlock even when only part of its
// grid is resident.
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

enum class GemmArStrategy {
  kAuto = 0,
  kOneShot,      // "oneshot": cuBLASLt GEMM + one-shot all-reduce
  kTwoShot,      // "twoshot": cuBLASLt GEMM + two-shot all-reduce
  kOneShotWeft,  // "oneshot_weft": weft GEMM + one-shot
  kTwoShotWeft,  // "twoshot_weft": weft GEMM + two-shot
};
const char* to_string(GemmArStrategy s);
GemmArStrategy parse_gemm_ar_strategy(std::string_view name);
// WEFT_GEMM_AR_STRATEGY, or kAuto when unset/empty.
GemmArStrategy gemm_ar_strategy_from_env();

struct GemmArOptions {
  int64_t max_m = 256;   // workspace: m * n <= max_m * max_n
  int64_t max_n = 8192;
  GemmArStrategy strategy = GemmArStrategy::kAuto;  // kAuto: WEFT_GEMM_AR_STRATEGY, else planner
  // Planner: one-shot up to this many bytes of output per rank (or with 2 ranks, where both
  // move the same bytes), two-shot above.
  int64_t oneshot_max_bytes = 512 << 10;
  int max_blocks = 0;  // all-reduce kernel grid cap (0 = one block per SM)
};

struct GemmArArgs {
  const void* a = nullptr;  // [m, k], lda (0 = k)
  int64_t lda = 0;
  const void* b = nullptr;  // [n, k], ldb (0 = k)
  int64_t ldb = 0;
  void* out = nullptr;      // [m, n], ldo (0 = n)
  int64_t ldo = 0;
  int64_t m = 0, n = 0, k = 0;
  DType dtype = DType::kBF16;
  GemmArStrategy strategy = GemmArStrategy::kAuto;  // per-call override
};

struct GemmArPlan {
  GemmArStrategy strategy = GemmArStrategy::kAuto;
  int blocks = 0;           // all-reduce kernel grid
  int64_t slice_elems = 0;  // elements per work item
  int32_t slices = 0;       // work items per phase
  std::string reason;
};

struct GemmArProblem {
  int64_t m = 0, n = 0, k = 0;
  DType dtype = DType::kBF16;
  int world = 1;
  int sms = 132;
};

inline constexpr int kArMaxBlocks = 512;
inline constexpr int kArMaxSlices = 1024;  // flags per source and phase
// GEMM-RS push_reduce / AG-GEMM push_gather: slices per rank's share at most (the same on every
// rank whatever its SM count).
inline constexpr int kPushSplitSlices = 128;

// How GEMM-RS push_reduce / AG-GEMM push_gather split one rank's share of `share` elements over
// the kernel's work items: slices of >= 1024 elements (multiples of 8) cut from at most
// kPushSplitSlices, the same on every rank; a grid of at most `sms` blocks (and 2 per slice).
struct PushSplit {
  int blocks = 0;
  int64_t slice_elems = 0;
  int32_t slices = 0;
};
PushSplit push_split(int64_t share, int sms);

struct ArParams;
struct ArState;

// The epoch-based push kernel's workspace for GEMM-RS push_reduce and AG-GEMM push_gather, which
// use only its first phase(s): [2 parities][W][slot_elems] receive slots and [W][kArMaxSlices]
// flags (symmetric), and the device call counter (local, zeroed). Collective to construct (same
// share on every rank).
class PushWorkspace {
 public:
  // Slots of max_share_elems (at least 1) rounded up to a multiple of 8.
  PushWorkspace(World& world, int64_t max_share_elems);
  ~PushWorkspace();
  PushWorkspace(const PushWorkspace&) = delete;
  PushWorkspace& operator=(const PushWorkspace&) = delete;

  // Points p's rx, rx_slot, flags, max_slices, state and signature slots here and sets the
  // call's `signature`, after checking that p.chunk (a multiple of 8) fits a slot and p.slices
  // the flags; `what` names the strategy in the error.
  void attach(ArParams& p, const char* what, const dev::CallSignature& signature) const;
  // For a call this rank abandons: launch_allreduce_abandon on this workspace.
  void abandon(const dev::Context& ctx, cudaStream_t stream) const noexcept;
  int64_t slot_elems() const { return slot_; }
  const SymmetricBuffer<uint16_t>& rx() const { return rx_; }

 private:
  int64_t slot_ = 0;
  SymmetricBuffer<uint16_t> rx_;
  SymmetricBuffer<signal_t> flags_;
  SymmetricBuffer<dev::CallSignature> sig_slots_;  // [2][W]
  ArState* state_ = nullptr;
};

GemmArPlan plan_gemm_ar(const GemmArProblem& p, GemmArStrategy requested,
                        const GemmArOptions& options);

// Checks that need no GPU; throws weft::InvalidArgument naming `where`. The shape checks are
// those plan() makes; run() makes them and then checks the operands.
void validate_gemm_ar_shape(const GemmArArgs& a, int64_t capacity_elems, const char* where);
void validate_gemm_ar_args(const GemmArArgs& a, int64_t capacity_elems, const char* where);

class GemmAr {
 public:
  // Collective: allocates 2 x W receive slots of max_m * max_n elements, 2 x max_m * max_n for the
  // two-shot results, and 2 x W x kArMaxSlices flags (symmetric); the partial product is local.
  explicit GemmAr(World& world, const GemmArOptions& options = {});
  // Waits until its last eager call is done (an event recorded after it), not for graph replays:
  // destroy the operator when no replay of a graph holding its calls can still be running.
  ~GemmAr();
  GemmAr(const GemmAr&) = delete;
  GemmAr& operator=(const GemmAr&) = delete;

  // What run() would do for these arguments (no GPU work); checks the shape as run() does (not
  // the operands' pointers), so a shape run() rejects throws here too.
  GemmArPlan plan(const GemmArArgs& args) const;
  GemmArPlan run(const GemmArArgs& args, cudaStream_t stream);

  // What run() queues when this rank's own checks fail (its shape, say), for wrappers that check
  // arguments of their own before they call run() (the Python package): lets the peers fail at
  // once with a call mismatch naming this rank instead of timing out. Call it where the wrapped
  // call would have been, then throw (weft::checks_or_abandon does both; never while the stream
  // is captured). Best effort. Ranks that all abandon together stay in step with each other.
  void abandon(cudaStream_t stream) noexcept;

  const GemmArOptions& options() const { return options_; }

 private:
  GemmArPlan plan_checked(const GemmArArgs& args) const;  // plan() after its shape checks
  // `p` pointed at this operator's receive buffers, flags, state and signature slots.
  void attach(ArParams& p) const;
  World& world_;
  GemmArOptions options_;
  dev::Context ctx_;
  int rank_, world_size_, sms_;
  GemmArStrategy env_strategy_;
  int64_t capacity_ = 0;     // max_m * max_n rounded up to 8
  int64_t chunk_cap_ = 0;    // two-shot share per rank (elements, multiple of 8)
  SymmetricBuffer<uint16_t> rx_;   // [2][W][capacity_]
  SymmetricBuffer<uint16_t> rx2_;  // [2][W * chunk_cap_]
  SymmetricBuffer<signal_t> flags_;  // [2 phases][W][kArMaxSlices]
  SymmetricBuffer<dev::CallSignature> sig_slots_;  // [2][W]
  void* partial_ = nullptr;          // local [capacity_]
  void* state_ = nullptr;            // device ArState
  LastCall last_call_;
  AbandonFence abandon_fence_;  // a barrier before the call after an abandoned one
  std::unique_ptr<LtGemm> lt_;
  std::unique_ptr<DevicePointerChecker> checker_;
};

}  // namespace weft::tp
