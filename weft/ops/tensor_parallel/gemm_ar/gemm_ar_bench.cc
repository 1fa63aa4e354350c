#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar_bench.h"

#include <algorithm>
#include <cmath>

#include "weft/ops/tensor_parallel/common/bench_util.h"
#include "weft/ops/tensor_parallel/common/testing.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"
#include "weft/runtime/cuda_check.h"

namespace weft::bench {
namespace {

using tp::benchutil::Shape;
namespace tpt = tp::testing;

std::vector<Shape> default_shapes(bool quick) {
  if (quick) return {{16, 8192, 8192}, {256, 8192, 8192}};
  return {{16, 8192, 8192}, {64, 8192, 8192}, {256, 8192, 8192}};
}

constexpr tp::GemmArStrategy kStrategies[] = {tp::GemmArStrategy::kOneShot,
                                              tp::GemmArStrategy::kTwoShot,
                                              tp::GemmArStrategy::kOneShotWeft,
                                              tp::GemmArStrategy::kTwoShotWeft};

}  // namespace

size_t gemm_ar_bench_heap_bytes(int world_size, const OpBenchOptions& opt) {
  size_t most = 0;
  const size_t W = size_t(std::max(1, world_size));
  for (const Shape& s : tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick))) {
    const size_t cap = (size_t(s.m) * size_t(s.n) + 7) / 8 * 8;
    const size_t chunk = ((cap + W - 1) / W + 7) / 8 * 8;
    most = std::max(most, (2 * W * cap + 2 * W * chunk) * 2);
  }
  return (most + (size_t(64) << 20) + (size_t(1) << 21) - 1) / (size_t(1) << 21) * (size_t(1) << 21);
}

