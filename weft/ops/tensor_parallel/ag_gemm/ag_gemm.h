// AllGather + GEMM (column-parallel linear), fused so the gather hides behind the GEMM.
//
//   rank r holds A_r [m_local, K] and B_r [n, K] (its slice of the weight's output features);
//   C = allgather(A) * B_r^T, C [W * m_local, n], row q * m_local + i from A_q's row i.
//
//   weft::tp::AgGemm op(world, {.max_m = 8192, .max_k = 8192});   // collective
//   auto plan = op.run({.a = A, .b = B, .c = C, .m_local = 2048, .n = 7168, .k = 8192}, stream);
//   // plan.strategy / plan.reason say what ran and why
//
// Strategies (README.md has the reasoning and the measured figures):
//   fused_ce     A chunks travel by copy engine (0 SMs), one peer at a time in a ring schedule,
//                each followed by a ready flag written into the receiver's memory
//                (cuStreamWriteValue64). The weft GEMM runs on every SM, starts on this rank's
//                chunk (tile order) and waits per chunk before loading its rows (hook b).
//   fused_push   as fused_ce, but a kernel on `push_sms` reserved SMs pushes the chunks with TMA
//                bulk copies and raises the flags; the GEMM runs on the other SMs.
//   decomposed_local_first / decomposed_per_chunk
//                cuBLASLt on this rank's chunk (read in place) while the copy engines gather,
//                then cuBLASLt on the gathered rows: in two contiguous pieces, or chunk by chunk
//                as each arrives (stream waits on the ready flags).
//   push_gather  small problems (gathered A <= push_gather_max_bytes): one kernel (GEMM-AR's, in
//                its all-gather mode) pushes this rank's rows into every peer's receive slot with
//                SM stores, waits for the peers' and writes the gathered A to the workspace, then
//                one cuBLASLt GEMM. Epoch-based (no prologue, no barrier, double-buffered
//                slots): the other strategies' fixed costs dominate small calls.
//
// Contract:
//  - Collective: every rank constructs with the same options and calls run() with the same
//    shapes and strategy, in the same order relative to other collective weft calls.
//  - Asynchronous on `stream` (no host synchronization, no memset); capturable in a CUDA graph
//    once one call of each shape has run eagerly (the GEMM engine sets kernel attributes then).
//  - One stream at a time per object: a call must be ordered after the previous one (same
//    stream, or an event), because both use the object's side stream and flags.
//  - Signals: each call re-arms this rank's ready flags in its prologue kernel, which then passes
//    a device barrier with every rank; peers write flags and data only after that barrier. The
//    flags are 0/1 (not epochs) because the values that stream memory operations and the GEMM's
//    wait hook compare with are frozen into a captured graph; see README.md. push_gather is the
//    exception: GEMM-AR's epoch-based kernel with its own slots, flags and device call counter
//    (no prologue, no barrier).
//  - A may be read until the call completes on `stream`; C is written by then.
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
struct PrologueParams;
class CallCheck;
class PushWorkspace;
class SideStream;

enum class AgGemmStrategy {
  kAuto = 0,
  kFusedCopyEngine,       // "fused_ce"
  kFusedPush,             // "fused_push"
  kDecomposedLocalFirst,  // "decomposed_local_first"
  kDecomposedPerChunk,    // "decomposed_per_chunk"
  kPushGather,            // "push_gather"
};
const char* to_string(AgGemmStrategy s);
// Accepts the names above; throws weft::InvalidArgument listing them otherwise.
AgGemmStrategy parse_ag_gemm_strategy(std::string_view name);

inline constexpr int kAgMaxChunksPerRank = 8;

struct AgGemmOptions {
  // Workspace: the gathered A, [W * m_local, K] with W * m_local * K <= max_m * max_k.
  int64_t max_m = 8192;   // gathered rows (W * m_local)
  int64_t max_k = 8192;
  // Largest n (this rank's columns) for which the fused GEMM gets a tile order (a small device
  // array); larger n still runs, in the GEMM's own order.
  int64_t max_n = 65536;
  // Strategy for every call whose args leave it at kAuto. kAuto: the environment variable
  // WEFT_AG_GEMM_STRATEGY (a name above), else the planner.
  AgGemmStrategy strategy = AgGemmStrategy::kAuto;
  // Planner: fused when the fused GEMM has at least this many waves of tiles (below that every
  // CTA waits at once and per-chunk waits cannot pipeline anything).
  double fused_min_waves = 2.0;
  int push_sms = 16;  // fused_push: SMs given to the push kernel (1 .. SMs - 1)
  // fused: ready flags per rank's chunk, 1..8 (checked at construction); a call whose m_local it
  // does not divide uses 1 (the plan's reason says so)
  int chunks_per_rank = 1;
  std::string gemm_config;    // fused: weft GEMM config string ("" = heuristic), see gemm.h
  int barrier_index = -1;     // device barrier index; -1 = next_barrier_index()
  // push_gather: the largest gathered A (W * m_local * k * element bytes) it takes; its workspace
  // is 2 x W receive slots of that / W (symmetric). 0 disables it.
  int64_t push_gather_max_bytes = int64_t(8) << 20;
};

