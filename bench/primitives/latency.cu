// Latency benchmarks: (c) signal round trip between rank pairs, (d) device barriers.
//
// (c) Ranks pair up as (0,1), (2,3), ... (an odd last rank idles). The even rank of a pair starts:
//     it notifies the odd rank's signal and waits for the answer on its own; N round trips run in
//     one kernel of one thread, and time / N is the round trip. References: NCCL 8-byte send/recv
//     ping-pong (N calls in one timed region) and a copy-engine ping-pong (8-byte copy_to_peer +
//     stream_write_signal, answered after stream_wait_signal), both per round trip.
// (d) barrier_all(Block{}, ctx, 0) N times inside one kernel (per barrier); World::barrier launched
//     M times in a row (launch included) and 100 times inside a CUDA graph; references:
//     ncclAllReduce of one float, M eager calls and 100 in a CUDA graph (per call).
// (e) What a stream gate costs between two kernels when it is already open: N full-grid kernels
//     of a fixed ~20 us each, back to back, against the same with stream_wait_signal on a signal
//     that is already set (cuStreamWaitValue64) and with cudaStreamWaitEvent on a completed event
//     before each kernel; the figure is the extra time per gate. The copy-engine strategies of
//     the fused operators put such gates between GEMM launches (docs/perf.md, GEMM-RS ring).
#include <fmt/format.h>

#include <cstdio>
#include <vector>

#include "bench/common/cuda_resources.h"
#include "bench/common/timing.h"
#include "bench/primitives/suite.h"
#include "weft/device/weft.cuh"
#include "weft/runtime/copy_engine.h"
#include "weft/runtime/cuda_check.h"

namespace weft::bench::primitives {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

// sig[0]: the ping, in the responder's memory; sig[1]: the pong, in the initiator's memory.
__global__ void __launch_bounds__(32, 1)
    pingpong_kernel(const __grid_constant__ dev::Context ctx, dev::signal_t* sig, int partner,
                    int initiator, uint64_t base, int n) {
  if (threadIdx.x != 0) return;
  if (initiator) {
#pragma unroll 1
    for (int i = 1; i <= n; ++i) {
      dev::notify(ctx, sig + 0, partner, base + i);
      dev::wait(ctx, sig + 1, dev::Cmp::ge, base + i);
    }
  } else {
#pragma unroll 1
    for (int i = 1; i <= n; ++i) {
      dev::wait(ctx, sig + 0, dev::Cmp::ge, base + i);
      dev::notify(ctx, sig + 1, partner, base + i);
    }
  }
}

constexpr int kBarrierThreads = 32;  // the block size World::barrier uses

// Every block spins until `ns` after its own start: a kernel of fixed length on every SM.
__global__ void timed_spin_kernel(uint64_t ns) {
  const uint64_t start = dev::detail::globaltimer_ns();
  while (dev::detail::globaltimer_ns() - start < ns) {
  }
}

template <bool kAcqRel>
__global__ void __launch_bounds__(kBarrierThreads, 1)
    barrier_loop_kernel(const __grid_constant__ dev::Context ctx, int n) {
#pragma unroll 1
  for (int i = 0; i < n; ++i) {
    if constexpr (kAcqRel)
      dev::barrier_all(dev::Block{}, ctx, 0);
    else
      dev::sync_all(dev::Block{}, ctx, 0);
  }
}

// Checks what barrier_all promises: before barrier i every rank stores base+i into its slot on
// every peer (relaxed stores); after it every slot on every rank must read base+i. A second barrier
// keeps round i+1's stores out of round i's reads. Counts the slots that read wrong.
__global__ void __launch_bounds__(kBarrierThreads, 1)
    barrier_check_kernel(const __grid_constant__ dev::Context ctx, uint64_t* slots, uint64_t base,
                         int n, unsigned long long* bad) {
  const int W = ctx.world_size;
  unsigned long long wrong = 0;
#pragma unroll 1
  for (int i = 1; i <= n; ++i) {
    for (int q = threadIdx.x; q < W; q += blockDim.x)
      dev::st<dev::Sem::relaxed, dev::Scope::sys>(dev::symm_at(ctx, slots + ctx.rank, q), base + i);
    dev::barrier_all(dev::Block{}, ctx, 0);
    for (int q = threadIdx.x; q < W; q += blockDim.x)
      wrong += dev::ld<dev::Sem::relaxed, dev::Scope::sys>(slots + q) != base + i;
    dev::barrier_all(dev::Block{}, ctx, 0);
  }
  if (wrong) atomicAdd(bad, wrong);
}

uint64_t read_signal(const dev::signal_t* sig, cudaStream_t stream) {
  uint64_t v = 0;
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&v, sig, sizeof(v), cudaMemcpyDeviceToHost, stream));
  WEFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return v;
}

