// Probe (not part of the build): can GEMM-RS's tail (the own chunk's GEMM, then the fixed-order
// reduction of four 2048 x 8192 bf16 sources) get shorter by splitting the own chunk into row
// pieces and reducing piece i on a few SMs while the GEMM of piece i+1 runs on the others?
// One GPU, every source present. cuBLASLt's first heuristic answer, optionally with
// CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET so the GEMM leaves SMs to the reduction.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -o tail_overlap_probe tail_overlap_probe.cu -lcublasLt
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
#include "probe_util.cuh"

// Fixed-order sum of 4 sources (own at `self`), U units of 16 bytes per thread in flight.
template <int U>
__global__ void reduce4(const uint4* own, const uint4* slots, size_t slot_units, int self,
                        uint4* out, size_t units) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t x0 = blockIdx.x * size_t(blockDim.x) + threadIdx.x; x0 < units; x0 += stride * U) {
    uint4 v[U][4];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const size_t x = x0 + u * stride;
      if (x < units) {
#pragma unroll
        for (int q = 0; q < 4; ++q)
          v[u][q] = __ldcs(q == self ? own + x : slots + q * slot_units + x);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const size_t x = x0 + u * stride;
      if (x >= units) continue;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&v[u][q]);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] += __bfloat162float(e[i]);
      }
      uint4 r;
      __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
      for (int i = 0; i < 4; ++i) o[i] = __floats2bfloat162_rn(acc[2 * i], acc[2 * i + 1]);
      __stcs(out + x, r);
    }
  }
}

int main() {
  const int64_t M = 2048, N = 8192, K = 2048, W = 4, self = 1;
  const size_t chunk = size_t(M) * N;
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  __nv_bfloat16 *A, *B, *C, *S, *P;
  CK(cudaMalloc(&A, M * K * 2));
  CK(cudaMalloc(&B, N * K * 2));
  CK(cudaMalloc(&C, chunk * 2));
  CK(cudaMalloc(&P, chunk * 2));
  CK(cudaMalloc(&S, W * chunk * 2));
  fill_bf16<<<1024, 256>>>(A, M * K, 1, false);
  fill_bf16<<<1024, 256>>>(B, N * K, 2, false);
  fill_bf16<<<1024, 256>>>(S, W * chunk, 3, false);
  int lo, hi;
  CK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  cudaStream_t st, side;
  CK(cudaStreamCreateWithPriority(&st, cudaStreamNonBlocking, lo));
  CK(cudaStreamCreateWithPriority(&side, cudaStreamNonBlocking, hi));
  std::vector<cudaEvent_t> ev(16);
  for (auto& evt : ev) CK(cudaEventCreateWithFlags(&evt, cudaEventDisableTiming));
  __nv_bfloat16* Cref;
  CK(cudaMalloc(&Cref, chunk * 2));

  ProbeTimer time_it(st, 66);

  const uint4* slots = reinterpret_cast<const uint4*>(S);
  const size_t slot_units = chunk / 8;
  // The reduction of rows [r0, r0 + rows) with `blocks` blocks of `threads`.
  auto reduce = [&](int64_t r0, int64_t rows, int blocks, int threads, int u, cudaStream_t s) {
    const size_t off = size_t(r0) * N / 8, units = size_t(rows) * N / 8;
    const uint4* own = reinterpret_cast<const uint4*>(P) + off;
    uint4* out = reinterpret_cast<uint4*>(C) + off;
    if (u == 1)
      reduce4<1><<<blocks, threads, 0, s>>>(own, slots + off, slot_units, self, out, units);
    else if (u == 2)
      reduce4<2><<<blocks, threads, 0, s>>>(own, slots + off, slot_units, self, out, units);
    else  // 16 loads of 16 bytes in flight: 512 threads fit the register file
      reduce4<4><<<blocks, std::min(threads, 512), 0, s>>>(own, slots + off, slot_units, self, out,
                                                           units);
  };
  const int full_blocks = sms * 4;

  LtChunkGemm whole(M, N, K);
  time_it("own GEMM 2048 rows", [&] { whole.run(A, B, P, st); });
  time_it("reduction 2048 rows, full grid", [&] { reduce(0, M, full_blocks, 512, 1, st); });
  time_it("BASE: own GEMM + reduction", [&] {
    whole.run(A, B, P, st);
    reduce(0, M, full_blocks, 512, 1, st);
  });
  CK(cudaMemcpy(Cref, C, chunk * 2, cudaMemcpyDeviceToDevice));

  for (int s : {16, 32, 48, 66})
    for (int u : {1, 2, 4})
      time_it("reduction 1024 rows alone on " + std::to_string(s) +
                  " blocks x 1024, U=" + std::to_string(u),
              [&] { reduce(0, M / 2, s, 1024, u, st); });

  for (int pieces : {2, 4}) {
    const int64_t pr = M / pieces;
    for (int target : {0, sms - 16, sms - 32, sms - 48}) {
      LtChunkGemm piece(pr, N, K, target);
      time_it("GEMM " + std::to_string(pr) + " rows alone, SM target " + std::to_string(target),
              [&] { piece.run(A, B, P, st); });
    }
  }

  // Pieces: GEMM piece i on `st`; the reduction of piece i-1 on the high-priority side stream
  // with `s` blocks of 1024 threads; the last piece's reduction on `st`, full grid.
  auto split = [&](int pieces, int target, int s, int u) {
    const int64_t pr = M / pieces;
    LtChunkGemm piece(pr, N, K, target);
    LtChunkGemm first(pr, N, K);
    time_it("SPLIT " + std::to_string(pieces) + " pieces, GEMM SM target " +
                std::to_string(target) + ", side reduction " + std::to_string(s) +
                " blocks U=" + std::to_string(u),
            [&] {
              for (int i = 0; i < pieces; ++i) {
                LtChunkGemm& g = i == 0 ? first : piece;
                g.run(A + i * pr * K, B, P + i * pr * N, st);
                if (i + 1 < pieces) {
                  CK(cudaEventRecord(ev[i], st));
                  CK(cudaStreamWaitEvent(side, ev[i]));
                  reduce(i * pr, pr, s, 1024, u, side);
                }
              }
              reduce((pieces - 1) * pr, pr, full_blocks, 512, 1, st);
              CK(cudaEventRecord(ev[15], side));
              CK(cudaStreamWaitEvent(st, ev[15]));
            });
    CK(cudaDeviceSynchronize());
    // Same bits as the whole GEMM + reduction? (cuBLAS's piece kernel may differ from the whole)
    std::vector<uint16_t> h1(chunk), h2(chunk);
    CK(cudaMemcpy(h1.data(), C, chunk * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(h2.data(), Cref, chunk * 2, cudaMemcpyDeviceToHost));
    size_t diff = 0;
    for (size_t i = 0; i < chunk; ++i) diff += h1[i] != h2[i];
    std::printf("    elements differing from BASE: %zu of %zu\n", diff, chunk);
  };
  for (int pieces : {2, 4})
    for (int s : {16, 32, 48, 66})
      for (int target : {0, sms - s}) split(pieces, target, s, 2);
  split(2, 0, 32, 1);
  split(2, 0, 32, 4);
  CK(cudaDeviceSynchronize());
  return 0;
}
