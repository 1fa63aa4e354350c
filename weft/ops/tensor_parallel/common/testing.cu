#include "weft/ops/tensor_parallel/common/testing.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "weft/device/hash.cuh"
#include "weft/device/signal.cuh"
#include "weft/runtime/cuda_check.h"

namespace weft::tp::testing {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t items) {
  const int64_t want = (items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, 132 * 8)));
}

__device__ __forceinline__ float value_at(uint64_t seed, int64_t row, int64_t col) {
  const uint64_t h = dev::mix64(seed ^ dev::mix64((uint64_t(row) << 32) ^ uint64_t(col)));
  return float(h >> 40) * (2.0f / 16777216.0f) - 1.0f;  // 24 random bits -> [-1, 1)
}

__global__ void fill_kernel(uint16_t* p, int64_t rows, int64_t cols, int64_t ld, int is_bf16,
                            uint64_t seed) {
  const int64_t total = rows * cols;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = x / cols, c = x - r * cols;
    const float v = value_at(seed, r, c);
    uint16_t bits;
    if (is_bf16) {
      const __nv_bfloat16 b = __float2bfloat16_rn(v);
      bits = *reinterpret_cast<const uint16_t*>(&b);
    } else {
      const __half h = __float2half_rn(v);
      bits = *reinterpret_cast<const uint16_t*>(&h);
    }
    p[r * ld + c] = bits;
  }
}

__device__ __forceinline__ float to_float(uint16_t bits, int is_bf16) {
  if (is_bf16) return __uint_as_float(uint32_t(bits) << 16);
  __half h;
  *reinterpret_cast<uint16_t*>(&h) = bits;
  return __half2float(h);
}

struct Record {
  unsigned long long checked;
  unsigned long long bad;
  unsigned long long first;  // (tag << 40) | (row << 20 ... ) encoded: see below; ~0 = none
  unsigned int max_err_bits;  // float bits of the largest |x - ref| (non-negative: orders as int)
  unsigned int pad;
  int first_row, first_col;   // of the smallest `first`
  float first_value, first_ref;
};

__global__ void compare_kernel(const uint16_t* out, int64_t ld, int is_bf16, const float* ref,
                               int64_t ld_ref, int64_t rows, int64_t cols, double atol,
                               double rtol, uint32_t tag, Record* rec) {
  const int64_t total = rows * cols;
  unsigned long long bad = 0;
  float max_err = 0.f;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = x / cols, c = x - r * cols;
    const float v = to_float(out[r * ld + c], is_bf16);
    const float e = ref[r * ld_ref + c];
    const float err = fabsf(v - e);
    const bool ok = !isnan(v) && !isnan(e) && double(err) <= atol + rtol * fabs(double(e));
    if (!isnan(err)) max_err = fmaxf(max_err, err);
    if (!ok) {
      ++bad;
      // Order failures by (tag, position) so the reported one is the first of the first call.
      const unsigned long long key = (static_cast<unsigned long long>(tag) << 40) |
                                     static_cast<unsigned long long>(x & ((1ull << 40) - 1));
      const unsigned long long old = atomicMin(&rec->first, key);
      if (key < old) {
        // Racy but only for reporting: the element that won last writes its details.
        rec->first_row = int(r);
        rec->first_col = int(c);
        rec->first_value = v;
        rec->first_ref = e;
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    bad += __shfl_xor_sync(0xffffffffu, bad, o);
    max_err = fmaxf(max_err, __shfl_xor_sync(0xffffffffu, max_err, o));
  }
  if ((threadIdx.x & 31) == 0) {
    if (bad) atomicAdd(&rec->bad, bad);
    atomicMax(&rec->max_err_bits, __float_as_uint(max_err));
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) atomicAdd(&rec->checked, (unsigned long long)total);
}

__global__ void diff_kernel(const uint16_t* x, int64_t ldx, const uint16_t* y, int64_t ldy,
                            int64_t rows, int64_t cols, unsigned long long* count) {
  const int64_t total = rows * cols;
  unsigned long long n = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    n += x[r * ldx + c] != y[r * ldy + c];
  }
  for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
  if ((threadIdx.x & 31) == 0 && n) atomicAdd(count, n);
}

__global__ void not_equal_kernel(const uint16_t* p, int64_t rows, int64_t cols, int64_t ld,
                                 uint16_t bits, unsigned long long* count) {
  const int64_t total = rows * cols;
  unsigned long long n = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    n += p[r * ld + c] != bits;
  }
  for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
  if ((threadIdx.x & 31) == 0 && n) atomicAdd(count, n);
}

__global__ void checksum_kernel(const uint16_t* p, int64_t rows, int64_t cols, int64_t ld,
                                unsigned long long* sum) {
  const int64_t total = rows * cols;
  unsigned long long s = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    s += dev::mix64((uint64_t(i) << 16) ^ p[r * ld + c]);
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) atomicAdd(sum, s);
}

