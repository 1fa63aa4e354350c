#include "weft/ops/expert_parallel/bench/ep_bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nccl.h>

#include "bench/common/cuda_resources.h"
#include "bench/common/pattern.h"
#include "bench/common/results.h"
#include "bench/common/timing.h"
#include "weft/ops/expert_parallel/expert_parallel.h"
#include "weft/ops/expert_parallel/testing/ep_device_check.cuh"
#include "weft/ops/expert_parallel/testing/ep_reference.h"
#include "weft/runtime/cuda_check.h"

namespace weft::bench {
namespace {

using ops::EpConfig;
using ops::EpMode;
using ops::ExpertParallel;
namespace et = ops::ep_testing;

struct Shape {
  int T, H, k, E;
};

std::vector<Shape> parse_shapes(const std::string& text) {
  if (text.empty()) return {{128, 7168, 8, 256}, {4096, 7168, 8, 256}};
  std::vector<Shape> shapes;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(';', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    Shape s{0, 0, 0, 256};
    const int n = std::sscanf(item.c_str(), "%d,%d,%d,%d", &s.T, &s.H, &s.k, &s.E);
    WEFT_CHECK_ARG(n >= 3, "bad ep shape '{}': want T,H,topk[,E]", item);
    shapes.push_back(s);
    pos = end + 1;
  }
  return shapes;
}

EpConfig config_for(const Shape& s, int num_sms = 0, int send_sms = 0) {
  EpConfig c;
  c.mode = s.T <= ops::kEpLowLatencyMaxTokens ? EpMode::low_latency : EpMode::throughput;
  c.num_experts = s.E;
  c.hidden = s.H;
  c.topk = s.k;
  c.max_tokens = s.T;
  c.num_sms = num_sms;
  c.send_sms = send_sms;
  return c;
}

// The configuration a run measures first: the defaults, or --sms / --send-sms (send_sms applies to
// throughput mode only).
EpConfig configured(const Shape& s, const OpBenchOptions& opt) {
  EpConfig c = config_for(s, opt.sms);
  if (c.mode == EpMode::throughput) c.send_sms = opt.send_sms;
  return c;
}

double nccl_bytes(const Shape& s, int elem, int world) {
  const double n = static_cast<double>(s.T) * s.k * s.H * elem;
  return n - std::fmod(n, world);
}

// Everything one shape needs on this rank.
struct Setup {
  World& w;
  Shape shape;
  et::Problem P;
  et::TokenCounts tc;
  et::RefRouting routing;
  std::vector<long long> send_rows, recv_rows;  // tokens to / from each rank
  DeviceMemory x, topk, weights, y, out, expected, mismatch;

  Setup(World& world, const Shape& s, uint64_t nonce, int64_t capacity)
      : w(world),
        shape(s),
        x(static_cast<size_t>(s.T) * s.H * 2),
        topk(static_cast<size_t>(s.T) * s.k * 4),
        weights(static_cast<size_t>(s.T) * s.k * 4),
        y(static_cast<size_t>(capacity) * s.H * 2),
        out(static_cast<size_t>(s.T) * s.H * 2),
        expected((s.E / world.size() + world.size()) * sizeof(int)),
        mismatch(sizeof(et::Mismatch)) {
    const int W = world.size(), me = world.rank();
    P.seed = nonce;
    P.tag = 1;
    P.world = W;
    P.experts = s.E;
    P.hidden = s.H;
    P.topk = s.k;
    P.routing = et::Routing::random;
    for (int r = 0; r < W; ++r) tc.T[r] = s.T;
    routing = et::make_routing(P, tc);
    send_rows.assign(W, 0);
    recv_rows.assign(W, 0);
    for (int t = 0; t < s.T; ++t) {
      const uint32_t m = et::ref_dest_mask(P, routing, me, t);
      for (int d = 0; d < W; ++d) send_rows[d] += (m >> d) & 1u;
    }
    for (int r = 0; r < W; ++r)
      for (int t = 0; t < s.T; ++t)
        recv_rows[r] += (et::ref_dest_mask(P, routing, r, t) >> me) & 1u;
    et::fill_inputs(P, nullptr, me, s.T, x.data(), topk.data(), false, weights.as<float>(),
                    world.stream());
    world.synchronize(world.stream());
  }

