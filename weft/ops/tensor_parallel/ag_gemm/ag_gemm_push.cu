#include "weft/device/weft.cuh"
#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm_push.h"
#include "weft/runtime/cuda_check.h"

namespace weft::tp {
namespace {

constexpr uint32_t kStages = 4;
constexpr uint32_t kStageBytes = 32u << 10;
constexpr int kBarrierBytes = 128;  // mbarriers first, then the 16-byte aligned ring
constexpr int kSmemBytes = kBarrierBytes + int(kStages * kStageBytes);
constexpr int kThreads = 32;  // one thread issues every copy; one warp keeps the block cheap

__global__ void __launch_bounds__(kThreads)
    ag_push_kernel(const __grid_constant__ dev::Context ctx, const __grid_constant__ AgPushParams p) {
#if __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char smem[];
  if (threadIdx.x != 0) return;
  dev::TmaStaging st = dev::make_tma_staging(reinterpret_cast<char*>(smem) + kBarrierBytes,
                                             reinterpret_cast<uint64_t*>(smem), kStageBytes,
                                             kStages);
  const int world = ctx.world_size, me = ctx.rank;
  const int64_t sub = p.m_local / p.chunks_per_rank;  // rows per chunk
  const int64_t per_block = (sub + gridDim.x - 1) / gridDim.x;
  const int64_t my_first = min(sub, int64_t(blockIdx.x) * per_block);
  const int64_t my_end = min(sub, int64_t(blockIdx.x + 1) * per_block);
  // Ring schedule: at step s every rank sends to rank - s, so each receives from rank + s: the
  // chunks arrive in the order the GEMM's tile order expects (own, rank+1, rank+2, ...).
  for (int s = 1; s < world; ++s) {
    const int q = (me - s + world) % world;
    for (int j = 0; j < p.chunks_per_rank; ++j) {
      const int64_t r0 = j * sub + my_first, r1 = j * sub + my_end;
      char* dst = p.gather + (int64_t(me) * p.m_local + r0) * p.row_bytes;
      if (r1 > r0) {
        if (p.lda_bytes == p.row_bytes)
          dev::putmem_tma_nbi(ctx, st, dst, p.a + r0 * p.lda_bytes, size_t(r1 - r0) * p.row_bytes,
                              q);
        else  // a strided A: the rows in one pipeline
          dev::putmem_rows_tma_nbi(ctx, st, dst, size_t(p.row_bytes), p.a + r0 * p.lda_bytes,
                                   size_t(p.lda_bytes), size_t(p.row_bytes), size_t(r1 - r0), q);
      }
      // The piece's writes are complete, ordered before the generic-proxy release, then the
      // receiver's flag for this chunk counts one more block.
      dev::bulk_wait<0>();
      dev::fence_proxy_async_global();
      dev::notify<dev::Scope::sys>(ctx, p.flags + int64_t(me) * p.chunks_per_rank + j, q, 1,
                                   dev::SignalOp::add);
    }
  }
#else
  __trap();  // TMA bulk copies need sm_90
#endif
}

}  // namespace

void prepare_ag_push_kernel() {
  WEFT_CUDA_CHECK(
      cudaFuncSetAttribute(ag_push_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
}

void launch_ag_push(const dev::Context& ctx, const AgPushParams& p, int blocks,
                    cudaStream_t stream) {
  ag_push_kernel<<<blocks, kThreads, kSmemBytes, stream>>>(ctx, p);
  WEFT_CHECK_LAUNCH();
}

}  // namespace weft::tp
