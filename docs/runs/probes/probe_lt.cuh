// cuBLASLt's side of the one-GPU and two-GPU probes in this folder (tail_overlap_probe.cu,
// reduce_push_probe.cu, insitu_clock_probe.cu): the GEMM-RS chunk GEMM as decomposed runs it.
// Not part of the build; link with -lcublasLt.
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "probe_util.cuh"

#define LK(x)                                                               \
  do {                                                                      \
    cublasStatus_t lk_status_ = (x);                                        \
    if (lk_status_ != CUBLAS_STATUS_SUCCESS) {                              \
      std::fprintf(stderr, "%s:%d %s: status %d\n", __FILE__, __LINE__, #x, \
                   static_cast<int>(lk_status_));                           \
      std::exit(1);                                                         \
    }                                                                       \
  } while (0)

// C[m, n] = A[m, k] B[n, k]^T, all row-major bf16, fp32 accumulation, on the current device.
// The algorithm: cuBLASLt's first heuristic answer, or with `tune_on` the fastest of its first
// eight on that stream (10 runs each, C overwritten), or any of them by use(). sm_target > 0 sets
// CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET (the GEMM leaves the other SMs free).
class LtChunkGemm {
 public:
  LtChunkGemm(int64_t m, int64_t n, int64_t k, int sm_target = 0, cudaStream_t tune_on = nullptr,
              const void* A = nullptr, const void* B = nullptr, void* C = nullptr) {
    LK(cublasLtCreate(&h_));
    CK(cudaMalloc(&ws_, kWorkspaceBytes));
    LK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    LK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (sm_target > 0)
      LK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sm_target,
                                        sizeof(sm_target)));
    // Column-major views: our B is k x n, our A k x m, our C n x m.
    LK(cublasLtMatrixLayoutCreate(&lb_, CUDA_R_16BF, k, n, k));
    LK(cublasLtMatrixLayoutCreate(&la_, CUDA_R_16BF, k, m, k));
    LK(cublasLtMatrixLayoutCreate(&lc_, CUDA_R_16BF, n, m, n));
    cublasLtMatmulPreference_t pref;
    LK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                            sizeof(ws)));
    LK(cublasLtMatmulAlgoGetHeuristic(h_, desc_, lb_, la_, lc_, lc_, pref, kAnswers, heur_,
                                      &found_));
    LK(cublasLtMatmulPreferenceDestroy(pref));
    if (found_ == 0) {
      std::fprintf(stderr, "cuBLASLt has no algorithm for %lld x %lld x %lld\n",
                   static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k));
      std::exit(1);
    }
    use(0);
    if (!tune_on) return;
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float best = 1e30f;
    int fastest = 0;
    for (int i = 0; i < found_; ++i) {
      use(i);
      for (int w = 0; w < 3; ++w) run(A, B, C, tune_on);
      CK(cudaEventRecord(a, tune_on));
      for (int r = 0; r < 10; ++r) run(A, B, C, tune_on);
      CK(cudaEventRecord(b, tune_on));
      CK(cudaEventSynchronize(b));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, a, b));
      if (ms < best) best = ms, fastest = i;
    }
    use(fastest);
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
  }
  ~LtChunkGemm() {
    cudaFree(ws_);
    cublasLtMatrixLayoutDestroy(la_);
    cublasLtMatrixLayoutDestroy(lb_);
    cublasLtMatrixLayoutDestroy(lc_);
    cublasLtMatmulDescDestroy(desc_);
    cublasLtDestroy(h_);
  }
  LtChunkGemm(const LtChunkGemm&) = delete;
  LtChunkGemm& operator=(const LtChunkGemm&) = delete;

  void run(const void* A, const void* B, void* C, cudaStream_t st) {
    const float one = 1.f, zero = 0.f;
    LK(cublasLtMatmul(h_, desc_, &one, B, lb_, A, la_, &zero, C, lc_, C, lc_, &algo_, ws_,
                      kWorkspaceBytes, st));
  }
  // The heuristic's answers (at most 8), and which of them run() uses (0 unless tuned or used).
  int answers() const { return found_; }
  int chosen() const { return chosen_; }
  void use(int i) {
    chosen_ = i;
    algo_ = heur_[i].algo;
  }

 private:
  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;
  static constexpr int kAnswers = 8;
  cublasLtMatmulHeuristicResult_t heur_[kAnswers];
  int found_ = 0;
  cublasLtHandle_t h_;
  cublasLtMatmulDesc_t desc_;
  cublasLtMatrixLayout_t la_, lb_, lc_;
  cublasLtMatmulAlgo_t algo_;
  void* ws_ = nullptr;
  int chosen_ = 0;
};
