// Number formats of the expert-parallel operator, written so that host and device agree bit for
// bit: bf16 rounding (round to nearest even), fp8 e4m3 (round to nearest even, saturating to
// +-448) and the per-128-channel fp8 scale. The device kernels use the hardware conversions
// (cvt.rn.bf16.f32, cvt.rn.satfinite.e4m3x2.f32); the host functions here implement the same
// rounding in software for the reference model and the tests.
//
// fp8 quantization of one 128-channel group g of a bf16 row x:
//   amax  = max |x_c| over the group (exact)
//   scale = max(amax, 1e-4) / 448        (stored, fp32)
//   inv   = 448 / max(amax, 1e-4)
//   q_c   = e4m3_rne_satfinite(x_c * inv)   (fp32 multiply, then one rounding; a NaN is coded
//           0xff, never 0x7f: the low-latency staging marks bytes not yet arrived with 0x7f)
//   dequantized x_c ~= float(q_c) * scale
//
// Combine arithmetic (ExpertParallel::combine), for token t of home rank r with top-k experts e_i
// and weights w_i (fixed order, fp32 fused multiply-adds, bf16 rounding at two points):
//   partial_d = bf16( fma(w_i, y_i, ...fma(w_j, y_j, 0)) ) over the slots i < j < ... whose expert
//               lives on rank d, in ascending slot order (computed on rank d)
//   out_t     = bf16( ((0 + partial_d0) + partial_d1) + ... ) over ranks d0 < d1 < ... that hold
//               at least one of the token's experts (computed on rank r); 0 when none does.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "weft/ops/expert_parallel/ep_params.h"

namespace weft::ops::ep {

inline constexpr float kFp8Max = 448.f;
inline constexpr float kFp8MinAmax = 1e-4f;

WEFT_EP_HD inline float fp8_scale(float amax) { return fmaxf(amax, kFp8MinAmax) / kFp8Max; }
WEFT_EP_HD inline float fp8_inv_scale(float amax) { return kFp8Max / fmaxf(amax, kFp8MinAmax); }

WEFT_EP_HD inline float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

WEFT_EP_HD inline uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

WEFT_EP_HD inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

// Round to nearest even (NaN stays NaN). Same result as __float2bfloat16_rn.
WEFT_EP_HD inline uint16_t float_to_bf16_rne(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// e4m3 (bias 7, no infinities, 0x7f/0xff = NaN) to float: exact.
WEFT_EP_HD inline float e4m3_to_float(uint8_t v) {
  const int e = (v >> 3) & 15, m = v & 7;
  float r;
  if (e == 15 && m == 7)
    r = NAN;
  else if (e == 0)
    r = static_cast<float>(m) * 0.001953125f;  // m * 2^-9
  else
    r = ldexpf(1.f + static_cast<float>(m) * 0.125f, e - 7);
  return (v & 0x80) ? -r : r;
}

// float to e4m3, round to nearest even, saturating to +-448 (as cvt.rn.satfinite.e4m3x2.f32, but
// with NaN coded 0xff where the conversion gives 0x7f: the kernels recode it, see above).
// Host software version for the reference model.
inline uint8_t host_float_to_e4m3(float f) {
  if (std::isnan(f)) return 0xff;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 448.0) return sign | 0x7e;
  int code;
  if (a < 0.015625) {  // below the smallest normal 2^-6: multiples of 2^-9
    code = static_cast<int>(std::nearbyint(a * 512.0));  // 0..8; 8 is 2^-6 = code 0x08
  } else {
    int ex = 0;
    const double m = std::frexp(a, &ex);  // a = m * 2^ex, m in [0.5, 1)
    int e = ex - 1;                       // a = (2m) * 2^e
    double q = std::nearbyint((2.0 * m - 1.0) * 8.0);
    if (q == 8.0) {
      q = 0.0;
      e += 1;
    }
    code = ((e + 7) << 3) | static_cast<int>(q);
    if (code > 0x7e) code = 0x7e;
  }
  return static_cast<uint8_t>(sign | code);
}

// Host reference quantization of one row of `hidden` bf16 values (bits): codes and per-group
// scales exactly as the dispatch kernel computes them.
inline void host_quantize_row(const uint16_t* x, int hidden, uint8_t* q, float* scales) {
  for (int g = 0; g < hidden / 128; ++g) {
    float amax = 0.f;
    for (int c = 0; c < 128; ++c) amax = fmaxf(amax, std::fabs(bf16_to_float(x[g * 128 + c])));
    const float inv = fp8_inv_scale(amax);
    scales[g] = fp8_scale(amax);
    for (int c = 0; c < 128; ++c) q[g * 128 + c] = host_float_to_e4m3(bf16_to_float(x[g * 128 + c]) * inv);
  }
}

}  // namespace weft::ops::ep