  ops::EpDispatchArgs args(bool fp8) const {
    ops::EpDispatchArgs a;
    a.x = x.data();
    a.topk_idx = topk.data();
    a.topk_weights = weights.as<float>();
    a.num_tokens = shape.T;
    a.fp8 = fp8;
    return a;
  }

  // Device-side checks of the last dispatch / combine; returns "" when they pass on every rank.
  std::string check_dispatch(ExpertParallel& op, bool fp8) {
    const ops::EpDispatchResult r = op.last_result();
    et::DispatchView v{r.x,           r.scales, r.sources, r.expert_counts, r.expert_offsets,
                       r.source_rows, nullptr,  0,         nullptr};
    return run_check(op, [&](cudaStream_t s) {
      et::check_dispatch(P, nullptr, tc, w.rank(), fp8, v, expected.as<int>(),
                         mismatch.as<et::Mismatch>(), s);
    });
  }
  std::string check_combine(ExpertParallel& op) {
    return run_check(op, [&](cudaStream_t s) {
      et::check_combine(P, nullptr, w.rank(), shape.T, out.data(), mismatch.as<et::Mismatch>(), s);
    });
  }

  template <class Enqueue>
  std::string run_check(ExpertParallel& op, Enqueue&& enqueue) {
    cudaStream_t s = w.stream();
    WEFT_CUDA_CHECK(cudaMemsetAsync(mismatch.data(), 0, mismatch.bytes(), s));
    enqueue(s);
    et::Mismatch m{};
    WEFT_CUDA_CHECK(cudaMemcpyAsync(&m, mismatch.data(), sizeof(m), cudaMemcpyDeviceToHost, s));
    w.synchronize(s);
    std::string mine = et::describe(m);
    try {
      op.check_errors();
    } catch (const InvalidArgument& e) {
      mine += e.detail();
    }
    const auto all = w.rendezvous().all_gather(mine);
    std::string text;
    for (int r = 0; r < w.size(); ++r)
      if (!all[r].empty()) text += fmt::format("rank {}: {}; ", r, all[r]);
    return text;
  }
};

// `body` captured once into a CUDA graph, the graph launched per timed iteration (barrier before
// each, as time_iterations does): the figure without the host's enqueue cost, which a decode step
// run as a CUDA graph does not pay either.
template <class Body>
double time_graph(World& w, const TimingOptions& t, Body&& body) {
  GraphExec g = capture_on_all_ranks(w, w.stream(), body);
  return slowest_rank_median(w, time_iterations(w, w.stream(), t, [&] { g.launch(w.stream()); }));
}

// What a launch alone costs in this timing: an empty kernel with the low-latency dispatch's grid,
// block and dynamic shared memory, timed as the dispatch is (barrier, events). The part of the
// dispatch's event-timed figure that no change inside the kernel can remove.
__global__ void empty_dispatch_shaped_kernel() {}

double launch_floor_us(World& w, const TimingOptions& t, const ops::EpPlan& plan) {
  const uint32_t smem = plan.smem(ops::ep::EpKernel::ll_dispatch).bytes;
  WEFT_CUDA_CHECK(cudaFuncSetAttribute(empty_dispatch_shaped_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  return slowest_rank_median(w, time_iterations(w, w.stream(), t, [&] {
    empty_dispatch_shaped_kernel<<<plan.grid, ops::ep::kThreads, smem, w.stream()>>>();
    WEFT_CHECK_LAUNCH();
  }));
}

// The NCCL baselines of one row, with their buffers: all_to_all_single of `bytes` per rank
// (ncclAlltoAll, even split; what the issue compares with), and grouped ncclSend/ncclRecv of
// exactly `send_rows[d]` / `recv_rows[s]` rows of `row_bytes` (weft's own rows).
class NcclBaselines {
 public:
  NcclBaselines(World& w, double bytes, std::vector<long long> send_rows,
                std::vector<long long> recv_rows, size_t row_bytes)
      : w_(w),
        n_(static_cast<size_t>(bytes)),
        send_rows_(std::move(send_rows)),
        recv_rows_(std::move(recv_rows)),
        row_bytes_(row_bytes),
        send_(std::max({n_, bytes_of(send_rows_), size_t{16}})),
        recv_(std::max({n_, bytes_of(recv_rows_), size_t{16}})) {
    fill_pattern(send_.data(), send_.bytes() / 4 * 4, 0x5eed, w.stream());
  }

  void all_to_all() {
    WEFT_NCCL_CHECK(ncclAlltoAll(send_.data(), recv_.data(), n_ / w_.size(), ncclUint8,
                                 w_.nccl_comm(), w_.stream()));
  }
  void all_to_allv() {
    WEFT_NCCL_CHECK(ncclGroupStart());
    size_t so = 0, ro = 0;
    for (int r = 0; r < w_.size(); ++r) {
      const size_t sb = send_rows_[r] * row_bytes_, rb = recv_rows_[r] * row_bytes_;
      if (sb > 0)
        WEFT_NCCL_CHECK(
            ncclSend(send_.as<char>() + so, sb, ncclUint8, r, w_.nccl_comm(), w_.stream()));
      if (rb > 0)
        WEFT_NCCL_CHECK(
            ncclRecv(recv_.as<char>() + ro, rb, ncclUint8, r, w_.nccl_comm(), w_.stream()));
      so += sb;
      ro += rb;
    }
    WEFT_NCCL_CHECK(ncclGroupEnd());
  }

 private:
  size_t bytes_of(const std::vector<long long>& rows) const {
    size_t total = 0;
    for (long long r : rows) total += static_cast<size_t>(r) * row_bytes_;
    return total;
  }

  World& w_;
  size_t n_;
  std::vector<long long> send_rows_, recv_rows_;
  size_t row_bytes_;
  DeviceMemory send_, recv_;
};

// weft's call and both NCCL baselines, timed in `rounds` alternating rounds of iters / rounds runs
// each (the row's figure is the slowest rank's median over all of a body's samples): none of them
// runs on a card the others left hotter or cooler.
struct RowTimes {
  double weft = 0, nccl = 0, ncclv = 0;
};
template <class Weft>
RowTimes time_row(World& w, const TimingOptions& t, NcclBaselines& nccl, Weft&& weft,
                  int rounds = 5) {
  TimingOptions r = t;
  r.iters = std::max(2, t.iters / rounds);
  std::vector<double> a, b, c;
  auto add = [](std::vector<double>& to, const std::vector<double>& from) {
    to.insert(to.end(), from.begin(), from.end());
  };
  for (int i = 0; i < rounds; ++i) {
    r.warmup = i == 0 ? t.warmup : 1;
    add(a, time_iterations(w, w.stream(), r, weft));
    add(b, time_iterations(w, w.stream(), r, [&] { nccl.all_to_all(); }));
    add(c, time_iterations(w, w.stream(), r, [&] { nccl.all_to_allv(); }));
  }
  return {slowest_rank_median(w, a), slowest_rank_median(w, b), slowest_rank_median(w, c)};
}

TimingOptions timing(const OpBenchOptions& opt) {
  TimingOptions t;
  t.iters = opt.quick ? std::min(opt.iters, 5) : opt.iters;
  t.warmup = opt.quick ? std::min(opt.warmup, 2) : opt.warmup;
  t.flush_l2 = opt.cold_l2;
  return t;
}

ResultRow base_row(World& w, const OpBenchOptions& opt, const char* op, const Shape& s,
                   const EpConfig& cfg, const char* dtype, int send_blocks) {
  ResultRow row;
  row.op = op;
  row.shape.set("T", s.T).set("H", s.H).set("topk", s.k).set("E", s.E);
  row.shape.set("mode", ops::to_string(cfg.mode)).set("sms", cfg.num_sms);
  if (cfg.mode == EpMode::throughput) row.shape.set("send_sms", send_blocks);
  row.dtype = dtype;
  row.world = w.size();
  row.device = device_name(w.device());
  row.commit = opt.commit.empty() ? "unknown" : opt.commit;
  row.extra.set("l2", opt.cold_l2 ? "cold" : "warm");
  // Only shapes whose results passed the device-side checks get a row (see the callers).
  row.extra.set("check", "ok");
  if (opt.quick) row.extra.set("quick", true);
  return row;
}

void print_line(World& w, const char* op, const Shape& s, const char* dtype, const char* mode,
                double weft_us, double nccl_us, double ncclv_us, const std::string& status,
                double graph_us, double nccl_graph_us) {
  if (w.rank() != 0) return;
  std::printf(
      "%-12s T=%-5d H=%-5d k=%-2d E=%-4d %-5s %-11s weft %9.1f us  nccl a2a %9.1f us "
      "(%.2fx)  nccl a2av same rows %9.1f us  %s\n",
      op, s.T, s.H, s.k, s.E, dtype, mode, weft_us, nccl_us, nccl_us / weft_us, ncclv_us,
      status.c_str());
  if (graph_us > 0)
    std::printf("%-12s %-44s graph replay: weft %9.1f us  nccl a2a %9.1f us (%.2fx)\n", "", "",
                graph_us, nccl_graph_us, nccl_graph_us / graph_us);
  std::fflush(stdout);
}

// Low latency: the same call replayed from a CUDA graph, weft and NCCL.
void set_graph_figures(ResultRow& row, double graph_us, double nccl_graph_us) {
  Json g = Json::object();
  g.set("weft", round_to(graph_us, 3)).set("nccl_all_to_all_single", round_to(nccl_graph_us, 3));
  g.set("ratio", round_to(nccl_graph_us / graph_us, 4));
  row.extra.set("graph_us", g);
}

bool world_fits(World& w, const Shape& s) {
  if (s.E % w.size() == 0) return true;
  if (w.rank() == 0)
    std::printf("ep bench: skipping T=%d H=%d: %d experts do not divide among %d ranks\n", s.T, s.H,
                s.E, w.size());
  return false;
}

// WEFT_EP_TRACE=1: where the last timed call spent its time, rank 0 and the last rank in turn.
void print_trace(World& w, ExpertParallel& op, const std::string& what) {
  const std::string report = op.trace_report();
  if (report.empty()) return;
  for (int r = 0; r < w.size(); r += std::max(1, w.size() - 1)) {  // rank 0 and the last
    if (w.rank() == r) {
      std::printf("trace %s\n%s", what.c_str(), report.c_str());
      std::fflush(stdout);
    }
    w.barrier(w.stream());
    w.synchronize(w.stream());
  }
}

int sm_count(World& w) {
  int n = 0;
  WEFT_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, w.device()));
  return n;
}

// Throughput mode, without --quick: the same measurement at other SM counts (one operator alive
// at a time, so the heap holds one set of buffers). `measure(op)` returns "" or a failure.
template <class Measure>
Json sweep_sms(World& w, const OpBenchOptions& opt, const Shape& s, int default_sms,
               Measure&& measure, int& failed) {
  Json sweep = Json::object();
  if (opt.quick || config_for(s).mode != EpMode::throughput) return sweep;
  // {SMs, senders}: 0 senders = the operator's per-kernel default split.
  const std::pair<int, int> points[] = {{24, 0},  {32, 0},  {32, 8},  {32, 12}, {32, 16},
                                        {48, 0},  {48, 12}, {48, 18}, {48, 24}, {64, 0},
                                        {64, 16}, {64, 24}, {64, 32}, {96, 0}};
  for (const auto& [sms, senders] : points) {
    if ((sms == default_sms && senders == 0 && opt.sms == 0) || sms > sm_count(w)) continue;
    ExpertParallel other(w, config_for(s, sms, senders));
    double us = 0;
    const std::string p = measure(other, us);
    const std::string key = senders == 0 ? std::to_string(sms) : fmt::format("{}/{}", sms, senders);
    sweep.set(key, p.empty() ? Json(round_to(us, 3)) : Json("FAILED"));
    if (!p.empty()) failed = 1;
  }
  return sweep;
}

}  // namespace

size_t ep_bench_heap_bytes(int world_size, const OpBenchOptions& opt) {
  size_t need = 0;
  for (const Shape& s : parse_shapes(opt.shapes))
    need = std::max(need, ops::ep_required_heap_bytes(config_for(s), world_size));
  return need + (size_t(64) << 20);
}

int run_ep_dispatch_bench(World& w, const OpBenchOptions& opt) {
  const TimingOptions t = timing(opt);
  const uint64_t nonce = shared_nonce(w);
  int failed = 0;
  for (const Shape& s : parse_shapes(opt.shapes)) {
    if (!world_fits(w, s)) continue;
    const ops::EpPlan plan = ops::plan_expert_parallel(configured(s, opt), w.size(), sm_count(w));
    Setup su(w, s, nonce, plan.capacity);
    for (bool fp8 : {true, false}) {
      const char* dtype = fp8 ? "fp8" : "bf16";
      const auto args = su.args(fp8);
      auto measure = [&](ExpertParallel& op, double& us) {
        us = slowest_rank_median(
            w, time_iterations(w, w.stream(), t, [&] { op.dispatch(args, w.stream()); }));
        return su.check_dispatch(op, fp8);
      };
      const bool ll = plan.config.mode == EpMode::low_latency;
      const size_t row_bytes = static_cast<size_t>(s.H) * (fp8 ? 1 : 2) + (fp8 ? s.H / 128 * 4 : 0);
      NcclBaselines nccl(w, nccl_bytes(s, fp8 ? 1 : 2, w.size()), su.send_rows, su.recv_rows,
                         row_bytes);
      RowTimes times;
      double graph_us = 0, nccl_graph_us = 0, floor_us = 0;
      std::string problems;
      {
        // weft and the baselines in alternating rounds, before the SM sweep's minutes of load.
        ExpertParallel op(w, plan.config);
        times = time_row(w, t, nccl, [&] { op.dispatch(args, w.stream()); });
        problems = su.check_dispatch(op, fp8);
        print_trace(w, op, fmt::format("ep_dispatch {} T={}", dtype, s.T));
        if (ll && problems.empty()) {
          graph_us = time_graph(w, t, [&] { op.dispatch(args, w.stream()); });
          problems = su.check_dispatch(op, fp8);  // the last replay's result
          nccl_graph_us = time_graph(w, t, [&] { nccl.all_to_all(); });
        }
      }
      if (ll) floor_us = launch_floor_us(w, t, plan);
      const double us = times.weft, nccl_us = times.nccl, ncclv_us = times.ncclv;
      const Json sweep = sweep_sms(w, opt, s, plan.config.num_sms, measure, failed);

      long long sent = 0;
      for (int d = 0; d < w.size(); ++d) sent += su.send_rows[d];
      const std::string status = problems.empty() ? "ok" : "FAILED: " + problems;
      print_line(w, "ep_dispatch", s, dtype, ops::to_string(plan.config.mode), us, nccl_us,
                 ncclv_us, status, graph_us, nccl_graph_us);
      if (ll && w.rank() == 0)
        std::printf("%-12s %-44s launch floor (empty kernel, same grid and smem) %9.1f us\n", "",
                    "", floor_us);
      if (!problems.empty()) {
        failed = 1;
        continue;
      }
      ResultRow row = base_row(w, opt, "ep_dispatch", s, plan.config, dtype,
                               plan.send_blocks.for_dispatch(fp8));
      row.weft_us = us;
      row.baselines.push_back({"nccl_all_to_all_single", nccl_us});
      row.baselines.push_back({"nccl_all_to_allv_same_rows", ncclv_us});
      row.main_baseline = "nccl_all_to_all_single";
      row.extra.set("nccl_bytes_per_rank", nccl_bytes(s, fp8 ? 1 : 2, w.size()));
      row.extra.set("weft_bytes_per_rank", static_cast<double>(sent) * row_bytes);
      row.extra.set("routing", "random");
      row.extra.set("layout_included", true);
      if (ll) {
        set_graph_figures(row, graph_us, nccl_graph_us);
        row.extra.set("launch_floor_us", round_to(floor_us, 3));
      }
      if (sweep.size() > 0) row.extra.set("sms_sweep_us", sweep);
      append_row(w, opt.out_path, row);
    }
  }
  return failed;
}

int run_ep_combine_bench(World& w, const OpBenchOptions& opt) {
  const TimingOptions t = timing(opt);
  const uint64_t nonce = shared_nonce(w);
  int failed = 0;
  for (const Shape& s : parse_shapes(opt.shapes)) {
    if (!world_fits(w, s)) continue;
    const ops::EpPlan plan = ops::plan_expert_parallel(configured(s, opt), w.size(), sm_count(w));
    Setup su(w, s, nonce, plan.capacity);
    ops::EpCombineArgs c;
    c.expert_out = su.y.data();
    c.out = su.out.data();
    // The rows a combine returns: one (untimed) dispatch, and the test's stand-in expert outputs.
    auto prepare = [&](ExpertParallel& op) {
      const ops::EpDispatchResult r = op.dispatch(su.args(false), w.stream());
      et::fill_expert_out(su.P, nullptr, w.rank(), r.expert_offsets, r.sources, su.y.data(),
                          w.stream());
      w.synchronize(w.stream());
    };
    auto measure = [&](ExpertParallel& op, double& us) {
      prepare(op);
      us = slowest_rank_median(
          w, time_iterations(w, w.stream(), t, [&] { op.combine(c, w.stream()); }));
      return su.check_combine(op);
    };
    const bool ll = plan.config.mode == EpMode::low_latency;
    const size_t row_bytes = static_cast<size_t>(s.H) * 2;
    // Combine moves the dispatch's rows back: what a rank received it now sends.
    NcclBaselines nccl(w, nccl_bytes(s, 2, w.size()), su.recv_rows, su.send_rows, row_bytes);
    RowTimes times;
    double graph_us = 0, nccl_graph_us = 0;
    std::string problems;
    {
      // As in the dispatch bench: weft and the baselines in alternating rounds.
      ExpertParallel op(w, plan.config);
      prepare(op);
      times = time_row(w, t, nccl, [&] { op.combine(c, w.stream()); });
      problems = su.check_combine(op);
      print_trace(w, op, fmt::format("ep_combine T={}", s.T));
      if (ll && problems.empty()) {
        graph_us = time_graph(w, t, [&] { op.combine(c, w.stream()); });
        problems = su.check_combine(op);  // the last replay's result
        nccl_graph_us = time_graph(w, t, [&] { nccl.all_to_all(); });
      }
    }
    const double us = times.weft, nccl_us = times.nccl, ncclv_us = times.ncclv;
    const Json sweep = sweep_sms(w, opt, s, plan.config.num_sms, measure, failed);

    long long sent = 0;
    for (int r = 0; r < w.size(); ++r) sent += su.recv_rows[r];
    const std::string status = problems.empty() ? "ok" : "FAILED: " + problems;
    print_line(w, "ep_combine", s, "bf16", ops::to_string(plan.config.mode), us, nccl_us, ncclv_us,
               status, graph_us, nccl_graph_us);
    if (!problems.empty()) {
      failed = 1;
      continue;
    }
    ResultRow row =
        base_row(w, opt, "ep_combine", s, plan.config, "bf16", plan.send_blocks.combine);
    row.weft_us = us;
    row.baselines.push_back({"nccl_all_to_all_single", nccl_us});
    row.baselines.push_back({"nccl_all_to_allv_same_rows", ncclv_us});
    row.main_baseline = "nccl_all_to_all_single";
    row.extra.set("nccl_bytes_per_rank", nccl_bytes(s, 2, w.size()));
    row.extra.set("weft_bytes_per_rank", static_cast<double>(sent) * row_bytes);
    row.extra.set("routing", "random");
    if (ll) set_graph_figures(row, graph_us, nccl_graph_us);
    if (sweep.size() > 0) row.extra.set("sms_sweep_us", sweep);
    append_row(w, opt.out_path, row);
  }
  return failed;
}

}  // namespace weft::bench
