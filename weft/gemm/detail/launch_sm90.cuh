// Host launcher for one sm_90a GEMM kernel instantiation: tensor maps, grid size, launch.
// Included only by the instantiation files (sm90_<in>_<out>.cu).
#pragma once

#include <algorithm>
#include <array>
#include <mutex>
#include <string>
#include <type_traits>

#include <cuda_runtime.h>

#include "weft/gemm/detail/cuda_check.h"
#include "weft/gemm/detail/registry.h"
#include "weft/gemm/detail/tma_host.h"
#include "weft/gemm/kernel_sm90.cuh"

namespace weft::gemm::detail {

template <typename T>
constexpr TmaElem tma_elem() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return TmaElem::kBF16;
  if constexpr (std::is_same_v<T, __half>) return TmaElem::kFP16;
  return TmaElem::kFP32;
}

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return DType::kBF16;
  if constexpr (std::is_same_v<T, __half>) return DType::kFP16;
  return DType::kFP32;
}

// Per device: kernel attributes set, and how many CTAs of this kernel can be resident at once.
template <class T>
int max_resident_ctas() {
  constexpr int kMaxDevices = 64;
  static std::array<int, kMaxDevices> cache{};  // 0: not initialized
  static std::mutex mu;
  int dev = 0;
  WEFT_GEMM_CUDA_CHECK(cudaGetDevice(&dev));
  WEFT_GEMM_CHECK(dev >= 0 && dev < kMaxDevices,
                  "device ordinal " + std::to_string(dev) + " out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (cache[dev] != 0) return cache[dev];

  auto kernel = &sm90::gemm_kernel<T>;
  // Referencing the kernel loads it (CUDA lazy loading). load_kernels() runs this for every
  // variant, so that no load -- which may wait for the device to go idle -- happens while a
  // kernel the GEMM waits for, or one that waits for the GEMM, is running.
  cudaFuncAttributes fa{};
  WEFT_GEMM_CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
  WEFT_GEMM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            T::kSmemBytes));
  int sms = 0;
  WEFT_GEMM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  int ctas = 0;
  if constexpr (T::kClusterSize == 1) {
    int per_sm = 0;
    WEFT_GEMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                                       T::kThreads, T::kSmemBytes));
    WEFT_GEMM_CHECK(per_sm >= 1, "GEMM kernel " + std::to_string(T::kBlockM) + "x" +
                                     std::to_string(T::kBlockN) + " does not fit on an SM (" +
                                     std::to_string(T::kSmemBytes) + " B smem)");
    ctas = sms * per_sm;
  } else {
    cudaLaunchConfig_t cfg{};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = T::kClusterSize;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.gridDim = dim3(T::kClusterSize * sms, 1, 1);
    cfg.blockDim = dim3(T::kThreads, 1, 1);
    cfg.dynamicSmemBytes = T::kSmemBytes;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    WEFT_GEMM_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg));
    WEFT_GEMM_CHECK(clusters >= 1, "GEMM kernel " + std::to_string(T::kBlockM) + "x" +
                                       std::to_string(T::kBlockN) + " cluster " +
                                       std::to_string(T::kClusterSize) + ": no cluster fits");
    ctas = clusters * T::kClusterSize;
  }
  cache[dev] = ctas;
  return ctas;
}

