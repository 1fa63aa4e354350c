// Probe (not part of the build): what the GEMM-RS own chunk costs with weft GEMM's epilogue sum
// (hook e: the peers' partials brought into shared memory by TMA during the main loop), against
// cuBLASLt's chunk GEMM followed by the fixed-order reduction it would replace, and whether the
// sum is the reduction's, bit for bit (own partial from the weft 128x128 plain kernel, which
// accumulates in the same order). One GPU, every source present; the 4-rank 8192^3 chunk:
// 2048 x 8192 x 2048 bf16, three 2048 x 8192 sources.
//
// The sum kernel exists only with docs/runs/probes/gemm-rs-epilogue-sum-tma.patch applied
// (twenty-seventh pass, not kept):
//
//   git apply docs/runs/probes/gemm-rs-epilogue-sum-tma.patch && ninja -C <build> weft_gemm
//   nvcc -O3 -std=c++20 -arch=sm_90a -I<repo> -DFMT_HEADER_ONLY=1 --expt-relaxed-constexpr \
//        -o gemm_sum_probe gemm_sum_probe.cu <build>/weft/gemm/libweft_gemm.a \
//        <build>/weft/runtime/libweft_core.a -lcublasLt -lcuda
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "probe_lt.cuh"
#include "weft/gemm/detail/launch_sm90.cuh"
#include "weft/gemm/gemm.h"

namespace wg = weft::gemm;

