#include "weft/runtime/validate.h"

#include <algorithm>

#include "weft/runtime/cuda_check.h"

namespace weft {
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

// The checks that need no driver call.
void check_null_and_alignment(const void* p, const char* what, size_t alignment,
                              const char* where) {
  WEFT_CHECK_ARG_AT(where, p != nullptr, "{} is null", what);
  WEFT_CHECK_ARG_AT(where, alignment == 0 || reinterpret_cast<uintptr_t>(p) % alignment == 0,
                    "{} ({}) must be aligned to {} bytes", what, p, alignment);
}

// The driver's answer: device (or managed) memory of `device`.
void check_memory(const void* p, const char* what, int device, const char* where) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw InvalidArgument(where, fmt::format("{} ({}) is not a pointer CUDA knows: {}", what, p,
                                             cudaGetErrorString(err)));
  }
  WEFT_CHECK_ARG_AT(where, attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged,
                    "{} ({}) is {}; it must be device memory of GPU {}", what, p,
                    memory_type_name(attr.type), device);
  WEFT_CHECK_ARG_AT(where, attr.type != cudaMemoryTypeDevice || attr.device == device,
                    "{} ({}) is memory of GPU {}, but this rank runs on GPU {}", what, p,
                    attr.device, device);
}

}  // namespace

RelaxedCaptureScope::RelaxedCaptureScope(bool active) : active_(active) {
  if (active_) WEFT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode_));
}

RelaxedCaptureScope::~RelaxedCaptureScope() {
  if (active_) cudaThreadExchangeStreamCaptureMode(&mode_);
}

bool stream_capturing(cudaStream_t stream, const char* where) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  WEFT_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  WEFT_CHECK_ARG_AT(where, status != cudaStreamCaptureStatusInvalidated,
                    "the stream's capture has been invalidated by an earlier call");
  return status == cudaStreamCaptureStatusActive;
}

void check_device_pointer(const void* p, const char* what, size_t alignment, int device,
                          const char* where) {
  check_null_and_alignment(p, what, alignment, where);
  check_memory(p, what, device, where);
}

void DevicePointerChecker::check(const void* p, const char* what, size_t alignment,
                                 const char* where, bool capturing) {
  check_null_and_alignment(p, what, alignment, where);
  if (std::find(passed_.begin(), passed_.end(), p) != passed_.end()) return;
  {
    RelaxedCaptureScope relaxed(capturing);
    check_memory(p, what, device_, where);
  }
  passed_.insert(passed_.begin(), p);
  if (passed_.size() > remember_) passed_.pop_back();
}

}  // namespace weft
