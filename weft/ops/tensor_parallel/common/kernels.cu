#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "weft/device/weft.cuh"
#include "weft/ops/tensor_parallel/common/convert.cuh"
#include "weft/ops/tensor_parallel/common/kernels.h"
#include "weft/runtime/cuda_check.h"

namespace weft::tp {
namespace {

// ---- prologue -----------------------------------------------------------------------------------

constexpr int kPrologueThreads = 512;
// Kernel parameters may take 32764 bytes (CUDA 12.1+, Volta+); the tile order is most of it.
static_assert(sizeof(PrologueParams) <= 32000, "PrologueParams too large for a kernel parameter");

__global__ void __launch_bounds__(kPrologueThreads)
    prologue_kernel(const __grid_constant__ dev::Context ctx,
                    const __grid_constant__ PrologueParams p) {
  for (int r = 0; r < p.n_rearm; ++r) {
    const RearmRange& range = p.rearm[r];
    for (int i = threadIdx.x; i < range.count; i += blockDim.x) {
      const bool ready = i >= range.ready_begin && i < range.ready_end;
      dev::st<dev::Sem::relaxed, dev::Scope::sys>(range.flags + i, ready ? ~uint64_t(0) : uint64_t(0));
    }
  }
  if (p.order_out != nullptr && p.order.valid()) {
    const int64_t units = p.order.num_units();
    for (int64_t i = threadIdx.x; i < units; i += blockDim.x)
      p.order_out[i] = tile_order_unit(p.order, i);
  }
  __syncthreads();
  // barrier_all completes this block's stores (quiet: fence.sc.sys), then an acquire-release
  // barrier: a peer that passes it and then writes one of these flags writes after the re-arm.
  if (p.barrier) dev::barrier_all(dev::Block{}, ctx, static_cast<uint32_t>(p.barrier_index));
}

// ---- copy ---------------------------------------------------------------------------------------

constexpr int kCopyThreads = 256;

__global__ void __launch_bounds__(kCopyThreads)
    copy_rows_vec_kernel(char* dst, int64_t ldd, const char* src, int64_t lds, int64_t rows,
                         int64_t units_per_row) {
  const int64_t total = rows * units_per_row;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  constexpr int kUnroll = 4;
  for (; u + (kUnroll - 1) * stride < total; u += kUnroll * stride) {
    uint4 v[kUnroll];
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int64_t x = u + j * stride;
      const int64_t r = x / units_per_row, c = x - r * units_per_row;
      v[j] = *reinterpret_cast<const uint4*>(src + r * lds + c * 16);
    }
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int64_t x = u + j * stride;
      const int64_t r = x / units_per_row, c = x - r * units_per_row;
      *reinterpret_cast<uint4*>(dst + r * ldd + c * 16) = v[j];
    }
  }
  for (; u < total; u += stride) {
    const int64_t r = u / units_per_row, c = u - r * units_per_row;
    *reinterpret_cast<uint4*>(dst + r * ldd + c * 16) =
        *reinterpret_cast<const uint4*>(src + r * lds + c * 16);
  }
}

__global__ void __launch_bounds__(kCopyThreads)
    copy_rows_byte_kernel(char* dst, int64_t ldd, const char* src, int64_t lds, int64_t rows,
                          int64_t row_bytes) {
  const int64_t total = rows * row_bytes;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += stride) {
    const int64_t r = x / row_bytes, c = x - r * row_bytes;
    dst[r * ldd + c] = src[r * lds + c];
  }
}

// ---- fixed-order reduction ------------------------------------------------------------------

constexpr int kReduceThreads = 512;

// Every thread of the block waits for its share of the peers' flags, then the block syncs: the
// acquires plus the barrier order every thread's later loads of the peers' partials.
__device__ __forceinline__ void wait_peer_flags(const dev::Context& ctx, const ReduceParams& p) {
  const int n = p.world * p.flags_used;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int q = i / p.flags_used, f = i - q * p.flags_used;
    if (q != p.rank)
      dev::wait<dev::Scope::sys>(ctx, p.flags + int64_t(q) * p.flags_per_src + f, dev::Cmp::ge,
                                 p.expected);
  }
  __syncthreads();
}

