// Probe (not part of the build): what GEMM-RS's own chunk costs when weft's GEMM sums the
// received chunks in its epilogue (Hooks::addends), against cuBLASLt's chunk GEMM and the
// fixed-order reduction pass it would replace. One GPU, every source present (flags set), the
// 4-rank 8192^3 chunk: 2048 x 8192 x 2048 bf16, three 2048 x 8192 sources. Hooks::addends exists
// only with docs/runs/probes/gemm-rs-epilogue-sum.patch applied (twenty-sixth pass, not kept):
//
//   git apply docs/runs/probes/gemm-rs-epilogue-sum.patch && ninja -C <build> weft_gemm
//   nvcc -O3 -std=c++17 -arch=sm_90a -I<repo> -o gemm_addend_probe gemm_addend_probe.cu \
//        <build>/weft/gemm/libweft_gemm.a <build>/weft/libweft_core.a -lcublasLt -lcuda
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

#include "weft/gemm/gemm.h"

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e = (x);                                                                       \
    if (e != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e));  \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

namespace wg = weft::gemm;

__global__ void fill(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    p[i] = __float2bfloat16((float(h & 0xffff) / 65535.f - 0.5f) * 0.25f);
  }
}

// The flat fixed-order reduction of 4 sources (own at `self`), as in GEMM-RS.
__global__ void reduce4(const uint4* own, const uint4* slots, size_t slot_units, int self,
                        uint4* out, size_t units) {
  for (size_t x = blockIdx.x * size_t(blockDim.x) + threadIdx.x; x < units;
       x += size_t(gridDim.x) * blockDim.x) {
    uint4 v[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) v[q] = __ldcs(q == self ? own + x : slots + q * slot_units + x);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&v[q]);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += __bfloat162float(e[i]);
    }
    uint4 r;
    __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
    for (int i = 0; i < 4; ++i) o[i] = __floats2bfloat162_rn(acc[2 * i], acc[2 * i + 1]);
    out[x] = r;
  }
}

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
  fill<<<1024, 256>>>(A, M * K, 1);
  fill<<<1024, 256>>>(B, N * K, 2);
  fill<<<1024, 256>>>(S, W * chunk, 3);
  std::vector<uint64_t> ones(W * 64, 1);
  CK(cudaMemcpy(flags, ones.data(), ones.size() * 8, cudaMemcpyHostToDevice));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  void* flush;
  const size_t flush_bytes = size_t(128) << 20;
  CK(cudaMalloc(&flush, flush_bytes));

  auto time_it = [&](const char* name, const std::function<void()>& f) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 5; ++i) f();
    std::vector<float> t;
    for (int i = 0; i < 40; ++i) {
      CK(cudaMemsetAsync(flush, i, flush_bytes, st));  // evict L2
      CK(cudaEventRecord(a, st));
      f();
      CK(cudaEventRecord(b, st));
      CK(cudaEventSynchronize(b));
      float ms;
      CK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms * 1000.f);
    }
    std::sort(t.begin(), t.end());
    std::printf("%-58s %8.1f us (min %.1f)\n", name, t[t.size() / 2], t[0]);
  };

  // cuBLASLt: the chunk GEMM (heuristic's first answer), as decomposed's own chunk runs it.
  cublasLtHandle_t lt;
  cublasLtCreate(&lt);
  cublasLtMatmulDesc_t desc;
  cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof(tA));
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof(tB));
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K);  // our B, k x n column-major
  cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K);  // our A
  cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, M, N);
  void* ws;
  const size_t ws_bytes = size_t(32) << 20;
  CK(cudaMalloc(&ws, ws_bytes));
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                       sizeof(ws_bytes));
  cublasLtMatmulHeuristicResult_t heur[8];
  int found = 0;
  cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 8, heur, &found);
  const float one = 1.f, zero = 0.f;
  for (int h = 0; h < std::min(found, 4); ++h) {
    std::string name = "cuBLASLt chunk GEMM, heuristic #" + std::to_string(h);
    time_it(name.c_str(), [&] {
      cublasLtMatmul(lt, desc, &one, B, la, A, lb, &zero, P, lc, P, lc, &heur[h].algo, ws, ws_bytes,
                     st);
    });
  }
  time_it("fixed-order reduction (4 x 32 MiB -> 32 MiB)", [&] {
    reduce4<<<132 * 4, 512, 0, st>>>(reinterpret_cast<const uint4*>(P),
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
