#include "weft/ops/tensor_parallel/common/validate.h"

#include <algorithm>

#include "weft/runtime/cuda_check.h"

namespace weft::tp {
namespace {

const char* memory_type_name(cudaMemoryType t) {
  switch (t) {
    case cudaMemoryTypeUnregistered: return "pageable host memory";
    case cudaMemoryTypeHost: return "pinned host memory";
    case cudaMemoryTypeDevice: return "device memory";
    case cudaMemoryTypeManaged: return "managed memory";
  }
  return "unknown memory";
}

constexpr size_t kRemembered = 64;

}  // namespace

RelaxedCaptureScope::RelaxedCaptureScope(bool active) : active_(active) {
  if (active_) WEFT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode_));
}

RelaxedCaptureScope::~RelaxedCaptureScope() {
  if (active_) cudaThreadExchangeStreamCaptureMode(&mode_);
}

CaptureState capture_state(cudaStream_t stream, const char* where) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  WEFT_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  WEFT_TP_CHECK_ARG(where, status != cudaStreamCaptureStatusInvalidated,
                    "the stream's capture has been invalidated by an earlier call");
  return status == cudaStreamCaptureStatusActive ? CaptureState::active : CaptureState::none;
}

void PointerChecker::check(const void* p, const char* what, size_t alignment, const char* where,
                           bool capturing) {
  WEFT_TP_CHECK_ARG(where, p != nullptr, "{} is null", what);
  WEFT_TP_CHECK_ARG(where, alignment == 0 || reinterpret_cast<uintptr_t>(p) % alignment == 0,
                    "{} ({}) must be {}-byte aligned", what, p, alignment);
  if (std::find(passed_.begin(), passed_.end(), p) != passed_.end()) return;
  cudaPointerAttributes attr{};
  cudaError_t err;
  {
    RelaxedCaptureScope relaxed(capturing);
    err = cudaPointerGetAttributes(&attr, p);
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw InvalidArgument(where, fmt::format("{} ({}) is not a pointer CUDA knows: {}", what, p,
                                             cudaGetErrorString(err)));
  }
  WEFT_TP_CHECK_ARG(where,
                    attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged,
                    "{} ({}) is {}; it must be device memory of GPU {}", what, p,
                    memory_type_name(attr.type), device_);
  WEFT_TP_CHECK_ARG(where, attr.type != cudaMemoryTypeDevice || attr.device == device_,
                    "{} ({}) is memory of GPU {}, but this rank runs on GPU {}", what, p,
                    attr.device, device_);
  passed_.insert(passed_.begin(), p);
  if (passed_.size() > kRemembered) passed_.pop_back();
}

}  // namespace weft::tp
