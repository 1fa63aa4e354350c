#include "weft/ops/tensor_parallel/common/op_setup.h"

#include <cstdlib>

#include "weft/gemm/gemm.h"
#include "weft/ops/tensor_parallel/common/kernels.h"
#include "weft/ops/tensor_parallel/common/tp_common.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"
#include "weft/runtime/cuda_check.h"

namespace weft::tp {

void check_single_node(const World& world, const char* reach, const char* where) {
  WEFT_CHECK_ARG_AT(where, world.lsa_size() == world.size(),
                    "{}, so all {} ranks must be on one node; this node holds {}", reach,
                    world.size(), world.lsa_size());
  WEFT_CHECK_ARG_AT(where, world.size() <= kMaxWorld, "at most {} ranks, got {}", kMaxWorld,
                    world.size());
}

int agree_on_settings(World& world, const std::string& settings, int requested_barrier,
                      const char* where) {
  const int count = world.context().barrier_count;
  const int index = requested_barrier >= 0 ? requested_barrier : next_barrier_index(count);
  world.check_same_settings(fmt::format("{}, barrier index {}, WEFT_GEMM_CONFIG {}", settings,
                                        index, env_setting("WEFT_GEMM_CONFIG")),
                            where);
  WEFT_CHECK_ARG_AT(where, index < count, "barrier_index {} is outside the world's range [0, {})",
                    index, count);
  return index;
}

std::string env_setting(const char* var) {
  const char* v = std::getenv(var);
  return v ? fmt::format("'{}'", v) : std::string("<unset>");
}

std::unique_ptr<LtGemm> make_operator_lt_gemm(World& world) {
  return std::make_unique<LtGemm>(
      lt_algo_choice_from_env(), [w = &world](cudaStream_t s) { w->synchronize(s); },
      LtSplitK::kFp32);
}

dev::CallSignature tp_call_signature(const char* op, const char* protocol, DType dtype, int64_t m,
                                     int64_t n, int64_t k, uint64_t options) {
  dev::CallSignature s{};
  s.word[dev::CallSignature::op] = dev::call_op_word(op);
  s.word[dev::CallSignature::variant] = dev::call_op_word(protocol);
  s.word[dev::CallSignature::dtype] = dev::call_op_word(gemm::to_string(dtype));
  s.word[dev::CallSignature::m] = static_cast<uint64_t>(m);
  s.word[dev::CallSignature::n] = static_cast<uint64_t>(n);
  s.word[dev::CallSignature::k] = static_cast<uint64_t>(k);
  s.word[dev::CallSignature::options] = options;
  s.word[dev::CallSignature::digest] = dev::call_digest(s);
  return s;
}

dev::CallSignature abandoned_call() {
  return tp_call_signature("aborted", "", DType::kBF16, 0, 0, 0, 0);
}

void* alloc_zeroed_device_state(size_t bytes) {
  void* p = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&p, bytes));
  cudaError_t err = cudaMemset(p, 0, bytes);
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    cudaFree(p);
    WEFT_CUDA_CHECK(err);
  }
  return p;
}

CallCheck::CallCheck(World& world)
    : slots_(world.alloc<dev::CallSignature>(2 * static_cast<size_t>(world.size()))),
      calls_(static_cast<uint32_t*>(alloc_zeroed_device_state(sizeof(uint32_t)))) {}

CallCheck::~CallCheck() {
  if (calls_) cudaFree(calls_);
}

void CallCheck::attach(PrologueParams& p, const dev::CallSignature& sig) const {
  p.signature = sig;
  p.sig_slots = slots_.data();
  p.calls = calls_;
}

void CallCheck::abandon(const dev::Context& ctx, int barrier_index,
                        cudaStream_t stream) const noexcept {
  PrologueParams p;
  attach(p, abandoned_call());
  p.abandon = 1;
  p.barrier = 1;
  p.barrier_index = barrier_index;
  launch_prologue_unchecked(ctx, p, stream);
}

void abandon_exchanges(World& world, const dev::Context& ctx, AbandonFence& fence,
                       LastCall& last_call, const PushWorkspace& push, const CallCheck& prologue,
                       int barrier_index, cudaStream_t stream) noexcept {
  try {
    fence.before_call(world, stream);
  } catch (...) {  // best effort, as the rest
  }
  push.abandon(ctx, stream);
  prologue.abandon(ctx, barrier_index, stream);
  (void)last_call.mark(stream, false);
  fence.abandoned();
}

void check_no_pending_cuda_error(const char* where) {
  const cudaError_t pending = cudaPeekAtLastError();
  if (pending != cudaSuccess)
    throw Error(where, fmt::format("a CUDA error from earlier work on this thread is still "
                                   "pending ({}: {}); handle it before calling the operator",
                                   cudaGetErrorName(pending), cudaGetErrorString(pending)));
}

bool check_operand_pointers(DevicePointerChecker& checker, cudaStream_t stream, const void* a,
                            const void* b, const void* out, const char* out_name,
                            const char* where) {
  check_no_pending_cuda_error(where);
  const bool capturing = stream_capturing(stream, where);
  checker.check(a, "A", 16, where, capturing);
  checker.check(b, "B", 16, where, capturing);
  checker.check(out, out_name, 16, where, capturing);
  return capturing;
}

}  // namespace weft::tp
