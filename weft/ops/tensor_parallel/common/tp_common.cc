#include "weft/ops/tensor_parallel/common/tp_common.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#include "weft/runtime/error.h"
#include "weft/runtime/validate.h"

namespace weft::tp {

MachineModel machine_model_for(int sms, double peak_memory_gbps) {
  MachineModel mm;
  // H200: 4.8 TB/s peak by its data sheet (its attributes may say up to ~4.9), 3500 GB/s
  // measured for a streaming copy (read + write counted once each).
  constexpr double kH200PeakGbps = 4800;
  if (peak_memory_gbps > 0) mm.hbm_gbps = mm.hbm_gbps * peak_memory_gbps / kH200PeakGbps;
  if (sms > 0) {
    // Throughput scales with the SMs (the measured figure is for 132).
    mm.gemm_tflops = mm.gemm_tflops * sms / 132.0;
    mm.sms = sms;
  }
  return mm;
}

double estimate_gemm_us(const MachineModel& mm, int64_t m, int64_t n, int64_t k, int64_t tiles,
                        int sms) {
  const double flops = 2.0 * double(m) * double(n) * double(k);
  double us = flops / (mm.gemm_tflops * 1e6);
  if (tiles > 0 && sms > 0) {
    const double waves = double(tiles) / sms;
    us *= std::ceil(waves) / waves;
  }
  return us;
}

double transfer_us(double bytes, double gbps) { return gbps > 0 ? bytes / (gbps * 1e3) : 0.0; }

void throw_unknown_strategy(std::string_view name, const char* op, const std::string& names,
                            const char* where) {
  throw InvalidArgument(where,
                        fmt::format("unknown {} strategy '{}'; choose one of {}", op, name, names));
}

void check_dtype(DType t, const char* where) {
  WEFT_CHECK_ARG_AT(where, t == DType::kBF16 || t == DType::kFP16,
                    "dtype must be bf16 or fp16, got {}", to_string(t));
}

int64_t span_bytes(int64_t rows, int64_t cols, int64_t ld, DType t) {
  const double bytes = (static_cast<double>(rows - 1) * ld + cols) * element_bytes(t);
  return bytes >= 9.0e18 ? INT64_MAX : static_cast<int64_t>(bytes);
}

int64_t b_span_bytes(int64_t n, int64_t k, int64_t ldb, BLayout l, DType t) {
  ldb = b_ld(ldb, n, k, l);
  return l == BLayout::kKN ? span_bytes(k, n, ldb, t) : span_bytes(n, k, ldb, t);
}

void check_operands(const void* a, int64_t lda, const void* b, int64_t ldb, const void* out,
                    int64_t ldo, int64_t a_rows, int64_t out_rows, int64_t n, int64_t k, DType t,
                    const char* out_name, const char* ldo_name, const char* where,
                    BLayout b_layout) {
  const bool kn = b_layout == BLayout::kKN;
  if (lda == 0) lda = k;
  ldb = b_ld(ldb, n, k, b_layout);
  if (ldo == 0) ldo = n;
  WEFT_CHECK_ARG_AT(where, lda >= k && lda % 8 == 0,
                    "lda must be >= k ({}) and a multiple of 8, got {}", k, lda);
  WEFT_CHECK_ARG_AT(where, ldb >= (kn ? n : k) && ldb % 8 == 0,
                    "ldb must be >= {} ({}: B is {}) and a multiple of 8, got {}", kn ? "n" : "k",
                    kn ? n : k, to_string(b_layout), ldb);
  WEFT_CHECK_ARG_AT(where, ldo >= n, "{} must be >= n ({}), got {}", ldo_name, n, ldo);
  WEFT_CHECK_ARG_AT(where, a != nullptr && b != nullptr && out != nullptr,
                    "A, B and {} must be non-null (A={} B={} {}={})", out_name, a, b, out_name,
                    out);
  WEFT_CHECK_ARG_AT(where, is_aligned(a, 16), "A ({}) must be 16-byte aligned", a);
  WEFT_CHECK_ARG_AT(where, is_aligned(b, 16), "B ({}) must be 16-byte aligned", b);
  WEFT_CHECK_ARG_AT(where, is_aligned(out, 16), "{} ({}) must be 16-byte aligned", out_name, out);
  // Copy engines and peers may still read A and B while the output is written (gather_inputs,
  // the fused strategies), so an output sharing their memory is an error, not an in-place call.
  const int64_t out_bytes = span_bytes(out_rows, n, ldo, t);
  WEFT_CHECK_ARG_AT(where,
                    !ranges_overlap(out, static_cast<size_t>(out_bytes), a,
                                    static_cast<size_t>(span_bytes(a_rows, k, lda, t))) &&
                        !ranges_overlap(out, static_cast<size_t>(out_bytes), b,
                                        static_cast<size_t>(b_span_bytes(n, k, ldb, b_layout, t))),
                    "{} ({}, {} bytes) overlaps A or B; the output must not share memory with "
                    "the operands",
                    out_name, out, out_bytes);
}

gemm::GemmArgs gemm_args(const void* a, int64_t lda, const void* b, int64_t ldb, void* c,
                         int64_t ldc, int64_t m, int64_t n, int64_t k, DType t) {
  gemm::GemmArgs g;
  g.a = a;
  g.lda = lda;
  g.b = b;
  g.ldb = ldb;
  g.c = c;
  g.ldc = ldc;
  g.m = m;
  g.n = n;
  g.k = k;
  g.ab_type = t;
  g.c_type = t;
  return g;
}

void check_fused_options(double fused_min_waves, const std::string& gemm_config,
                         const char* where) {
  WEFT_CHECK_ARG_AT(where, fused_min_waves >= 0, "fused_min_waves must be >= 0, got {}",
                    fused_min_waves);
  if (gemm_config.empty()) return;
  // Checked here, not when a fused strategy first launches it (by then the call's prologue and
  // sends are enqueued).
  const gemm::Config cfg = gemm::parse_config(gemm_config);
  for (DType t : {DType::kBF16, DType::kFP16})
    WEFT_CHECK_ARG_AT(where, gemm::is_shipped(cfg, t, t, /*hooks=*/true),
                      "gemm_config {} is not a shipped {} kernel with the overlap hooks the fused "
                      "strategies need (stream-K, ping-pong and cluster kernels have none); "
                      "shipped: {}",
                      gemm_config, to_string(t), gemm::list_configs(t, t, /*hooks=*/true));
}

gemm::Config hook_config(const std::string& forced, int64_t m, int64_t n, int64_t k, DType t,
                         int sms) {
  return forced.empty() ? gemm::choose_config(m, n, k, t, t, sms, /*hooks=*/true)
                        : gemm::parse_config(forced);
}

std::string waves_reason(double waves, const gemm::Config& cfg, double min_waves,
                         std::string_view why) {
  if (waves >= min_waves)
    return fmt::format("{:.1f} waves of {}x{} tiles >= {:.1f}: {}", waves, cfg.block_m, cfg.block_n,
                       min_waves, why);
  return fmt::format("{:.2f} waves of {}x{} tiles < {:.1f}: {}", waves, cfg.block_m, cfg.block_n,
                     min_waves, why);
}

int next_barrier_index(int barrier_count) {
  static std::atomic<int> counter{0};
  const int span = std::max(1, std::min(48, barrier_count));
  const int i = counter.fetch_add(1) % span;
  return barrier_count - 1 - i;
}

}  // namespace weft::tp