struct AgGemmArgs {
  const void* a = nullptr;  // [m_local, k], leading dimension lda (0 = k)
  int64_t lda = 0;
  const void* b = nullptr;  // [n, k], leading dimension ldb (0 = k); or, with b_layout kKN,
  int64_t ldb = 0;          // [k, n] with ldb (0 = n) >= n: decomposed_* and push_gather then
  // (The same on every rank, as the shapes are: it takes part in choosing the strategy.)
  BLayout b_layout = BLayout::kNK;
  void* c = nullptr;        // [W * m_local, n], leading dimension ldc (0 = n)
  int64_t ldc = 0;
  int64_t m_local = 0, n = 0, k = 0;
  DType dtype = DType::kBF16;
  // Also leave the complete gathered A in the workspace (gathered_a()); the fused strategies
  // always do.
  bool gather_a = false;
  // Per-call override (kAuto: the options' choice).
  AgGemmStrategy strategy = AgGemmStrategy::kAuto;
};

// The all-gather alone (AgGemm::all_gather): this rank's A_r [m_local, k], leading dimension lda.
struct AgGatherArgs {
  const void* a = nullptr;
  int64_t lda = 0;  // 0 = k
  int64_t m_local = 0, k = 0;
  DType dtype = DType::kBF16;
};

// What the planner chose for one shape, and why.
struct AgGemmPlan {
  AgGemmStrategy strategy = AgGemmStrategy::kAuto;
  gemm::Config config;      // fused strategies: weft GEMM kernel (max_sms set for fused_push)
  int chunks_per_rank = 1;  // ready flags per rank's chunk
  int push_sms = 0;         // fused_push
  double waves = 0;         // fused GEMM tiles / SMs
  double est_fused_us = 0, est_decomposed_us = 0;  // the model's estimates
  // push_gather: the kernel's grid and work items (see gemm_ar.h)
  int push_blocks = 0;
  int64_t push_slice_elems = 0;
  int32_t push_slices = 0;
  std::string reason;
};

struct AgGemmProblem {
  int64_t m_local = 0, n = 0, k = 0;
  DType dtype = DType::kBF16;
  BLayout b_layout = BLayout::kNK;  // kKN: the fused strategies (weft's GEMM) cannot take it
  int world = 1;
  int sms = 132;
};

// Whether push_gather can take this problem: > 1 rank and the gathered A within
// push_gather_max_bytes.
bool push_gather_fits(const AgGemmProblem& p, const AgGemmOptions& options);

// The planner (host only, no GPU): `requested` kAuto picks by the model (push_gather for small
// problems), anything else is honoured (with the parameters it needs; push_gather only where it
// fits).
AgGemmPlan plan_ag_gemm(const AgGemmProblem& p, AgGemmStrategy requested,
                        const AgGemmOptions& options, const MachineModel& mm);

// Argument checks that need no GPU (shapes, leading dimensions, alignment, capacity); throws
// weft::InvalidArgument naming `where`. The shape checks (dtype, sizes, the workspace's capacity,
// B's layout against the strategy asked for) are those plan() makes; run() makes them and then
// checks the operands (leading dimensions, pointers, alignment, overlap).
void validate_ag_gemm_shape(const AgGemmArgs& a, int world, int64_t gather_capacity_elems,
                            const char* where);
void validate_ag_gemm_args(const AgGemmArgs& a, int world, int64_t gather_capacity_elems,
                           const char* where);

void validate_ag_gather_args(const AgGatherArgs& a, int world, int64_t gather_capacity_elems,
                             const char* where);

// The strategy WEFT_AG_GEMM_STRATEGY names, or kAuto when unset/empty.
AgGemmStrategy ag_gemm_strategy_from_env();

class AgGemm {
 public:
  // Collective: allocates the gather buffer (max_m * max_k elements of 2 bytes), the ready flags
  // and push_gather's 2 x W receive slots (min(max_m * max_k, push_gather_max_bytes / 2) / W
  // elements each: 16 MiB with the defaults) and flags from the world's symmetric heap. All
  // ranks must be on one node.
  explicit AgGemm(World& world, const AgGemmOptions& options = {});
  // Waits until its last eager call is done (an event recorded after it), not for graph replays:
  // destroy the operator when no replay of a graph holding its calls can still be running.
  ~AgGemm();
  AgGemm(const AgGemm&) = delete;
  AgGemm& operator=(const AgGemm&) = delete;

