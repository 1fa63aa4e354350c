// Shared by the GEMM tests and the GEMM benchmark: device buffers, random fills, and a cuBLASLt
// GEMM with weft's conventions (C[M,N] = A[M,K] * B[N,K]^T, all row-major).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "weft/gemm/gemm.h"

namespace weft::gemm::testing {

inline void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what +
                             ": " + cudaGetErrorString(e));
  }
}
inline void check_lt(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what +
                             ": cublas status " + std::to_string(int(s)));
  }
}
#define WT_CUDA(x) ::weft::gemm::testing::check_cuda((x), #x, __FILE__, __LINE__)
#define WT_LT(x) ::weft::gemm::testing::check_lt((x), #x, __FILE__, __LINE__)

// Owning device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) WT_CUDA(cudaMalloc(&ptr_, bytes_));
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

__host__ __device__ inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [-scale, scale), rounded to T.
template <typename T>
__global__ void fill_uniform_kernel(T* p, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint64_t r = splitmix64(seed * 0x100000001B3ull + i);
    const float u = float(r >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    p[i] = T((2.0f * u - 1.0f) * scale);
  }
}

inline void fill_uniform(void* p, DType t, size_t n, uint64_t seed, float scale = 1.0f,
                         cudaStream_t s = nullptr) {
  const int threads = 256;
  const int blocks = int(std::min<size_t>((n + threads - 1) / threads, 4096));
  if (n == 0) return;
  switch (t) {
    case DType::kBF16:
      fill_uniform_kernel<<<blocks, threads, 0, s>>>(static_cast<__nv_bfloat16*>(p), n, seed,
                                                     scale);
      break;
    case DType::kFP16:
      fill_uniform_kernel<<<blocks, threads, 0, s>>>(static_cast<__half*>(p), n, seed, scale);
      break;
    case DType::kFP32:
      fill_uniform_kernel<<<blocks, threads, 0, s>>>(static_cast<float*>(p), n, seed, scale);
      break;
  }
  WT_CUDA(cudaGetLastError());
}

inline cudaDataType_t to_cuda(DType t) {
  switch (t) {
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kFP16: return CUDA_R_16F;
    case DType::kFP32: return CUDA_R_32F;
  }
  return CUDA_R_32F;
}

