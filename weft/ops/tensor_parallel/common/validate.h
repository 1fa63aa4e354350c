// Host-side checks shared by the tensor-parallel planners: is a pointer device memory of this
// rank's GPU (cudaPointerGetAttributes, cached so that repeated calls with the same buffers cost
// nothing), is a stream being captured, and the capture-mode juggling those queries need.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "weft/runtime/error.h"

namespace weft::tp {

// Like WEFT_CHECK_ARG, but names the public call (`where`) instead of the helper that checks.
#define WEFT_TP_CHECK_ARG(where, cond, ...)                                          \
  do {                                                                               \
    if (!(cond)) throw ::weft::InvalidArgument((where), ::fmt::format(__VA_ARGS__)); \
  } while (0)

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

enum class CaptureState { none, active };

// Throws weft::InvalidArgument (naming `where`) when the stream's capture was invalidated.
CaptureState capture_state(cudaStream_t stream, const char* where);

// Checks that device pointers are device (or managed) memory of `device`, remembering the
// pointers that passed so that a call with the same buffers skips the driver query.
class PointerChecker {
 public:
  explicit PointerChecker(int device) : device_(device) {}
  // `what` names the argument in the message ("A", "the output C", ...). Null pointers and
  // misalignment are reported too.
  void check(const void* p, const char* what, size_t alignment, const char* where,
             bool capturing);
  int device() const { return device_; }

 private:
  int device_;
  std::vector<const void*> passed_;  // most recent first, bounded
};

}  // namespace weft::tp