ncclDataType_t nccl_type(DType t) { return t == DType::kBF16 ? ncclBfloat16 : ncclFloat16; }

float host_float(uint16_t bits, DType t) {
  if (t == DType::kBF16) {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half_raw r;
  r.x = bits;
  return __half2float(__half(r));
}

}  // namespace

void fill_matrix(void* p, int64_t rows, int64_t cols, int64_t ld, DType t, uint64_t seed,
                 cudaStream_t stream) {
  WEFT_CHECK_ARG(t == DType::kBF16 || t == DType::kFP16, "fill_matrix: 16-bit types only");
  if (rows <= 0 || cols <= 0) return;
  fill_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(
      static_cast<uint16_t*>(p), rows, cols, ld, t == DType::kBF16 ? 1 : 0, seed);
  WEFT_CHECK_LAUNCH();
}

uint64_t matrix_seed(uint64_t base, uint64_t tag, int rank, uint64_t round) {
  return dev::mix_key(base, tag, static_cast<uint64_t>(rank) + 1, round);
}

Tolerance gemm_tolerance(DType t, int64_t k) {
  // Rounding of the output (half an ulp: 2^-9 bf16, 2^-11 fp16), doubled, plus an absolute term
  // for outputs near zero and for the different fp32 accumulation orders of two GEMMs (far below
  // sigma * u / 2). Stale or missing data is off by about sigma, far outside.
  const double u = t == DType::kBF16 ? 1.0 / 512 : 1.0 / 2048;
  const double sigma = std::sqrt(double(k)) / 3.0;  // std of a dot product of [-1,1) values
  return {sigma * u / 2, 2 * u};
}

Tolerance reduced_gemm_tolerance(DType t, int64_t k, int world) {
  // Each rank's partial is rounded (<= u |p_r|) before the fp32 sum, then the sum is rounded:
  // |err| <= u sum_r |p_r| + u |out|, with |p_r| < 8 sigma.
  const double u = t == DType::kBF16 ? 1.0 / 512 : 1.0 / 2048;
  const double sigma = std::sqrt(double(k)) / 3.0;
  return {u * world * 8 * sigma, 2 * u};
}

Comparator::Comparator() {
  WEFT_CUDA_CHECK(cudaMalloc(&record_, sizeof(Record)));
  Record init{};
  init.first = ~0ull;
  WEFT_CUDA_CHECK(cudaMemcpy(record_, &init, sizeof(init), cudaMemcpyHostToDevice));
  WEFT_CUDA_CHECK(cudaDeviceSynchronize());  // (a pageable copy may return before it lands)
}

Comparator::~Comparator() {
  if (record_) cudaFree(record_);
}

void Comparator::reset(cudaStream_t stream) {
  static_assert(sizeof(Record) % 4 == 0);
  WEFT_CUDA_CHECK(cudaMemsetAsync(record_, 0, sizeof(Record), stream));
  // first = ~0 (no failure yet).
  WEFT_CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(record_) + offsetof(Record, first), 0xFF,
                                  sizeof(unsigned long long), stream));
}

void Comparator::compare(const void* out, int64_t ld, DType t, const float* ref, int64_t ld_ref,
                         int64_t rows, int64_t cols, Tolerance tol, uint32_t tag,
                         cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  compare_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(
      static_cast<const uint16_t*>(out), ld, t == DType::kBF16 ? 1 : 0, ref, ld_ref, rows, cols,
      tol.atol, tol.rtol, tag, static_cast<Record*>(record_));
  WEFT_CHECK_LAUNCH();
}

Comparator::Result Comparator::read(cudaStream_t stream) {
  Record rec{};
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&rec, record_, sizeof(rec), cudaMemcpyDeviceToHost, stream));
  WEFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  Result r;
  r.checked = rec.checked;
  r.bad = rec.bad;
  uint32_t bits = rec.max_err_bits;
  std::memcpy(&r.max_abs_err, &bits, 4);
  if (rec.bad) {
    r.first_tag = static_cast<uint32_t>(rec.first >> 40);
    r.first_row = rec.first_row;
    r.first_col = rec.first_col;
    r.first_value = rec.first_value;
    r.first_ref = rec.first_ref;
  }
  return r;
}

std::string Comparator::Result::describe() const {
  if (checked == 0) return "nothing was compared";
  if (bad == 0) return fmt::format("ok ({} elements, max |err| {:.3g})", checked, max_abs_err);
  return fmt::format(
      "{} of {} elements out of tolerance (max |err| {:.3g}); first: call/tag {}, row {}, col "
      "{}: got {:.6g}, reference {:.6g}",
      bad, checked, max_abs_err, first_tag, first_row, first_col, first_value, first_ref);
}

