#include "weft/ops/tensor_parallel/common/side_stream.h"

#include <algorithm>
#include <utility>

#include "weft/runtime/cuda_check.h"
#include "weft/runtime/error.h"

namespace weft::tp {

SideStream::SideStream(int events) {
  int least = 0, greatest = 0;
  WEFT_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  WEFT_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  try {
    for (int i = 0; i < events; ++i) {
      cudaEvent_t e = nullptr;
      WEFT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      events_.push_back(e);
    }
  } catch (...) {
    for (auto e : events_) cudaEventDestroy(e);
    cudaStreamDestroy(stream_);
    throw;
  }
}

SideStream::~SideStream() {
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto e : events_) cudaEventDestroy(e);
  if (stream_) cudaStreamDestroy(stream_);
}

void SideStream::link(int i, cudaStream_t from, cudaStream_t to) {
  record(i, from);
  wait(i, to);
}

void SideStream::record(int i, cudaStream_t on) {
  WEFT_CHECK(i >= 0 && i < events(), "side-stream event {} out of range [0, {})", i, events());
  WEFT_CUDA_CHECK(cudaEventRecord(events_[static_cast<size_t>(i)], on));
}

void SideStream::wait(int i, cudaStream_t on) {
  WEFT_CHECK(i >= 0 && i < events(), "side-stream event {} out of range [0, {})", i, events());
  WEFT_CUDA_CHECK(cudaStreamWaitEvent(on, events_[static_cast<size_t>(i)], 0));
}

SideStream::Fork::Fork(SideStream& side, int fork, int done, cudaStream_t stream)
    : side_(side), done_(done), stream_(stream) {
  WEFT_CHECK(done >= 0 && done < side.events(), "side-stream event {} out of range [0, {})", done,
             side.events());
  side.link(fork, stream, side.get());
}

void SideStream::Fork::join() {
  joined_ = true;
  side_.link(done_, side_.get(), stream_);
}

SideStream::Fork::~Fork() {
  if (joined_) return;
  // Unwinding: join without throwing (a failure here leaves the CUDA error for the next check).
  const cudaEvent_t e = side_.events_[static_cast<size_t>(done_)];
  if (cudaEventRecord(e, side_.stream_) == cudaSuccess) (void)cudaStreamWaitEvent(stream_, e, 0);
}

StreamTimeline::StreamTimeline(bool enabled, int capacity) {
  if (!enabled) return;
  try {
    for (int i = 0; i < capacity; ++i) {
      cudaEvent_t e = nullptr;
      WEFT_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
  } catch (...) {
    for (auto e : events_) cudaEventDestroy(e);
    throw;
  }
  labels_.assign(events_.size(), "");
}

StreamTimeline::~StreamTimeline() {
  for (auto e : events_) cudaEventDestroy(e);
}

namespace {

// Whether work enqueued on `s` now goes into a graph (the legacy stream counts as capturing while
// another stream captures in global mode: asking then fails, and the error is cleared).
bool capturing(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(s, &st);
  if (err == cudaErrorStreamCaptureImplicit) {
    (void)cudaGetLastError();
    return true;
  }
  WEFT_CUDA_CHECK(err);
  return st != cudaStreamCaptureStatusNone;
}

}  // namespace

void StreamTimeline::begin(cudaStream_t s) {
  if (!enabled() || capturing(s)) return;  // a captured call keeps the last eager one's marks
  used_ = 0;
  mark("start", s);
}

void StreamTimeline::mark(const char* label, cudaStream_t s) {
  if (used_ >= static_cast<int>(events_.size()) || capturing(s)) return;
  WEFT_CUDA_CHECK(cudaEventRecord(events_[static_cast<size_t>(used_)], s));
  labels_[static_cast<size_t>(used_++)] = label;
}

std::string StreamTimeline::report() const {
  std::vector<std::pair<float, const char*>> at;
  for (int i = 1; i < used_; ++i) {
    float ms = 0;
    WEFT_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[0], events_[static_cast<size_t>(i)]));
    at.emplace_back(ms * 1e3f, labels_[static_cast<size_t>(i)]);
  }
  std::stable_sort(at.begin(), at.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  std::string out;
  for (const auto& [us, label] : at) out += fmt::format("  {:<16} {:8.1f} us\n", label, us);
  return out;
}

}  // namespace weft::tp
