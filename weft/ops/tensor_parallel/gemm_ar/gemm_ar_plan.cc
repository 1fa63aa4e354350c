// GEMM-AR planner and argument validation: host only, no GPU (CPU-tested).
#include <algorithm>
#include <cstdlib>

#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"
#include "weft/runtime/error.h"

namespace weft::tp {
namespace {

bool is_two_shot(GemmArStrategy s) {
  return s == GemmArStrategy::kTwoShot || s == GemmArStrategy::kTwoShotWeft;
}

}  // namespace

const char* to_string(GemmArStrategy s) {
  switch (s) {
    case GemmArStrategy::kAuto: return "auto";
    case GemmArStrategy::kOneShot: return "oneshot";
    case GemmArStrategy::kTwoShot: return "twoshot";
    case GemmArStrategy::kOneShotWeft: return "oneshot_weft";
    case GemmArStrategy::kTwoShotWeft: return "twoshot_weft";
  }
  return "?";
}

GemmArStrategy parse_gemm_ar_strategy(std::string_view name) {
  return parse_strategy(name,
                        {GemmArStrategy::kAuto, GemmArStrategy::kOneShot, GemmArStrategy::kTwoShot,
                         GemmArStrategy::kOneShotWeft, GemmArStrategy::kTwoShotWeft},
                        "GEMM-AR", "parse_gemm_ar_strategy");
}

GemmArStrategy gemm_ar_strategy_from_env() {
  return strategy_from_env("WEFT_GEMM_AR_STRATEGY", parse_gemm_ar_strategy);
}

void validate_gemm_ar_shape(const GemmArArgs& a, int64_t capacity, const char* where) {
  check_dtype(a.dtype, where);
  WEFT_CHECK_ARG_AT(where, a.m >= 1 && a.n >= 1 && a.k >= 1,
                    "m, n and k must be >= 1, got m={} n={} k={}", a.m, a.n, a.k);
  WEFT_CHECK_ARG_AT(where, a.k % 8 == 0, "k must be a multiple of 8 (16-byte rows), got {}", a.k);
  WEFT_CHECK_ARG_AT(where, a.m <= INT32_MAX && a.n <= INT32_MAX && a.k <= INT32_MAX,
                    "m, n, k must fit in int32");  // (first: m x n below must not overflow)
  WEFT_CHECK_ARG_AT(where, a.m * a.n <= capacity,
                    "m x n = {} x {} = {} elements exceed the workspace ({} = max_m x max_n given "
                    "at construction); construct GemmAr with larger limits",
                    a.m, a.n, a.m * a.n, capacity);
}

void validate_gemm_ar_args(const GemmArArgs& a, int64_t capacity, const char* where) {
  validate_gemm_ar_shape(a, capacity, where);
  check_operands(a.a, a.lda, a.b, a.ldb, a.out, a.ldo, a.m, a.m, a.n, a.k, a.dtype, "out", "ldo",
                 where);
}

PushSplit push_split(int64_t share, int sms) {
  PushSplit r;
  r.slice_elems = round_up(std::max<int64_t>(1024, ceil_div(share, kPushSplitSlices)), 8);
  r.slices = static_cast<int32_t>(ceil_div(share, r.slice_elems));
  r.blocks = static_cast<int>(
      std::min<int64_t>(std::clamp(sms, 1, kArMaxBlocks), int64_t(r.slices) * 2));
  return r;
}

GemmArPlan plan_gemm_ar(const GemmArProblem& p, GemmArStrategy requested,
                        const GemmArOptions& o) {
  GemmArPlan plan;
  const int W = std::max(1, p.world);
  const int64_t total = p.m * p.n;
  const int64_t total8 = round_up(total, 8);
  const int64_t bytes = total * element_bytes(p.dtype);
  GemmArStrategy s = requested;
  std::string why;
  if (s == GemmArStrategy::kAuto) {
    if (W <= 2 || bytes <= o.oneshot_max_bytes) {
      s = GemmArStrategy::kOneShot;
      why = W <= 2 ? fmt::format("{} ranks: one-shot moves no more bytes than two-shot and "
                                 "synchronizes once",
                                 W)
                   : fmt::format("{} KiB per rank <= {} KiB: latency-bound, one synchronization",
                                 bytes >> 10, o.oneshot_max_bytes >> 10);
    } else {
      s = GemmArStrategy::kTwoShot;
      why = fmt::format("{} KiB per rank > {} KiB: bandwidth-bound, two-shot sends 2/W of what "
                        "one-shot does",
                        bytes >> 10, o.oneshot_max_bytes >> 10);
    }
    why += "; cuBLASLt for the decode GEMM";
  } else {
    why = "requested";
  }
  plan.strategy = s;
  const int cap = o.max_blocks > 0 ? o.max_blocks : p.sms;
  plan.blocks = std::clamp(cap, 1, kArMaxBlocks);
  if (is_two_shot(s)) {
    const int64_t chunk = round_up(ceil_div(total, W), 8);
    plan.slice_elems = round_up(std::max<int64_t>(1024, ceil_div(chunk, plan.blocks)), 8);
    plan.slices = static_cast<int32_t>(ceil_div(chunk, plan.slice_elems));
  } else {
    plan.slice_elems = round_up(std::max<int64_t>(1024, ceil_div(total8, 2 * plan.blocks)), 8);
    plan.slices = static_cast<int32_t>(ceil_div(total8, plan.slice_elems));
  }
  plan.blocks = static_cast<int>(std::min<int64_t>(plan.blocks, int64_t(plan.slices) * 2));
  plan.reason = fmt::format("{}: {} ({} blocks, {} items of {} elements per phase)", to_string(s),
                            why, plan.blocks, plan.slices, plan.slice_elems);
  return plan;
}

}  // namespace weft::tp