// cuBLASLt GEMM in weft's row-major convention. In cuBLASLt's column-major view, row-major
// C[M,N] is C^T[N,M] = B[N,K] * A^T: "A" = our B (stored K x N column-major, op T), "B" = our A
// (K x M column-major, op N), m = N, n = M. This TN layout is cuBLAS's fastest.
class LtGemm {
 public:
  LtGemm() {
    WT_LT(cublasLtCreate(&handle_));
    workspace_ = DeviceBuffer(kWorkspace);
  }
  ~LtGemm() {
    release();
    if (handle_ != nullptr) cublasLtDestroy(handle_);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Prepares descriptors and asks the heuristic for up to `max_algos` algorithms.
  void setup(int64_t m, int64_t n, int64_t k, DType ab, DType c, int64_t lda = 0,
             int64_t ldb = 0, int64_t ldc = 0, int max_algos = 1) {
    release();
    lda = lda ? lda : k;
    ldb = ldb ? ldb : k;
    ldc = ldc ? ldc : n;
    WT_LT(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    WT_LT(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    WT_LT(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    WT_LT(cublasLtMatrixLayoutCreate(&la_, to_cuda(ab), uint64_t(k), uint64_t(n), ldb));
    WT_LT(cublasLtMatrixLayoutCreate(&lb_, to_cuda(ab), uint64_t(k), uint64_t(m), lda));
    WT_LT(cublasLtMatrixLayoutCreate(&lc_, to_cuda(c), uint64_t(n), uint64_t(m), ldc));
    cublasLtMatmulPreference_t pref = nullptr;
    WT_LT(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = kWorkspace;
    WT_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                               &ws, sizeof(ws)));
    int found = 0;
    WT_LT(cublasLtMatmulAlgoGetHeuristic(handle_, op_, la_, lb_, lc_, lc_, pref,
                                         std::clamp(max_algos, 1, kMaxAlgos), algos_, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (found <= 0) throw std::runtime_error("cuBLASLt heuristic found no algorithm");
    num_algos_ = found;
  }

  int num_algos() const { return num_algos_; }

  // The configuration of algorithm `algo` as cuBLASLt reports it (enum values of cublasLt.h:
  // cublasLtMatmulTile_t, cublasLtMatmulStages_t, cublasLtClusterShape_t, ...).
  std::string describe(int algo) const {
    const cublasLtMatmulAlgo_t* a = &algos_[std::clamp(algo, 0, num_algos_ - 1)].algo;
    auto get = [&](cublasLtMatmulAlgoConfigAttributes_t attr, size_t bytes) -> long long {
      uint64_t v = 0;
      size_t written = 0;
      if (cublasLtMatmulAlgoConfigGetAttribute(a, attr, &v, bytes, &written) !=
          CUBLAS_STATUS_SUCCESS)
        return -1;
      return static_cast<long long>(bytes == 2 ? (v & 0xFFFF) : (v & 0xFFFFFFFFu));
    };
    char buf[200];
    std::snprintf(buf, sizeof(buf),
                  "id=%lld tile=%lld stages=%lld cluster=%lld splitk=%lld reduction=%lld "
                  "swizzle=%lld inner=%lld custom=%lld",
                  get(CUBLASLT_ALGO_CONFIG_ID, 4), get(CUBLASLT_ALGO_CONFIG_TILE_ID, 4),
                  get(CUBLASLT_ALGO_CONFIG_STAGES_ID, 4),
                  get(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, 2),
                  get(CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 4),
                  get(CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, 4),
                  get(CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, 4),
                  get(CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID, 2),
                  get(CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, 4));
    return buf;
  }

  // C = A * B^T with algorithm `algo` (0: the heuristic's first choice).
  void run(const void* a, const void* b, void* c, cudaStream_t s, int algo = 0) {
    const float alpha = 1.0f, beta = 0.0f;
    WT_LT(cublasLtMatmul(handle_, op_, &alpha, b, la_, a, lb_, &beta, c, lc_, c, lc_,
                         &algos_[std::clamp(algo, 0, num_algos_ - 1)].algo, workspace_.get(),
                         kWorkspace, s));
  }

 private:
  static constexpr size_t kWorkspace = size_t(64) << 20;
  void release() {
    if (op_) cublasLtMatmulDescDestroy(op_);
    if (la_) cublasLtMatrixLayoutDestroy(la_);
    if (lb_) cublasLtMatrixLayoutDestroy(lb_);
    if (lc_) cublasLtMatrixLayoutDestroy(lc_);
    op_ = nullptr;
    la_ = lb_ = lc_ = nullptr;
    num_algos_ = 0;
  }
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t la_ = nullptr, lb_ = nullptr, lc_ = nullptr;
  // A plain array: std::vector of this anonymous-struct typedef crashes nvcc 13.0's front end
  // in C++20 mode (internal error in stl_construct.h).
  static constexpr int kMaxAlgos = 16;
  cublasLtMatmulHeuristicResult_t algos_[kMaxAlgos] = {};
  int num_algos_ = 0;
  DeviceBuffer workspace_;
};

// Host-side view of a device matrix as floats.
inline std::vector<float> to_host_float(const void* d, DType t, size_t n) {
  std::vector<float> out(n);
  if (t == DType::kFP32) {
    WT_CUDA(cudaMemcpy(out.data(), d, n * 4, cudaMemcpyDeviceToHost));
    return out;
  }
  std::vector<uint16_t> raw(n);
  WT_CUDA(cudaMemcpy(raw.data(), d, n * 2, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::kBF16) {
      __nv_bfloat16_raw r;
      r.x = raw[i];
      out[i] = __bfloat162float(__nv_bfloat16(r));
    } else {
      __half_raw r;
      r.x = raw[i];
      out[i] = __half2float(__half(r));
    }
  }
  return out;
}

// Comparison of a GEMM result against a fp32 reference (both row-major, leading dimension ld).
struct Compare {
  double rel_fro = 0;        // ||x - ref||_F / ||ref||_F
  int64_t bad = 0;           // elements outside rtol * |ref| + atol (NaN counts as bad)
  int64_t nan = 0;           // NaN elements (poison not overwritten, or a NaN produced)
  int64_t first_bad = -1;    // row * N + col of the first bad element
  float first_got = 0, first_ref = 0;
  std::string summary() const {
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "rel_fro=%.3g bad=%lld nan=%lld first_bad=(%lld) got=%g ref=%g", rel_fro,
                  static_cast<long long>(bad), static_cast<long long>(nan),
                  static_cast<long long>(first_bad), first_got, first_ref);
    return buf;
  }
};

inline Compare compare(const std::vector<float>& got, const std::vector<float>& ref, int64_t m,
                       int64_t n, int64_t ld_got, int64_t ld_ref, double rtol, double atol) {
  Compare c;
  double num = 0, den = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const float x = got[size_t(i * ld_got + j)];
      const float r = ref[size_t(i * ld_ref + j)];
      const double d = double(x) - double(r);
      const bool isnan = x != x;
      if (isnan) ++c.nan;
      num += isnan ? 1e30 : d * d;
      den += double(r) * double(r);
      if (isnan || std::abs(d) > rtol * std::abs(double(r)) + atol) {
        if (c.bad == 0) {
          c.first_bad = i * n + j;
          c.first_got = x;
          c.first_ref = r;
        }
        ++c.bad;
      }
    }
  }
  c.rel_fro = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return c;
}

}  // namespace weft::gemm::testing
