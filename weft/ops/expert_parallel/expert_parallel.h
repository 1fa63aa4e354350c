// ExpertParallel: MoE expert-parallel dispatch and combine across the ranks of one node, in a
// low-latency (decode) and a throughput (prefill) mode. README.md in this folder has the design.
//
//   weft::ops::EpConfig cfg;                      // E = 256, H = 7168, k = 8, max_tokens = 128
//   weft::ops::ExpertParallel ep(*world, cfg);    // collective: allocates symmetric staging
//   auto rx = ep.dispatch({.x = x, .topk_idx = idx, .topk_weights = w, .num_tokens = T,
//                          .fp8 = true}, stream);
//   // rx.x: this rank's tokens grouped by local expert (rx.expert_offsets / expert_counts on the
//   // device), rx.sources: (home rank, token, slot, weight) of every row
//   grouped_gemm(rx.x, rx.scales, rx.expert_offsets, ..., y);   // y row i: rx row i's output
//   ep.combine({.expert_out = y, .out = out}, stream);          // out[T, H] on every home rank
//
// Contract:
//  - Collective: every rank constructs the operator with the same configuration and calls
//    dispatch() and combine() the same number of times in the same order (each rank's own
//    num_tokens may differ). One stream at a time per operator.
//  - No host synchronization in either mode: the epochs live on the device, so both calls can be
//    captured into CUDA graphs and replayed. (Throughput mode copies the counts to pinned host
//    memory; host_counts() waits for that copy only when asked.)
//  - combine() uses the bookkeeping of the dispatch that ran last on the device (its token count
//    included, read there: a graph replay of a dispatch counts as its call); it may be called more
//    than once per dispatch. The dispatch results stay valid until the next dispatch() on this
//    stream.
//  - The constructor checks that every rank passed the same configuration (one all_gather), and
//    throws on every rank otherwise.
//  - Inputs are validated on the host (InvalidArgument naming the argument) before anything is
//    enqueued: the configuration identically on every rank, call arguments on the rank that
//    passed them. A rank whose own call arguments fail first abandons the call (not while
//    capturing), so that its peers' calls complete at once instead of waiting for it: an
//    abandoned dispatch takes part with no tokens and is void on every rank (its combine does
//    nothing anywhere; this rank's combine() refuses it), an abandoned combine raises its peers'
//    flags without rows (their outputs are wrong; the dispatch stays valid, so combine again).
//    The peers' check_errors() (or next call) throws naming the rank; ranks that abandon together
//    report nothing and stay usable. Expert ids live
//    on the device, so the kernel checks them: an id outside [-1, E) is treated as -1 and
//    reported; check_errors() on that rank throws InvalidArgument naming the token, the slot and
//    the value, or else the next dispatch()/combine() there throws it once its own work is
//    enqueued, so the peers' calls complete (likewise a throughput receive-capacity overflow).
//  - Every rank passes the same `fp8` to a dispatch. The count messages carry it: ranks that
//    disagree exchange no rows, their dispatch and combine complete with wrong results, and
//    check_errors() (or the next call) throws on every rank; the operator must then be replaced
//    (its fp8 staging may hold stale bytes).
//  - All ranks must be on one node (peers are reached by load/store through NCCL's LSA team).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <string>

#include "weft/ops/expert_parallel/ep_config.h"
#include "weft/ops/expert_parallel/ep_params.h"
#include "weft/ops/expert_parallel/ep_plan.h"
#include "weft/runtime/last_call.h"
#include "weft/runtime/validate.h"
#include "weft/runtime/world.h"

namespace weft::ops {

class ExpertParallel {
 public:
  // Collective. Validates `config` (InvalidArgument before any collective step) and allocates
  // plan().symmetric_bytes() of the world's symmetric heap plus plan().local_bytes() of device
  // memory.
  ExpertParallel(World& world, const EpConfig& config);
  // Waits until its last eager call is done (an event recorded after it), not for graph replays:
  // destroy the operator when no replay of a graph holding its calls can still be running.
  ~ExpertParallel();
  ExpertParallel(const ExpertParallel&) = delete;
  ExpertParallel& operator=(const ExpertParallel&) = delete;