template <class T>
void launch_sm90(const LaunchRequest& r, cudaStream_t stream) {
  using TIn = typename T::TIn;
  using TOut = typename T::TOut;
  KernelParams p = r.kp;
  p.M = int32_t(r.m);
  p.N = int32_t(r.n);
  p.K = int32_t(r.k);
  p.tiles_m = int32_t((r.m + T::kBlockM - 1) / T::kBlockM);
  p.tiles_n = int32_t((r.n + T::kBlockN - 1) / T::kBlockN);
  if constexpr (T::kGrouped) {
    // Row counts live on the device: size everything for the most m-tiles the groups can have
    // (each group's last tile may be partial). The kernel computes the real count.
    p.tiles_m += int32_t(r.groups);
  }
  p.units_m = (p.tiles_m + T::kClusterM - 1) / T::kClusterM;
  p.units_n = (p.tiles_n + T::kClusterN - 1) / T::kClusterN;
  p.num_units = p.units_m * p.units_n;
  // A group of at least units_m m-units is the whole grid (the same schedule), and capping it
  // keeps the kernel's int32 group arithmetic (raster_group * units_n) from wrapping.
  p.raster_group = std::clamp(r.raster_group, 1, std::max(1, p.units_m));
  p.num_kb = int32_t((r.k + T::kBlockK - 1) / T::kBlockK);
  p.dp_units = p.num_units;
  p.sk_iters = 0;
  p.sk_partials = nullptr;
  p.sk_flags = nullptr;

  const CUtensorMap ta =
      make_tma_2d_sw128(tma_elem<TIn>(), r.a, r.m, r.k, r.lda, T::kARowsPerCta, T::kBlockK);
  // Grouped: B is [groups, N, K], one 2-D map over groups * N rows. A tile at a group's right
  // edge reads rows of the next group's B into columns that are never stored.
  const int64_t b_rows = T::kGrouped ? r.groups * r.n : r.n;
  const CUtensorMap tb =
      make_tma_2d_sw128(tma_elem<TIn>(), r.b, b_rows, r.k, r.ldb, T::kBRowsPerCta, T::kBlockK);
  CUtensorMap tc{};
  if (!p.epi_direct) {
    tc = make_tma_2d_sw128(tma_elem<TOut>(), r.c, r.m, r.n, r.ldc, 64, T::kSlabCols);
  }

  int ctas = max_resident_ctas<T>();
  if (r.max_ctas > 0) ctas = std::min(ctas, r.max_ctas);
  ctas = std::min<int64_t>(ctas, int64_t(p.num_units) * T::kClusterSize);
  ctas = std::max(T::kClusterSize, ctas / T::kClusterSize * T::kClusterSize);

  if constexpr (T::kStreamK) {
    // Stream-K: with U units on G CTAs (U > G, not a multiple), the last partial wave leaves
    // G - U % G CTAs idle for a whole tile. Split it by k-blocks over all G CTAs instead: the
    // last R = U % G units (or R + G when R < G / 2, so no tile is cut into more than ~3
    // pieces), each CTA taking R * num_kb / G consecutive k-blocks.
    const int64_t units = p.num_units, grid = ctas;
    const int64_t rem = units % grid;
    const size_t need = stream_k_workspace_bytes_for(int(grid), T::kBlockM * T::kBlockN);
    if (r.stream_k && r.sk_workspace != nullptr && r.sk_workspace_bytes >= need &&
        units > grid && rem != 0 && p.num_kb >= 4) {
      const int64_t sk_units = 2 * rem >= grid ? rem : rem + grid;
      p.dp_units = int32_t(units - sk_units);
      p.sk_iters = sk_units * p.num_kb;
      p.sk_partials = static_cast<float*>(r.sk_workspace);
      p.sk_flags = reinterpret_cast<uint32_t*>(static_cast<char*>(r.sk_workspace) +
                                               size_t(grid) * T::kBlockM * T::kBlockN * 4);
    }
  }

  cudaLaunchConfig_t cfg{};
  cudaLaunchAttribute attr[1];
  cfg.gridDim = dim3(ctas, 1, 1);
  cfg.blockDim = dim3(T::kThreads, 1, 1);
  cfg.dynamicSmemBytes = T::kSmemBytes;
  cfg.stream = stream;
  if constexpr (T::kClusterSize > 1) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = T::kClusterSize;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  WEFT_GEMM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, &sm90::gemm_kernel<T>, ta, tb, tc, p));
}

template <class T>
Variant make_variant() {
  return Variant{dtype_of<typename T::TIn>(),
                 dtype_of<typename T::TOut>(),
                 T::kBlockM,
                 T::kBlockN,
                 T::kStages,
                 T::kClusterM,
                 T::kClusterN,
                 T::kHooks,
                 T::kGrouped,
                 T::kPingPong,
                 &launch_sm90<T>,
                 &max_resident_ctas<T>,
                 T::kSmemBytes};
}

}  // namespace weft::gemm::detail

// Body of register_sm90_<in>_<out>(): explicitly instantiates every shipped variant for the
// dtype pair and appends it to `out`.
#define WEFT_GEMM_SM90_INSTANTIATE_ONE(BM, BN, ST, CM, CN, HK, GR, PP)                          \
  template void launch_sm90<sm90::Traits<WEFT_TIN, WEFT_TOUT, BM, BN, ST, CM, CN, HK, GR, PP>>(  \
      const LaunchRequest&, cudaStream_t);
#define WEFT_GEMM_SM90_REGISTER_ONE(BM, BN, ST, CM, CN, HK, GR, PP) \
  out.push_back(                                                   \
      make_variant<sm90::Traits<WEFT_TIN, WEFT_TOUT, BM, BN, ST, CM, CN, HK, GR, PP>>());
