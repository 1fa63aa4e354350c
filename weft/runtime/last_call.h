// What an operator's destructor waits for before it frees buffers its calls may still use: the end
// of its last eager call, marked by an event on the call's stream. Captured calls are not marked
// (their work runs when the graph is replayed, on whatever stream; the graph's owner finishes the
// replays before destroying the operator), so a stream that existed only for a capture is never
// touched again.
#pragma once

#include <cuda_runtime.h>

namespace weft {

class LastCall {
 public:
  LastCall() = default;
  ~LastCall() {
    if (event_ != nullptr) {
      cudaEventSynchronize(event_);
      cudaEventDestroy(event_);
    }
  }
  LastCall(const LastCall&) = delete;
  LastCall& operator=(const LastCall&) = delete;

  // Marks the end of what is enqueued on `stream` so far (nothing when `capturing`).
  cudaError_t mark(cudaStream_t stream, bool capturing) noexcept {
    if (capturing) return cudaSuccess;
    if (event_ == nullptr) {
      const cudaError_t err = cudaEventCreateWithFlags(&event_, cudaEventDisableTiming);
      if (err != cudaSuccess) {
        event_ = nullptr;
        return err;
      }
    }
    return cudaEventRecord(event_, stream);
  }

  // Marks at the end of the enclosing scope, also when it is left by an exception (for calls with
  // several returns). A failed mark surfaces at the next CUDA check of the caller.
  class Scope {
   public:
    Scope(LastCall& last, cudaStream_t stream, bool capturing)
        : last_(last), stream_(stream), capturing_(capturing) {}
    ~Scope() { (void)last_.mark(stream_, capturing_); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    LastCall& last_;
    cudaStream_t stream_;
    bool capturing_;
  };
  [[nodiscard]] Scope at_scope_exit(cudaStream_t stream, bool capturing) {
    return Scope(*this, stream, capturing);
  }

  // Blocks until the last marked call is done (at once when none was); returns its error (a
  // device fault), never throws.
  cudaError_t wait() noexcept {
    return event_ != nullptr ? cudaEventSynchronize(event_) : cudaSuccess;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace weft