int main() {
  const int64_t M = 2048, N = 8192, K = 2048, W = 4, self = 1;
  const size_t chunk = size_t(M) * N;
  __nv_bfloat16 *A, *B, *C, *Cref, *S, *P;
  uint64_t* flags;
  CK(cudaMalloc(&A, M * K * 2));
  CK(cudaMalloc(&B, N * K * 2));
  CK(cudaMalloc(&C, chunk * 2));
  CK(cudaMalloc(&Cref, chunk * 2));
  CK(cudaMalloc(&P, chunk * 2));
  CK(cudaMalloc(&S, W * chunk * 2));
  CK(cudaMalloc(&flags, W * 64 * 8));
  fill_bf16<<<1024, 256>>>(A, M * K, 1, true);
  fill_bf16<<<1024, 256>>>(B, N * K, 2, true);
  fill_bf16<<<1024, 256>>>(S, W * chunk, 3, true);
  std::vector<uint64_t> ones(W * 64, 1);
  CK(cudaMemcpy(flags, ones.data(), ones.size() * 8, cudaMemcpyHostToDevice));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));

  ProbeTimer time_it(st, 62);

  // cuBLASLt: the chunk GEMM (heuristic's first answer), then the reduction.
  LtChunkGemm lt(M, N, K);
  auto cublas_chunk = [&] { lt.run(A, B, P, st); };
  auto reduce = [&](__nv_bfloat16* out, int own_at) {
    reduce_rank_order4<<<132 * 4, 512, 0, st>>>(reinterpret_cast<const uint4*>(P),
                                                reinterpret_cast<const uint4*>(S), chunk / 8,
                                                own_at, reinterpret_cast<uint4*>(out), chunk / 8);
  };
  time_it("cuBLASLt chunk GEMM", cublas_chunk);
  time_it("BASE: cuBLASLt chunk GEMM + reduction", [&] {
    cublas_chunk();
    reduce(C, self);
  });

  wg::GemmArgs ga;
  ga.a = A;
  ga.b = B;
  ga.c = P;
  ga.m = M;
  ga.n = N;
  ga.k = K;
  for (const char* cfg_s : {"", "128x128x64_s6_c1x1_g4", "128x128x64_s6_c1x1_pp_g4"}) {
    wg::Config cfg = *cfg_s ? wg::parse_config(cfg_s)
                            : wg::choose_config(M, N, K, wg::DType::kBF16, wg::DType::kBF16, 132,
                                                false);
    time_it("weft plain " + cfg.to_string(), [&] { wg::gemm(ga, st, &cfg, nullptr); });
  }
  // Reference: the own partial from the 128x128 plain kernel, then the reduction.
  {
    wg::Config cfg = wg::parse_config("128x128x64_s6_c1x1_g4");
    wg::gemm(ga, st, &cfg, nullptr);
    reduce(Cref, self);
  }

  wg::Hooks h;
  h.sum_base = S;
  h.sum_stride = chunk;
  h.sum_ld = N;
  h.sum_count = W;
  h.sum_self = self;
  ga.c = C;
  for (int count : {2, 3}) {
    wg::Config cfg = wg::sum_config();
    h.sum_count = count;
    h.sum_flags = nullptr;
    time_it("weft epilogue sum of " + std::to_string(count) + ", no flags " + cfg.to_string(),
            [&] { wg::gemm(ga, st, &cfg, &h); });
  }
  h.sum_count = W;
  for (int rg : {4, 8, 16}) {
    wg::Config cfg = wg::sum_config();
    cfg.raster_group = rg;
    h.sum_flags = nullptr;
    time_it("weft epilogue sum of 4, no flags " + cfg.to_string(),
            [&] { wg::gemm(ga, st, &cfg, &h); });
    h.sum_flags = flags;
    h.sum_flags_per_src = 64;
    h.sum_flag_rows = 512;
    h.sum_expected = 1;
    time_it("weft epilogue sum of 4, flags set " + cfg.to_string(),
            [&] { wg::gemm(ga, st, &cfg, &h); });
  }
  // Kernels launched directly, to take the parts apart: the hook kernel at 4 and 6 stages without
  // a sum, and the sum kernel at every count.
  {
    namespace wd = weft::gemm::detail;
    auto req = [&](int count) {
      wd::LaunchRequest r{};
      r.a = A;
      r.lda = K;
      r.b = B;
      r.ldb = K;
      r.c = C;
      r.ldc = N;
      r.m = M;
      r.n = N;
      r.k = K;
      r.raster_group = 4;
      r.groups = 1;
      r.kp.epi_vec16 = 1;
      r.kp.out = C;
      r.kp.ldo = N;
      r.kp.timeout_ns = 10'000'000'000ull;
      r.kp.sum_base = S;
      r.kp.sum_stride = chunk;
      r.kp.sum_ld = N;
      r.kp.sum_count = count;
      r.kp.sum_self = count > 1 ? 1 : 0;
      return r;
    };
    using Bf = __nv_bfloat16;
    using H4 = weft::gemm::sm90::Traits<Bf, Bf, 128, 128, 4, 1, 1, true, false, false, 0>;
    using H6 = weft::gemm::sm90::Traits<Bf, Bf, 128, 128, 6, 1, 1, true, false, false, 0>;
    using S3 = weft::gemm::sm90::Traits<Bf, Bf, 128, 128, 4, 1, 1, true, false, false, 3>;
    time_it("direct: hook kernel 128x128 s6, no sum", [&] { wd::launch_sm90<H6>(req(0), st); });
    time_it("direct: hook kernel 128x128 s4, no sum", [&] { wd::launch_sm90<H4>(req(0), st); });
    for (int count : {2, 3, 4})
      time_it("direct: sum kernel, count " + std::to_string(count),
              [&] { wd::launch_sm90<S3>(req(count), st); });
    for (int dbg : {13, 17, 2}) {
      auto r = req(4);
      r.kp.sum_debug = dbg;
      time_it("direct: sum kernel, count 4, debug " + std::to_string(dbg),
              [&] { wd::launch_sm90<S3>(r, st); });
    }
  }
  // Correctness: poison C, run once, compare with the reference bit for bit.
  CK(cudaMemsetAsync(C, 0xff, chunk * 2, st));
  wg::gemm(ga, st, nullptr, &h);
  CK(cudaStreamSynchronize(st));
  std::vector<uint16_t> c(chunk), r(chunk);
  CK(cudaMemcpy(c.data(), C, chunk * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(r.data(), Cref, chunk * 2, cudaMemcpyDeviceToHost));
  size_t diff = 0;
  double max_abs = 0;
  for (size_t i = 0; i < chunk; ++i) {
    if (c[i] == r[i]) continue;
    ++diff;
    auto f = [](uint16_t v) {
      uint32_t u = uint32_t(v) << 16;
      float x;
      std::memcpy(&x, &u, 4);
      return x;
    };
    max_abs = std::max(max_abs, double(std::fabs(f(c[i]) - f(r[i]))));
  }
  std::printf("epilogue sum vs plain 128x128 + reduction: %zu of %zu elements differ (max |d| %g)\n",
              diff, chunk, max_abs);
  // Sources in another order (self = 0 and 3): still the reduction's?
  for (int s2 : {0, 3}) {
    h.sum_self = s2;
    ga.c = P;
    wg::Config cfg = wg::parse_config("128x128x64_s6_c1x1_g4");
    wg::gemm(ga, st, &cfg, nullptr);
    reduce(Cref, s2);
    ga.c = C;
    CK(cudaMemsetAsync(C, 0xff, chunk * 2, st));
    wg::gemm(ga, st, nullptr, &h);
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(c.data(), C, chunk * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r.data(), Cref, chunk * 2, cudaMemcpyDeviceToHost));
    diff = 0;
    for (size_t i = 0; i < chunk; ++i) diff += c[i] != r[i];
    std::printf("self %d: %zu elements differ\n", s2, diff);
  }
  CK(cudaDeviceSynchronize());
  return 0;
}
