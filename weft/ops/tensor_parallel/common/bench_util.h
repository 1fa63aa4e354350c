// Pieces shared by the three tensor-parallel benchmarks (ag_gemm, gemm_rs, gemm_ar): shape lists,
// timing of eager and graph-captured work as the slowest rank's median, the baselines, every
// strategy's run, the output checks, the result row and the printed table.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "bench/common/cuda_resources.h"
#include "bench/common/options.h"
#include "bench/common/pattern.h"
#include "bench/common/results.h"
#include "bench/common/timing.h"
#include "weft/ops/tensor_parallel/common/lt_gemm.h"
#include "weft/ops/tensor_parallel/common/testing.h"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/error.h"
#include "weft/runtime/world.h"

namespace weft::tp::benchutil {

struct Shape {
  int64_t m = 0, n = 0, k = 0;
};

// "M,N,K;M,N,K" -> shapes; empty text -> `defaults`.
inline std::vector<Shape> parse_shapes(const std::string& text, std::vector<Shape> defaults) {
  if (text.empty()) return defaults;
  std::vector<Shape> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(';', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    Shape s;
    long long m = 0, n = 0, k = 0;
    WEFT_CHECK_ARG(std::sscanf(item.c_str(), "%lld,%lld,%lld", &m, &n, &k) == 3 && m > 0 &&
                       n > 0 && k > 0,
                   "bad shape '{}' in '{}' (want M,N,K with positive integers)", item, text);
    s.m = m;
    s.n = n;
    s.k = k;
    out.push_back(s);
    pos = end + 1;
  }
  return out;
}

// Median over iterations of `body` (enqueues work on `stream`), slowest rank; collective.
template <class Body>
double time_us(World& world, cudaStream_t stream, const bench::OpBenchOptions& opt, Body&& body) {
  bench::TimingOptions t;
  t.warmup = opt.quick ? 2 : opt.warmup;
  t.iters = opt.quick ? 5 : opt.iters;
  t.flush_l2 = opt.cold_l2;
  const auto samples = bench::time_iterations(world, stream, t, body);
  return bench::slowest_rank_median(world, samples);
}

// The same, with `body` captured once into a CUDA graph and the graph launched per iteration.
template <class Body>
double time_graph_us(World& world, cudaStream_t stream, const bench::OpBenchOptions& opt,
                     Body&& body) {
  bench::GraphExec g = bench::capture_on_all_ranks(world, stream, body);
  return time_us(world, stream, opt, [&] { g.launch(stream); });
}

inline std::string us_text(double us) { return fmt::format("{:.1f}", us); }

// Symmetric-heap bytes per rank for a benchmark whose operator needs `most`: 64 MiB more,
// rounded up to 2 MiB.
inline size_t heap_bytes_for(size_t most) {
  return (most + (size_t(64) << 20) + (size_t(1) << 21) - 1) / (size_t(1) << 21) *
         (size_t(1) << 21);
}

// True when every rank is on one node; otherwise rank 0 says so and the benchmark gives up.
inline bool on_one_node(World& world, const char* bench) {
  if (world.lsa_size() == world.size()) return true;
  if (world.rank() == 0) std::fprintf(stderr, "%s bench: all ranks must be on one node\n", bench);
  return false;
}

// The baselines of one shape: `first` alone, `second` alone, one after the other (eagerly and
// captured in a CUDA graph), in that order; the names are the rows' keys for the first two (the
// pair is always "nccl_then_cublas").
struct BaselineTimes {
  const char* first_name = "";
  const char* second_name = "";
  double first = 0, second = 0, both = 0, both_graph = 0;
  // cuBLAS alone, and the collective and cuBLAS one after the other, with the algorithm LtGemm's
  // kTuned picks (0: not timed). The operators tune their cuBLASLt GEMMs; these say how much of
  // weft's lead over the baselines (cuBLASLt's first heuristic answer) is tuning, not overlap.
  double cublas_tuned = 0, both_tuned = 0;
  // More baselines timed in the same rounds (time_head_to_head's `extra`), by row key; a key
  // that starts with the collective's name is another way to run the collective alone, one that
  // contains "_then_" another sequence of both.
  std::vector<std::pair<std::string, double>> extra;
  // Samples behind each head-to-head figure (rounds x samples per round).
  int samples = 0;

