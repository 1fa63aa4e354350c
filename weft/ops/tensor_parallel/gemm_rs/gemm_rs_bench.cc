#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs_bench.h"

#include <algorithm>
#include <cmath>

#include "weft/ops/tensor_parallel/common/bench_util.h"
#include "weft/ops/tensor_parallel/common/kernels.h"
#include "weft/ops/tensor_parallel/common/side_stream.h"
#include "weft/ops/tensor_parallel/common/testing.h"
#include "weft/ops/tensor_parallel/common/tile_order.h"
#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs.h"
#include "weft/runtime/copy_engine.h"
#include "weft/runtime/cuda_check.h"

namespace weft::bench {
namespace {

using tp::benchutil::Shape;
namespace tpt = tp::testing;

std::vector<Shape> default_shapes(bool quick) {
  if (quick) return {{8192, 8192, 8192}, {1024, 8192, 28672}};
  return {{8192, 8192, 8192}, {1024, 8192, 28672}, {4096, 8192, 28672}, {8192, 8192, 28672}};
}

constexpr tp::GemmRsStrategy kStrategies[] = {
    tp::GemmRsStrategy::kFusedCopyEngine, tp::GemmRsStrategy::kFusedPush,
    tp::GemmRsStrategy::kDecomposed,      tp::GemmRsStrategy::kPushReduce,
    tp::GemmRsStrategy::kGatherInputs,    tp::GemmRsStrategy::kDecomposedCols};

// The pieces the strategies are made of, each timed alone on every rank (no communication; the
// slowest rank's median), so that a run can check docs/perf.md "GEMM-RS analysis":
//   cublas_chunks        W cuBLAS launches of M/W rows back to back (decomposed's GEMM part)
//   chunks_sending       the same while each remote chunk goes to its rank by copy engine as in
//                        decomposed (into a sink; no flags, no reduction): what the transfers
//                        cost the GEMMs running beside them
//   fused_gemm           fused_ce's GEMM: hook kernel, destination tile order, per-m-block signals
//   fused_gemm_nosignal  the same kernel and order without the signals
//   fused_gemm_plain     the same config as a plain kernel (no hooks)
//   reduce               the fixed-order reduction of W chunks (flags already set)
struct Breakdown {
  double cublas_chunks = 0, chunks_sending = 0, fused_gemm = 0, fused_gemm_nosignal = 0,
         fused_gemm_plain = 0, reduce = 0, reduce_gbps = 0;
};

Breakdown time_breakdown(World& world, const bench::OpBenchOptions& opt, tp::GemmRs& op,
                         const tp::GemmRsArgs& args, tp::LtGemm& lt, void* partial,
                         void* out, cudaStream_t s) {
  namespace bu = tp::benchutil;
  const int W = world.size(), rank = world.rank();
  const int64_t M = args.m, N = args.n, k = args.k, mr = M / W;
  const tp::DType dt = args.dtype;
  const char* a = static_cast<const char*>(args.a);
  char* c = static_cast<char*>(partial);
  Breakdown r;
  r.cublas_chunks = bu::time_us(world, s, opt, [&] {
    for (int q = 0; q < W; ++q)
      lt.gemm(a + q * mr * k * 2, k, args.b, k, c + q * mr * N * 2, N, mr, N, k, dt, dt, s);
  });
  {
    SymmetricBuffer<uint16_t> sink = world.alloc<uint16_t>(static_cast<size_t>(mr * N));
    tp::SideStream side(2);
    r.chunks_sending = bu::time_us(world, s, opt, [&] {
      for (int i = 1; i <= W; ++i) {
        const int q = (rank + i) % W;  // the own chunk last, as decomposed
        char* cq = c + q * mr * N * 2;
        lt.gemm(a + q * mr * k * 2, k, args.b, k, cq, N, mr, N, k, dt, dt, s);
        if (i == W) break;
        side.link(0, s, side.get());
        copy_to_peer(world, sink.data(), cq, static_cast<size_t>(mr * N * 2), q, side.get());
      }
      side.link(1, side.get(), s);
    });
    world.synchronize(s);
  }

  tp::GemmRsArgs fa = args;
  fa.strategy = tp::GemmRsStrategy::kFusedCopyEngine;
  const gemm::Config cfg = op.plan(fa).config;
  const gemm::TileGrid grid = gemm::tile_grid(cfg, M, N);
  const tp::TileOrderSpec spec = tp::gemm_rs_tile_order(grid, mr, W, rank, cfg.raster_group);
  const std::vector<int32_t> order = tp::expand_tile_order(spec);
  DeviceMemory d_order(std::max<size_t>(4, order.size() * 4)),
      flags(size_t(grid.tiles_m) * 8 + 8 * size_t(W));
  if (!order.empty())
    WEFT_CUDA_CHECK(cudaMemcpy(d_order.data(), order.data(), order.size() * 4,
                               cudaMemcpyHostToDevice));
  WEFT_CUDA_CHECK(cudaMemset(flags.data(), 0, flags.bytes()));
  const gemm::GemmArgs g = tp::gemm_args(a, k, args.b, k, partial, N, M, N, k, dt);
  gemm::Hooks signals;
  signals.tile_order = order.empty() ? nullptr : static_cast<const int32_t*>(d_order.data());
  signals.signals = static_cast<uint64_t*>(flags.data());
  signals.signal_mode = gemm::SignalMode::kPerRowChunk;
  signals.signal_rows = cfg.block_m;
  gemm::Hooks order_only;
  order_only.tile_order = signals.tile_order;
  // Without a tile order there is no hook-kernel variant of "no signal": time the plain one.
  r.fused_gemm = bu::time_us(world, s, opt, [&] { gemm::gemm(g, s, &cfg, &signals); });
  r.fused_gemm_nosignal = bu::time_us(world, s, opt, [&] {
    gemm::gemm(g, s, &cfg, order_only.tile_order ? &order_only : nullptr);
  });
  r.fused_gemm_plain = bu::time_us(world, s, opt, [&] { gemm::gemm(g, s, &cfg, nullptr); });

  // The reduction reads W chunks (the own one in `partial`, the others from scratch slots) and
  // writes `out`; its flags (past the tile flags) are set to 1 once.
  const int64_t slot_stride = tp::round_up(mr * N, 8);
  DeviceMemory slots(size_t(W * slot_stride * 2));
  WEFT_CUDA_CHECK(cudaMemset(slots.data(), 0, slots.bytes()));
  std::vector<uint64_t> ones(size_t(W), 1);
  uint64_t* reduce_flags = static_cast<uint64_t*>(flags.data()) + grid.tiles_m;
  WEFT_CUDA_CHECK(cudaMemcpy(reduce_flags, ones.data(), ones.size() * 8, cudaMemcpyHostToDevice));
  tp::ReduceParams rp;
  rp.out = out;
  rp.ldo = N;
  rp.own = c + rank * mr * N * 2;
  rp.ld_own = N;
  rp.slots = slots.data();
  rp.slot_stride = slot_stride;
  rp.rows = mr;
  rp.cols = N;
  rp.rank = rank;
  rp.world = W;
  rp.flags = reduce_flags;
  rp.expected = 1;
  rp.dtype = dt;
  const dev::Context ctx = world.context();
  const int sms = gemm::sm_count();
  r.reduce = bu::time_us(world, s, opt, [&] { tp::launch_fixed_order_reduce(ctx, rp, sms, s); });
  r.reduce_gbps = double(W + 1) * double(mr * N * 2) / (r.reduce * 1e3);
  return r;
}

// WEFT_TP_TRACE=1: one eager call of each copy-engine strategy after a barrier, and when its
// steps ended on rank 0 and the last rank (GemmRs::trace_report).
void print_timelines(World& world, tp::GemmRs& op, tp::GemmRsArgs args, const Shape& sh) {
  cudaStream_t s = world.stream();
  for (tp::GemmRsStrategy st :
       {tp::GemmRsStrategy::kDecomposed, tp::GemmRsStrategy::kFusedCopyEngine,
        tp::GemmRsStrategy::kGatherInputs, tp::GemmRsStrategy::kDecomposedCols}) {
    args.strategy = st;
    if (op.plan(args).strategy != st) continue;
    for (int warm = 0; warm < 2; ++warm) {  // the second call is the one reported
      world.barrier(s);
      op.run(args, s);
    }
    world.synchronize(s);
    const std::string report = op.trace_report();
    for (int r = 0; r < world.size(); r += std::max(1, world.size() - 1)) {
      if (world.rank() == r)
        std::printf("timeline %s %lld,%lld,%lld rank %d:\n%s", to_string(st),
                    static_cast<long long>(sh.m), static_cast<long long>(sh.n),
                    static_cast<long long>(sh.k), r, report.c_str());
      std::fflush(stdout);
      world.barrier(s);
      world.synchronize(s);
    }
  }
}

}  // namespace

size_t gemm_rs_bench_heap_bytes(int world_size, const OpBenchOptions& opt) {
  size_t most = 0;
  const size_t W = size_t(std::max(1, world_size));
  for (const Shape& s : tp::benchutil::parse_shapes(opt.shapes, default_shapes(opt.quick)))
    most = std::max(most, (W + 1) * ((size_t(s.m) + W - 1) / W * size_t(s.n) + 8) * 2 +
                              (size_t(s.m) * s.n + size_t(s.m) / W * s.n) * 2 + 2 * 4096);
  // (W receive slots of the operator, for the breakdown one chunk-sized sink, and the registered
  // baseline's partial product and output)
  return tp::benchutil::heap_bytes_for(most);
}

int run_gemm_rs_bench(World& world, const OpBenchOptions& opt) {
  namespace bu = tp::benchutil;
  if (!bu::on_one_node(world, "gemm-rs")) return 1;
  bu::TpBench bench(world, opt, "gemm-rs", default_shapes(opt.quick),
                    fmt::format("{:<20} {:<16} {:>9} {:>10} {:>9} {:>9} {:>7}  {}\n", "M,N,K",
                                "planner choice", "weft us", "cublas+nccl", "cublas", "nccl rs",
                                "ratio", "every strategy (us)"));
  const int W = bench.W, rank = bench.rank;
  cudaStream_t s = bench.stream;
  tp::LtGemm& lt = bench.lt;
  bu::OutputChecks& checks = bench.checks;
  const tp::DType dt = tp::DType::kBF16;

  for (const Shape& sh : bench.shapes) {
    if (bench.skip(sh, sh.m % W != 0 || sh.k % W != 0 || (sh.k / W) % 8 != 0,
                   fmt::format("M and K must divide by {}, K/{} by 8", W, W)))
      continue;
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
    bu::BaselineTimes base = bu::time_baselines(world, s, opt, cublas, reduce_scatter, "cublas",
                                                     "nccl_reduce_scatter");
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
    auto sweep = bu::sweep_strategies(world, opt, op, args, kStrategies, out, checks, false);
    auto cublas_tuned = [&] {
      bench.lt_tuned.gemm(a.data(), k, b.data(), k, partial.data(), N, M, N, k, dt, dt, s);
    };
    // NCCL on registered buffers too (registered_bodies).
    auto partial_reg = world.alloc<uint16_t>(static_cast<size_t>(M * N));
    auto out_reg = world.alloc<uint16_t>(static_cast<size_t>(mr * N));
    auto reduce_scatter_reg = [&] {
      WEFT_NCCL_CHECK(ncclReduceScatter(partial_reg.data(), out_reg.data(), size_t(mr * N),
                                        ncclBfloat16, ncclSum, world.nccl_comm(), s));
    };
    auto cublas_tuned_reg = [&] {
      bench.lt_tuned.gemm(a.data(), k, b.data(), k, partial_reg.data(), N, M, N, k, dt, dt, s);
    };
    bu::time_head_to_head(
        world, s, opt, [&] { op.run(args, s); }, cublas, reduce_scatter, base, sweep,
        bu::tuned_bodies(cublas_tuned, reduce_scatter, false),
        bu::registered_bodies("nccl_reduce_scatter", cublas_tuned_reg, reduce_scatter_reg, false));
    const double t_cublas = base.first, t_nccl = base.second, t_base = base.both;

    // The chunk GEMMs chosen the operator's way (tuned unless WEFT_LT_TUNE=0; this object tunes
    // on its own, so it may keep another of cuBLAS's answers than the operator: chunk_algo below
    // is the operator's).
    tp::LtGemm& op_lt = tp::lt_algo_choice_from_env() == tp::LtAlgoChoice::kTuned ? bench.lt_tuned
                                                                                 : lt;
    const Breakdown bd =
        time_breakdown(world, opt, op, args, op_lt, partial.data(), out.data(), s);
    if (tp::tp_trace_from_env()) print_timelines(world, op, args, sh);

    Json extra = Json::object();
    extra.set("k_per_rank", k);
    extra.set("cublas_algo", lt.describe(M, N, k, dt, dt));
    extra.set("cublas_tuned_algo", bench.lt_tuned.describe(M, N, k, dt, dt));
    extra.set("chunk_algo", op.describe_gemm(M / W, N, k, dt));  // what the operator runs
    Json parts = Json::object();
    parts.set("cublas_chunks", bench::round_to(bd.cublas_chunks, 3))
        .set("chunks_sending", bench::round_to(bd.chunks_sending, 3))
        .set("fused_gemm", bench::round_to(bd.fused_gemm, 3))
        .set("fused_gemm_nosignal", bench::round_to(bd.fused_gemm_nosignal, 3))
        .set("fused_gemm_plain", bench::round_to(bd.fused_gemm_plain, 3))
        .set("reduce", bench::round_to(bd.reduce, 3))
        .set("reduce_gbps", bench::round_to(bd.reduce_gbps, 1))
        .set("model_fused", bench::round_to(sweep.plan.est_fused_us, 1))
        .set("model_decomposed", bench::round_to(sweep.plan.est_decomposed_us, 1))
        .set("model_gather", bench::round_to(sweep.plan.est_gather_us, 1));
    extra.set("breakdown_us", parts);
    extra.set("order", "cublas then nccl_reduce_scatter");
    bu::append_tp_row(world, opt, "gemm_rs", sh, bench.device, sweep, base, extra, checks);
    bench.table +=
        fmt::format("{:<20} {:<16} {:>9.1f} {:>10.1f} {:>9.1f} {:>9.1f} {:>7.3f}  {}\n",
                    fmt::format("{},{},{}", sh.m, sh.n, sh.k), to_string(sweep.plan.strategy),
                    sweep.weft_us, t_base, t_cublas, t_nccl, t_base / sweep.weft_us, sweep.every);
    bench.table += fmt::format(
        "{:<20} alone: {} cuBLAS chunks {:.1f} (while sending {:.1f}), fused GEMM {:.1f} (no "
        "signal {:.1f}, plain {:.1f}), reduction {:.1f} ({:.0f} GB/s); model fused {:.0f}, "
        "decomposed {:.0f}, gather_inputs {}\n",
        "", W, bd.cublas_chunks, bd.chunks_sending, bd.fused_gemm, bd.fused_gemm_nosignal,
        bd.fused_gemm_plain, bd.reduce, bd.reduce_gbps, sweep.plan.est_fused_us,
        sweep.plan.est_decomposed_us,
        sweep.plan.est_gather_us > 0 ? fmt::format("{:.0f}", sweep.plan.est_gather_us) : "n/a");
    bench.table += bu::tuned_line(base, t_cublas, t_nccl, sweep.weft_us,
                                  bench.lt_tuned.describe(M, N, k, dt, dt),
                                  "; operator's chunks: " + op.describe_gemm(M / W, N, k, dt));
  }
  return bench.finish();
}

}  // namespace weft::bench
