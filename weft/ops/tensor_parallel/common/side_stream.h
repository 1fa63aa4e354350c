// A side stream plus a pool of events, for operators that fork work (copy-engine transfers, a
// push kernel, the prologue) off the caller's stream and join it back before returning. The
// fork/join is made of event records and waits, so it works eagerly and inside a CUDA graph
// capture (the side stream joins the capture through the first wait).
#pragma once

#include <vector>

#include <cuda_runtime.h>

namespace weft::tp {

class SideStream {
 public:
  // A non-blocking stream of the highest priority on the current device and `events` events
  // (timing disabled).
  explicit SideStream(int events);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;

  cudaStream_t get() const { return stream_; }
  int events() const { return static_cast<int>(events_.size()); }

  // Record event `i` on `from`; `to` waits for it.
  void link(int i, cudaStream_t from, cudaStream_t to);
  // The two halves of link(), for a wait enqueued later than the record.
  void record(int i, cudaStream_t on);
  void wait(int i, cudaStream_t on);

 private:
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> events_;
};

}  // namespace weft::tp
