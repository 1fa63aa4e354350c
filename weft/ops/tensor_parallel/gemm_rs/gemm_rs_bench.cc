#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs_bench.h"

#include <algorithm>
#include <cmath>

#include "weft/ops/tensor_parallel/common/bench_util.h"
#include "weft/ops/tensor_parallel/common/testing.h"
#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs.h"
#include "weft/runtime/cuda_check.h"

namespace weft::bench {
namespace {

using tp::benchutil::Shape;
namespace tpt = tp::testing;

std::vector<Shape> default_shapes(bool quick) {
  if (quick) return {{8192, 8192, 8192}, {1024, 8192, 28672}};
  return {{8192, 8192, 8192}, {1024, 8192, 28672}, {4096, 8192, 28672}, {8192, 8192, 28672}};
}

constexpr tp::GemmRsStrategy kStrategies[] = {tp::GemmRsStrategy::kFusedCopyEngine,
                                              tp::GemmRsStrategy::kFusedPush,
                                              tp::GemmRsStrategy::kDecomposed};

}  // namespace

size_t gemm_rs_bench_heap_bytes(int world_size, const OpBenchOptions& opt) {
  size_t most = 0;
  const size_t W = size_t(std::max(1, world_size));
  for (const Shape& s : tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick)))
    most = std::max(most, W * ((size_t(s.m) + W - 1) / W * size_t(s.n) + 8) * 2);
  return (most + (size_t(64) << 20) + (size_t(1) << 21) - 1) / (size_t(1) << 21) * (size_t(1) << 21);
}