  // Collective: dispatch this rank's tokens (see EpDispatchResult for the output layout).
  EpDispatchResult dispatch(const EpDispatchArgs& args, cudaStream_t stream);

  // Collective: return the expert outputs of the last dispatch to their home ranks and sum them
  // with the top-k weights (fixed order, see ep_numerics.h) into out[T, H]. "Last" is the last
  // that ran on the device, and T its token count; the host checks out against the last
  // dispatch called on the host (out may be null when that had T = 0). So where a graph replay of
  // a dispatch follows the last eager dispatch, out must be sized for the replayed dispatch's T:
  // the kernel writes no row past the host's T, and where the replayed T is larger it reports it
  // (EpError::out_too_small, raised by check_errors() or the next call).
  void combine(const EpCombineArgs& args, cudaStream_t stream);

  // Receive counts of the last dispatch, on the host. Waits for the copy the dispatch enqueued
  // (throughput mode always; low-latency mode when copy_counts_to_host was set) - in throughput
  // mode that is right after the layout kernel, before the data moves. The last eager dispatch's:
  // a graph replay's copy lands in the same host buffer unwaited-for (synchronize the replay's
  // stream before reading counts after one).
  EpHostCounts host_counts();

  // What dispatch() and combine() queue when this rank's own argument checks fail (see the
  // contract), for wrappers that check arguments of their own before they call either (the Python
  // package): call it where the wrapped call would have been, then throw (weft::checks_or_abandon
  // does both; never while the stream is captured). Best effort; no-ops in a world of one rank,
  // and for a combine before any dispatch.
  void abandon_dispatch(bool fp8, cudaStream_t stream) noexcept;
  void abandon_combine(cudaStream_t stream) noexcept;

  // Throws InvalidArgument if a finished kernel reported bad device-resident input (an expert id
  // out of range, a receive-capacity overflow), and clears the report. Call after synchronizing
  // the stream for a definite answer. (Unchecked, the next dispatch()/combine() throws it after
  // enqueuing its work.)
  void check_errors();

  // Results of the last dispatch (same pointers every call; epoch left 0, hook set).
  EpDispatchResult last_result() const;
  // The receive buffers whole (what last_result() points into, in either format).
  EpReceiveBuffers receive_buffers() const;
  // The operator's hook (same pointers every call), for consumers forked from a dispatch's
  // hook_event: only a hooked dispatch publishes *epoch.
  EpHook hook() const;

  const EpPlan& plan() const { return plan_; }
  const EpConfig& config() const { return plan_.config; }
  EpMode mode() const { return plan_.config.mode; }
  int world_size() const { return plan_.world; }
  int experts_local() const { return plan_.experts_local; }
  int64_t capacity() const { return plan_.capacity; }
  // Tokens this rank passed to the last dispatch() called on the host (eager or captured; the
  // combine itself reads the token count of the dispatch that ran last on the device).
  int last_num_tokens() const { return last_tokens_; }

  // Device state, for tests and consumers that need the epochs on the device.
  const ep::EpState* device_state() const { return state_; }

  // Diagnostics: with WEFT_EP_TRACE=1 in the environment at construction, every eager dispatch and
  // combine records per-block phase timestamps (ep::TraceSlot); this waits for the last call and
  // describes where the last dispatch and the last combine spent their time on this rank.
  // Empty when tracing is off.
  std::string trace_report();