  bool cublas_first() const { return std::string_view(first_name) == "cublas"; }
  double cublas() const { return cublas_first() ? first : second; }
  double collective() const { return cublas_first() ? second : first; }
  const char* collective_name() const { return cublas_first() ? second_name : first_name; }
  // The row key of the two one after the other, in the order they ran ("cublas_then_nccl_...").
  std::string sequence_name() const {
    return cublas_first() ? std::string("cublas_then_") + second_name
                          : std::string(first_name) + "_then_cublas";
  }
};

// A baseline body with its row key.
struct NamedBody {
  std::string name;
  std::function<void()> body;
};

// The tuned baselines' bodies (either may be empty).
struct TunedBodies {
  std::function<void()> cublas, both;
};
// `cublas_tuned` alone and, as `both`, with the operator's collective before it (AG-GEMM: the
// all-gather feeds the GEMM) or after it (GEMM-RS, GEMM-AR: the GEMM feeds the collective).
inline TunedBodies tuned_bodies(std::function<void()> cublas_tuned,
                                std::function<void()> collective, bool collective_first) {
  TunedBodies t;
  t.cublas = cublas_tuned;
  t.both = [cublas_tuned, collective, collective_first] {
    if (collective_first) collective();
    cublas_tuned();
    if (!collective_first) collective();
  };
  return t;
}

// The operator's collective run by NCCL on registered buffers (in weft's symmetric heap, one
// NCCL_WIN_COLL_SYMMETRIC window, where NCCL's symmetric kernels may run; never on cudaMalloc'd
// ones, what an unregistered caller such as torch by default passes), alone and in sequence with
// `cublas_tuned` (writing or reading those buffers), as time_head_to_head's extras:
// "<collective>_registered" and "cublas_tuned_then_<collective>_registered" (or
// "<collective>_registered_then_cublas_tuned" when the collective runs first).
inline std::vector<NamedBody> registered_bodies(const std::string& collective,
                                                std::function<void()> cublas_tuned,
                                                std::function<void()> collective_registered,
                                                bool collective_first) {
  const std::string reg = collective + "_registered";
  return {{reg, collective_registered},
          {collective_first ? reg + "_then_cublas_tuned" : "cublas_tuned_then_" + reg,
           tuned_bodies(std::move(cublas_tuned), collective_registered, collective_first).both}};
}

template <class First, class Second>
BaselineTimes time_baselines(World& world, cudaStream_t stream, const bench::OpBenchOptions& opt,
                             First&& first, Second&& second, const char* first_name,
                             const char* second_name) {
  BaselineTimes t;
  t.first_name = first_name;
  t.second_name = second_name;
  t.first = time_us(world, stream, opt, first);
  t.second = time_us(world, stream, opt, second);
  t.both = time_us(world, stream, opt, [&] {
    first();
    second();
  });
  t.both_graph = time_graph_us(world, stream, opt, [&] {
    first();
    second();
  });
  return t;
}

// Checks a benchmark's output against its fp32 reference after a timed run (a collective
// verdict), counts the failures and keeps the row's "check" text ("ok", or the last failure).
class OutputChecks {
 public:
  OutputChecks(World& world, const char* bench) : world_(world), bench_(bench) {}

  // A new shape: what check() compares (`out`, `ld`, against `ref`, rows x cols) and the text "ok".
  void begin(const Shape& sh, const void* out, int64_t ld, const float* ref, int64_t rows,
             int64_t cols, testing::Tolerance tol) {
    sh_ = sh;
    out_ = out;
    ld_ = ld;
    ref_ = ref;
    rows_ = rows;
    cols_ = cols;
    tol_ = tol;
    text_ = "ok";
  }

  // Compares the output of the last run (bf16); `what` names the run ("auto", a strategy). True
  // when it is right on every rank.
  bool check(const char* what) {
    cudaStream_t s = world_.stream();
    cmp_.reset(s);
    cmp_.compare(out_, ld_, DType::kBF16, ref_, cols_, rows_, cols_, tol_, 0, s);
    world_.synchronize(s);
    const auto r = cmp_.read(s);
    const double bad_ranks = bench::sum_over_ranks(world_, r.ok() ? 0.0 : 1.0);
    if (bad_ranks > 0) {
      ++failed_;
      text_ = fmt::format("FAILED ({}): {}", what, r.ok() ? "on another rank" : r.describe());
      if (world_.rank() == 0 || !r.ok())
        std::fprintf(stderr, "%s bench %lld,%lld,%lld %s: rank %d: %s\n", bench_, (long long)sh_.m,
                     (long long)sh_.n, (long long)sh_.k, what, world_.rank(), r.describe().c_str());
    }
    return bad_ranks == 0;
  }