int run_gemm_ar_bench(World& world, const OpBenchOptions& opt) {
  const int W = world.size(), rank = world.rank();
  if (world.lsa_size() != W) {
    if (rank == 0) std::fprintf(stderr, "gemm-ar bench: all ranks must be on one node\n");
    return 1;
  }
  const auto shapes = tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick));
  cudaStream_t s = world.stream();
  const std::string device = device_name(world.device());
  const tp::DType dt = tp::DType::kBF16;
  tp::LtGemm lt;
  tpt::Comparator cmp;
  int failed = 0;
  std::string table = fmt::format("{:<18} {:<14} {:>8} {:>11} {:>8} {:>8} {:>7} {:>10} {:>10}  {}\n",
                                  "M,N,K", "planner choice", "weft us", "cublas+nccl", "cublas",
                                  "nccl ar", "ratio", "weft graph", "base graph",
                                  "every strategy (us)");

  for (const Shape& sh : shapes) {
    if (sh.k % W != 0 || (sh.k / W) % 8 != 0) {
      if (rank == 0)
        std::printf("gemm-ar bench: skipping %lld,%lld,%lld (K must divide by %d, K/%d by 8)\n",
                    (long long)sh.m, (long long)sh.n, (long long)sh.k, W, W);
      continue;
    }
    const int64_t M = sh.m, N = sh.n, k = sh.k / W;
    DeviceMemory a(size_t(M * k * 2)), b(size_t(N * k * 2)), out(size_t(M * N * 2)),
        partial(size_t(M * N * 2)), out_base(size_t(M * N * 2)), ref(size_t(M * N * 4));
    const uint64_t nonce = shared_nonce(world);
    tpt::fill_matrix(a.data(), M, k, k, dt, tpt::matrix_seed(nonce, 21, rank), s);
    tpt::fill_matrix(b.data(), N, k, k, dt, tpt::matrix_seed(nonce, 22, rank), s);

    tp::GemmArOptions o;
    o.max_m = M;
    o.max_n = N;
    tp::GemmAr op(world, o);

    auto cublas = [&] { lt.gemm(a.data(), k, b.data(), k, partial.data(), N, M, N, k, dt, dt, s); };
    auto all_reduce = [&] {
      WEFT_NCCL_CHECK(ncclAllReduce(partial.data(), out_base.data(), size_t(M * N), ncclBfloat16,
                                    ncclSum, world.nccl_comm(), s));
    };
    const double t_cublas = tp::benchutil::time_us(world, s, opt, cublas);
    const double t_nccl = tp::benchutil::time_us(world, s, opt, all_reduce);
    const double t_base = tp::benchutil::time_us(world, s, opt, [&] {
      cublas();
      all_reduce();
    });
    const double t_base_graph = tp::benchutil::time_graph_us(world, s, opt, [&] {
      cublas();
      all_reduce();
    });
    lt.gemm(a.data(), k, b.data(), k, ref.data(), N, M, N, k, dt, tp::DType::kFP32, s);
    WEFT_NCCL_CHECK(ncclAllReduce(ref.data(), ref.data(), size_t(M * N), ncclFloat, ncclSum,
                                  world.nccl_comm(), s));

    tp::GemmArArgs args;
    args.a = a.data();
    args.b = b.data();
    args.out = out.data();
    args.m = M;
    args.n = N;
    args.k = k;
    args.dtype = dt;

    std::string check_text = "ok";
    auto check = [&](const char* what) {
      cmp.reset(s);
      cmp.compare(out.data(), N, dt, ref.as<float>(), N, M, N,
                  tpt::reduced_gemm_tolerance(dt, k, W), 0, s);
      world.synchronize(s);
      const auto r = cmp.read(s);
      const double bad_ranks = sum_over_ranks(world, r.ok() ? 0.0 : 1.0);
      if (bad_ranks > 0) {
        ++failed;
        check_text = fmt::format("FAILED ({}): {}", what, r.ok() ? "on another rank" : r.describe());
        if (rank == 0 || !r.ok())
          std::fprintf(stderr, "gemm-ar bench %lld,%lld,%lld %s: rank %d: %s\n", (long long)sh.m,
                       (long long)sh.n, (long long)sh.k, what, rank, r.describe().c_str());
      }
    };

    Json strategies = Json::object(), strategies_graph = Json::object();
    std::string best_name, every;
    double best_us = INFINITY;
    for (tp::GemmArStrategy st : kStrategies) {
      args.strategy = st;
      WEFT_CUDA_CHECK(cudaMemsetAsync(out.data(), 0xFF, out.bytes(), s));
      const double t = tp::benchutil::time_us(world, s, opt, [&] { op.run(args, s); });
      check(to_string(st));
      const double tg = tp::benchutil::time_graph_us(world, s, opt, [&] { op.run(args, s); });
      strategies.set(to_string(st), round_to(t, 3));
      strategies_graph.set(to_string(st), round_to(tg, 3));
      every += fmt::format("{}{} {:.1f}/{:.1f}g", every.empty() ? "" : ", ", to_string(st), t, tg);
      if (t < best_us) {
        best_us = t;
        best_name = to_string(st);
      }
    }
    args.strategy = tp::GemmArStrategy::kAuto;
    const tp::GemmArPlan plan = op.plan(args);
    WEFT_CUDA_CHECK(cudaMemsetAsync(out.data(), 0xFF, out.bytes(), s));
    const double t_weft = tp::benchutil::time_us(world, s, opt, [&] { op.run(args, s); });
    check("auto");
    const double t_weft_graph =
        tp::benchutil::time_graph_us(world, s, opt, [&] { op.run(args, s); });

    ResultRow row;
    row.op = "gemm_ar";
    row.shape = Json::object();
    row.shape.set("M", sh.m).set("N", sh.n).set("K", sh.k);
    row.dtype = "bf16";
    row.world = W;
    row.device = device;
    row.weft_us = t_weft;
    row.baselines = {{"nccl_then_cublas", t_base}, {"cublas", t_cublas}, {"nccl_allreduce", t_nccl}};
    row.main_baseline = "nccl_then_cublas";
    row.commit = opt.commit;
    row.extra.set("strategy", to_string(plan.strategy));
    row.extra.set("strategy_reason", plan.reason);
    row.extra.set("strategies", strategies);
    row.extra.set("best_strategy", best_name);
    Json graph = Json::object();
    graph.set("weft", round_to(t_weft_graph, 3));
    graph.set("nccl_then_cublas", round_to(t_base_graph, 3));
    graph.set("strategies", strategies_graph);
    row.extra.set("graph_us", graph);
    row.extra.set("k_per_rank", k);
    row.extra.set("order", "cublas then nccl_allreduce");
    row.extra.set("iters", opt.quick ? 5 : opt.iters);
    row.extra.set("check", check_text);
    append_row(world, opt.out_path, row);
    table += fmt::format("{:<18} {:<14} {:>8.1f} {:>11.1f} {:>8.1f} {:>8.1f} {:>7.3f} {:>10.1f} "
                         "{:>10.1f}  {}\n",
                         fmt::format("{},{},{}", sh.m, sh.n, sh.k), to_string(plan.strategy),
                         t_weft, t_base, t_cublas, t_nccl, t_base / t_weft, t_weft_graph,
                         t_base_graph, every);
  }
  if (rank == 0)
    std::printf("\nweft bench gemm-ar: %d ranks, %s, bf16, slowest rank's median\n%s%s\n", W,
                device.c_str(), table.c_str(),
                failed ? fmt::format("{} check(s) FAILED", failed).c_str() : "all checks passed");
  return failed ? 1 : 0;
}

}  // namespace weft::bench