std::string times(double ref_us, double us) {
  return std::isnan(ref_us) || std::isnan(us) || us <= 0 ? "?" : fmt::format("{:.2f}x", ref_us / us);
}

std::string status(bool ok) { return ok ? "" : "FAILED verification; "; }

}  // namespace

// ---- (c) signal round trip -----------------------------------------------------------------------

void run_signal_roundtrip(Suite& s) {
  World& w = s.world;
  const int r = w.rank();
  const int partner = r ^ 1;
  const bool active = partner < w.size();
  const bool initiator = r % 2 == 0;
  const int pairs = w.size() / 2;
  const int n_kernel = s.opt.quick ? 1000 : 10000;
  const int n_host = s.opt.quick ? 200 : 1000;  // NCCL / copy-engine round trips per region
  const dev::Context ctx = w.context();
  const std::string bench = fmt::format("signal round trip ({} pair{})", pairs, pairs > 1 ? "s" : "");
  const double idle = NAN;  // what an unpaired rank contributes to the slowest-rank reduction

  auto sig = w.alloc_signals(4);  // [0] ping, [1] pong (kernel); [2] ping, [3] pong (copy engine)

  // SM ping-pong in one kernel.
  uint64_t kernel_epoch = 0;
  const auto k_samples = time_iterations(w, s.stream, s.timing(), [&] {
    if (active) {
      pingpong_kernel<<<1, 32, 0, s.stream>>>(ctx, sig.data(), partner, initiator, kernel_epoch,
                                              n_kernel);
      WEFT_CHECK_LAUNCH();
    }
    kernel_epoch += n_kernel;
  });
  bool k_ok = true;
  std::string k_detail;
  if (active) {
    const uint64_t seen = read_signal(sig.data() + (initiator ? 1 : 0), s.stream);
    k_ok = seen == kernel_epoch;
    k_detail = fmt::format("final signal {} (expected {})", seen, kernel_epoch);
  }
  const bool kernel_ok = s.all_ok(k_ok, bench + ": notify/wait kernel", k_detail);
  double mine = active ? median(k_samples) / n_kernel : idle;
  const double kernel_us = slowest_rank(w, mine);

  // Copy-engine ping-pong: 8 bytes by copy_to_peer, then a stream signal; the answer goes back
  // the same way after stream_wait_signal. Payload: [0, 8) the initiator's data, [16, 24) where it
  // lands on the responder, [32, 40) where the responder's echo lands on the initiator.
  auto payload = w.alloc<char>(64);
  fill_pattern(payload.data(), 8, s.seed(kPingCe, r), s.stream);
  WEFT_CUDA_CHECK(cudaMemsetAsync(payload.data() + 16, 0, 48, s.stream));
  uint64_t ce_epoch = 0;
  const auto ce_samples = time_iterations(w, s.stream, s.timing(), [&] {
    if (!active) return;
    for (int i = 0; i < n_host; ++i) {
      const uint64_t e = ++ce_epoch;
      if (initiator) {
        copy_to_peer(w, payload.data() + 16, payload.data(), 8, partner, s.stream);
        stream_write_signal(w, sig.data() + 2, partner, e, s.stream);
        stream_wait_signal(sig.data() + 3, e, s.stream);
      } else {
        stream_wait_signal(sig.data() + 2, e, s.stream);
        copy_to_peer(w, payload.data() + 32, payload.data() + 16, 8, partner, s.stream);
        stream_write_signal(w, sig.data() + 3, partner, e, s.stream);
      }
    }
  });
  w.barrier(s.stream);
  w.synchronize(s.stream);
  bool c_ok = true;
  std::string c_detail;
  if (active) {
    // The initiator's echo holds its own data; the responder's landing slot holds the initiator's.
    const int origin = initiator ? r : partner;
    const PatternCheck c = check_pattern(payload.data() + (initiator ? 32 : 16), 8,
                                         s.seed(kPingCe, origin), s.stream);
    const uint64_t seen = read_signal(sig.data() + (initiator ? 3 : 2), s.stream);
    c_ok = c.ok() && seen == ce_epoch;
    c_detail = fmt::format("payload {}, final signal {} (expected {})", c.describe(), seen, ce_epoch);
  }
  const bool ce_ok = s.all_ok(c_ok, bench + ": copy-engine ping-pong", c_detail);
  mine = active ? median(ce_samples) / n_host : idle;
  const double ce_us = slowest_rank(w, mine);

  // NCCL ping-pong of 8 bytes: the initiator sends its data and receives the echo.
  DeviceMemory nbuf(64);
  fill_pattern(nbuf.data(), 8, s.seed(kPingNccl, r), s.stream);
  WEFT_CUDA_CHECK(cudaMemsetAsync(nbuf.as<char>() + 16, 0, 48, s.stream));
  const auto n_samples = time_iterations(w, s.stream, s.timing(), [&] {
    if (!active) return;
    ncclComm_t comm = w.nccl_comm();
    char* mine_buf = nbuf.as<char>();
    for (int i = 0; i < n_host; ++i) {
      if (initiator) {
        WEFT_NCCL_CHECK(ncclSend(mine_buf, 8, ncclUint8, partner, comm, s.stream));
        WEFT_NCCL_CHECK(ncclRecv(mine_buf + 32, 8, ncclUint8, partner, comm, s.stream));
      } else {
        WEFT_NCCL_CHECK(ncclRecv(mine_buf + 16, 8, ncclUint8, partner, comm, s.stream));
        WEFT_NCCL_CHECK(ncclSend(mine_buf + 16, 8, ncclUint8, partner, comm, s.stream));
      }
    }
  });
  bool n_ok = true;
  std::string n_detail;
  if (active) {
    const int origin = initiator ? r : partner;
    const PatternCheck c = check_pattern(nbuf.as<char>() + (initiator ? 32 : 16), 8,
                                         s.seed(kPingNccl, origin), s.stream);
    n_ok = c.ok();
    n_detail = "payload " + c.describe();
  }
  const bool nccl_ok = s.all_ok(n_ok, bench + ": NCCL ping-pong", n_detail);
  mine = active ? median(n_samples) / n_host : idle;
  const double nccl_us = slowest_rank(w, mine);

  const double nccl_ref = nccl_ok ? nccl_us : NAN;
  s.add({bench, "dev::notify + dev::wait, one kernel", fmt::format("{} x 8 B", n_kernel), kernel_us,
         NAN,
         status(kernel_ok) + (kernel_us <= 5.0 ? "within" : "OVER") + " the 5 us target, " +
             times(nccl_ref, kernel_us) + " NCCL"});
  s.add({bench, "copy engine + stream signals", fmt::format("{} x 8 B", n_host), ce_us, NAN,
         status(ce_ok) + times(nccl_ref, ce_us) + " NCCL"});
  s.add({bench, "NCCL send/recv 8 B ping-pong", fmt::format("{} x 8 B", n_host), nccl_us, NAN,
         status(nccl_ok), true});

  auto emit = [&](const std::string& method, int n, double us, bool ok) {
    if (!ok || !nccl_ok) return;
    ResultRow row = s.row("signal_roundtrip", "u64");
    row.shape.set("pairs", pairs).set("round_trips", n).set("method", method);
    row.weft_us = us;
    row.baselines.push_back({"nccl_sendrecv_8B", nccl_us});
    if (method != "copy_engine" && ce_ok) row.baselines.push_back({"copy_engine_pingpong", ce_us});
    row.main_baseline = "nccl_sendrecv_8B";
    row.extra.set("nccl_round_trips", n_host);
    row.extra.set("pattern", "rank pairs (0,1), (2,3), ... ping-pong at once; time per round trip");
    s.emit(row);
  };
  emit("sm_notify_wait", n_kernel, kernel_us, kernel_ok);
  emit("copy_engine", n_host, ce_us, ce_ok);
}

