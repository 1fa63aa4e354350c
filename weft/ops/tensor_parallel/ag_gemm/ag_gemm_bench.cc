#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm_bench.h"

#include <algorithm>
#include <cmath>

#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm.h"
#include "weft/ops/tensor_parallel/common/bench_util.h"
#include "weft/ops/tensor_parallel/common/testing.h"
#include "weft/runtime/cuda_check.h"

namespace weft::bench {
namespace {

using tp::benchutil::Shape;
namespace tpt = tp::testing;

std::vector<Shape> default_shapes(bool quick) {
  if (quick) return {{8192, 8192, 8192}, {1024, 28672, 8192}};
  return {{8192, 8192, 8192}, {1024, 28672, 8192}, {4096, 28672, 8192}, {8192, 28672, 8192}};
}

constexpr tp::AgGemmStrategy kStrategies[] = {
    tp::AgGemmStrategy::kFusedCopyEngine, tp::AgGemmStrategy::kFusedPush,
    tp::AgGemmStrategy::kDecomposedLocalFirst, tp::AgGemmStrategy::kDecomposedPerChunk};

}  // namespace

size_t ag_gemm_bench_heap_bytes(int world_size, const OpBenchOptions& opt) {
  size_t most = 0;
  for (const Shape& s : tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick)))
    most = std::max(most, size_t(s.m) * size_t(s.k) * 2);
  (void)world_size;
  return (most + (size_t(64) << 20) + (size_t(1) << 21) - 1) / (size_t(1) << 21) * (size_t(1) << 21);
}

