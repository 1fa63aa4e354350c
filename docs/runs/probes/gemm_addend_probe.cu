// Probe (not part of the build): what GEMM-RS's own chunk costs when weft's GEMM sums the
// received chunks in its epilogue (Hooks::addends), against cuBLASLt's chunk GEMM and the
// fixed-order reduction pass it would replace. One GPU, every source present (flags set), the
// 4-rank 8192^3 chunk: 2048 x 8192 x 2048 bf16, three 2048 x 8192 sources. Hooks::addends exists
// only with docs/runs/probes/gemm-rs-epilogue-sum.patch applied (twenty-sixth pass, not kept; it
// applies to the tree up to 756505e, before weft/gemm/gemm.cc's hook checks changed):
//
//   git apply docs/runs/probes/gemm-rs-epilogue-sum.patch && ninja -C <build> weft_gemm
//   nvcc -O3 -std=c++17 -arch=sm_90a -I<repo> -DFMT_HEADER_ONLY=1 -o gemm_addend_probe \
//        gemm_addend_probe.cu <build>/weft/gemm/libweft_gemm.a \
//        <build>/weft/runtime/libweft_core.a -lcublasLt -lcuda
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "probe_lt.cuh"
#include "weft/gemm/gemm.h"

namespace wg = weft::gemm;

int main() {
  const int64_t M = 2048, N = 8192, K = 2048, W = 4, self = 1;
  const size_t chunk = size_t(M) * N;
  __nv_bfloat16 *A, *B, *C, *S, *P;
  uint64_t* flags;
  CK(cudaMalloc(&A, M * K * 2));
  CK(cudaMalloc(&B, N * K * 2));
  CK(cudaMalloc(&C, chunk * 2));
  CK(cudaMalloc(&P, chunk * 2));
  CK(cudaMalloc(&S, W * chunk * 2));
  CK(cudaMalloc(&flags, W * 64 * 8));
  fill_bf16<<<1024, 256>>>(A, M * K, 1, false);
  fill_bf16<<<1024, 256>>>(B, N * K, 2, false);
  fill_bf16<<<1024, 256>>>(S, W * chunk, 3, false);
  std::vector<uint64_t> ones(W * 64, 1);
  CK(cudaMemcpy(flags, ones.data(), ones.size() * 8, cudaMemcpyHostToDevice));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  ProbeTimer time_it(st, 58);

  // cuBLASLt: the chunk GEMM (heuristic's first answers), as decomposed's own chunk runs it.
  LtChunkGemm lt(M, N, K);
  for (int h = 0; h < std::min(lt.answers(), 4); ++h) {
    lt.use(h);
    std::string name = "cuBLASLt chunk GEMM, heuristic #" + std::to_string(h);
    time_it(name.c_str(), [&] { lt.run(A, B, P, st); });
  }
  time_it("fixed-order reduction (4 x 32 MiB -> 32 MiB)", [&] {
    reduce_rank_order4<<<132 * 4, 512, 0, st>>>(reinterpret_cast<const uint4*>(P),
                                     reinterpret_cast<const uint4*>(S), chunk / 8, self,
                                     reinterpret_cast<uint4*>(C), chunk / 8);
  });

  wg::GemmArgs ga;
  ga.a = A;
  ga.b = B;
  ga.c = C;
  ga.m = M;
  ga.n = N;
  ga.k = K;
  for (const char* cfg_s : {"", "128x128x64_s6_c1x1_pp_g2", "128x128x64_s6_c1x1_pp_g8",
                            "128x128x64_s6_c1x1_g8"}) {
    wg::Config cfg;
    if (*cfg_s) {
      cfg = wg::parse_config(cfg_s);
      if (!wg::is_shipped(cfg, wg::DType::kBF16, wg::DType::kBF16, true)) {
        std::printf("%s: no hook kernel\n", cfg_s);
        continue;
      }
    } else {
      cfg = wg::choose_config(M, N, K, wg::DType::kBF16, wg::DType::kBF16, 132, true);
    }
    const std::string c = cfg.to_string();
    if (wg::is_shipped(cfg, wg::DType::kBF16, wg::DType::kBF16, false))
      time_it(("weft plain " + c).c_str(), [&] { wg::gemm(ga, st, &cfg, nullptr); });
    wg::Hooks h;
    h.direct_store = true;
    h.addends = S;
    h.addend_stride = chunk;
    h.addend_ld = N;
    h.addend_count = 1;
    h.addend_self = 0;
    time_it(("weft hooks, sum of 1 (own read back) " + c).c_str(),
            [&] { wg::gemm(ga, st, &cfg, &h); });
    h.addend_count = W;
    h.addend_self = self;
    time_it(("weft hooks, sum of 4, no flags " + c).c_str(), [&] { wg::gemm(ga, st, &cfg, &h); });
    h.addend_flags = flags;
    h.addend_flags_per_src = 64;
    h.addend_flag_rows = 512;
    h.addend_expected = 1;
    time_it(("weft hooks, sum of 4, flags set " + c).c_str(), [&] { wg::gemm(ga, st, &cfg, &h); });
  }
  CK(cudaDeviceSynchronize());
  return 0;
}
