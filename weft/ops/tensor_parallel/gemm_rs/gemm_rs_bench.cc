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
  return tp::benchutil::heap_bytes_for(most);
}

int run_gemm_rs_bench(World& world, const OpBenchOptions& opt) {
  namespace bu = tp::benchutil;
  const int W = world.size(), rank = world.rank();
  if (!bu::on_one_node(world, "gemm-rs")) return 1;
  const auto shapes = bu::parse_shapes(opt.shapes, default_shapes(opt.quick));
  cudaStream_t s = world.stream();
  const std::string device = device_name(world.device());
  const tp::DType dt = tp::DType::kBF16;
  tp::LtGemm lt;
  bu::OutputChecks checks(world, "gemm-rs");
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
    const bu::BaselineTimes base = bu::time_baselines(world, s, opt, cublas, reduce_scatter);
    const double t_cublas = base.first, t_nccl = base.second, t_base = base.both;
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

    checks.begin(sh, out.data(), N, ref.as<float>(), mr, N, tpt::reduced_gemm_tolerance(dt, k, W));
    const auto sweep = bu::sweep_strategies(world, opt, op, args, kStrategies, out, checks, false);

    Json extra = Json::object();
    extra.set("k_per_rank", k);
    extra.set("order", "cublas then nccl_reduce_scatter");
    bu::append_tp_row(
        world, opt, "gemm_rs", sh, device, sweep,
        {{"nccl_then_cublas", t_base}, {"cublas", t_cublas}, {"nccl_reduce_scatter", t_nccl}},
        base.both_graph, extra, checks);
    table +=
        fmt::format("{:<20} {:<16} {:>9.1f} {:>10.1f} {:>9.1f} {:>9.1f} {:>7.3f}  {}\n",
                    fmt::format("{},{},{}", sh.m, sh.n, sh.k), to_string(sweep.plan.strategy),
                    sweep.weft_us, t_base, t_cublas, t_nccl, t_base / sweep.weft_us, sweep.every);
  }
  return bu::finish(world, "gemm-rs", device, table, checks);
}

}  // namespace weft::bench