// ---- (d) barriers --------------------------------------------------------------------------------

void run_barrier_latency(Suite& s) {
  World& w = s.world;
  const int W = w.size();
  const int n_loop = s.opt.quick ? 1000 : 10000;  // barriers inside one kernel
  const int n_calls = s.opt.quick ? 200 : 1000;   // launches / NCCL calls per timed region
  constexpr int kGraphCalls = 100;
  const dev::Context ctx = w.context();
  const std::string bench = fmt::format("barrier ({} ranks)", W);

  // Correctness first: stores before barrier_all are visible after it, on every rank.
  bool barrier_ok = false;
  {
    auto slots = w.alloc_signals(W);
    DeviceMemory bad(sizeof(unsigned long long));
    WEFT_CUDA_CHECK(cudaMemsetAsync(bad.data(), 0, bad.bytes(), s.stream));
    w.barrier(s.stream);
    barrier_check_kernel<<<1, kBarrierThreads, 0, s.stream>>>(ctx, slots.data(), 1000, 100,
                                                              bad.as<unsigned long long>());
    WEFT_CHECK_LAUNCH();
    unsigned long long wrong = 0;
    WEFT_CUDA_CHECK(cudaMemcpyAsync(&wrong, bad.data(), sizeof(wrong), cudaMemcpyDeviceToHost, s.stream));
    w.synchronize(s.stream);
    w.barrier(s.stream);
    w.synchronize(s.stream);
    barrier_ok = s.all_ok(wrong == 0, bench + ": barrier_all ordering check",
                          fmt::format("{} slots read stale values after barrier_all", wrong));
  }

  // (i) N barriers in one kernel.
  auto loop = [&](auto kernel) {
    const auto samples = time_iterations(w, s.stream, s.timing(), [&] {
      kernel<<<1, kBarrierThreads, 0, s.stream>>>(ctx, n_loop);
      WEFT_CHECK_LAUNCH();
    });
    return slowest_rank(w, median(samples) / n_loop);
  };
  const double loop_us = loop(barrier_loop_kernel<true>);
  const double loop_relaxed_us = loop(barrier_loop_kernel<false>);

  // (ii) World::barrier launched n_calls times in a row (launch included), and in a graph.
  const auto launch_samples = time_iterations(w, s.stream, s.timing(), [&] {
    for (int i = 0; i < n_calls; ++i) w.barrier(s.stream);
  });
  const double launch_us = slowest_rank(w, median(launch_samples) / n_calls);

  Stream capture;
  GraphExec weft_graph = capture_on_all_ranks(w, capture, [&] {
    for (int i = 0; i < kGraphCalls; ++i) w.barrier(capture);
  });
  const auto wgraph_samples =
      time_iterations(w, s.stream, s.timing(), [&] { weft_graph.launch(s.stream); });
  const double wgraph_us = slowest_rank(w, median(wgraph_samples) / kGraphCalls);

  // References: ncclAllReduce of one float, eager and in a graph. Checked once first.
  DeviceMemory f(2 * sizeof(float));
  float* value = f.as<float>();
  const float contribution = static_cast<float>(w.rank() + 1);
  WEFT_CUDA_CHECK(cudaMemcpyAsync(value, &contribution, sizeof(float), cudaMemcpyHostToDevice, s.stream));
  WEFT_NCCL_CHECK(ncclAllReduce(value, value, 1, ncclFloat, ncclSum, w.nccl_comm(), s.stream));
  float sum = 0;
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&sum, value, sizeof(float), cudaMemcpyDeviceToHost, s.stream));
  w.synchronize(s.stream);
  const float expect = 0.5f * W * (W + 1);
  const bool nccl_ok = s.all_ok(sum == expect, bench + ": NCCL all-reduce",
                                fmt::format("sum {} (expected {})", sum, expect));
  float* scratch = value + 1;  // timed calls reduce a second float (its value does not matter)
  const auto nccl_samples = time_iterations(w, s.stream, s.timing(), [&] {
    for (int i = 0; i < n_calls; ++i)
      WEFT_NCCL_CHECK(ncclAllReduce(scratch, scratch, 1, ncclFloat, ncclSum, w.nccl_comm(), s.stream));
  });
  const double nccl_us = slowest_rank(w, median(nccl_samples) / n_calls);

  GraphExec nccl_graph = capture_on_all_ranks(w, capture, [&] {
    for (int i = 0; i < kGraphCalls; ++i)
      WEFT_NCCL_CHECK(ncclAllReduce(scratch, scratch, 1, ncclFloat, ncclSum, w.nccl_comm(), capture));
  });
  const auto ngraph_samples =
      time_iterations(w, s.stream, s.timing(), [&] { nccl_graph.launch(s.stream); });
  const double ngraph_us = slowest_rank(w, median(ngraph_samples) / kGraphCalls);
  w.synchronize(s.stream);

  const double eager_ref = nccl_ok ? nccl_us : NAN;
  const double graph_ref = nccl_ok ? ngraph_us : NAN;
  s.add({bench, "barrier_all in a kernel loop", fmt::format("{} barriers", n_loop), loop_us, NAN,
         status(barrier_ok) + times(eager_ref, loop_us) + " NCCL eager, " + times(graph_ref, loop_us) + " NCCL graph"});
  s.add({bench, "sync_all (relaxed) in a kernel loop", fmt::format("{} barriers", n_loop),
         loop_relaxed_us, NAN, ""});
  s.add({bench, "World::barrier, launch included", fmt::format("{} launches", n_calls), launch_us,
         NAN, times(eager_ref, launch_us) + " NCCL eager"});
  s.add({bench, "World::barrier x100 in a CUDA graph", fmt::format("{} graph", kGraphCalls), wgraph_us,
         NAN, times(graph_ref, wgraph_us) + " NCCL graph"});
  s.add({bench, "ncclAllReduce 1 float, eager", fmt::format("{} calls", n_calls), nccl_us, NAN,
         status(nccl_ok), true});
  s.add({bench, "ncclAllReduce 1 float x100 in a CUDA graph", fmt::format("{} graph", kGraphCalls),
         ngraph_us, NAN, status(nccl_ok), true});

  auto emit = [&](const std::string& method, int n, double us, const std::string& main) {
    if (!nccl_ok || !barrier_ok) return;
    ResultRow row = s.row("barrier", "none");
    row.shape.set("method", method).set("calls", n);
    row.weft_us = us;
    row.baselines.push_back({"nccl_allreduce_1f", nccl_us});
    row.baselines.push_back({"nccl_allreduce_1f_graph", ngraph_us});
    row.main_baseline = main;
    row.extra.set("pattern", "time per barrier (per NCCL call for the baselines), all ranks");
    s.emit(row);
  };
  emit("barrier_all_kernel_loop", n_loop, loop_us, "nccl_allreduce_1f");
  emit("sync_all_kernel_loop", n_loop, loop_relaxed_us, "nccl_allreduce_1f");
  emit("world_barrier_launch", n_calls, launch_us, "nccl_allreduce_1f");
  emit("world_barrier_graph", kGraphCalls, wgraph_us, "nccl_allreduce_1f_graph");
}

