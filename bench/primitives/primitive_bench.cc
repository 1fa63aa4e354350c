#include "bench/primitives/primitive_bench.h"

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "bench/primitives/suite.h"
#include "weft/runtime/cuda_check.h"

namespace weft::bench {
namespace primitives {

constexpr size_t kGranule = 4096;

Suite::Suite(World& w, const PrimitiveBenchOptions& o) : world(w), opt(o), stream(w.stream()) {
  WEFT_CHECK_ARG(opt.iters >= 1, "iters must be at least 1, got {}", opt.iters);
  WEFT_CHECK_ARG(opt.warmup >= 0, "warmup must be non-negative, got {}", opt.warmup);
  if (opt.quick) {
    opt.bytes = std::min(opt.bytes, size_t(64) << 20);
    opt.iters = std::min(opt.iters, 5);
    opt.warmup = std::min(opt.warmup, 1);
  }
  opt.bytes = std::max(kGranule, opt.bytes / kGranule * kGranule);
  device = device_name(world.device());
  WEFT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, world.device()));
  nonce = shared_nonce(world);
}

bool Suite::all_ok(bool local_ok, const std::string& what, const std::string& detail) {
  if (!local_ok)
    std::fprintf(stderr, "weft bench: rank %d: %s FAILED verification: %s\n", world.rank(),
                 what.c_str(), detail.c_str());
  const double bad = sum_over_ranks(world, local_ok ? 0.0 : 1.0);
  if (bad == 0) return true;
  ++failures;
  return false;
}

ResultRow Suite::row(const std::string& op, const std::string& dtype) const {
  ResultRow r;
  r.op = op;
  r.dtype = dtype;
  r.world = world.size();
  r.device = device;
  r.commit = opt.commit;
  r.date = today_utc();
  r.extra.set("iters", opt.iters);
  if (opt.quick) r.extra.set("quick", true);
  return r;
}

std::string human_bytes(size_t b) {
  if (b >= (size_t(1) << 30) && b % (size_t(1) << 30) == 0) return fmt::format("{} GiB", b >> 30);
  if (b >= (size_t(1) << 20) && b % (size_t(1) << 20) == 0) return fmt::format("{} MiB", b >> 20);
  if (b >= (size_t(1) << 10) && b % (size_t(1) << 10) == 0) return fmt::format("{} KiB", b >> 10);
  return fmt::format("{} B", b);
}

void Suite::print_table() const {
  if (world.rank() != 0) return;
  size_t wb = 9, wm = 6, ws = 4;
  for (const auto& l : table) {
    wb = std::max(wb, l.bench.size());
    wm = std::max(wm, l.method.size() + (l.baseline ? 2 : 0));
    ws = std::max(ws, l.size.size());
  }
  std::string out = fmt::format(
      "\nweft primitive benchmarks: {} x {}, {} warm-up + {} timed iterations, slowest rank's "
      "median{}\n",
      world.size(), device, opt.warmup, opt.iters, opt.quick ? " (quick)" : "");
  out += fmt::format("{:<{}}  {:<{}}  {:>{}}  {:>12}  {:>9}  {}\n", "benchmark", wb, "method", wm,
                     "size", ws, "time us", "GB/s", "note");
  out += std::string(wb + wm + ws + 12 + 9 + 12 + 24, '-') + "\n";
  std::string last;
  for (const auto& l : table) {
    const std::string bench = l.bench == last ? "" : l.bench;
    last = l.bench;
    const std::string method = l.baseline ? "  " + l.method : l.method;
    const std::string us = std::isnan(l.us) ? "-" : fmt::format("{:.2f}", l.us);
    const std::string gb = std::isnan(l.gbps) ? "-" : fmt::format("{:.1f}", l.gbps);
    out += fmt::format("{:<{}}  {:<{}}  {:>{}}  {:>12}  {:>9}  {}\n", bench, wb, method, wm, l.size,
                       ws, us, gb, l.note);
  }
  out += fmt::format("(indented methods are the NCCL / CUDA reference figures){}\n",
                     failures ? fmt::format("; {} result(s) FAILED verification", failures) : "");
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
}

}  // namespace primitives

size_t primitive_bench_heap_bytes(int world_size, size_t bytes) {
  bytes = std::max(primitives::kGranule, bytes / primitives::kGranule * primitives::kGranule);
  // The all-peer benchmark's W - 1 receive slots and its symmetric source (for the pulls).
  const size_t slots = std::max(1, world_size);
  // Payload plus room for signals, the small buffers and the allocator's alignment; at least the
  // row scatter's W x 4096 rows of 14 KiB.
  return std::max(slots * bytes, slots * (size_t(4096) * 14336)) + (size_t(16) << 20);
}

int run_primitive_benchmarks(World& world, const PrimitiveBenchOptions& opt) {
  using namespace primitives;
  if (world.size() < 2) {
    if (world.rank() == 0)
      std::printf("weft primitive benchmarks need at least 2 ranks (this world has %d); skipped\n",
                  world.size());
    return 0;
  }
  WEFT_CHECK_ARG(world.lsa_size() == world.size(),
                 "the primitive benchmarks need every rank on one node (load/store-accessible "
                 "peers); this world has {} ranks, {} on this node",
                 world.size(), world.lsa_size());
  for (const std::string& part : opt.parts)
    WEFT_CHECK_ARG(
        std::find_if(std::begin(kPrimitiveParts), std::end(kPrimitiveParts),
                     [&](const char* p) { return part == p; }) != std::end(kPrimitiveParts),
        "unknown part '{}' (the parts: put-one, put-all, signal, barrier, gates, scatter, "
        "scatter-ll)",
        part);
  auto wanted = [&](const char* part) {
    return opt.parts.empty() ||
           std::find(opt.parts.begin(), opt.parts.end(), part) != opt.parts.end();
  };
  Suite s(world, opt);
  if (wanted("put-one")) run_put_one_peer(s);
  if (wanted("put-all")) run_put_all_peers(s);
  if (wanted("signal")) run_signal_roundtrip(s);
  if (wanted("barrier")) run_barrier_latency(s);
  if (wanted("gates")) run_stream_gates(s);
  if (wanted("scatter")) run_scatter(s);
  if (wanted("scatter-ll")) run_scatter_ll(s);
  s.print_table();
  world.host_barrier();
  return s.failures == 0 ? 0 : 1;
}

}  // namespace weft::bench
