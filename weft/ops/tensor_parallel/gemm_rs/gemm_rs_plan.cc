// GEMM-RS planner and argument validation: host only, no GPU (CPU-tested).
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs.h"
#include "weft/runtime/error.h"

namespace weft::tp {

const char* to_string(GemmRsStrategy s) {
  switch (s) {
    case GemmRsStrategy::kAuto: return "auto";
    case GemmRsStrategy::kFusedCopyEngine: return "fused_ce";
    case GemmRsStrategy::kFusedPush: return "fused_push";
    case GemmRsStrategy::kDecomposed: return "decomposed";
  }
  return "?";
}

GemmRsStrategy parse_gemm_rs_strategy(std::string_view name) {
  return parse_strategy(name,
                        {GemmRsStrategy::kAuto, GemmRsStrategy::kFusedCopyEngine,
                         GemmRsStrategy::kFusedPush, GemmRsStrategy::kDecomposed},
                        "GEMM-RS", "parse_gemm_rs_strategy");
}

GemmRsStrategy gemm_rs_strategy_from_env() {
  return strategy_from_env("WEFT_GEMM_RS_STRATEGY", parse_gemm_rs_strategy);
}

void validate_gemm_rs_args(const GemmRsArgs& a, int world, int64_t max_m, int64_t max_n,
                           const char* where) {
  check_dtype(a.dtype, where);
  WEFT_CHECK_ARG_AT(where, a.m >= 1 && a.n >= 1 && a.k >= 1,
                    "m, n and k must be >= 1, got m={} n={} k={}", a.m, a.n, a.k);
  WEFT_CHECK_ARG_AT(where, a.m % world == 0,
                    "m ({}) must be a multiple of the world size ({}): rank r gets rows "
                    "[r * m/W, (r+1) * m/W)",
                    a.m, world);
  WEFT_CHECK_ARG_AT(where, a.k % 8 == 0, "k must be a multiple of 8 (16-byte rows), got {}", a.k);
  WEFT_CHECK_ARG_AT(where, a.m <= max_m && a.n <= max_n,
                    "m = {}, n = {} exceed the workspace (max_m = {}, max_n = {} given at "
                    "construction); construct GemmRs with larger limits",
                    a.m, a.n, max_m, max_n);
  WEFT_CHECK_ARG_AT(where, a.m <= INT32_MAX && a.n <= INT32_MAX && a.k <= INT32_MAX,
                    "m, n, k must fit in int32");
  check_operands(a.a, a.lda, a.b, a.ldb, a.out, a.ldo, a.n, a.k, "out", "ldo", where);
}

GemmRsPlan plan_gemm_rs(const GemmRsProblem& p, GemmRsStrategy requested, const GemmRsOptions& o,
                        const MachineModel& mm) {
  GemmRsPlan plan;
  const int W = std::max(1, p.world);
  const int sms = std::max(1, p.sms);
  const int64_t mr = p.m / W;
  auto config_for = [&](int64_t rows) {
    return hook_config(o.gemm_config, rows, p.n, p.k, p.dtype, sms);
  };
  const gemm::Config cfg = config_for(p.m);
  const gemm::TileGrid grid = gemm::tile_grid(cfg, p.m, p.n);
  plan.waves = double(grid.num_tiles) / sms;

  // Model (microseconds): rows for rank+1 are computed first and rank's own last, so the last
  // remote chunk is done at (W-1)/W of the GEMM and then needs one copy-engine transfer; the
  // reduction reads W partials and writes the result.
  const double eb = double(element_bytes(p.dtype));
  const double t_gemm = estimate_gemm_us(mm, p.m, p.n, p.k, grid.num_tiles, sms);
  const double chunk_bytes = double(mr) * double(p.n) * eb;
  const double t_chunk = transfer_us(chunk_bytes, mm.ce_peer_gbps);
  const double t_reduce = transfer_us((W + 1) * chunk_bytes, mm.hbm_gbps) + mm.launch_us;
  plan.est_fused_us = mm.barrier_us +
                      std::max(t_gemm, (W > 1 ? t_gemm * (W - 1) / W + t_chunk : 0.0)) + t_reduce;
  const double g_chunk = estimate_gemm_us(mm, mr, p.n, p.k, 0, sms) + mm.launch_us;
  plan.est_decomposed_us =
      std::max(W * g_chunk, (W > 1 ? (W - 1) * g_chunk + t_chunk : 0.0)) + t_reduce;

  const auto [s, why] = choose_fused_or_decomposed(
      requested, GemmRsStrategy::kFusedCopyEngine, GemmRsStrategy::kDecomposed, W, plan.waves, cfg,
      o.fused_min_waves, "one rank: a plain cuBLAS GEMM (the reduction copies it out)",
      "one persistent GEMM on every SM, rows sent by copy engine (0 SMs) as soon as their "
      "m-blocks complete",
      "too few tiles to order by destination; cuBLAS per destination chunk, each sent by copy "
      "engine when done");
  plan.strategy = s;
  plan.config = s == GemmRsStrategy::kFusedPush ? config_for(mr) : cfg;
  plan.reason = fmt::format("{}: {} (model: fused {:.0f} us, decomposed {:.0f} us)", to_string(s),
                            why, plan.est_fused_us, plan.est_decomposed_us);
  return plan;
}

}  // namespace weft::tp
