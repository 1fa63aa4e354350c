// Launch-floor probe: event time of an empty kernel after a small "barrier-like" kernel,
// for several grids / dynamic smem sizes / carveout preferences of the preceding kernel.
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); return 1; } } while (0)
__global__ void pre_default(int* p) { if (p && threadIdx.x == 0) atomicAdd(p, 1); }
__global__ void pre_maxshared(int* p) { if (p && threadIdx.x == 0) atomicAdd(p, 1); }
__global__ void pre_bigsmem(int* p) { extern __shared__ int s[]; if (p && threadIdx.x == 0) { s[0] = 1; atomicAdd(p, s[0]); } }
__global__ void empty_k(int* p) { extern __shared__ int s[]; if (p && threadIdx.x == 1023 && blockIdx.x == 9999) s[0] = *p; }
__global__ void empty_k2(int* p) { extern __shared__ int s[]; if (p && threadIdx.x == 1023 && blockIdx.x == 9999) s[0] = *p; }
int main() {
  int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  int* d; CK(cudaMalloc(&d, 4)); CK(cudaMemset(d, 0, 4));
  CK(cudaFuncSetAttribute(empty_k, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
  CK(cudaFuncSetAttribute(empty_k2, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
  CK(cudaFuncSetAttribute(empty_k2, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  CK(cudaFuncSetAttribute(pre_maxshared, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  CK(cudaFuncSetAttribute(pre_bigsmem, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
  cudaStream_t st; CK(cudaStreamCreate(&st));
  const int N = 300;
  std::vector<cudaEvent_t> a(N), b(N);
  for (int i = 0; i < N; ++i) { CK(cudaEventCreate(&a[i])); CK(cudaEventCreate(&b[i])); }
  struct Pre { const char* name; void (*k)(int*); int smem; };
  Pre pres[] = {{"pre default", pre_default, 0}, {"pre carveout=100", pre_maxshared, 0}, {"pre 200KB smem", pre_bigsmem, 200 * 1024}, {"no pre", nullptr, 0}};
  struct E { const char* name; void (*k)(int*); int grid, threads, smem; };
  E es[] = {{"132x512 smem 0", empty_k, sms, 512, 0},
            {"132x512 smem 48K", empty_k, sms, 512, 48 * 1024},
            {"132x512 smem 64K", empty_k, sms, 512, 64 * 1024},
            {"132x512 smem 120K", empty_k, sms, 512, 120 * 1024},
            {"132x512 smem 200K", empty_k, sms, 512, 200 * 1024},
            {"132x512 smem 120K carve100", empty_k2, sms, 512, 120 * 1024},
            {"132x512 smem 0 carve100", empty_k2, sms, 512, 0},
            {"132x1024 smem 0", empty_k, sms, 1024, 0},
            {"132x128 smem 0", empty_k, sms, 128, 0},
            {"32x512 smem 0", empty_k, 32, 512, 0},
            {"1x32 smem 0", empty_k, 1, 32, 0}};
  for (int round = 0; round < 2; ++round)
  for (auto& pr : pres) for (auto& e : es) {
    for (int i = -20; i < N; ++i) {
      if (pr.k) pr.k<<<1, 32, pr.smem, st>>>(d);
      if (i >= 0) CK(cudaEventRecord(a[i], st));
      e.k<<<e.grid, e.threads, e.smem, st>>>(d);
      if (i >= 0) CK(cudaEventRecord(b[i], st));
    }
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(st));
    std::vector<float> t(N);
    for (int i = 0; i < N; ++i) { CK(cudaEventElapsedTime(&t[i], a[i], b[i])); t[i] *= 1000.f; }
    std::sort(t.begin(), t.end());
    printf("r%d %-18s %-28s median %6.2f us  p10 %6.2f  p90 %6.2f\n", round, pr.name, e.name, t[N / 2], t[N / 10], t[N * 9 / 10]);
  }
  return 0;
}
