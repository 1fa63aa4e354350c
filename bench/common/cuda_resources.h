// Owning wrappers for the plain CUDA objects a benchmark makes (device memory, streams, events,
// graphs), so that every exit path, exceptions included, gives them back. Creation failures throw
// weft::Error; destruction ignores errors (a trapped kernel may already have ended the context).
#pragma once

#include <cstddef>
#include <utility>

#include <cuda_runtime.h>

#include "weft/runtime/cuda_check.h"

namespace weft::bench {

// `bytes` of ordinary (non-symmetric) device memory from cudaMalloc, uninitialized.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) WEFT_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  ~DeviceMemory() { reset(); }
  DeviceMemory(DeviceMemory&& o) noexcept { *this = std::move(o); }
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  void reset() noexcept {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <class T = char>
  T* as() const { return static_cast<T*>(ptr_); }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A non-blocking stream on the current device.
class Stream {
 public:
  Stream() { WEFT_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s_) cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  cudaStream_t get() const { return s_; }
  operator cudaStream_t() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

// A CUDA event; `timing` false makes a cheaper event for stream joins only.
class Event {
 public:
  explicit Event(bool timing = true) {
    WEFT_CUDA_CHECK(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  ~Event() {
    if (e_) cudaEventDestroy(e_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  cudaEvent_t get() const { return e_; }
  operator cudaEvent_t() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

// An instantiated CUDA graph captured from a stream:
//   GraphExec g = GraphExec::capture(stream, [&] { enqueue work on stream; });
//   g.launch(stream);
class GraphExec {
 public:
  GraphExec() = default;
  ~GraphExec() { reset(); }
  GraphExec(GraphExec&& o) noexcept { *this = std::move(o); }
  GraphExec& operator=(GraphExec&& o) noexcept {
    if (this != &o) {
      reset();
      graph_ = std::exchange(o.graph_, nullptr);
      exec_ = std::exchange(o.exec_, nullptr);
    }
    return *this;
  }

  template <class Enqueue>
  static GraphExec capture(cudaStream_t stream, Enqueue&& enqueue) {
    GraphExec g;
    WEFT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue();
    } catch (...) {
      cudaGraph_t broken = nullptr;
      cudaStreamEndCapture(stream, &broken);
      if (broken) cudaGraphDestroy(broken);
      throw;
    }
    WEFT_CUDA_CHECK(cudaStreamEndCapture(stream, &g.graph_));
    WEFT_CUDA_CHECK(cudaGraphInstantiate(&g.exec_, g.graph_, 0));
    return g;
  }

  void launch(cudaStream_t stream) const { WEFT_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

  void reset() noexcept {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
  }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace weft::bench
