// Probe (not part of the build): does the placement of GEMM-RS's reduction sources decide its
// bandwidth? The fixed-order reduction at 8192³ on 4 ranks reads the own partial chunk and three
// received chunks (32 MiB each) and writes one: 168 MB at ~3.65 TB/s on H200, where a plain copy
// reaches ~4.2. The received slots sit exactly 32 MiB apart (a power of two), so the four loads of
// one 16-byte unit may land on the same DRAM channel. This times the same kernel (weft's flat
// reduction, bf16, world 4) with the sources at several strides, beside a device-to-device copy.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -o reduce_layout_probe reduce_layout_probe.cu
//   ./reduce_layout_probe
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "probe_util.cuh"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

__device__ __forceinline__ void add8(float (&acc)[8], const uint4& v) {
  const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] += __bfloat162float(e[j]);
}

__device__ __forceinline__ uint4 pack8(const float (&acc)[8]) {
  uint4 out;
  __nv_bfloat16* e = reinterpret_cast<__nv_bfloat16*>(&out);
#pragma unroll
  for (int j = 0; j < 8; ++j) e[j] = __float2bfloat16_rn(acc[j]);
  return out;
}

// weft's reduce_flat_kernel<bf16, 4> without the flag waits: own + 3 slots at `stride` units.
__global__ void __launch_bounds__(256)
    reduce4(const uint4* own, const uint4* slots, int64_t stride, uint4* out, int64_t total,
            int rank) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += step) {
    const int64_t u = total - 1 - x;
    uint4 v[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) v[q] = __ldcs(q == rank ? own + u : slots + q * stride + u);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
    for (int q = 0; q < 4; ++q) add8(acc, v[q]);
    out[u] = pack8(acc);
  }
}

__global__ void fill(uint4* p, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    p[i] = make_uint4(0x3f803f80u ^ uint32_t(i), 0x3f003f00u, 0x3e803e80u, uint32_t(i * 7));
}

int main() {
  const int64_t chunk = int64_t(2048) * 8192 * 2;  // bytes: one destination's rows at 8192³, W = 4
  const int64_t units = chunk / 16;
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int grid = sms * 8;
  const int64_t pad_max = int64_t(1) << 20;
  char* slots = nullptr;
  char* own = nullptr;
  char* out = nullptr;
  char* src2 = nullptr;
  CK(cudaMalloc(&slots, 4 * (chunk + pad_max)));
  CK(cudaMalloc(&own, 4 * chunk));  // as GEMM-RS's partial: the own chunk at rank * chunk
  CK(cudaMalloc(&out, chunk + pad_max));
  CK(cudaMalloc(&src2, 4 * chunk));
  fill<<<grid, 256>>>(reinterpret_cast<uint4*>(slots), 4 * (chunk + pad_max) / 16);
  fill<<<grid, 256>>>(reinterpret_cast<uint4*>(own), 4 * chunk / 16);
  CK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  auto median = [&](auto&& body) {
    std::vector<float> t;
    for (int i = 0; i < 60; ++i) {
      // A 256 MiB pass over other memory first, so that no source starts in L2.
      CK(cudaMemsetAsync(src2, i & 0xff, 4 * chunk));
      CK(cudaEventRecord(a));
      body();
      CK(cudaEventRecord(b));
      CK(cudaEventSynchronize(b));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, a, b));
      if (i >= 10) t.push_back(ms * 1000.f);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  const int rank = 1;
  const int64_t pads[] = {0, 256, 768, 4096, 4096 + 256, 65536, 65536 + 4096 + 768};
  for (int round = 0; round < 2; ++round) {
    for (int64_t pad : pads) {
      const int64_t stride = (chunk + pad) / 16;
      const float us = median([&] {
        reduce4<<<grid, 256>>>(reinterpret_cast<const uint4*>(own + rank * chunk),
                               reinterpret_cast<const uint4*>(slots), stride,
                               reinterpret_cast<uint4*>(out), units, rank);
      });
      CK(cudaGetLastError());
      std::printf("round %d  slot stride = 32 MiB + %6lld B: %6.1f us  %5.0f GB/s\n", round,
                  static_cast<long long>(pad), us, 5.0 * chunk / us / 1e3);
    }
    // The output (and own) offset too: out placed `pad` past a 32 MiB boundary.
    for (int64_t pad : {int64_t(4096 + 256), int64_t(65536 + 4096 + 768)}) {
      const int64_t stride = (chunk + pad) / 16;
      const float us = median([&] {
        reduce4<<<grid, 256>>>(reinterpret_cast<const uint4*>(own + rank * chunk + 0),
                               reinterpret_cast<const uint4*>(slots), stride,
                               reinterpret_cast<uint4*>(out + 2 * pad), units, rank);
      });
      std::printf("round %d  stride + %6lld B, out offset %6lld B: %6.1f us  %5.0f GB/s\n", round,
                  static_cast<long long>(pad), static_cast<long long>(2 * pad), us,
                  5.0 * chunk / us / 1e3);
    }
    const float cp = median([&] { CK(cudaMemcpyAsync(src2, slots, 2 * chunk, cudaMemcpyDeviceToDevice)); });
    std::printf("round %d  copy of 64 MiB (the same bytes moved as 2 chunks in, 2 out): %6.1f us  %5.0f GB/s\n",
                round, cp, 4.0 * chunk / cp / 1e3);
  }
  return 0;
}
