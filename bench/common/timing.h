// Timing helpers for multi-rank benchmarks: CUDA-event timing of a piece of stream work over
// warm-up + N iterations (every sample kept), medians, and the job-wide "slowest rank" figure that
// benchmark rows report (DESIGN.md: median over iterations, slowest rank).
//
//   auto samples = time_iterations(world, s, {.warmup = 3, .iters = 20},
//                                  [&] { my_kernel<<<g, b, 0, s>>>(...); });
//   double us = slowest_rank_median(world, samples);   // collective
//
// Every iteration is enqueued before the host waits, so host launch cost is hidden behind the GPU
// unless the timed work itself is launch-bound (which then is what gets measured).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "bench/common/cuda_resources.h"
#include "weft/runtime/world.h"

namespace weft::bench {

struct TimingOptions {
  int warmup = 3;  // untimed runs first
  int iters = 20;  // timed runs (samples)
  // Run world.barrier(stream) (untimed) before every run, so that all ranks start each iteration
  // together. Collective: every rank must then call with the same warmup + iters.
  bool barrier_before_each = true;
  // Before every run (untimed, ahead of the barrier), read a buffer twice the L2's size
  // (evict_l2), so no run finds its inputs in L2 because the previous run left them there: the
  // benchmarked operands of small problems (e.g. a decode GEMM's 32 MB weight slice) fit in L2,
  // a model's weights at that point of a step do not.
  bool flush_l2 = false;
};

// Enqueue on `stream` a read of twice the L2 size of the stream's device (a zeroed buffer, made
// on first use per device and kept; bench/common/l2.cu), which leaves the L2 holding only clean
// lines of that buffer.
void evict_l2(cudaStream_t stream);

// `iters` pairs of timing events, recorded around each timed run and read after one wait.
class EventTimer {
 public:
  explicit EventTimer(int iters);
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  void start(int i, cudaStream_t stream);
  void stop(int i, cudaStream_t stream);
  // Microseconds between start(i) and stop(i) for every i; call after the stream is synchronized.
  std::vector<double> elapsed_us() const;

 private:
  std::vector<cudaEvent_t> start_, stop_;
};

// Time `body()` (which enqueues work on `stream`, possibly forking to other streams and joining
// back) `opt.iters` times after `opt.warmup` untimed runs; `before()` runs (untimed) ahead of each
// run, after the optional barrier. Waits for the stream with world.synchronize (device faults
// become a weft::Error with the fault report). Returns one sample per timed run, in microseconds.
template <class Body, class Before>
std::vector<double> time_iterations(World& world, cudaStream_t stream, const TimingOptions& opt,
                                    Body&& body, Before&& before) {
  WEFT_CHECK_ARG(opt.iters > 0 && opt.warmup >= 0, "need iters > 0 and warmup >= 0, got {} and {}",
                 opt.iters, opt.warmup);
  EventTimer timer(opt.iters);
  for (int i = -opt.warmup; i < opt.iters; ++i) {
    if (opt.flush_l2) evict_l2(stream);
    if (opt.barrier_before_each) world.barrier(stream);
    before();
    if (i >= 0) timer.start(i, stream);
    body();
    if (i >= 0) timer.stop(i, stream);
  }
  world.synchronize(stream);
  return timer.elapsed_us();
}

template <class Body>
std::vector<double> time_iterations(World& world, cudaStream_t stream, const TimingOptions& opt,
                                    Body&& body) {
  return time_iterations(world, stream, opt, std::forward<Body>(body), [] {});
}

// `enqueue` captured into a CUDA graph on every rank, with the outcome agreed across ranks
// (World::agree; collective): when the capture throws on one rank, every rank throws here, instead
// of the others going on to a barrier the failing rank never reaches.
template <class Enqueue>
GraphExec capture_on_all_ranks(World& world, cudaStream_t stream, Enqueue&& enqueue) {
  GraphExec graph;
  world.agree([&] { graph = GraphExec::capture(stream, enqueue); });
  return graph;
}

// Statistics of a sample set (NaN for an empty one).
double median(std::vector<double> samples);
double minimum(const std::vector<double>& samples);
double maximum(const std::vector<double>& samples);

// Collective (TCP rendezvous): every rank's value, indexed by rank.
std::vector<double> gather_values(World& world, double mine);
// Collective: the largest value over all ranks, ignoring NaN (a rank that took no part passes
// NaN); NaN only when every rank passed NaN.
double slowest_rank(World& world, double mine);
// Collective: slowest_rank(median(samples)) — the figure a benchmark row reports.
double slowest_rank_median(World& world, const std::vector<double>& samples);
// Collective: the sum over ranks (e.g. of mismatch counts).
double sum_over_ranks(World& world, double mine);

// GB/s (1e9 bytes per second) for `bytes` moved in `us` microseconds.
inline double gbps(double bytes, double us) { return us > 0 ? bytes / us * 1e-3 : NAN; }

}  // namespace weft::bench
