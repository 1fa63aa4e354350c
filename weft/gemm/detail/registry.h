// The table of compiled GEMM kernel variants. Each instantiation file (sm90_<in>_<out>.cu)
// contributes the variants of one dtype pair; gemm.cc dispatches on this table.
#pragma once

#include <cstdint>
#include <vector>

#include <cuda_runtime_api.h>

#include "weft/gemm/detail/params.h"
#include "weft/gemm/gemm.h"

namespace weft::gemm::detail {

// What the host wrapper hands a launcher after validation.
struct LaunchRequest {
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  void* c;
  int64_t ldc;
  int64_t m, n, k;
  int raster_group;
  int max_ctas;     // 0: as many as fit (one per SM)
  bool stream_k;    // split the last partial wave by k-blocks (plain 1x1 kernels)
  void* sk_workspace;       // stream-K scratch (stream_k_workspace_bytes()), flags zeroed
  size_t sk_workspace_bytes;
  int64_t groups;   // grouped kernels: number of groups (B has groups * n rows); else 1
  KernelParams kp;  // bias, epilogue, hook and group fields filled; the launcher fills the rest
};

using LaunchFn = void (*)(const LaunchRequest&, cudaStream_t);
// Loads the kernel on the current device (sets its attributes); returns its resident CTAs.
using LoadFn = int (*)();

struct Variant {
  DType ab, c;
  int block_m, block_n, stages, cluster_m, cluster_n;
  bool hooks;
  bool grouped;
  bool pingpong;
  LaunchFn launch;
  LoadFn load;
  int smem_bytes;
};

// The kernel variants shipped for every dtype pair:
//   X(block_m, block_n, stages, cluster_m, cluster_n, hooks, grouped, pingpong)
// Stage counts fill ~192 KB of the 227 KB of shared memory; the rest holds epilogue slabs.
// 128x224 exists for N = 7168 (= 32 * 224): at M = 1024 it makes 256 tiles (1.94 waves on 132
// SMs) where 128x256 makes 224 (1.7 waves).
// Clusters: 2x1 shares B tiles (TMA multicast) between vertically adjacent CTAs, 1x2 shares A
// tiles between horizontally adjacent ones (small M: many CTAs read the same A rows).
// Ping-pong (last entry): each consumer warpgroup owns whole 128x128 tiles and runs its
// epilogue while the other runs its main loop; plain kernels only.
#define WEFT_GEMM_SM90_VARIANTS(X)   \
  X(128, 256, 4, 1, 1, false, false, false) \
  X(128, 256, 4, 2, 1, false, false, false) \
  X(128, 224, 4, 1, 1, false, false, false) \
  X(256, 128, 4, 1, 1, false, false, false) \
  X(256, 128, 4, 2, 1, false, false, false) \
  X(256, 128, 4, 1, 2, false, false, false) \
  X(128, 128, 6, 1, 1, false, false, false) \
  X(128, 128, 6, 2, 1, false, false, false) \
  X(128, 128, 6, 1, 2, false, false, false) \
  X(128, 64, 8, 1, 1, false, false, false) \
  X(128, 64, 8, 1, 2, false, false, false) \
  X(128, 256, 4, 1, 1, true, false, false) \
  X(128, 224, 4, 1, 1, true, false, false) \
  X(256, 128, 4, 1, 1, true, false, false) \
  X(128, 128, 6, 1, 1, true, false, false) \
  X(128, 64, 8, 1, 1, true, false, false) \
  X(128, 256, 4, 1, 1, false, true, false) \
  X(256, 128, 4, 1, 1, false, true, false) \
  X(128, 128, 6, 1, 1, false, true, false) \
  X(128, 64, 8, 1, 1, false, true, false) \
  X(128, 128, 6, 1, 1, false, false, true)

void register_sm90_bf16_bf16(std::vector<Variant>& out);
void register_sm90_bf16_f32(std::vector<Variant>& out);
void register_sm90_f16_f16(std::vector<Variant>& out);
void register_sm90_f16_f32(std::vector<Variant>& out);

// Stream-K scratch for `grid` CTAs of a tile of `tile_elems` elements: one fp32 partial tile
// per CTA, then two u32 flags per CTA (zero before the first launch; kernels leave them zero).
inline size_t stream_k_workspace_bytes_for(int grid, int tile_elems) {
  return size_t(grid) * size_t(tile_elems) * 4 + size_t(grid) * 2 * 4;
}

// All variants of all dtype pairs (built once).
const std::vector<Variant>& all_variants();

// Lazily allocated host-mapped record that timed-out waits write before trapping.
HangRecord* hang_record_device_ptr();

// gemm()'s stream-K workspace for `stream` on the current device (at least `bytes`, flags
// zero), allocated on first use; nullptr if that would happen during a stream capture.
void* stream_workspace(cudaStream_t stream, size_t bytes);

}  // namespace weft::gemm::detail