int run_ag_gemm_bench(World& world, const OpBenchOptions& opt) {
  const int W = world.size(), rank = world.rank();
  if (world.lsa_size() != W) {
    if (rank == 0) std::fprintf(stderr, "ag-gemm bench: all ranks must be on one node\n");
    return 1;
  }
  const auto shapes = tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick));
  cudaStream_t s = world.stream();
  const std::string device = device_name(world.device());
  const tp::DType dt = tp::DType::kBF16;
  tp::LtGemm lt;
  tpt::Comparator cmp;
  int failed = 0;
  std::string table = fmt::format("{:<20} {:<24} {:>9} {:>10} {:>9} {:>9} {:>7}  {}\n", "M,N,K",
                                  "planner choice", "weft us", "nccl+cublas", "cublas",
                                  "nccl ag", "ratio", "every strategy (us)");

  for (const Shape& sh : shapes) {
    if (sh.m % W != 0 || sh.n % W != 0 || sh.k % 8 != 0) {
      if (rank == 0)
        std::printf("ag-gemm bench: skipping %lld,%lld,%lld (M and N must divide by %d, K by 8)\n",
                    (long long)sh.m, (long long)sh.n, (long long)sh.k, W);
      continue;
    }
    const int64_t M = sh.m, K = sh.k, m_local = sh.m / W, n_local = sh.n / W;
    DeviceMemory a(size_t(m_local * K * 2)), b(size_t(n_local * K * 2)),
        c(size_t(M * n_local * 2)), c_base(size_t(M * n_local * 2)), gathered(size_t(M * K * 2)),
        ref(size_t(M * n_local * 4));
    const uint64_t nonce = shared_nonce(world);
    tpt::fill_matrix(a.data(), m_local, K, K, dt, tpt::matrix_seed(nonce, 1, rank), s);
    tpt::fill_matrix(b.data(), n_local, K, K, dt, tpt::matrix_seed(nonce, 2, rank), s);

    tp::AgGemmOptions o;
    o.max_m = M;
    o.max_k = K;
    o.max_n = n_local;
    tp::AgGemm op(world, o);

    auto allgather = [&] {
      WEFT_NCCL_CHECK(ncclAllGather(a.data(), gathered.data(), size_t(m_local * K), ncclBfloat16,
                                    world.nccl_comm(), s));
    };
    auto cublas = [&] {
      lt.gemm(gathered.data(), K, b.data(), K, c_base.data(), n_local, M, n_local, K, dt, dt, s);
    };
    const double t_nccl = tp::benchutil::time_us(world, s, opt, allgather);
    const double t_cublas = tp::benchutil::time_us(world, s, opt, cublas);
    const double t_base = tp::benchutil::time_us(world, s, opt, [&] {
      allgather();
      cublas();
    });
    const double t_base_graph = tp::benchutil::time_graph_us(world, s, opt, [&] {
      allgather();
      cublas();
    });
    // fp32 reference for the checks.
    allgather();
    lt.gemm(gathered.data(), K, b.data(), K, ref.data(), n_local, M, n_local, K, dt,
            tp::DType::kFP32, s);

    tp::AgGemmArgs args;
    args.a = a.data();
    args.b = b.data();
    args.c = c.data();
    args.m_local = m_local;
    args.n = n_local;
    args.k = K;
    args.dtype = dt;

    // Checks the output of the last call; collective verdict.
    std::string check_text = "ok";
    auto check = [&](const char* what) {
      cmp.reset(s);
      cmp.compare(c.data(), n_local, dt, ref.as<float>(), n_local, M, n_local,
                  tpt::gemm_tolerance(dt, K), 0, s);
      world.synchronize(s);
      const auto r = cmp.read(s);
      const double bad_ranks = sum_over_ranks(world, r.ok() ? 0.0 : 1.0);
      if (bad_ranks > 0) {
        ++failed;
        check_text = fmt::format("FAILED ({}): {}", what, r.ok() ? "on another rank" : r.describe());
        if (rank == 0 || !r.ok())
          std::fprintf(stderr, "ag-gemm bench %lld,%lld,%lld %s: rank %d: %s\n", (long long)sh.m,
                       (long long)sh.n, (long long)sh.k, what, rank, r.describe().c_str());
      }
    };

    Json strategies = Json::object();
    std::string best_name;
    double best_us = INFINITY;
    std::string every;
    for (tp::AgGemmStrategy st : kStrategies) {
      args.strategy = st;
      WEFT_CUDA_CHECK(cudaMemsetAsync(c.data(), 0xFF, c.bytes(), s));
      const double t = tp::benchutil::time_us(world, s, opt, [&] { op.run(args, s); });
      check(to_string(st));
      strategies.set(to_string(st), round_to(t, 3));
      every += fmt::format("{}{} {:.1f}", every.empty() ? "" : ", ", to_string(st), t);
      if (t < best_us) {
        best_us = t;
        best_name = to_string(st);
      }
    }
    args.strategy = tp::AgGemmStrategy::kAuto;
    const tp::AgGemmPlan plan = op.plan(args);
    WEFT_CUDA_CHECK(cudaMemsetAsync(c.data(), 0xFF, c.bytes(), s));
    const double t_weft = tp::benchutil::time_us(world, s, opt, [&] { op.run(args, s); });
    check("auto");
    const double t_weft_graph =
        tp::benchutil::time_graph_us(world, s, opt, [&] { op.run(args, s); });

    ResultRow row;
    row.op = "ag_gemm";
    row.shape = Json::object();
    row.shape.set("M", sh.m).set("N", sh.n).set("K", sh.k);
    row.dtype = "bf16";
    row.world = W;
    row.device = device;
    row.weft_us = t_weft;
    row.baselines = {{"nccl_then_cublas", t_base}, {"cublas", t_cublas}, {"nccl_allgather", t_nccl}};
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
    row.extra.set("n_per_rank", n_local);
    row.extra.set("iters", opt.quick ? 5 : opt.iters);
    row.extra.set("check", check_text);
    append_row(world, opt.out_path, row);
    table += fmt::format("{:<20} {:<24} {:>9.1f} {:>10.1f} {:>9.1f} {:>9.1f} {:>7.3f}  {}\n",
                         fmt::format("{},{},{}", sh.m, sh.n, sh.k), to_string(plan.strategy),
                         t_weft, t_base, t_cublas, t_nccl, t_base / t_weft, every);
  }
  if (rank == 0)
    std::printf("\nweft bench ag-gemm: %d ranks, %s, bf16, slowest rank's median\n%s%s\n", W,
                device.c_str(), table.c_str(),
                failed ? fmt::format("{} check(s) FAILED", failed).c_str() : "all checks passed");
  return failed ? 1 : 0;
}

}  // namespace weft::bench