uint64_t count_bit_differences(const void* x, int64_t ldx, const void* y, int64_t ldy,
                               int64_t rows, int64_t cols, cudaStream_t stream) {
  unsigned long long* d = nullptr;
  WEFT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&d), sizeof(*d), stream));
  WEFT_CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof(*d), stream));
  diff_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(static_cast<const uint16_t*>(x), ldx,
                                                             static_cast<const uint16_t*>(y), ldy,
                                                             rows, cols, d);
  WEFT_CHECK_LAUNCH();
  unsigned long long h = 0;
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, d, sizeof(h), cudaMemcpyDeviceToHost, stream));
  WEFT_CUDA_CHECK(cudaFreeAsync(d, stream));
  WEFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return h;
}

uint64_t count_not_equal(const void* p, int64_t rows, int64_t cols, int64_t ld, uint16_t bits,
                         cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return 0;
  unsigned long long* d = nullptr;
  WEFT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&d), sizeof(*d), stream));
  WEFT_CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof(*d), stream));
  not_equal_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(
      static_cast<const uint16_t*>(p), rows, cols, ld, bits, d);
  WEFT_CHECK_LAUNCH();
  unsigned long long h = 0;
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, d, sizeof(h), cudaMemcpyDeviceToHost, stream));
  WEFT_CUDA_CHECK(cudaFreeAsync(d, stream));
  WEFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return h;
}

uint64_t checksum(const void* p, int64_t rows, int64_t cols, int64_t ld, cudaStream_t stream) {
  unsigned long long* d = nullptr;
  WEFT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&d), sizeof(*d), stream));
  WEFT_CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof(*d), stream));
  checksum_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(static_cast<const uint16_t*>(p),
                                                                 rows, cols, ld, d);
  WEFT_CHECK_LAUNCH();
  unsigned long long h = 0;
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, d, sizeof(h), cudaMemcpyDeviceToHost, stream));
  WEFT_CUDA_CHECK(cudaFreeAsync(d, stream));
  WEFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return h;
}

std::string describe_row(const void* p, int64_t ld, DType t, int64_t row, int64_t cols,
                         int64_t max_cols, cudaStream_t stream) {
  const int64_t n = std::min(cols, max_cols);
  std::vector<uint16_t> h(static_cast<size_t>(n));
  WEFT_CUDA_CHECK(cudaMemcpyAsync(h.data(), static_cast<const uint16_t*>(p) + row * ld, n * 2,
                                  cudaMemcpyDeviceToHost, stream));
  WEFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::string s;
  for (int64_t i = 0; i < n; ++i) s += fmt::format("{}{:.4g}", i ? " " : "", host_float(h[i], t));
  return s;
}

Reference::Reference(World& world) : world_(world) {}

void Reference::ag_gemm(const void* a_local, int64_t m_local, int64_t k, const void* b, int64_t n,
                        DType t, void* gathered, float* ref, cudaStream_t stream) {
  WEFT_NCCL_CHECK(ncclAllGather(a_local, gathered, static_cast<size_t>(m_local * k), nccl_type(t),
                                world_.nccl_comm(), stream));
  lt_.gemm(gathered, k, b, k, ref, n, m_local * world_.size(), n, k, t, DType::kFP32, stream);
}

void Reference::gemm_rs(const void* a, int64_t m, int64_t k, const void* b, int64_t n, DType t,
                        float* partial, float* ref, cudaStream_t stream) {
  lt_.gemm(a, k, b, k, partial, n, m, n, k, t, DType::kFP32, stream);
  WEFT_NCCL_CHECK(ncclReduceScatter(partial, ref, static_cast<size_t>(m / world_.size() * n),
                                    ncclFloat, ncclSum, world_.nccl_comm(), stream));
}

void Reference::gemm_ar(const void* a, int64_t m, int64_t k, const void* b, int64_t n, DType t,
                        float* ref, cudaStream_t stream) {
  lt_.gemm(a, k, b, k, ref, n, m, n, k, t, DType::kFP32, stream);
  WEFT_NCCL_CHECK(ncclAllReduce(ref, ref, static_cast<size_t>(m * n), ncclFloat, ncclSum,
                                world_.nccl_comm(), stream));
}

namespace {
__global__ void occupy_sm_kernel(uint64_t ns) {
  extern __shared__ char held[];  // only to keep other blocks off this SM
  const uint64_t start = dev::detail::globaltimer_ns();
  while (dev::detail::globaltimer_ns() - start < ns) {
  }
  if (ns == 0) held[threadIdx.x] = 0;  // the shared memory counts as used
}
}  // namespace

void occupy_sms(int free_sms, uint64_t ns, cudaStream_t stream) {
  int device = 0, sms = 0, smem = 0;
  WEFT_CUDA_CHECK(cudaGetDevice(&device));
  WEFT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  WEFT_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int blocks = sms - free_sms;
  if (blocks <= 0) return;
  WEFT_CUDA_CHECK(
      cudaFuncSetAttribute(occupy_sm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  occupy_sm_kernel<<<blocks, 32, smem, stream>>>(ns);
  WEFT_CHECK_LAUNCH();
}

}  // namespace weft::tp::testing
