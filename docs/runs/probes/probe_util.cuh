// Shared scaffolding of the probes in this folder (tail_overlap, gemm_sum, gemm_addend,
// reduce_layout, reduce_push and insitu_clock; probe_lt.cuh adds cuBLASLt's chunk GEMM): error
// checks, random bf16 fills, GEMM-RS's 4-source reduction and an event-timed median with L2
// flushed.
// Not part of the build; each probe includes it by relative path.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#define CK(x)                                                                                      \
  do {                                                                                             \
    cudaError_t ck_err_ = (x);                                                                     \
    if (ck_err_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(ck_err_)); \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

// Values in [-0.125, 0.125] from a hash of the index; `mix` adds a last xor-shift round (the
// GEMM-sum probe's inputs; the tail probe ran without it).
__global__ void fill_bf16(__nv_bfloat16* p, size_t n, uint32_t seed, bool mix) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    if (mix) h ^= h >> 15;
    p[i] = __float2bfloat16((float(h & 0xffff) / 65535.f - 0.5f) * 0.25f);
  }
}

// GEMM-RS's flat fixed-order reduction of 4 bf16 sources (own at `self`, the others at
// slots + q * slot_units), one 16-byte unit per thread and step.
__global__ void reduce_rank_order4(const uint4* own, const uint4* slots, size_t slot_units,
                                   int self, uint4* out, size_t units) {
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

// Times `f` on `stream`: 5 warm-up runs, then 40 runs each after a 128 MiB memset that evicts L2,
// events around each; prints the median, min and max in µs.
class ProbeTimer {
 public:
  explicit ProbeTimer(cudaStream_t stream, int name_width) : stream_(stream), width_(name_width) {
    CK(cudaMalloc(&flush_, kFlushBytes));
    CK(cudaEventCreate(&a_));
    CK(cudaEventCreate(&b_));
  }
  void operator()(const std::string& name, const std::function<void()>& f) {
    for (int i = 0; i < 5; ++i) f();
    std::vector<float> t;
    for (int i = 0; i < 40; ++i) {
      CK(cudaMemsetAsync(flush_, i, kFlushBytes, stream_));
      CK(cudaEventRecord(a_, stream_));
      f();
      CK(cudaEventRecord(b_, stream_));
      CK(cudaEventSynchronize(b_));
      float ms;
      CK(cudaEventElapsedTime(&ms, a_, b_));
      t.push_back(ms * 1000.f);
    }
    CK(cudaGetLastError());
    std::sort(t.begin(), t.end());
    std::printf("%-*s %8.1f us (min %.1f, max %.1f)\n", width_, name.c_str(), t[t.size() / 2], t[0],
                t.back());
  }

 private:
  static constexpr size_t kFlushBytes = size_t(128) << 20;
  cudaStream_t stream_;
  int width_;
  void* flush_ = nullptr;
  cudaEvent_t a_, b_;
};
