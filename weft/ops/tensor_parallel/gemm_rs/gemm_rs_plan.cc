// GEMM-RS planner and argument validation: host only, no GPU (CPU-tested).
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"  // kArMaxBlocks (push_reduce runs its kernel)
#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs.h"
#include "weft/runtime/error.h"

namespace weft::tp {

const char* to_string(GemmRsStrategy s) {
  switch (s) {
    case GemmRsStrategy::kAuto: return "auto";
    case GemmRsStrategy::kFusedCopyEngine: return "fused_ce";
    case GemmRsStrategy::kFusedPush: return "fused_push";
    case GemmRsStrategy::kDecomposed: return "decomposed";
    case GemmRsStrategy::kDecomposedCols:
      return "decomposed_cols";
    case GemmRsStrategy::kPushReduce: return "push_reduce";
    case GemmRsStrategy::kGatherInputs: return "gather_inputs";
  }
  return "?";
}

GemmRsStrategy parse_gemm_rs_strategy(std::string_view name) {
  return parse_strategy(
      name,
      {GemmRsStrategy::kAuto, GemmRsStrategy::kFusedCopyEngine, GemmRsStrategy::kFusedPush,
       GemmRsStrategy::kDecomposed, GemmRsStrategy::kDecomposedCols, GemmRsStrategy::kPushReduce,
       GemmRsStrategy::kGatherInputs},
      "GEMM-RS", "parse_gemm_rs_strategy");
}

GemmRsStrategy gemm_rs_strategy_from_env() {
  return strategy_from_env("WEFT_GEMM_RS_STRATEGY", parse_gemm_rs_strategy);
}

void validate_gemm_rs_shape(const GemmRsArgs& a, int world, int64_t max_m, int64_t max_n,
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
  WEFT_CHECK_ARG_AT(where,
                    a.b_layout == BLayout::kNK || (a.strategy != GemmRsStrategy::kFusedCopyEngine &&
                                                   a.strategy != GemmRsStrategy::kFusedPush &&
                                                   a.strategy != GemmRsStrategy::kGatherInputs),
                    "{} takes B as [n, k] only (weft's GEMM reads K-major B, gather_inputs sends "
                    "B's rows); with B as [k, n] ask for decomposed, decomposed_cols or "
                    "push_reduce",
                    to_string(a.strategy));
}

void validate_gemm_rs_args(const GemmRsArgs& a, int world, int64_t max_m, int64_t max_n,
                           const char* where) {
  validate_gemm_rs_shape(a, world, max_m, max_n, where);
  check_operands(a.a, a.lda, a.b, a.ldb, a.out, a.ldo, a.m, a.m / world, a.n, a.k, a.dtype, "out",
                 "ldo", where, a.b_layout);
}

bool push_reduce_fits(const GemmRsProblem& p, const GemmRsOptions& o) {
  const int64_t W = std::max(1, p.world);
  const int64_t rows = p.m / W;
  return W > 1 && o.push_reduce_max_bytes > 0 && (rows * p.n) % 8 == 0 &&
         p.m * p.n * element_bytes(p.dtype) <= o.push_reduce_max_bytes;
}

int64_t gemm_rs_slot_elems(const GemmRsOptions& o, int world) {
  return round_up(ceil_div(o.max_m, std::max(1, world)) * o.max_n, 8);
}

bool gather_inputs_fits(const GemmRsProblem& p, const GemmRsOptions& o) {
  const int64_t W = std::max(1, p.world);
  return W > 1 && p.b_layout == BLayout::kNK &&
         (W - 1) * (p.m / W + p.n) * p.k <= W * gemm_rs_slot_elems(o, p.world);
}

ColumnBlocks column_blocks(int64_t n, int want) {
  ColumnBlocks b;
  if (n <= 0) return b;  // plan() of an invalid shape: run() rejects it
  b.width = std::min(round_up(ceil_div(n, std::max(1, want)), 8), std::max<int64_t>(n, 1));
  b.count = static_cast<int>(ceil_div(n, b.width));
  return b;
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
  // decomposed_cols' column blocks: as configured, else 2, or 4 where the model says 4 is more
  // than 3% faster. Each block adds a launch and W-1 copy-engine operations, and a block under one
  // wave of tiles runs below the model's rate: on 4x H100 at 1024 x 8192 x 28672, 2 blocks took
  // 204-209 us, 4 took 210-213 and 8 took 267-271 where the model had them within 10 us.
  int want_cols = o.col_chunks;
  if (want_cols <= 0)
    want_cols =
        gemm_rs_costs(p, cfg, mm, 4).cols_us < 0.97 * gemm_rs_costs(p, cfg, mm, 2).cols_us ? 4 : 2;
  const GemmRsCosts c = gemm_rs_costs(p, cfg, mm, want_cols);
  const ColumnBlocks blocks = column_blocks(p.n, want_cols);
  plan.col_chunks = blocks.count;
  plan.col_width = blocks.width;
  plan.est_cols_us = c.cols_us;
  const bool gather_fits = gather_inputs_fits(p, o);
  plan.est_fused_us = c.fused_us;
  plan.est_decomposed_us = c.decomposed_us;
  plan.est_gather_us = gather_fits ? c.gather_us : 0;

  // Why, in the model's terms (docs/perf.md "GEMM-RS analysis"): the fused GEMM pays
  // hook_tile_us per tile slot for its per-tile signals, cuBLAS per destination chunk pays its
  // W launches; both pay the reduction after the GEMM.
  const std::string terms = fmt::format(
      "model: fused {:.0f} us (GEMM {} tile slots x ({:.0f} + {:.0f} per-tile signal) us = "
      "{:.2f}x one cuBLAS GEMM), decomposed {:.0f} us ({} cuBLAS launches of {} rows = {:.2f}x), "
      "decomposed_cols {:.0f} us ({} cuBLAS launches of {} columns), reduction {:.0f} us, one "
      "chunk by copy engine {:.0f} us{}",
      c.fused_us, c.slots, c.tile_us, mm.hook_tile_us, c.fused_gemm_us / c.one_gemm_us,
      c.decomposed_us, W, mr, W * c.chunk_gemm_us / c.one_gemm_us, c.cols_us, blocks.count,
      blocks.width, c.reduce_us, c.send_us,
      gather_fits ? fmt::format("; gather_inputs {:.0f} us ({} steps of A rows and B by copy "
                                "engine, {:.0f} us each)",
                                c.gather_us, W - 1, c.gather_send_us)
                  : std::string());
  GemmRsStrategy s;
  std::string why;
  const bool push_fits = push_reduce_fits(p, o);
  const int64_t partial_kib = p.m * p.n * element_bytes(p.dtype) >> 10;
  if (requested == GemmRsStrategy::kPushReduce && !push_fits) {
    s = GemmRsStrategy::kDecomposed;
    why = fmt::format("push_reduce requested, but it needs > 1 rank, each rank's share "
                      "((M/W) x N elements) a multiple of 8 and <= {} KiB of partial product per "
                      "rank ({} KiB here); decomposed instead",
                      o.push_reduce_max_bytes >> 10, partial_kib);
  } else if (requested == GemmRsStrategy::kGatherInputs && !gather_fits) {
    s = GemmRsStrategy::kDecomposed;
    why = fmt::format(
        "gather_inputs requested, but it needs > 1 rank, B as [n, k] and receive slots that hold "
        "(W-1) x (M/W + N) x k = {} elements (k = K/W per rank; the W slots of "
        "max_m/W x max_n hold {}); decomposed instead",
        (W - 1) * (mr + p.n) * p.k, W * gemm_rs_slot_elems(o, W));
  } else if (requested != GemmRsStrategy::kAuto) {
    s = requested;
    why = "requested";
  } else if (push_fits) {
    s = GemmRsStrategy::kPushReduce;
    why = fmt::format("{} KiB of partial product per rank <= {} KiB: one GEMM and one "
                      "push-reduce kernel, none of the other strategies' fixed costs (prologue "
                      "and barrier, W launches, copy-engine operations)",
                      partial_kib, o.push_reduce_max_bytes >> 10);
  } else if (W == 1) {
    s = GemmRsStrategy::kDecomposed;
    why = "one rank: a plain cuBLAS GEMM (the reduction copies it out)";
  } else if (plan.waves < o.fused_min_waves) {
    s = GemmRsStrategy::kDecomposed;
    why = waves_reason(plan.waves, cfg, o.fused_min_waves,
                       "too few tiles to order by destination; cuBLAS per destination chunk, "
                       "each sent by copy engine when done");
  } else if (c.fused_us < c.decomposed_us) {
    s = GemmRsStrategy::kFusedCopyEngine;
    why = "fused is faster in the model: one persistent GEMM on every SM, rows sent by copy "
          "engine (0 SMs) as soon as their m-blocks complete";
  } else {
    s = GemmRsStrategy::kDecomposed;
    why = "decomposed is faster in the model: cuBLAS per destination chunk, each sent by copy "
          "engine (0 SMs) when done";
  }
  if (p.b_layout == BLayout::kKN &&
      (s == GemmRsStrategy::kFusedCopyEngine || s == GemmRsStrategy::kFusedPush)) {
    // (A per-call request for it with such a B is rejected by the argument checks; this is the
    // model's choice or the options' / environment's default.)
    why = fmt::format("B is [k, n], which only the cuBLAS strategies take; not {}: {}",
                      to_string(s), why);
    s = GemmRsStrategy::kDecomposed;
  }
  // decomposed_cols replaces decomposed when the model says it is faster by a margin, where the
  // row chunks' re-reads of B make them memory-bound (measured on 4x H100 only, docs/perf.md
  // "Fourteenth pass"). It replaces fused_ce by the same margin, or at all where the fused GEMM
  // has at most 2 tile slots: there fused_ce's model misses its exposed last sends (1024 x 8192 x
  // 28672 on 4 ranks, the one shape where both were measured: 207 us modelled, 214-216 measured
  // on H100 and 232 on H200; decomposed_cols 204-209 on H100).
  constexpr double kColsMargin = 0.03;
  const bool fused = s == GemmRsStrategy::kFusedCopyEngine;
  const double before_cols = fused ? c.fused_us : c.decomposed_us;
  const double cols_margin = fused && c.slots <= 2 ? 0.0 : kColsMargin;
  if (requested == GemmRsStrategy::kAuto && W > 1 && !push_fits &&
      (s == GemmRsStrategy::kDecomposed || fused) &&
      c.cols_us < (1.0 - cols_margin) * before_cols) {
    why = fmt::format(
        "decomposed_cols is faster in the model than {} ({:.0f} us{}): cuBLAS per block of {} "
        "columns over all rows reads B once, {}",
        to_string(s), before_cols,
        cols_margin > 0 ? fmt::format(", by more than {:.0f}%", cols_margin * 100) : "",
        blocks.width,
        fused ? "and its last block's sends are not behind a GEMM's tail either"
              : fmt::format("where {} row chunks read it {} times", W, W));
    s = GemmRsStrategy::kDecomposedCols;
  }
  // gather_inputs replaces the choice above when it fits and the model says it is faster by a
  // margin (measured only at 2 ranks, 8192 x 8192 x 4096 and 8192^3: a near tie stays with the
  // strategy measured at more shapes).
  constexpr double kGatherMargin = 0.03;
  const double chosen_us = s == GemmRsStrategy::kFusedCopyEngine  ? c.fused_us
                           : s == GemmRsStrategy::kDecomposedCols ? c.cols_us
                                                                  : c.decomposed_us;
  if (requested == GemmRsStrategy::kAuto && W > 1 && !push_fits && gather_fits &&
      c.gather_us < (1.0 - kGatherMargin) * chosen_us) {
    why = fmt::format(
        "gather_inputs is faster in the model than {} ({:.0f} us) by more than "
        "{:.0f}%: each rank gathers its rows of A and every B by copy engine and "
        "sums the K slices in cuBLAS as they arrive, no partial products and no "
        "reduction pass",
        to_string(s), chosen_us, kGatherMargin * 100);
    s = GemmRsStrategy::kGatherInputs;
  }
  plan.strategy = s;
  plan.config = s == GemmRsStrategy::kFusedPush ? config_for(mr) : cfg;
  if (s == GemmRsStrategy::kPushReduce) {
    // GEMM-AR's two-shot work split over this rank's share (mr x n elements).
    const int64_t share = mr * p.n;
    const PushSplit split = push_split(share, sms);
    plan.push_blocks = split.blocks;
    plan.push_slice_elems = split.slice_elems;
    plan.push_slices = split.slices;
  }
  plan.reason = fmt::format("{}: {} ({})", to_string(s), why, terms);
  if (s == GemmRsStrategy::kPushReduce)
    plan.reason += fmt::format("; {} blocks, {} items of {} elements", plan.push_blocks,
                               plan.push_slices, plan.push_slice_elems);
  return plan;
}

GemmRsCosts gemm_rs_costs(const GemmRsProblem& p, const gemm::Config& cfg, const MachineModel& mm,
                          int col_chunks) {
  GemmRsCosts c;
  const int W = std::max(1, p.world);
  const int sms = std::max(1, p.sms);
  const int64_t mr = p.m / W;
  const double eb = double(element_bytes(p.dtype));
  const gemm::TileGrid grid = gemm::tile_grid(cfg, p.m, p.n);
  const int64_t ctas = std::max<int64_t>(1, std::min<int64_t>(grid.num_units, sms));
  // One tile's main loop on one SM at the full-GPU rate.
  c.tile_us = 2.0 * cfg.block_m * cfg.block_n * double(p.k) / (mm.gemm_tflops * 1e6 / sms);
  c.slots = ceil_div(grid.num_units, ctas);
  c.one_gemm_us = estimate_gemm_us(mm, p.m, p.n, p.k, grid.num_tiles, sms);
  const double slot_us = c.tile_us + mm.hook_tile_us;
  const double chunk_bytes = double(mr) * double(p.n) * eb;
  c.send_us = mm.ce_op_us + transfer_us(chunk_bytes, mm.ce_peer_gbps);
  // W partial chunks read, one written.
  c.reduce_us = transfer_us((W + 1) * chunk_bytes, mm.hbm_gbps) + mm.launch_us;

  // Fused: a re-arm launch, then the persistent GEMM computes destination rank+1's m-blocks
  // first, own rows last; chunk s leaves (one copy at a time) once its m-blocks are done, i.e.
  // after the tile slots that cover them. The reduction follows the GEMM and the last send.
  double sends_end = 0;
  for (int s = 0; s < W - 1; ++s) {
    const int64_t mblocks = ceil_div((s + 1) * int64_t(grid.tiles_m), W);
    const double done = double(ceil_div(mblocks * grid.units_n, ctas)) * slot_us;
    sends_end = std::max(done, sends_end) + c.send_us;
  }
  c.fused_gemm_us = double(c.slots) * slot_us;
  c.fused_us = mm.launch_us + std::max(c.fused_gemm_us, sends_end) + c.reduce_us;

  // Decomposed: W cuBLAS launches of mr rows (rank+1's first, own last), each chunk sent when
  // computed. A chunk of at most one wave of tiles fills the GPU in one pass (cuBLAS picks
  // smaller tiles): no quantization, no overhead.
  // A launch of part of the product: wave quantization and the chunk overhead above one wave of
  // tiles, priced by the soft roofline (every operand read once from HBM).
  auto part_gemm_us = [&](int64_t m, int64_t n) {
    const int64_t tiles = ceil_div(m, cfg.block_m) * ceil_div(n, cfg.block_n);
    double f = estimate_gemm_us(mm, m, n, p.k, 0, sms);
    if (tiles > sms)
      f = estimate_gemm_us(mm, m, n, p.k, tiles, sms) * (1.0 + mm.chunk_gemm_overhead);
    const double b = transfer_us(double(m * p.k + n * p.k + m * n) * eb, mm.hbm_gbps);
    return std::pow(std::pow(f, 4) + std::pow(b, 4), 0.25) + mm.launch_us;
  };
  c.chunk_gemm_us = part_gemm_us(mr, p.n);
  sends_end = 0;
  for (int s = 0; s < W - 1; ++s)
    sends_end = std::max((s + 1) * c.chunk_gemm_us, sends_end) + c.send_us;
  c.decomposed_us = std::max(W * c.chunk_gemm_us, sends_end) + c.reduce_us;

  // gather_inputs: the same W chunk GEMMs, the s-th (s >= 1) after step s's A rows and B have
  // arrived (a stream wait) and with an addend; the steps go one at a time after the barrier.
  c.gather_send_us =
      mm.ce_op_us + transfer_us(double(mr + p.n) * double(p.k) * eb, mm.ce_busy_gbps);
  const double addend_us = mm.addend_exposed * transfer_us(chunk_bytes, mm.hbm_gbps);
  const double ready = mm.launch_us + mm.barrier_us;
  double arrived = ready, end = ready + c.chunk_gemm_us;
  for (int s = 1; s < W; ++s) {
    arrived += c.gather_send_us;
    end = std::max(end, arrived + mm.launch_us) + c.chunk_gemm_us + addend_us;
  }
  c.gather_us = end;

  // decomposed_cols: P launches of all M rows x one column block; after each, the W-1 peers'
  // pieces of it (mr x width) leave one after another; the last block's are not hidden.
  const ColumnBlocks blocks = column_blocks(p.n, col_chunks);
  c.col_gemm_us = part_gemm_us(p.m, blocks.width);
  const double piece_us =
      mm.ce_op_us + transfer_us(double(mr) * double(blocks.width) * eb, mm.ce_peer_gbps);
  sends_end = 0;
  for (int j = 0; j < blocks.count; ++j)
    sends_end = std::max((j + 1) * c.col_gemm_us, sends_end) + (W - 1) * piece_us;
  c.cols_us = std::max(blocks.count * c.col_gemm_us, sends_end) + c.reduce_us;
  return c;
}

}  // namespace weft::tp
