// I-cache probe: a straight-line body of N distinct dependent IMADs (16 bytes each), run twice in
// one kernel; the first pass fetches the code cold (from L2), the second from the SM's caches.
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#define I1 asm volatile("mad.lo.u32 %0, %0, %1, %2;" : "+r"(v) : "r"(a), "r"(b));
#define I8 I1 I1 I1 I1 I1 I1 I1 I1
#define I64 I8 I8 I8 I8 I8 I8 I8 I8
#define I512 I64 I64 I64 I64 I64 I64 I64 I64
#define I1K I512 I512
template <int KB>  // KB kilobytes of body = KB * 64 instructions
__global__ void body(unsigned a, unsigned b, unsigned* out, long long* t) {
  unsigned v = threadIdx.x;
  long long c[3];
  c[0] = clock64();
#pragma unroll 1
  for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
    for (int i = 0; i < KB / 16; ++i) { I1K }
    c[pass + 1] = clock64();
  }
  if (v == 0xdeadbeef) out[0] = v;
  if (threadIdx.x == 0) { t[blockIdx.x * 2] = c[1] - c[0]; t[blockIdx.x * 2 + 1] = c[2] - c[1]; }
}
template <int KB>
void run(int blocks, int threads, long long* t, unsigned* out) {
  for (int rep = 0; rep < 3; ++rep) {
    body<KB><<<blocks, threads>>>(3u, 1u, out, t);
    cudaDeviceSynchronize();
    std::vector<long long> h(blocks * 2);
    cudaMemcpy(h.data(), t, h.size() * 8, cudaMemcpyDeviceToHost);
    std::vector<long long> f, s;
    for (int i = 0; i < blocks; ++i) { f.push_back(h[2 * i]); s.push_back(h[2 * i + 1]); }
    std::sort(f.begin(), f.end()); std::sort(s.begin(), s.end());
    printf("body %4d KB, %3d blocks x %4d threads, rep %d: first pass median %7lld clk max %7lld, second %7lld max %7lld  (cold extra %.2f us at 1.98 GHz)\n",
           KB, blocks, threads, rep, f[blocks / 2], f.back(), s[blocks / 2], s.back(), (f[blocks / 2] - s[blocks / 2]) / 1980.0);
  }
}
int main() {
  long long* t; unsigned* out;
  cudaMalloc(&t, 1024 * 16); cudaMalloc(&out, 4);
  int clk; cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0); printf("clock %d kHz\n", clk);
  run<16>(132, 32, t, out);
  run<64>(132, 32, t, out);
  run<128>(132, 32, t, out);
  run<64>(132, 512, t, out);
  run<128>(132, 512, t, out);
  run<256>(132, 32, t, out);
  printf("%s\n", cudaGetErrorString(cudaGetLastError()));
  return 0;
}
