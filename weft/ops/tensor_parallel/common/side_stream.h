// A side stream plus a pool of events, for operators that fork work (copy-engine transfers, a
// push kernel, the prologue) off the caller's stream and join it back before returning. The
// fork/join is made of event records and waits, so it works eagerly and inside a CUDA graph
// capture (the side stream joins the capture through the first wait).
#pragma once

#include <string>
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

  // A call's fork of the side stream from `stream` (event `fork`) and its join back (event
  // `done`): join() where the call ends; if an exception leaves the call first, the destructor
  // joins, so that work the caller enqueues next (or frees) still follows what the side stream
  // was given.
  class Fork {
   public:
    Fork(SideStream& side, int fork, int done, cudaStream_t stream);
    ~Fork();
    Fork(const Fork&) = delete;
    Fork& operator=(const Fork&) = delete;
    void join();

   private:
    SideStream& side_;
    int done_;
    cudaStream_t stream_;
    bool joined_ = false;
  };

 private:
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> events_;
};

// Diagnostics: timing events recorded at named points of an operator's streams during its last
// eager call, reported as microseconds after the call's start. Off (every call a no-op) unless
// constructed enabled; a call captured into a graph records nothing and keeps the last eager
// call's marks. Enabled, every mark costs a capture query and an event record on the stream, so
// timings taken with it on include them.
//
//   StreamTimeline tl(tp_trace_from_env());
//   tl.begin(stream); ...; tl.mark("gemm 1", stream); tl.mark("sent 1", side); ...
//   (after synchronizing) std::string lines = tl.report();
class StreamTimeline {
 public:
  explicit StreamTimeline(bool enabled, int capacity = 32);
  ~StreamTimeline();
  StreamTimeline(const StreamTimeline&) = delete;
  StreamTimeline& operator=(const StreamTimeline&) = delete;

  bool enabled() const { return !events_.empty(); }
  void begin(cudaStream_t s);                  // forgets the previous call's marks, marks "start"
  void mark(const char* label, cudaStream_t s);  // beyond the capacity: dropped
  // "  <label>  <us> us" per mark, in time order; "" when off or never begun. Call once the
  // streams are synchronized.
  std::string report() const;

 private:
  std::vector<cudaEvent_t> events_;
  std::vector<const char*> labels_;  // string literals
  int used_ = 0;
};

}  // namespace weft::tp