// ---- (e) stream gates ----------------------------------------------------------------------------

void run_stream_gates(Suite& s) {
  World& w = s.world;
  constexpr int kKernels = 20;
  constexpr uint64_t kSpinNs = 20'000;
  const std::string bench = "stream gate between kernels";
  DeviceMemory flag(sizeof(signal_t));
  const signal_t one = 1;
  WEFT_CUDA_CHECK(cudaMemcpyAsync(flag.data(), &one, sizeof(one), cudaMemcpyHostToDevice, s.stream));
  Event done(false);  // a join-only event, as the operators use
  WEFT_CUDA_CHECK(cudaEventRecord(done.get(), s.stream));
  w.synchronize(s.stream);
  const signal_t* sig = flag.as<signal_t>();

  // gate: 0 none, 1 stream_wait_signal (already set), 2 cudaStreamWaitEvent (already complete).
  auto run = [&](int gate) {
    const auto samples = time_iterations(w, s.stream, s.timing(), [&] {
      for (int i = 0; i < kKernels; ++i) {
        if (gate == 1) stream_wait_signal(sig, 1, s.stream);
        if (gate == 2) WEFT_CUDA_CHECK(cudaStreamWaitEvent(s.stream, done.get(), 0));
        timed_spin_kernel<<<s.sms, 32, 0, s.stream>>>(kSpinNs);
        WEFT_CHECK_LAUNCH();
      }
    });
    return slowest_rank(w, median(samples));
  };
  const double bare_us = run(0);
  const double value_us = run(1);
  const double event_us = run(2);
  const double value_gate = (value_us - bare_us) / kKernels;
  const double event_gate = (event_us - bare_us) / kKernels;
  const double gap = bare_us / kKernels - kSpinNs / 1e3;
  const std::string size = fmt::format("{} x {} us kernels", kKernels, kSpinNs / 1000);
  s.add({bench, "stream_wait_signal (set), per gate", size, value_gate, NAN,
         fmt::format("bare launch gap {:.2f} us", gap)});
  s.add({bench, "cudaStreamWaitEvent (complete), per gate", size, event_gate, NAN, "", true});

  // The row holds the three sequences' times (each a slowest-rank median, timed alike); the
  // per-gate costs are their differences, kept beside them: a difference of two medians can come
  // out below zero, so it makes no ratio.
  ResultRow row = s.row("stream_gate", "none");
  row.shape.set("kernels", kKernels).set("kernel_us", double(kSpinNs) / 1e3);
  row.weft_us = value_us;
  row.baselines.push_back({"cuda_stream_wait_event_gated", event_us});
  row.baselines.push_back({"no_gates", bare_us});
  row.main_baseline = "cuda_stream_wait_event_gated";
  row.extra.set("pattern",
                "kernels with an already-open gate before each (weft's stream_wait_signal, or a "
                "completed event) against none, per rank");
  row.extra.set("per_gate_us", Json::object()
                                   .set("stream_wait_signal", round_to(value_gate, 3))
                                   .set("cuda_stream_wait_event", round_to(event_gate, 3)));
  row.extra.set("bare_launch_gap_us", gap);
  s.emit(row);
}

}  // namespace weft::bench::primitives