  // What run() would do for these arguments (no GPU work); checks the shape as run() does (not
  // the operands' pointers), so a shape run() rejects throws here too.
  AgGemmPlan plan(const AgGemmArgs& args) const;

  // One AG-GEMM on `stream` (collective). Returns the plan it executed.
  AgGemmPlan run(const AgGemmArgs& args, cudaStream_t stream);

  // What run() queues when one of this rank's own checks fails (its shape, a pointer), public for
  // wrappers that check arguments of their own before they call run() (the Python package): lets
  // the peers fail at once with a call mismatch naming this rank instead of timing out, whichever
  // exchange their plan uses (it steps both on). Call it where the wrapped call would have been,
  // then throw (weft::checks_or_abandon does both; never while the stream is captured). Best
  // effort. Ranks that all abandon a call, at whichever check, stay in step with each other.
  void abandon(cudaStream_t stream) noexcept;

  // The all-gather alone, without a GEMM (collective, same contract as run()): leaves
  // allgather(A) [W * m_local, k] in the workspace (gathered_a()), e.g. for a backward pass that
  // did not keep the gathered input. Gathers as run() would without a GEMM to hide behind:
  // push_gather's kernel where it fits and no other strategy is asked for (options,
  // WEFT_AG_GEMM_STRATEGY), else the copy engines (the own rows by a copy kernel unless A is
  // input_slot(m_local, k)). Returns "push_gather", "copy_engine" or, on one rank, "local_copy".
  const char* all_gather(const AgGatherArgs& args, cudaStream_t stream);

  // Zero-copy input: where this rank's A chunk sits in the workspace for (m_local, k). A caller
  // that writes A there (and passes that pointer as args.a with lda = k) saves the local copy of
  // the fused strategies. The slot may be written only after the previous call completed.
  void* input_slot(int64_t m_local, int64_t k) const;

  // The gathered A, [W * m_local, k] contiguous, after a call that produced it (fused
  // strategies and push_gather, or gather_a; all_gather). Valid until the next call starts.
  const void* gathered_a() const;
  // Copies the first `rows` x `cols` 16-bit elements of gathered_a() (rows `cols` apart) into dst
  // (leading dimension ld_dst elements) on `stream`, as part of the last call: the destructor
  // waits for the copy too before the workspace goes back to the heap (a copy queued by the
  // caller after the call would not be waited for).
  void copy_gathered_a(void* dst, int64_t ld_dst, int64_t rows, int64_t cols, cudaStream_t stream);

  const AgGemmOptions& options() const { return options_; }
  int barrier_index() const { return barrier_index_; }

 private:
  AgGemmPlan plan_checked(const AgGemmArgs& args) const;  // plan() after its shape checks
  void send_chunks_copy_engine(const AgGemmArgs& a, int chunks, cudaStream_t side);
  // A may be this rank's input slot of the workspace (zero copy), nothing else in it. Returns
  // whether it is the slot.
  bool check_a_against_workspace(const void* a, int64_t lda, int64_t m_local, int64_t k,
                                 DType dtype, const char* where) const;
  // push_gather's kernel: A's rows into the workspace on every rank (epoch-based), with the
  // grid and work items of `plan` (push_blocks, push_slice_elems, push_slices).
  void push_gather(const void* a, int64_t lda, int64_t m_local, int64_t k, DType dtype,
                   const AgGemmPlan& plan, const dev::CallSignature& signature,
                   cudaStream_t stream);
  // The prologue that re-arms this rank's ready flags (`chunks` per rank; its own ready) and
  // passes the device barrier before peers send, comparing the ranks' `signature`s there.
  PrologueParams ready_flags_prologue(int chunks, const dev::CallSignature& signature) const;

  World& world_;
  AgGemmOptions options_;
  dev::Context ctx_;
  int rank_, world_size_, sms_;
  int barrier_index_;
  MachineModel model_;
  AgGemmStrategy env_strategy_;
  SymmetricBuffer<uint16_t> gather_;
  SymmetricBuffer<signal_t> flags_;
  std::unique_ptr<PushWorkspace> push_;  // push_gather (epoch-based, GEMM-AR's kernel)
  std::unique_ptr<CallCheck> call_check_;  // the prologue's signature slots
  int32_t* order_ = nullptr;  // device, order_capacity_ unit ids
  int64_t order_capacity_ = 0;
  std::unique_ptr<LtGemm> lt_;
  std::unique_ptr<SideStream> side_;
  LastCall last_call_;  // the destructor waits for it first
  AbandonFence abandon_fence_;  // a barrier before the call after an abandoned one
  std::unique_ptr<DevicePointerChecker> checker_;
};

}  // namespace weft::tp
