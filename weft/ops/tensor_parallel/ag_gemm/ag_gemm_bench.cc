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
    tp::AgGemmStrategy::kDecomposedLocalFirst, tp::AgGemmStrategy::kDecomposedPerChunk,
    tp::AgGemmStrategy::kPushGather};

}  // namespace

size_t ag_gemm_bench_heap_bytes(int world_size, const OpBenchOptions& opt) {
  size_t most = 0;
  const size_t W = size_t(std::max(1, world_size));
  for (const Shape& s : tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick))) {
    // The operator's gathered A, and the registered baseline's shard and gathered A.
    const size_t gathered = size_t(s.m) * size_t(s.k) * 2;
    most = std::max(most, 2 * gathered + gathered / W + 2 * 4096);
  }
  return tp::benchutil::heap_bytes_for(most);
}

int run_ag_gemm_bench(World& world, const OpBenchOptions& opt) {
  namespace bu = tp::benchutil;
  if (!bu::on_one_node(world, "ag-gemm")) return 1;
  bu::TpBench bench(world, opt, "ag-gemm", default_shapes(opt.quick),
                    fmt::format("{:<20} {:<24} {:>9} {:>10} {:>9} {:>9} {:>7}  {}\n", "M,N,K",
                                "planner choice", "weft us", "nccl+cublas", "cublas", "nccl ag",
                                "ratio", "every strategy (us)"));
  const int W = bench.W, rank = bench.rank;
  cudaStream_t s = bench.stream;
  tp::LtGemm& lt = bench.lt;
  bu::OutputChecks& checks = bench.checks;
  const tp::DType dt = tp::DType::kBF16;

  for (const Shape& sh : bench.shapes) {
    if (bench.skip(sh, sh.m % W != 0 || sh.n % W != 0 || sh.k % 8 != 0,
                   fmt::format("M and N must divide by {}, K by 8", W)))
      continue;
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
    bu::BaselineTimes base = bu::time_baselines(world, s, opt, allgather, cublas,
                                                     "nccl_allgather", "cublas");
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

    checks.begin(sh, c.data(), n_local, ref.as<float>(), M, n_local, tpt::gemm_tolerance(dt, K));
    auto sweep = bu::sweep_strategies(world, opt, op, args, kStrategies, c, checks, false);
    auto cublas_tuned = [&] {
      bench.lt_tuned.gemm(gathered.data(), K, b.data(), K, c_base.data(), n_local, M, n_local, K,
                          dt, dt, s);
    };
    // NCCL on registered buffers too (registered_bodies).
    auto a_reg = world.alloc<uint16_t>(static_cast<size_t>(m_local * K));
    auto gathered_reg = world.alloc<uint16_t>(static_cast<size_t>(M * K));
    WEFT_CUDA_CHECK(
        cudaMemcpyAsync(a_reg.data(), a.data(), a_reg.bytes(), cudaMemcpyDeviceToDevice, s));
    auto allgather_reg = [&] {
      WEFT_NCCL_CHECK(ncclAllGather(a_reg.data(), gathered_reg.data(), size_t(m_local * K),
                                    ncclBfloat16, world.nccl_comm(), s));
    };
    auto cublas_tuned_reg = [&] {
      bench.lt_tuned.gemm(gathered_reg.data(), K, b.data(), K, c_base.data(), n_local, M, n_local,
                          K, dt, dt, s);
    };
    bu::time_head_to_head(
        world, s, opt, [&] { op.run(args, s); }, allgather, cublas, base, sweep,
        bu::tuned_bodies(cublas_tuned, allgather, true),
        bu::registered_bodies("nccl_allgather", cublas_tuned_reg, allgather_reg, true));
    const double t_nccl = base.first, t_cublas = base.second, t_base = base.both;

    // The all-gather alone (AgGemm::all_gather), bit for bit against NCCL's, then timed beside
    // NCCL's all-gather in alternating rounds (each round's figure a median over iterations).
    tp::AgGatherArgs gargs;
    gargs.a = a.data();
    gargs.m_local = m_local;
    gargs.k = K;
    gargs.dtype = dt;
    allgather();
    const std::string gather_how = op.all_gather(gargs, s);
    checks.expect_none("all_gather",
                       tpt::count_bit_differences(op.gathered_a(), K, gathered.data(), K, M, K, s));
    std::vector<double> t_gather, t_gather_nccl;
    for (int r = 0; r < 3; ++r) {
      t_gather.push_back(bu::time_us(world, s, opt, [&] { op.all_gather(gargs, s); }));
      t_gather_nccl.push_back(bu::time_us(world, s, opt, allgather));
    }
    std::sort(t_gather.begin(), t_gather.end());
    std::sort(t_gather_nccl.begin(), t_gather_nccl.end());

    Json extra = Json::object();
    extra.set("n_per_rank", n_local);
    extra.set("cublas_algo", lt.describe(M, n_local, K, dt, dt));
    extra.set("cublas_tuned_algo", bench.lt_tuned.describe(M, n_local, K, dt, dt));
    extra.set("all_gather_alone_us", t_gather[1]);
    extra.set("all_gather_alone_nccl_us", t_gather_nccl[1]);
    extra.set("all_gather_alone_how", gather_how);
    bu::append_tp_row(world, opt, "ag_gemm", sh, bench.device, sweep, base, extra, checks);
    bench.table +=
        fmt::format("{:<20} {:<24} {:>9.1f} {:>10.1f} {:>9.1f} {:>9.1f} {:>7.3f}  {}\n",
                    fmt::format("{},{},{}", sh.m, sh.n, sh.k), to_string(sweep.plan.strategy),
                    sweep.weft_us, t_base, t_cublas, t_nccl, t_base / sweep.weft_us, sweep.every);
    bench.table += bu::tuned_line(base, t_cublas, t_nccl, sweep.weft_us,
                                  bench.lt_tuned.describe(M, n_local, K, dt, dt), "");
    bench.table += fmt::format(
        "{:<21}all_gather alone ({}): {:.1f} us against NCCL all-gather "
        "{:.1f} us (median of 3 alternating rounds)\n",
        "", gather_how, t_gather[1], t_gather_nccl[1]);
  }
  return bench.finish();
}

}  // namespace weft::bench