int run_gemm_rs_bench(World& world, const OpBenchOptions& opt) {
  const int W = world.size(), rank = world.rank();
  if (world.lsa_size() != W) {
    if (rank == 0) std::fprintf(stderr, "gemm-rs bench: all ranks must be on one node\n");
    return 1;
  }
  const auto shapes = tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick));
  cudaStream_t s = world.stream();
  const std::string device = device_name(world.device());
  const tp::DType dt = tp::DType::kBF16;
  tp::LtGemm lt;
  tpt::Comparator cmp;
  int failed = 0;
  std::string table = fmt::format("{:<20} {:<16} {:>9} {:>10} {:>9} {:>9} {:>7}  {}\n", "M,N,K",
                                  "planner choice", "weft us", "cublas+nccl", "cublas",
                                  "nccl rs", "ratio", "every strategy (us)");

  for (const Shape& sh : shapes) {
    if (sh.m % W != 0 || sh.k % W != 0 || (sh.k / W) % 8 != 0) {
      if (rank == 0)
        std::printf("gemm-rs bench: skipping %lld,%lld,%lld (M and K must divide by %d, K/%d by 8)\n",
                    (long long)sh.m, (long long)sh.n, (long long)sh.k, W, W);
      continue;
    }
    const int64_t M = sh.m, N = sh.n, k = sh.k / W, mr = sh.m / W;
    DeviceMemory a(size_t(M * k * 2)), b(size_t(N * k * 2)), out(size_t(mr * N * 2)),
        partial(size_t(M * N * 2)), out_base(size_t(mr * N * 2)), partial32(size_t(M * N * 4)),
        ref(size_t(mr * N * 4));
    const uint64_t nonce = shared_nonce(world);
    tpt::fill_matrix(a.data(), M, k, k, dt, tpt::matrix_seed(nonce, 11, rank), s);
    tpt::fill_matrix(b.data(), N, k, k, dt, tpt::matrix_seed(nonce, 12, rank), s);

    tp::GemmRsOptions o;
    o.max_m = M;
    o.max_n = N;
    tp::GemmRs op(world, o);

    auto cublas = [&] { lt.gemm(a.data(), k, b.data(), k, partial.data(), N, M, N, k, dt, dt, s); };
    auto reduce_scatter = [&] {
      WEFT_NCCL_CHECK(ncclReduceScatter(partial.data(), out_base.data(), size_t(mr * N),
                                        ncclBfloat16, ncclSum, world.nccl_comm(), s));
    };
    const double t_cublas = tp::benchutil::time_us(world, s, opt, cublas);
    const double t_nccl = tp::benchutil::time_us(world, s, opt, reduce_scatter);
    const double t_base = tp::benchutil::time_us(world, s, opt, [&] {
      cublas();
      reduce_scatter();
    });
    const double t_base_graph = tp::benchutil::time_graph_us(world, s, opt, [&] {
      cublas();
      reduce_scatter();
    });
    // fp32 reference for the checks.
    lt.gemm(a.data(), k, b.data(), k, partial32.data(), N, M, N, k, dt, tp::DType::kFP32, s);
    WEFT_NCCL_CHECK(ncclReduceScatter(partial32.data(), ref.data(), size_t(mr * N), ncclFloat,
                                      ncclSum, world.nccl_comm(), s));

    tp::GemmRsArgs args;
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
      cmp.compare(out.data(), N, dt, ref.as<float>(), N, mr, N,
                  tpt::reduced_gemm_tolerance(dt, k, W), 0, s);
      world.synchronize(s);
      const auto r = cmp.read(s);
      const double bad_ranks = sum_over_ranks(world, r.ok() ? 0.0 : 1.0);
      if (bad_ranks > 0) {
        ++failed;
        check_text = fmt::format("FAILED ({}): {}", what, r.ok() ? "on another rank" : r.describe());
        if (rank == 0 || !r.ok())
          std::fprintf(stderr, "gemm-rs bench %lld,%lld,%lld %s: rank %d: %s\n", (long long)sh.m,
                       (long long)sh.n, (long long)sh.k, what, rank, r.describe().c_str());
      }
    };

    Json strategies = Json::object();
    std::string best_name, every;
    double best_us = INFINITY;
    for (tp::GemmRsStrategy st : kStrategies) {
      args.strategy = st;
      WEFT_CUDA_CHECK(cudaMemsetAsync(out.data(), 0xFF, out.bytes(), s));
      const double t = tp::benchutil::time_us(world, s, opt, [&] { op.run(args, s); });
      check(to_string(st));
      strategies.set(to_string(st), round_to(t, 3));
      every += fmt::format("{}{} {:.1f}", every.empty() ? "" : ", ", to_string(st), t);
      if (t < best_us) {
        best_us = t;
        best_name = to_string(st);
      }
    }
    args.strategy = tp::GemmRsStrategy::kAuto;
    const tp::GemmRsPlan plan = op.plan(args);
    WEFT_CUDA_CHECK(cudaMemsetAsync(out.data(), 0xFF, out.bytes(), s));
    const double t_weft = tp::benchutil::time_us(world, s, opt, [&] { op.run(args, s); });
    check("auto");
    const double t_weft_graph =
        tp::benchutil::time_graph_us(world, s, opt, [&] { op.run(args, s); });

    ResultRow row;
    row.op = "gemm_rs";
    row.shape = Json::object();
    row.shape.set("M", sh.m).set("N", sh.n).set("K", sh.k);
    row.dtype = "bf16";
    row.world = W;
    row.device = device;
    row.weft_us = t_weft;
    row.baselines = {{"nccl_then_cublas", t_base},
                     {"cublas", t_cublas},
                     {"nccl_reduce_scatter", t_nccl}};
    row.main_baseline = "nccl_then_cublas";
    row.commit = opt.commit;
    row.extra.set("strategy", to_string(plan.strategy));
    row.extra.set("strategy_reason", plan.reason);
    row.extra.set("strategies", strategies);
    row.extra.set("best_strategy", best_name);
    Json graph = Json::object();
    graph.set("weft", round_to(t_weft_graph, 3));
    graph.set("nccl_then_cublas", round_to(t_base_graph, 3));
    row.extra.set("graph_us", graph);
    row.extra.set("k_per_rank", k);
    row.extra.set("order", "cublas then nccl_reduce_scatter");
    row.extra.set("iters", opt.quick ? 5 : opt.iters);
    row.extra.set("check", check_text);
    append_row(world, opt.out_path, row);
    table += fmt::format("{:<20} {:<16} {:>9.1f} {:>10.1f} {:>9.1f} {:>9.1f} {:>7.3f}  {}\n",
                         fmt::format("{},{},{}", sh.m, sh.n, sh.k), to_string(plan.strategy),
                         t_weft, t_base, t_cublas, t_nccl, t_base / t_weft, every);
  }
  if (rank == 0)
    std::printf("\nweft bench gemm-rs: %d ranks, %s, bf16, slowest rank's median\n%s%s\n", W,
                device.c_str(), table.c_str(),
                failed ? fmt::format("{} check(s) FAILED", failed).c_str() : "all checks passed");
  return failed ? 1 : 0;
}

}  // namespace weft::bench
