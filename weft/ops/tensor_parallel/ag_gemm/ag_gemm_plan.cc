// AG-GEMM planner and argument validation: host only, no GPU (CPU-tested).
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"  // kArMaxBlocks (push_gather runs its kernel)
#include "weft/runtime/error.h"

namespace weft::tp {

const char* to_string(AgGemmStrategy s) {
  switch (s) {
    case AgGemmStrategy::kAuto: return "auto";
    case AgGemmStrategy::kFusedCopyEngine: return "fused_ce";
    case AgGemmStrategy::kFusedPush: return "fused_push";
    case AgGemmStrategy::kDecomposedLocalFirst: return "decomposed_local_first";
    case AgGemmStrategy::kDecomposedPerChunk: return "decomposed_per_chunk";
    case AgGemmStrategy::kPushGather: return "push_gather";
  }
  return "?";
}

AgGemmStrategy parse_ag_gemm_strategy(std::string_view name) {
  return parse_strategy(
      name,
      {AgGemmStrategy::kAuto, AgGemmStrategy::kFusedCopyEngine, AgGemmStrategy::kFusedPush,
       AgGemmStrategy::kDecomposedLocalFirst, AgGemmStrategy::kDecomposedPerChunk,
       AgGemmStrategy::kPushGather},
      "AG-GEMM", "parse_ag_gemm_strategy");
}

AgGemmStrategy ag_gemm_strategy_from_env() {
  return strategy_from_env("WEFT_AG_GEMM_STRATEGY", parse_ag_gemm_strategy);
}

namespace {

// What the gathered A needs (k's alignment, int32 extents, the workspace's capacity); m_local and
// k already checked >= 1; n the GEMM's, or 0 for the gather alone.
void check_gather_extent(int64_t m_local, int64_t n, int64_t k, int world, int64_t capacity,
                         const char* where) {
  WEFT_CHECK_ARG_AT(where, k % 8 == 0,
                    "k must be a multiple of 8 (16-byte rows for TMA and copy engines), got {}", k);
  // (Bounded before multiplying: a huge m_local would wrap M.)
  WEFT_CHECK_ARG_AT(where,
                    m_local <= INT32_MAX / std::max(1, world) && n <= INT32_MAX && k <= INT32_MAX,
                    "M = {} x {}{}, k = {} must each fit in int32", world, m_local,
                    n > 0 ? fmt::format(", n = {}", n) : "", k);
  const int64_t m = m_local * world;
  WEFT_CHECK_ARG_AT(where, m * k <= capacity,
                    "the gathered A ({} x {} = {} elements) exceeds the workspace ({} elements = "
                    "max_m x max_k given at construction); construct AgGemm with larger max_m / "
                    "max_k",
                    m, k, m * k, capacity);
}

}  // namespace

void validate_ag_gather_args(const AgGatherArgs& a, int world, int64_t capacity,
                             const char* where) {
  check_dtype(a.dtype, where);
  WEFT_CHECK_ARG_AT(where, a.m_local >= 1 && a.k >= 1, "m_local and k must be >= 1, got {} and {}",
                    a.m_local, a.k);
  check_gather_extent(a.m_local, 0, a.k, world, capacity, where);
  const int64_t lda = a.lda ? a.lda : a.k;
  WEFT_CHECK_ARG_AT(where, lda >= a.k && lda % 8 == 0,
                    "lda must be >= k ({}) and a multiple of 8, got {}", a.k, lda);
  WEFT_CHECK_ARG_AT(where, a.a != nullptr, "A must be non-null");
  WEFT_CHECK_ARG_AT(where, is_aligned(a.a, 16), "A ({}) must be 16-byte aligned", a.a);
}

void validate_ag_gemm_shape(const AgGemmArgs& a, int world, int64_t capacity, const char* where) {
  check_dtype(a.dtype, where);
  WEFT_CHECK_ARG_AT(where, a.m_local >= 1 && a.n >= 1 && a.k >= 1,
                    "m_local, n and k must be >= 1, got m_local={} n={} k={}", a.m_local, a.n, a.k);
  check_gather_extent(a.m_local, a.n, a.k, world, capacity, where);
  WEFT_CHECK_ARG_AT(where,
                    a.b_layout == BLayout::kNK || (a.strategy != AgGemmStrategy::kFusedCopyEngine &&
                                                   a.strategy != AgGemmStrategy::kFusedPush),
                    "{} takes B as [n, k] only (weft's GEMM reads K-major B); with B as [k, n] "
                    "ask for a decomposed strategy or push_gather",
                    to_string(a.strategy));
}

void validate_ag_gemm_args(const AgGemmArgs& a, int world, int64_t capacity, const char* where) {
  validate_ag_gemm_shape(a, world, capacity, where);
  check_operands(a.a, a.lda, a.b, a.ldb, a.c, a.ldc, a.m_local, a.m_local * world, a.n, a.k,
                 a.dtype, "C", "ldc", where, a.b_layout);
}

bool push_gather_fits(const AgGemmProblem& p, const AgGemmOptions& o) {
  return p.world > 1 && o.push_gather_max_bytes > 0 && (p.m_local * p.k) % 8 == 0 &&
         p.m_local * p.world * p.k * element_bytes(p.dtype) <= o.push_gather_max_bytes;
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
    return hook_config(o.gemm_config, M, p.n, p.k, p.dtype, gemm_sms);
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

  const bool push_fits = push_gather_fits(p, o);
  auto [s, why] = choose_fused_or_decomposed(
      requested == AgGemmStrategy::kPushGather ? AgGemmStrategy::kAuto : requested,
      AgGemmStrategy::kFusedCopyEngine, AgGemmStrategy::kDecomposedLocalFirst, W,
      plan.waves, cfg_all, o.fused_min_waves, "one rank: nothing to gather, a plain cuBLAS GEMM",
      "the GEMM starts on the own chunk while copy engines gather (0 SMs, one peer at a time) and "
      "waits per chunk",
      "every CTA would wait for its chunk at once, so cuBLAS runs on the own chunk during the "
      "copy-engine gather, then on the rest");
  const int64_t gathered_kib = M * p.k * element_bytes(p.dtype) >> 10;
  if (requested == AgGemmStrategy::kPushGather && !push_fits) {
    why = fmt::format("push_gather requested, but it needs > 1 rank and <= {} KiB of gathered A "
                      "({} KiB here); {} instead: {}",
                      o.push_gather_max_bytes >> 10, gathered_kib, to_string(s), why);
  } else if (requested == AgGemmStrategy::kPushGather) {
    s = AgGemmStrategy::kPushGather;
    why = "requested";
  } else if (requested == AgGemmStrategy::kAuto && push_fits) {
    s = AgGemmStrategy::kPushGather;
    why = fmt::format("{} KiB of gathered A <= {} KiB: one push-gather kernel and one cuBLAS "
                      "GEMM, none of the other strategies' fixed costs (prologue and barrier, "
                      "copy-engine operations, two launches)",
                      gathered_kib, o.push_gather_max_bytes >> 10);
  }
  if (p.b_layout == BLayout::kKN &&
      (s == AgGemmStrategy::kFusedCopyEngine || s == AgGemmStrategy::kFusedPush)) {
    // (A per-call request for a fused strategy with such a B is rejected by the argument checks;
    // this is the model's choice or the options' / environment's default.)
    why = fmt::format("B is [k, n], which only the cuBLAS strategies take; not {}: {}",
                      to_string(s), why);
    s = AgGemmStrategy::kDecomposedLocalFirst;
  }
  plan.strategy = s;
  if (s == AgGemmStrategy::kPushGather) {
    // GEMM-AR's one-shot work split over this rank's rows (m_local x k elements).
    const int64_t share = p.m_local * p.k;
    const PushSplit split = push_split(share, sms);
    plan.push_blocks = split.blocks;
    plan.push_slice_elems = split.slice_elems;
    plan.push_slices = split.slices;
    why += fmt::format("; {} blocks, {} items of {} elements", plan.push_blocks, plan.push_slices,
                       plan.push_slice_elems);
  }
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