 private:
  // The constructor's checks that read this GPU (shared memory per block, compute capability,
  // whether the grids fit at once) and the free symmetric heap; run under World::agree.
  void check_this_gpu();
  void allocate_local();
  void release_local() noexcept;
  void throw_earlier_error(const std::optional<ep::EpError>& e, const char* call);
  // After this rank's own checks (or, abandoning, in place of a call whose checks failed).
  EpDispatchResult enqueue_dispatch(const EpDispatchArgs& a, cudaStream_t stream, bool capturing,
                                    bool abandon);
  void enqueue_combine(const EpCombineArgs& a, cudaStream_t stream, bool capturing, bool abandon);
  void launch_dispatch(const ep::EpDispatchParams& params, bool fp8, cudaStream_t stream);
  // WEFT_EP_TRACE: zeroes the dispatch (which = 0) or combine (1) stamps in stream order and returns
  // them for the kernel's parameters; nullptr when tracing is off or the stream is capturing.
  uint64_t* arm_trace(int which, bool capturing, cudaStream_t stream);

  World& world_;
  EpPlan plan_;
  dev::Context ctx_;
  // This GPU, read once by the constructor: SMs, compute capability (bulk copies need sm_90) and
  // the opt-in shared memory of a block (its static and dynamic shared memory together).
  int sm_count_ = 0;
  int cc_major_ = 0;
  uint32_t smem_optin_ = 0;

  // Symmetric.
  SymmetricBuffer<char> st_rows_;
  SymmetricBuffer<float> st_scales_;
  SymmetricBuffer<int32_t> st_meta_;
  SymmetricBuffer<signal_t> st_counts_;  // tagged words: zeroed, like signals
  SymmetricBuffer<char> cb_rows_;
  SymmetricBuffer<signal_t> signals_;

  // Local device memory: one allocation carved into the pieces below.
  char* local_ = nullptr;
  void* recv_x_ = nullptr;
  float* recv_scales_ = nullptr;
  EpPairSource* recv_src_ = nullptr;
  int32_t* counts_block_ = nullptr;
  int32_t* handle_rows_ = nullptr;
  uint32_t* home_dmask_ = nullptr;
  uint64_t* ready_ = nullptr;
  uint32_t* arrived_ = nullptr;
  ep::EpState* state_ = nullptr;
  int32_t* lay_dslot_ = nullptr;
  int32_t* lay_wrank_ = nullptr;
  int32_t* lay_chunk_hist_ = nullptr;
  int32_t* lay_chunk_base_ = nullptr;
  int32_t* lay_pos_base_ = nullptr;

  uint64_t* trace_ = nullptr;  // [2][trace_blocks_][kTraceSlots]: dispatch, combine (WEFT_EP_TRACE)
  int trace_blocks_ = 0;
  // Low-latency fp8: derive the layout before looking for rows (default: more than 2 ranks;
  // WEFT_EP_LL_LAYOUT_FIRST=1 / 0 forces it either way, for A/B runs).
  bool ll_layout_first_ = true;
  int ll_pack_ = 0;               // WEFT_EP_LL_PACK: tokens per sending block (A/B; 0 = spread)

  ep::EpError* error_ = nullptr;      // host-mapped, host address
  ep::EpError* error_dev_ = nullptr;  // the same, device address
  int32_t* host_counts_ = nullptr;    // pinned
  cudaEvent_t counts_event_ = nullptr;
  cudaEvent_t fork_event_ = nullptr;     // throughput: the layout kernel is done
  cudaStream_t side_stream_ = nullptr;   // throughput: copies the counts to the host
  bool counts_pending_ = false;  // the last dispatch enqueued the host copy (eagerly)

  uint64_t host_dispatch_epoch_ = 1;  // mirror of the device epochs while every call is eager
  bool host_epoch_exact_ = true;
  bool dispatched_ = false;
  bool dispatch_abandoned_ = false;  // the last dispatch() called here was abandoned (void)
  bool last_fp8_ = false;
  int last_tokens_ = 0;
  LastCall last_call_;            // the destructor waits for it first
  DevicePointerChecker checker_;  // remembers the pointers cudaPointerGetAttributes validated
};

}  // namespace weft::ops
