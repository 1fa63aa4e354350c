// What the tensor-parallel operator classes (AgGemm, GemmRs, GemmAr) share when they are
// constructed and called: the checks that come first in every constructor, the barrier index
// they take, and run()'s checks of the operand pointers. Errors are
// weft::InvalidArgument naming the public call (`where`), identically on every rank.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "weft/device/context.h"
#include "weft/ops/tensor_parallel/common/lt_gemm.h"
#include "weft/runtime/last_call.h"
#include "weft/runtime/validate.h"
#include "weft/runtime/world.h"

namespace weft::tp {

struct PrologueParams;  // common/kernels.h

// Every rank on one node and at most kMaxWorld of them. `reach` starts the first message: how the
// operator reaches its peers ("AG-GEMM reaches peers by load/store and copy engine").
void check_single_node(const World& world, const char* reach, const char* where);

// The construction-time agreement of an operator that uses a device barrier, first thing in its
// constructor: resolves the barrier index (`requested`, or when negative the next automatic one,
// next_barrier_index: a per-process counter, so ranks that built different numbers of operators
// get different ones), checks that every rank has the same `settings` (the operator's options and
// WEFT_GEMM_CONFIG, which steers its planner) and index (World::check_same_settings), then that
// the index is below the world's barrier count. Returns the index.
int agree_on_settings(World& world, const std::string& settings, int requested_barrier,
                      const char* where);

// An environment variable's value for World::check_same_settings' text ("<unset>" when unset).
std::string env_setting(const char* var);

// The cuBLASLt wrapper an operator owns: kTuned unless WEFT_LT_TUNE=0; the first call of a shape
// waits for its stream through world.synchronize (deadline, device fault report), since that
// stream may already wait on peers. Split-K only with fp32 sums (LtSplitK::kFp32): one rounding.
std::unique_ptr<LtGemm> make_operator_lt_gemm(World& world);

// Throws where a CUDA error that earlier work left on this thread is still pending: the operator's
// launch checks (cudaGetLastError) would report it only after the peers were told to go on. One
// of every collective call's own checks (check_operand_pointers makes it too).
void check_no_pending_cuda_error(const char* where);

// run()'s checks of its operands, after the stream's: no CUDA error is pending on this thread,
// and A, B and the output (`out_name`) are device memory of this GPU, 16-byte aligned. Returns
// whether `stream` is being captured. These checks run on each rank alone, before anything is
// queued; run() abandons the call where one fails (weft::checks_or_abandon), so that the peers'
// signature check fails at once instead of their barrier or flag wait timing out.
bool check_operand_pointers(DevicePointerChecker& checker, cudaStream_t stream, const void* a,
                            const void* b, const void* out, const char* out_name,
                            const char* where);

// `bytes` of zeroed device memory (cudaFree it), ready for any stream: cudaMemset runs on the
// legacy stream, which does not order a non-blocking stream's first kernel after it, so this
// waits for it. For an operator's device-side state (call counters, epochs) at construction.
void* alloc_zeroed_device_state(size_t bytes);

// The signature of a tensor-parallel call (weft/device/call_signature.cuh): `op` (at most 8
// characters), the exchange `protocol` the plan runs (at most 8 characters: strategies that
// exchange the same data under the same flags share one, so ranks whose own slices steer their
// planners to different ones of those still agree), the dtype, the dimensions every rank must
// share (0 for one a rank may choose alone, e.g. GEMM-RS's K slice) and the protocol's parameters.
dev::CallSignature tp_call_signature(const char* op, const char* protocol, DType dtype, int64_t m,
                                     int64_t n, int64_t k, uint64_t options);

// The signature of a call this rank abandons because one of its own checks failed before it
// queued anything (operation 'aborted'): peers that compare theirs with it fail at once, naming
// this rank, instead of waiting for it until their timeout.
dev::CallSignature abandoned_call();

// Where an operator's ranks compare their calls: symmetric slots for 2 x W signatures and a
// device call counter for the prologue's parity (the epoch-based push kernel uses its epoch's).
// Collective to construct, like every symmetric allocation.
class CallCheck {
 public:
  explicit CallCheck(World& world);
  ~CallCheck();
  CallCheck(const CallCheck&) = delete;
  CallCheck& operator=(const CallCheck&) = delete;

  dev::CallSignature* slots() const { return slots_.data(); }
  // Makes the prologue compare `sig` with every peer's (only where it runs its barrier).
  void attach(PrologueParams& p, const dev::CallSignature& sig) const;
  // For a call this rank abandons: a prologue that gives every peer the abandoned_call()
  // signature and arrives at barrier `barrier_index` without waiting, so that the peers' barrier
  // passes and their check fails at once, naming this rank. Best effort, unchecked.
  void abandon(const dev::Context& ctx, int barrier_index, cudaStream_t stream) const noexcept;

 private:
  SymmetricBuffer<dev::CallSignature> slots_;
  uint32_t* calls_ = nullptr;
};

class PushWorkspace;  // gemm_ar/gemm_ar.h

// What AgGemm and GemmRs queue to abandon a call: the fence's barrier first where the call before
// was abandoned too, then the 'aborted' signatures in both exchanges (the push kernel's and the
// prologue's, whichever the plan, so that ranks abandoning at different checks step both on
// alike); then the operator's last call is marked and the fence armed for the next call. Best
// effort.
void abandon_exchanges(World& world, const dev::Context& ctx, AbandonFence& fence,
                       LastCall& last_call, const PushWorkspace& push, const CallCheck& prologue,
                       int barrier_index, cudaStream_t stream) noexcept;

}  // namespace weft::tp
