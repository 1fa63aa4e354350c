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
  for (GemmArStrategy s : {GemmArStrategy::kAuto, GemmArStrategy::kOneShot,
                           GemmArStrategy::kTwoShot, GemmArStrategy::kOneShotWeft,
                           GemmArStrategy::kTwoShotWeft})
    if (name == to_string(s)) return s;
  throw InvalidArgument("parse_gemm_ar_strategy",
                        fmt::format("unknown GEMM-AR strategy '{}'; choose one of auto, oneshot, "
                                    "twoshot, oneshot_weft, twoshot_weft",
                                    name));
}

GemmArStrategy gemm_ar_strategy_from_env() {
  const char* env = std::getenv("WEFT_GEMM_AR_STRATEGY");
  if (env == nullptr || *env == '\0') return GemmArStrategy::kAuto;
  return parse_gemm_ar_strategy(env);
}

void validate_gemm_ar_args(const GemmArArgs& a, int64_t capacity, const char* where) {
  WEFT_CHECK_ARG_AT(where, a.dtype == DType::kBF16 || a.dtype == DType::kFP16,
                    "dtype must be bf16 or fp16, got {}", to_string(a.dtype));
  WEFT_CHECK_ARG_AT(where, a.m >= 1 && a.n >= 1 && a.k >= 1,
                    "m, n and k must be >= 1, got m={} n={} k={}", a.m, a.n, a.k);
  WEFT_CHECK_ARG_AT(where, a.k % 8 == 0, "k must be a multiple of 8 (16-byte rows), got {}", a.k);
  WEFT_CHECK_ARG_AT(where, a.m * a.n <= capacity,
                    "m x n = {} x {} = {} elements exceed the workspace ({} = max_m x max_n given "
                    "at construction); construct GemmAr with larger limits",
                    a.m, a.n, a.m * a.n, capacity);
  WEFT_CHECK_ARG_AT(where, a.m <= INT32_MAX && a.n <= INT32_MAX && a.k <= INT32_MAX,
                    "m, n, k must fit in int32");
  const int64_t lda = a.lda ? a.lda : a.k, ldb = a.ldb ? a.ldb : a.k, ldo = a.ldo ? a.ldo : a.n;
  WEFT_CHECK_ARG_AT(where, lda >= a.k && lda % 8 == 0,
                    "lda must be >= k ({}) and a multiple of 8, got {}", a.k, lda);
  WEFT_CHECK_ARG_AT(where, ldb >= a.k && ldb % 8 == 0,
                    "ldb must be >= k ({}) and a multiple of 8, got {}", a.k, ldb);
  WEFT_CHECK_ARG_AT(where, ldo >= a.n, "ldo must be >= n ({}), got {}", a.n, ldo);
  WEFT_CHECK_ARG_AT(where, a.a != nullptr && a.b != nullptr && a.out != nullptr,
                    "A, B and out must be non-null (A={} B={} out={})", a.a, a.b,
                    static_cast<const void*>(a.out));
  WEFT_CHECK_ARG_AT(where, is_aligned(a.a, 16), "A ({}) must be 16-byte aligned", a.a);
  WEFT_CHECK_ARG_AT(where, is_aligned(a.b, 16), "B ({}) must be 16-byte aligned", a.b);
  WEFT_CHECK_ARG_AT(where, is_aligned(a.out, 16), "out ({}) must be 16-byte aligned",
                    static_cast<const void*>(a.out));
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