  // A check of something other than the output (`bad` on this rank: e.g. elements that differ
  // from a reference), counted like check()'s; collective.
  void expect_none(const char* what, uint64_t bad) {
    const double bad_ranks = bench::sum_over_ranks(world_, bad ? 1.0 : 0.0);
    if (bad_ranks == 0) return;
    ++failed_;
    text_ = fmt::format("FAILED ({}): {}", what,
                        bad ? fmt::format("{} elements", bad) : "on another rank");
    if (bad)
      std::fprintf(stderr, "%s bench %lld,%lld,%lld %s: rank %d: %llu elements wrong\n", bench_,
                   (long long)sh_.m, (long long)sh_.n, (long long)sh_.k, what, world_.rank(),
                   (unsigned long long)bad);
  }

  const std::string& text() const { return text_; }
  // Every check of the current shape (since begin()) passed.
  bool shape_ok() const { return text_ == "ok"; }
  int failed() const { return failed_; }

 private:
  World& world_;
  const char* bench_;
  testing::Comparator cmp_;
  Shape sh_;
  const void* out_ = nullptr;
  int64_t ld_ = 0;
  const float* ref_ = nullptr;
  int64_t rows_ = 0, cols_ = 0;
  testing::Tolerance tol_;
  std::string text_ = "ok";
  int failed_ = 0;
};

// Every strategy forced in turn, then the planner's choice, on one shape: timed eagerly (and, for
// `strategy_graphs`, also as a CUDA graph), each output checked.
template <class Plan>
struct Sweep {
  bench::Json strategies = bench::Json::object();        // strategy -> us
  bench::Json strategies_graph = bench::Json::object();  // strategy -> us as a graph
  bool strategy_graphs = false;                          // strategies_graph was measured
  std::string every;                                     // the table's last column
  std::string best_name;
  double best_us = INFINITY;
  Plan plan;  // the planner's choice
  double weft_us = 0, weft_graph_us = 0;
  bench::Json sequential = bench::Json::object();  // see time_head_to_head
};
template <class Op, class Args, class Strategy, size_t N>
auto sweep_strategies(World& world, const bench::OpBenchOptions& opt, Op& op, Args& args,
                      const Strategy (&all)[N], bench::DeviceMemory& out, OutputChecks& checks,
                      bool strategy_graphs) {
  cudaStream_t s = world.stream();
  Sweep<decltype(op.plan(args))> r;
  r.strategy_graphs = strategy_graphs;
  for (Strategy st : all) {
    args.strategy = st;
    if (op.plan(args).strategy != st) {
      // Not offered for this shape (the operator would run another strategy instead).
      r.every += fmt::format("{}{} n/a", r.every.empty() ? "" : ", ", to_string(st));
      continue;
    }
    WEFT_CUDA_CHECK(cudaMemsetAsync(out.data(), 0xFF, out.bytes(), s));
    const double t = time_us(world, s, opt, [&] { op.run(args, s); });
    const bool right = checks.check(to_string(st));
    if (strategy_graphs) {
      const double tg = time_graph_us(world, s, opt, [&] { op.run(args, s); });
      r.strategies.set(to_string(st), bench::round_to(t, 3));
      r.strategies_graph.set(to_string(st), bench::round_to(tg, 3));
      r.every +=
          fmt::format("{}{} {:.1f}/{:.1f}g", r.every.empty() ? "" : ", ", to_string(st), t, tg);
    } else {
      r.strategies.set(to_string(st), bench::round_to(t, 3));
      r.every += fmt::format("{}{} {:.1f}", r.every.empty() ? "" : ", ", to_string(st), t);
    }
    if (!right) r.every += " FAILED";
    if (right && t < r.best_us) {  // (a wrong result is never the best)
      r.best_us = t;
      r.best_name = to_string(st);
    }
  }
  args.strategy = Strategy::kAuto;
  r.plan = op.plan(args);
  WEFT_CUDA_CHECK(cudaMemsetAsync(out.data(), 0xFF, out.bytes(), s));
  r.weft_us = time_us(world, s, opt, [&] { op.run(args, s); });
  checks.check("auto");
  r.weft_graph_us = time_graph_us(world, s, opt, [&] { op.run(args, s); });
  return r;
}

// The row's figures: weft (the planner's choice, `weft`) and the baselines (`first`, `second`,
// one after the other) timed once more in `rounds` interleaved rounds: each round times every
// body in turn (one warm-up, iters / rounds samples each) and each figure is the median of all
// its samples, slowest rank. The first baseline pass and the sweep time one body at a time for
// many iterations, so under the power cap the clock drifts between them (weft, timed last, took
// 1485 us for 8192x28672x8192 AG-GEMM on 4x H200 where its own strategy had taken 1330 in the
// sweep minutes before); interleaving puts every body under the same drift. Replaces base's
// eager figures, sweep.weft_us and the CUDA-graph figures of weft and the sequence (timed in the
// same rounds; one at a time, GEMM-RS 8192x8192x28672 on 4x H200 read 1747 us for weft's graph
// against 1341 eager); the one-at-a-time figures stay in sweep.sequential (the row's
// "sequential_us", graphs as "weft_graph" and "<sequence>_graph"). Collective.
// `tuned`'s bodies, when given, are timed in the same rounds into base.cublas_tuned / both_tuned.
// `extra`'s bodies likewise, into base.extra.
template <class Plan, class Weft, class First, class Second>
void time_head_to_head(World& world, cudaStream_t stream, const bench::OpBenchOptions& opt,
                       Weft&& weft, First&& first, Second&& second, BaselineTimes& base,
                       Sweep<Plan>& sweep, const TunedBodies& tuned = {},
                       const std::vector<NamedBody>& extra = {}, int rounds = 5) {
  bench::TimingOptions t;
  t.warmup = 1;
  t.iters = std::max(2, (opt.quick ? 5 : opt.iters) / rounds);
  t.flush_l2 = opt.cold_l2;
  base.samples = rounds * t.iters;
  std::vector<double> w, a, b, ab, a_tuned, ab_tuned, w_graph, ab_graph;
  std::vector<std::vector<double>> ex(extra.size());
  auto add = [](std::vector<double>& to, const std::vector<double>& from) {
    to.insert(to.end(), from.begin(), from.end());
  };
  if (tuned.cublas) tuned.cublas();  // the tuning itself happens outside the rounds
  if (tuned.both) tuned.both();
  for (const NamedBody& e : extra) e.body();  // (first calls: tuning, NCCL's lazy setup)
  auto both = [&] {
    first();
    second();
  };
  // weft and the sequence as CUDA graphs, in the same rounds (captured once; every body's first
  // call, cuBLASLt's tuning included, happened before).
  bench::GraphExec weft_graph = bench::capture_on_all_ranks(world, stream, weft);
  bench::GraphExec both_graph = bench::capture_on_all_ranks(world, stream, both);
  for (int r = 0; r < rounds; ++r) {
    add(w, bench::time_iterations(world, stream, t, weft));
    add(a, bench::time_iterations(world, stream, t, first));
    add(b, bench::time_iterations(world, stream, t, second));
    add(ab, bench::time_iterations(world, stream, t, both));
    add(w_graph, bench::time_iterations(world, stream, t, [&] { weft_graph.launch(stream); }));
    add(ab_graph, bench::time_iterations(world, stream, t, [&] { both_graph.launch(stream); }));
    if (tuned.cublas) add(a_tuned, bench::time_iterations(world, stream, t, tuned.cublas));
    if (tuned.both) add(ab_tuned, bench::time_iterations(world, stream, t, tuned.both));
    for (size_t i = 0; i < extra.size(); ++i)
      add(ex[i], bench::time_iterations(world, stream, t, extra[i].body));
  }
  sweep.sequential = bench::Json::object();
  sweep.sequential.set("weft", bench::round_to(sweep.weft_us, 3))
      .set(base.sequence_name(), bench::round_to(base.both, 3))
      .set(base.first_name, bench::round_to(base.first, 3))
      .set(base.second_name, bench::round_to(base.second, 3))
      .set("weft_graph", bench::round_to(sweep.weft_graph_us, 3))
      .set(base.sequence_name() + "_graph", bench::round_to(base.both_graph, 3));
  sweep.weft_us = bench::slowest_rank_median(world, w);
  sweep.weft_graph_us = bench::slowest_rank_median(world, w_graph);
  base.both_graph = bench::slowest_rank_median(world, ab_graph);
  base.first = bench::slowest_rank_median(world, a);
  base.second = bench::slowest_rank_median(world, b);
  base.both = bench::slowest_rank_median(world, ab);
  if (tuned.cublas) base.cublas_tuned = bench::slowest_rank_median(world, a_tuned);
  if (tuned.both) base.both_tuned = bench::slowest_rank_median(world, ab_tuned);
  base.extra.clear();
  for (size_t i = 0; i < extra.size(); ++i)
    base.extra.emplace_back(extra[i].name, bench::slowest_rank_median(world, ex[i]));
}

// The table line under a shape's row: the tuned baselines, and weft against max(cuBLAS, NCCL)
// and against the collective then cuBLAS, each with cuBLAS as cuBLASLt's first answer and tuned.
inline std::string tuned_line(const BaselineTimes& base, double t_cublas, double t_coll,
                              double weft_us, const std::string& tuned_algo,
                              const std::string& more) {
  std::string extras;
  for (const auto& [name, us] : base.extra) extras += fmt::format("; {} {:.1f} us", name, us);
  return fmt::format(
      "{:<20} cuBLAS tuned {:.1f} us ({}){}; weft / max(cuBLAS, NCCL) {:.3f}, tuned {:.3f}; "
      "NCCL-then-cuBLAS / weft {:.3f}, tuned {:.3f}{}\n",
      "", base.cublas_tuned, tuned_algo, more, weft_us / std::max(t_cublas, t_coll),
      weft_us / std::max(base.cublas_tuned, t_coll), base.both / weft_us, base.both_tuned / weft_us,
      extras);
}

// The row of one shape (bf16, main baseline "nccl_then_cublas"): the planner's choice, the
// baselines, every strategy (and their graph times when swept so), the graph times of weft and of
// the baseline, then `op_extra`'s fields, the iterations and the check. Rank 0 appends it to
// opt.out_path.
template <class Plan>
void append_tp_row(World& world, const bench::OpBenchOptions& opt, const char* op_name,
                   const Shape& sh, const std::string& device, const Sweep<Plan>& sweep,
                   const BaselineTimes& base, const bench::Json& op_extra,
                   const OutputChecks& checks) {
  bench::ResultRow row;
  row.op = op_name;
  row.shape = bench::Json::object();
  row.shape.set("M", sh.m).set("N", sh.n).set("K", sh.k);
  row.dtype = "bf16";
  row.world = world.size();
  row.device = device;
  row.weft_us = sweep.weft_us;
  const std::string sequence = base.sequence_name();
  row.baselines = {
      {sequence, base.both}, {base.first_name, base.first}, {base.second_name, base.second}};
  if (base.cublas_tuned > 0) row.baselines.push_back({"cublas_tuned", base.cublas_tuned});
  if (base.both_tuned > 0) row.baselines.push_back({sequence + "_tuned", base.both_tuned});
  for (const auto& [name, us] : base.extra) row.baselines.push_back({name, us});
  row.main_baseline = sequence;
  // The acceptance ratios against the strongest baselines of the row: cuBLAS as the faster of its
  // first heuristic answer and the tuned algorithm, the collective as the fastest way timed.
  double cublas_best = base.cublas(), collective_best = base.collective(),
         sequence_best = base.both;
  if (base.cublas_tuned > 0) cublas_best = std::min(cublas_best, base.cublas_tuned);
  if (base.both_tuned > 0) sequence_best = std::min(sequence_best, base.both_tuned);
  for (const auto& [name, us] : base.extra) {
    if (name.rfind(base.collective_name(), 0) == 0) collective_best = std::min(collective_best, us);
    if (name.find("_then_") != std::string::npos) sequence_best = std::min(sequence_best, us);
  }
  bench::Json ratios = bench::Json::object();
  ratios.set("weft_over_max_cublas_collective",
             bench::round_to(sweep.weft_us / std::max(base.cublas(), base.collective()), 4));
  ratios.set("weft_over_max_best_cublas_best_collective",
             bench::round_to(sweep.weft_us / std::max(cublas_best, collective_best), 4));
  ratios.set("best_sequence_over_weft", bench::round_to(sequence_best / sweep.weft_us, 4));
  row.extra.set("acceptance_ratios", ratios);
  row.commit = opt.commit;
  row.extra.set("strategy", to_string(sweep.plan.strategy));
  row.extra.set("strategy_reason", sweep.plan.reason);
  row.extra.set("strategies", sweep.strategies);
  row.extra.set("best_strategy", sweep.best_name);
  bench::Json graph = bench::Json::object();
  graph.set("weft", bench::round_to(sweep.weft_graph_us, 3));
  graph.set(sequence, bench::round_to(base.both_graph, 3));
  if (sweep.strategy_graphs) graph.set("strategies", sweep.strategies_graph);
  row.extra.set("graph_us", graph);
  if (sweep.sequential.size() > 0) row.extra.set("sequential_us", sweep.sequential);
  for (size_t i = 0; i < op_extra.size(); ++i) row.extra.set(op_extra.key(i), op_extra.value(i));
  row.extra.set("iters", base.samples);  // samples behind each figure of the row
  if (opt.quick) row.extra.set("quick", true);
  row.extra.set("l2", opt.cold_l2 ? "cold" : "warm");
  row.extra.set("check", checks.text());
  // A timing whose output was wrong is no result: no row (the table and the exit status say so).
  if (!checks.shape_ok()) {
    if (world.rank() == 0)
      std::fprintf(stderr, "%s %lld,%lld,%lld: no row written: %s\n", op_name, (long long)sh.m,
                   (long long)sh.n, (long long)sh.k, checks.text().c_str());
    return;
  }
  bench::append_row(world, opt.out_path, row);
}

// Rank 0 prints the table; returns the benchmark's exit status (0: every check passed).
inline int finish(World& world, const char* bench, const std::string& device,
                  const std::string& table, const OutputChecks& checks) {
  if (world.rank() == 0)
    std::printf("\nweft bench %s: %d ranks, %s, bf16, slowest rank's median\n%s%s\n", bench,
                world.size(), device.c_str(), table.c_str(),
                checks.failed() ? fmt::format("{} check(s) FAILED", checks.failed()).c_str()
                                : "all checks passed");
  return checks.failed() ? 1 : 0;
}

// What every tensor-parallel bench's run function works with: the ranks, its shapes (--shapes or
// the defaults), the stream, the device's name, a cuBLASLt handle, the output checks and the
// printed table (starting with `header`). Construct it after on_one_node().
struct TpBench {
  TpBench(World& w, const bench::OpBenchOptions& opt, const char* bench_name,
          std::vector<Shape> defaults, std::string header)
      : world(w),
        name(bench_name),
        W(w.size()),
        rank(w.rank()),
        shapes(parse_shapes(opt.shapes, std::move(defaults))),
        stream(w.stream()),
        device(bench::device_name(w.device())),
        checks(w, bench_name),
        table(std::move(header)) {}

  // True (and rank 0 says why) when `unsupported`: the caller skips the shape.
  bool skip(const Shape& sh, bool unsupported, const std::string& why) const {
    if (unsupported && rank == 0)
      std::printf("%s bench: skipping %lld,%lld,%lld (%s)\n", name, (long long)sh.m,
                  (long long)sh.n, (long long)sh.k, why.c_str());
    return unsupported;
  }
  // Rank 0 prints the table; the benchmark's exit status.
  int finish() const { return benchutil::finish(world, name, device, table, checks); }

  World& world;
  const char* name;
  const int W, rank;
  const std::vector<Shape> shapes;
  cudaStream_t stream;
  const std::string device;
  LtGemm lt;                              // cuBLAS's first heuristic answer
  // The operators' way of choosing (BaselineTimes *_tuned); its first call of a shape waits for
  // the stream with the world's deadline, as the operators' does.
  LtGemm lt_tuned{LtAlgoChoice::kTuned, [w = &world](cudaStream_t s) { w->synchronize(s); }};
  OutputChecks checks;
  std::string table;
};

}  // namespace weft::tp::benchutil
