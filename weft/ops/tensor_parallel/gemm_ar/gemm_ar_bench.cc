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

constexpr tp::GemmArStrategy kStrategies[] = {
    tp::GemmArStrategy::kOneShot, tp::GemmArStrategy::kTwoShot, tp::GemmArStrategy::kOneShotWeft,
    tp::GemmArStrategy::kTwoShotWeft};

}  // namespace

size_t gemm_ar_bench_heap_bytes(int world_size, const OpBenchOptions& opt) {
  size_t most = 0;
  const size_t W = size_t(std::max(1, world_size));
  for (const Shape& s : tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick))) {
    const size_t cap = (size_t(s.m) * size_t(s.n) + 7) / 8 * 8;
    const size_t chunk = ((cap + W - 1) / W + 7) / 8 * 8;
    // The operator's slots, and the registered baseline's two [M, N] buffers.
    most = std::max(most, (2 * W * cap + 2 * W * chunk) * 2 + 2 * cap * 2 + 2 * 4096);
  }
  return tp::benchutil::heap_bytes_for(most);
}

int run_gemm_ar_bench(World& world, const OpBenchOptions& opt) {
  namespace bu = tp::benchutil;
  if (!bu::on_one_node(world, "gemm-ar")) return 1;
  bu::TpBench bench(
      world, opt, "gemm-ar", default_shapes(opt.quick),
      fmt::format("{:<18} {:<14} {:>8} {:>11} {:>8} {:>8} {:>7} {:>10} {:>10}  {}\n", "M,N,K",
                  "planner choice", "weft us", "cublas+nccl", "cublas", "nccl ar", "ratio",
                  "weft graph", "base graph", "every strategy (us)"));
  const int W = bench.W, rank = bench.rank;
  cudaStream_t s = bench.stream;
  tp::LtGemm& lt = bench.lt;
  bu::OutputChecks& checks = bench.checks;
  const tp::DType dt = tp::DType::kBF16;

  for (const Shape& sh : bench.shapes) {
    if (bench.skip(sh, sh.k % W != 0 || (sh.k / W) % 8 != 0,
                   fmt::format("K must divide by {}, K/{} by 8", W, W)))
      continue;
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
    bu::BaselineTimes base =
        bu::time_baselines(world, s, opt, cublas, all_reduce, "cublas", "nccl_allreduce");
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

    checks.begin(sh, out.data(), N, ref.as<float>(), M, N, tpt::reduced_gemm_tolerance(dt, k, W));
    auto sweep = bu::sweep_strategies(world, opt, op, args, kStrategies, out, checks, true);
    auto cublas_tuned = [&] {
      bench.lt_tuned.gemm(a.data(), k, b.data(), k, partial.data(), N, M, N, k, dt, dt, s);
    };
    // NCCL on registered buffers too (registered_bodies).
    auto partial_reg = world.alloc<uint16_t>(static_cast<size_t>(M * N));
    auto out_reg = world.alloc<uint16_t>(static_cast<size_t>(M * N));
    auto all_reduce_reg = [&] {
      WEFT_NCCL_CHECK(ncclAllReduce(partial_reg.data(), out_reg.data(), size_t(M * N), ncclBfloat16,
                                    ncclSum, world.nccl_comm(), s));
    };
    auto cublas_tuned_reg = [&] {
      bench.lt_tuned.gemm(a.data(), k, b.data(), k, partial_reg.data(), N, M, N, k, dt, dt, s);
    };
    bu::time_head_to_head(
        world, s, opt, [&] { op.run(args, s); }, cublas, all_reduce, base, sweep,
        bu::tuned_bodies(cublas_tuned, all_reduce, false),
        bu::registered_bodies("nccl_allreduce", cublas_tuned_reg, all_reduce_reg, false));
    const double t_cublas = base.first, t_nccl = base.second, t_base = base.both;

    Json extra = Json::object();
    extra.set("k_per_rank", k);
    extra.set("order", "cublas then nccl_allreduce");
    bu::append_tp_row(world, opt, "gemm_ar", sh, bench.device, sweep, base, extra, checks);
    bench.table += fmt::format(
        "{:<18} {:<14} {:>8.1f} {:>11.1f} {:>8.1f} {:>8.1f} {:>7.3f} {:>10.1f} "
        "{:>10.1f}  {}\n",
        fmt::format("{},{},{}", sh.m, sh.n, sh.k), to_string(sweep.plan.strategy), sweep.weft_us,
        t_base, t_cublas, t_nccl, t_base / sweep.weft_us, sweep.weft_graph_us, base.both_graph,
        sweep.every);
    bench.table += bu::tuned_line(base, t_cublas, t_nccl, sweep.weft_us,
                                  bench.lt_tuned.describe(M, N, k, dt, dt), "");
  }
  return bench.finish();
}

}  // namespace weft::bench
