// AG-GEMM planner and argument validation: host only, no GPU (CPU-tested).
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm.h"
#include "weft/runtime/error.h"

namespace weft::tp {

const char* to_string(AgGemmStrategy s) {
  switch (s) {
    case AgGemmStrategy::kAuto: return "auto";
    case AgGemmStrategy::kFusedCopyEngine: return "fused_ce";
    case AgGemmStrategy::kFusedPush: return "fused_push";
    case AgGemmStrategy::kDecomposedLocalFirst: return "decomposed_local_first";
    case AgGemmStrategy::kDecomposedPerChunk: return "decomposed_per_chunk";
  }
  return "?";
}

AgGemmStrategy parse_ag_gemm_strategy(std::string_view name) {
  for (AgGemmStrategy s : {AgGemmStrategy::kAuto, AgGemmStrategy::kFusedCopyEngine,
                           AgGemmStrategy::kFusedPush, AgGemmStrategy::kDecomposedLocalFirst,
                           AgGemmStrategy::kDecomposedPerChunk})
    if (name == to_string(s)) return s;
  throw InvalidArgument("parse_ag_gemm_strategy",
                        fmt::format("unknown AG-GEMM strategy '{}'; choose one of auto, fused_ce, "
                                    "fused_push, decomposed_local_first, decomposed_per_chunk",
                                    name));
}

AgGemmStrategy ag_gemm_strategy_from_env() {
  const char* env = std::getenv("WEFT_AG_GEMM_STRATEGY");
  if (env == nullptr || *env == '\0') return AgGemmStrategy::kAuto;
  return parse_ag_gemm_strategy(env);
}

void validate_ag_gemm_args(const AgGemmArgs& a, int world, int64_t capacity, const char* where) {
  WEFT_CHECK_ARG_AT(where, a.dtype == DType::kBF16 || a.dtype == DType::kFP16,
                    "dtype must be bf16 or fp16, got {}", to_string(a.dtype));
  WEFT_CHECK_ARG_AT(where, a.m_local >= 1 && a.n >= 1 && a.k >= 1,
                    "m_local, n and k must be >= 1, got m_local={} n={} k={}", a.m_local, a.n, a.k);
  WEFT_CHECK_ARG_AT(where, a.k % 8 == 0,
                    "k must be a multiple of 8 (16-byte rows for TMA and copy engines), got {}",
                    a.k);
  const int64_t m = a.m_local * world;
  WEFT_CHECK_ARG_AT(where, m <= INT32_MAX && a.n <= INT32_MAX && a.k <= INT32_MAX,
                    "M = {} x {}, n = {}, k = {} must each fit in int32", world, a.m_local, a.n,
                    a.k);
  WEFT_CHECK_ARG_AT(where, m * a.k <= capacity,
                    "the gathered A ({} x {} = {} elements) exceeds the workspace ({} elements = "
                    "max_m x max_k given at construction); construct AgGemm with larger max_m / "
                    "max_k",
                    m, a.k, m * a.k, capacity);
  const int64_t lda = a.lda ? a.lda : a.k, ldb = a.ldb ? a.ldb : a.k, ldc = a.ldc ? a.ldc : a.n;
  WEFT_CHECK_ARG_AT(where, lda >= a.k && lda % 8 == 0,
                    "lda must be >= k ({}) and a multiple of 8, got {}", a.k, lda);
  WEFT_CHECK_ARG_AT(where, ldb >= a.k && ldb % 8 == 0,
                    "ldb must be >= k ({}) and a multiple of 8, got {}", a.k, ldb);
  WEFT_CHECK_ARG_AT(where, ldc >= a.n, "ldc must be >= n ({}), got {}", a.n, ldc);
  WEFT_CHECK_ARG_AT(where, a.a != nullptr && a.b != nullptr && a.c != nullptr,
                    "A, B and C must be non-null (A={} B={} C={})", a.a, a.b,
                    static_cast<const void*>(a.c));
  WEFT_CHECK_ARG_AT(where, is_aligned(a.a, 16), "A ({}) must be 16-byte aligned", a.a);
  WEFT_CHECK_ARG_AT(where, is_aligned(a.b, 16), "B ({}) must be 16-byte aligned", a.b);
  WEFT_CHECK_ARG_AT(where, is_aligned(a.c, 16), "C ({}) must be 16-byte aligned",
                    static_cast<const void*>(a.c));
}

AgGemmPlan plan_ag_gemm(const AgGemmProblem& p, AgGemmStrategy requested,
                        const AgGemmOptions& o, const MachineModel& mm) {
  AgGemmPlan plan;
  const int W = std::max(1, p.world);
  const int64_t M = p.m_local * W;
  const int sms = std::max(2, p.sms);
  std::string notes;

  int chunks = o.chunks_per_rank;
  if (chunks < 1 || chunks > kAgMaxChunksPerRank || p.m_local % chunks != 0) {
    notes += fmt::format("; chunks_per_rank {} unusable for m_local {} (needs 1..{} dividing it), "
                         "using 1",
                         chunks, p.m_local, kAgMaxChunksPerRank);
    chunks = 1;
  }
  const int push_sms = std::clamp(o.push_sms, 1, sms - 1);

  auto config_for = [&](int gemm_sms) {
    return o.gemm_config.empty()
               ? gemm::choose_config(M, p.n, p.k, p.dtype, p.dtype, gemm_sms, /*hooks=*/true)
               : gemm::parse_config(o.gemm_config);
  };
  const gemm::Config cfg_all = config_for(sms);
  const gemm::TileGrid grid = gemm::tile_grid(cfg_all, M, p.n);
  plan.waves = double(grid.num_tiles) / sms;

  // Model (microseconds). The fused GEMM works through the chunks in arrival order; chunk s (s =
  // 0: own) is ready after the prologue's barrier plus s copy-engine chunk transfers (one peer at
  // a time at the one-peer rate); its share of the GEMM cannot start before then, and the last
  // chunk's tiles still take one full tile time after it lands.
  const double eb = double(element_bytes(p.dtype));
  const double t_gemm = estimate_gemm_us(mm, M, p.n, p.k, grid.num_tiles, sms);
  const double chunk_bytes = double(p.m_local) * double(p.k) * eb;
  const double t_chunk = transfer_us(chunk_bytes, mm.ce_peer_gbps);
  const double t_local_copy = transfer_us(2 * chunk_bytes, mm.hbm_gbps);
  const double g = t_gemm / W;
  const double tile = t_gemm / std::max(1.0, std::ceil(plan.waves));
  double f = std::max(mm.barrier_us, t_local_copy) + g;
  for (int s = 1; s < W; ++s) f = std::max(f, mm.barrier_us + s * t_chunk) + g;
  if (W > 1) f = std::max(f, mm.barrier_us + (W - 1) * t_chunk + tile);
  plan.est_fused_us = f;
  // Decomposed (local first): cuBLAS on the own chunk while the copy engines gather, then on the
  // rest (two launches); no wave quantization modelled for cuBLAS.
  const double g_own = estimate_gemm_us(mm, p.m_local, p.n, p.k, 0, sms);
  const double g_rest = estimate_gemm_us(mm, M - p.m_local, p.n, p.k, 0, sms);
  plan.est_decomposed_us =
      std::max(g_own, mm.barrier_us + (W - 1) * t_chunk) + g_rest + (W > 1 ? 2 * mm.launch_us : 0);

  AgGemmStrategy s = requested;
  std::string why;
  if (s == AgGemmStrategy::kAuto) {
    if (W == 1) {
      s = AgGemmStrategy::kDecomposedLocalFirst;
      why = "one rank: nothing to gather, a plain cuBLAS GEMM";
    } else if (plan.waves >= o.fused_min_waves) {
      s = AgGemmStrategy::kFusedCopyEngine;
      why = fmt::format(
          "{:.1f} waves of {}x{} tiles >= {:.1f}: the GEMM starts on the own chunk while copy "
          "engines gather (0 SMs, one peer at a time) and waits per chunk",
          plan.waves, cfg_all.block_m, cfg_all.block_n, o.fused_min_waves);
    } else {
      s = AgGemmStrategy::kDecomposedLocalFirst;
      why = fmt::format(
          "{:.2f} waves of {}x{} tiles < {:.1f}: every CTA would wait for its chunk at once, so "
          "cuBLAS runs on the own chunk during the copy-engine gather, then on the rest",
          plan.waves, cfg_all.block_m, cfg_all.block_n, o.fused_min_waves);
    }
  } else {
    why = "requested";
  }
  plan.strategy = s;
  if (s == AgGemmStrategy::kFusedPush) {
    plan.config = config_for(sms - push_sms);
    plan.config.max_sms = sms - push_sms;
    plan.push_sms = push_sms;
  } else {
    plan.config = cfg_all;
  }
  const bool fused = s == AgGemmStrategy::kFusedCopyEngine || s == AgGemmStrategy::kFusedPush;
  plan.chunks_per_rank = fused ? chunks : 1;
  plan.reason = fmt::format("{}: {} (model: fused {:.0f} us, decomposed {:.0f} us){}",
                            to_string(s), why, plan.est_fused_us, plan.est_decomposed_us,
                            fused ? notes : std::string());
  return plan;
}

}  // namespace weft::tp
