// Host-side checks of the pointers and streams that operators are given, shared by every operator
// and example: is a pointer device memory of this rank's GPU (cudaPointerGetAttributes, optionally
// cached so that repeated calls with the same buffers cost nothing), is it aligned, do two byte
// ranges overlap, is a stream being captured, and the capture-mode juggling those queries need.
// Every failure is a weft::InvalidArgument naming the public call (`where`) and the argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_runtime.h>

#include "weft/runtime/error.h"

namespace weft {

// Lets this thread make "potentially unsafe" CUDA calls (pointer queries) while a stream it owns
// is being captured in global or thread-local mode. No-op when `active` is false.
class RelaxedCaptureScope {
 public:
  explicit RelaxedCaptureScope(bool active);
  ~RelaxedCaptureScope();
  RelaxedCaptureScope(const RelaxedCaptureScope&) = delete;
  RelaxedCaptureScope& operator=(const RelaxedCaptureScope&) = delete;

 private:
  bool active_;
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
};

// Whether `stream` is being captured; throws InvalidArgument (naming `where`) when its capture was
// invalidated by an earlier call.
bool stream_capturing(cudaStream_t stream, const char* where);

// Whether the byte ranges [p, p + bytes) and [q, q + q_bytes) share a byte.
inline bool ranges_overlap(const void* p, size_t bytes, const void* q, size_t q_bytes) {
  const auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(q);
  return a < b + q_bytes && b < a + bytes;
}

// Throws InvalidArgument (naming `where`; `what` names the argument: "A", "x", "the output C")
// unless `p` is non-null, a multiple of `alignment` bytes (0: any) and device or managed memory of
// GPU `device`. The pointer query is made as is: a caller whose stream is being captured holds a
// RelaxedCaptureScope around the call.
void check_device_pointer(const void* p, const char* what, size_t alignment, int device,
                          const char* where);

// check_device_pointer with a memory of the pointers that passed (the `remember` most recent), so
// that calls with the same buffers skip the driver query; the query runs in relaxed capture mode
// when `capturing`.
class DevicePointerChecker {
 public:
  DevicePointerChecker(int device, size_t remember) : device_(device), remember_(remember) {}
  void check(const void* p, const char* what, size_t alignment, const char* where, bool capturing);
  int device() const { return device_; }

 private:
  int device_;
  size_t remember_;
  std::vector<const void*> passed_;  // most recent first, at most remember_
};

}  // namespace weft