// Plain (coherent) loads: the partials were written by peers during this kernel's wait, so the
// read-only (.nc) path must not be used.
template <class T>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_vec_kernel(const __grid_constant__ dev::Context ctx,
                      const __grid_constant__ ReduceParams p) {
  wait_peer_flags(ctx, p);
  const int64_t upr = p.cols / 8;
  const int64_t total = p.rows * upr;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const T* own = static_cast<const T*>(p.own);
  const T* slots = static_cast<const T*>(p.slots);
  T* out = static_cast<T*>(p.out);
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < total; u += stride) {
    const int64_t r = u / upr, c = (u - r * upr) * 8;
    uint4 v[8];
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    // Loads in batches of 8 ranks (all in flight), accumulated strictly in rank order.
    for (int q0 = 0; q0 < p.world; q0 += 8) {
      const int nq = min(8, p.world - q0);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j < nq) {
          const int q = q0 + j;
          const T* src = q == p.rank ? own + r * p.ld_own + c
                                     : slots + int64_t(q) * p.slot_stride + r * p.cols + c;
          v[j] = *reinterpret_cast<const uint4*>(src);
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j < nq) add8<T>(acc, v[j]);
    }
    *reinterpret_cast<uint4*>(out + r * p.ldo + c) = pack8<T>(acc);
  }
}

template <class T>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_scalar_kernel(const __grid_constant__ dev::Context ctx,
                         const __grid_constant__ ReduceParams p) {
  wait_peer_flags(ctx, p);
  const int64_t total = p.rows * p.cols;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const T* own = static_cast<const T*>(p.own);
  const T* slots = static_cast<const T*>(p.slots);
  T* out = static_cast<T*>(p.out);
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += stride) {
    const int64_t r = x / p.cols, c = x - r * p.cols;
    float acc = 0.f;
    for (int q = 0; q < p.world; ++q) {
      const T* src = q == p.rank ? own + r * p.ld_own + c
                                 : slots + int64_t(q) * p.slot_stride + r * p.cols + c;
      acc += to_f<T>(*src);
    }
    out[r * p.ldo + c] = from_f<T>(acc);
  }
}

// Streaming: every block walks the row blocks in order (the GEMM completes them roughly in that
// order) and takes its share of each; two units per thread per step, all of their loads in
// flight (1024 threads x 2 x W x 16 bytes per SM).
constexpr int kStreamReduceThreads = 1024;

template <class T>
__global__ void __launch_bounds__(kStreamReduceThreads, 1)
    reduce_stream_kernel(const __grid_constant__ dev::Context ctx,
                         const __grid_constant__ ReduceParams p) {
  constexpr int kUnits = 2, kMaxWorld = 8;
  const int64_t upr = p.cols / 8;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const T* own = static_cast<const T*>(p.own);
  const T* slots = static_cast<const T*>(p.slots);
  T* out = static_cast<T*>(p.out);
  const int64_t n_blocks = (p.rows + p.block_rows - 1) / p.block_rows;
  for (int64_t rb = 0; rb < n_blocks; ++rb) {
    const int64_t r0 = rb * p.block_rows, r1 = min(p.rows, r0 + p.block_rows);
    const int q = threadIdx.x;
    if (q < p.world && q != p.rank) {
      for (int64_t c = r0 / p.flag_rows; c <= (r1 - 1) / p.flag_rows; ++c)
        dev::wait<dev::Scope::sys>(ctx, p.flags + int64_t(q) * p.flags_per_src + c, dev::Cmp::ge,
                                   p.expected);
    } else if (q == p.rank) {
      dev::wait<dev::Scope::sys>(ctx, p.own_flags + rb, dev::Cmp::ge, p.own_expected);
    }
    __syncthreads();
    const int64_t total = (r1 - r0) * upr;
    for (int64_t u0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u0 < total;
         u0 += kUnits * stride) {
      uint4 v[kUnits][kMaxWorld];
#pragma unroll
      for (int j = 0; j < kUnits; ++j) {
        const int64_t u = u0 + j * stride;
        if (u >= total) continue;
        const int64_t r = r0 + u / upr, c = (u % upr) * 8;
#pragma unroll
        for (int s = 0; s < kMaxWorld; ++s) {
          if (s >= p.world) break;
          const T* src = s == p.rank ? own + r * p.ld_own + c
                                     : slots + int64_t(s) * p.slot_stride + r * p.cols + c;
          v[j][s] = __ldcg(reinterpret_cast<const uint4*>(src));
        }
      }
#pragma unroll
      for (int j = 0; j < kUnits; ++j) {
        const int64_t u = u0 + j * stride;
        if (u >= total) continue;
        const int64_t r = r0 + u / upr, c = (u % upr) * 8;
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int s = 0; s < kMaxWorld; ++s) {
          if (s >= p.world) break;
          add8<T>(acc, v[j][s]);  // rank order, as reduce_vec_kernel
        }
        *reinterpret_cast<uint4*>(out + r * p.ldo + c) = pack8<T>(acc);
      }
    }
  }
}

