#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "weft/device/launch.cuh"
#include "weft/device/weft.cuh"
#include "weft/ops/tensor_parallel/common/convert.cuh"
#include "weft/ops/tensor_parallel/common/kernels.h"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/pdl.h"

namespace weft::tp {
namespace {

// ---- prologue -----------------------------------------------------------------------------------

constexpr int kPrologueThreads = 512;
// Kernel parameters may take 32764 bytes (CUDA 12.1+, Volta+); the tile order is most of it.
static_assert(sizeof(PrologueParams) <= 32000, "PrologueParams too large for a kernel parameter");

__global__ void __launch_bounds__(kPrologueThreads)
    prologue_kernel(const __grid_constant__ dev::Context ctx,
                    const __grid_constant__ PrologueParams p) {
  // The signature goes out before the barrier (whose quiet and release publish it) and the
  // peers' are compared after it, before this call's first write to a peer (which every
  // operator issues only after this kernel). The slots alternate with the call counter's parity.
  const bool check = p.barrier && p.sig_slots != nullptr;
  __shared__ int parity;
  if (check) {
    if (threadIdx.x == 0) parity = static_cast<int>(*p.calls & 1u);
    __syncthreads();
    dev::publish_call_signature(ctx, p.sig_slots, parity, p.signature, threadIdx.x);
  }
  if (p.abandon) {  // the peers' barrier passes and their check finds the 'aborted' signature
    __syncthreads();
    if (p.barrier) dev::arrive_all(dev::Block{}, ctx, static_cast<uint32_t>(p.barrier_index));
    if (check && threadIdx.x == 0) *p.calls += 1u;
    return;
  }
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
  if (check) {
    if (threadIdx.x < ctx.world_size)
      dev::check_call_signature(ctx, p.sig_slots, parity, threadIdx.x, p.signature);
    if (threadIdx.x == 0) *p.calls += 1u;
  }
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

// 256-thread blocks, 8 per SM in the grid: more than are resident at once (4-5 by registers), on
// purpose: standalone on H200, 4 chunks of 2048 x 8192 bf16 into one (docs/perf.md, eleventh
// pass), the strided kernel took 53.8-54.9 µs with 2 resident blocks of 512 per SM (the same
// threads per SM) and 48.4-49.8 with 8 of 256, 47.1-47.6 with read-once loads; the flat kernel
// 44.6-45.3 with 4, 8 or 16 per SM alike. The blocks that start late find the flags set.
constexpr int kReduceThreads = 256;
constexpr int kReduceBlocksPerSm = 8;

// The reductions are launched as programmatic dependents of the kernel before them on the stream
// (in GEMM-RS the last GEMM: decomposed's own chunk, fused_ce's whole one), which nothing in weft
// or cuBLAS triggers early: the grid is scheduled as that kernel's blocks exit, without an ordinary
// launch's gap, and waits for its completion before touching memory. (After an event wait or a
// stream memory operation the launch is an ordinary one.)
// Then every thread of the block waits for its share of the peers' flags, and the block syncs: the
// acquires plus the barrier order every thread's later loads of the peers' partials.
__device__ __forceinline__ void wait_peer_flags(const dev::Context& ctx, const ReduceParams& p) {
  dev::wait_prior_grid();
  const int n = p.world * p.flags_used;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int q = i / p.flags_used, f = i - q * p.flags_used;
    if (q != p.rank)
      dev::wait<dev::Scope::sys>(ctx, p.flags + int64_t(q) * p.flags_per_src + f, dev::Cmp::ge,
                                 p.expected);
  }
  __syncthreads();
}

// Coherent loads (ld.global.cs: read once, evicted first): the partials were written by peers
// during this kernel's wait, so the read-only (.nc) path must not be used.
__device__ __forceinline__ uint4 ld_once16(const void* p) {
  return __ldcs(static_cast<const uint4*>(p));
}

// Rows `cols` apart everywhere (own, slots, out): one flat array of 8-element units, no row
// arithmetic, the kW ranks' loads of a unit all in flight at once. The same sums in the same
// order as reduce_vec_kernel (bit-identical).
template <class T, int kW>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_flat_kernel(const __grid_constant__ dev::Context ctx,
                       const __grid_constant__ ReduceParams p) {
  wait_peer_flags(ctx, p);
  const int64_t total = p.rows * p.cols / 8;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t slot_units = p.slot_stride / 8;
  const uint4* own = static_cast<const uint4*>(p.own);
  const uint4* slots = static_cast<const uint4*>(p.slots);
  uint4* out = static_cast<uint4*>(p.out);
  // Back to front: the chunks written last (the end of the own partial, the last copy-engine
  // send) are the likeliest to be still in L2 when the reduction starts.
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += stride) {
    const int64_t u = total - 1 - x;
    uint4 v[kW];
#pragma unroll
    for (int q = 0; q < kW; ++q)
      v[q] = ld_once16(q == p.rank ? own + u : slots + q * slot_units + u);
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int q = 0; q < kW; ++q) add8<T>(acc, v[q]);
    out[u] = pack8<T>(acc);
  }
}

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
          v[j] = ld_once16(src);
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

// The flat kernel for contiguous rows and a world of 2, 4 or 8; else 16-byte vectors where the
// shapes and alignments allow; else one element per thread.
template <class T>
void launch_reduce(const dev::Context& ctx, const ReduceParams& p, int grid, bool vec, bool flat,
                   cudaStream_t stream) {
  auto kernel = flat && p.world == 2   ? reduce_flat_kernel<T, 2>
                : flat && p.world == 4 ? reduce_flat_kernel<T, 4>
                : flat && p.world == 8 ? reduce_flat_kernel<T, 8>
                : vec                  ? reduce_vec_kernel<T>
                                       : reduce_scalar_kernel<T>;
  launch_dependent(kernel, dim3(grid), dim3(kReduceThreads), 0, stream, ctx, p);
}

int grid_for(int64_t items, int threads, int sms, int per_sm) {
  const int64_t want = std::max<int64_t>(1, (items + threads - 1) / threads);
  return static_cast<int>(std::min<int64_t>(want, int64_t(std::max(1, sms)) * per_sm));
}

}  // namespace

void launch_prologue(const dev::Context& ctx, const PrologueParams& p, cudaStream_t stream) {
  prologue_kernel<<<1, kPrologueThreads, 0, stream>>>(ctx, p);
  WEFT_CHECK_LAUNCH();
}

void launch_prologue_unchecked(const dev::Context& ctx, const PrologueParams& p,
                               cudaStream_t stream) noexcept {
  prologue_kernel<<<1, kPrologueThreads, 0, stream>>>(ctx, p);
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
  const bool vec = p.cols % 8 == 0 && p.ldo % 8 == 0 && p.ld_own % 8 == 0 &&
                   p.slot_stride % 8 == 0 && is_aligned(p.out, 16) && is_aligned(p.own, 16) &&
                   is_aligned(p.slots, 16);
  const bool flat = vec && p.ld_own == p.cols && p.ldo == p.cols;
  const int64_t items = vec ? p.rows * (p.cols / 8) : p.rows * p.cols;
  const int grid = grid_for(items, kReduceThreads, sms, kReduceBlocksPerSm);
  if (p.dtype == DType::kBF16)
    launch_reduce<__nv_bfloat16>(ctx, p, grid, vec, flat, stream);
  else
    launch_reduce<__half>(ctx, p, grid, vec, flat, stream);
}

}  // namespace weft::tp