int grid_for(int64_t items, int threads, int sms, int per_sm) {
  const int64_t want = std::max<int64_t>(1, (items + threads - 1) / threads);
  return static_cast<int>(std::min<int64_t>(want, int64_t(std::max(1, sms)) * per_sm));
}

bool vector_rows(const ReduceParams& p) {
  return p.cols % 8 == 0 && p.ldo % 8 == 0 && p.ld_own % 8 == 0 && p.slot_stride % 8 == 0 &&
         is_aligned(p.out, 16) && is_aligned(p.own, 16) && is_aligned(p.slots, 16);
}

}  // namespace

void launch_prologue(const dev::Context& ctx, const PrologueParams& p, cudaStream_t stream) {
  prologue_kernel<<<1, kPrologueThreads, 0, stream>>>(ctx, p);
  WEFT_CHECK_LAUNCH();
}

void launch_copy_rows(void* dst, int64_t ld_dst_bytes, const void* src, int64_t ld_src_bytes,
                      int64_t rows, int64_t row_bytes, int sms, cudaStream_t stream) {
  if (rows <= 0 || row_bytes <= 0) return;
  const bool vec = row_bytes % 16 == 0 && ld_dst_bytes % 16 == 0 && ld_src_bytes % 16 == 0 &&
                   is_aligned(dst, 16) && is_aligned(src, 16);
  if (vec) {
    const int64_t upr = row_bytes / 16;
    copy_rows_vec_kernel<<<grid_for(rows * upr, kCopyThreads, sms, 4), kCopyThreads, 0, stream>>>(
        static_cast<char*>(dst), ld_dst_bytes, static_cast<const char*>(src), ld_src_bytes, rows,
        upr);
  } else {
    copy_rows_byte_kernel<<<grid_for(rows * row_bytes, kCopyThreads, sms, 4), kCopyThreads, 0,
                            stream>>>(static_cast<char*>(dst), ld_dst_bytes,
                                      static_cast<const char*>(src), ld_src_bytes, rows, row_bytes);
  }
  WEFT_CHECK_LAUNCH();
}

void launch_fixed_order_reduce(const dev::Context& ctx, const ReduceParams& p, int sms,
                               cudaStream_t stream) {
  if (p.rows <= 0 || p.cols <= 0) return;
  const bool vec = vector_rows(p);
  const int64_t items = vec ? p.rows * (p.cols / 8) : p.rows * p.cols;
  const int grid = grid_for(items, kReduceThreads, sms, 2);
  if (p.dtype == DType::kBF16) {
    if (vec)
      reduce_vec_kernel<__nv_bfloat16><<<grid, kReduceThreads, 0, stream>>>(ctx, p);
    else
      reduce_scalar_kernel<__nv_bfloat16><<<grid, kReduceThreads, 0, stream>>>(ctx, p);
  } else {
    if (vec)
      reduce_vec_kernel<__half><<<grid, kReduceThreads, 0, stream>>>(ctx, p);
    else
      reduce_scalar_kernel<__half><<<grid, kReduceThreads, 0, stream>>>(ctx, p);
  }
  WEFT_CHECK_LAUNCH();
}

bool streaming_reduce_supported(const ReduceParams& p) {
  return vector_rows(p) && p.world <= 8;
}

void launch_streaming_reduce(const dev::Context& ctx, const ReduceParams& p, int blocks,
                             cudaStream_t stream) {
  if (p.rows <= 0 || p.cols <= 0) return;
  WEFT_CHECK(streaming_reduce_supported(p) && p.own_flags != nullptr && p.block_rows >= 1 &&
                 p.flag_rows >= 1 && blocks >= 1,
             "streaming reduce: needs 16-byte rows, <= 8 ranks, own flags and row blocks");
  if (p.dtype == DType::kBF16)
    reduce_stream_kernel<__nv_bfloat16><<<blocks, kStreamReduceThreads, 0, stream>>>(ctx, p);
  else
    reduce_stream_kernel<__half><<<blocks, kStreamReduceThreads, 0, stream>>>(ctx, p);
  WEFT_CHECK_LAUNCH();
}

}  // namespace weft::tp
