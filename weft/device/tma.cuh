// Bulk copies by the Tensor Memory Accelerator (sm_90+): mbarrier helpers, raw bulk loads and
// stores between global and shared memory, and put/get to a peer staged through shared memory.
//
// A TMA put uses one thread and no registers per byte, leaving the block's other warps free; it
// is the tool for moving data from inside a busy kernel. Addresses must be 16-byte aligned and
// sizes multiples of 16.
#pragma once

#if __CUDA_ARCH__ >= 900 || !defined(__CUDA_ARCH__)

#include <cuda/ptx>

#include "weft/device/copy.cuh"

namespace weft::dev {

// ---- mbarrier -----------------------------------------------------------------------------------

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
  cuda::ptx::mbarrier_init(bar, arrivals);
  // Make the initialized barrier visible to the async proxy (TMA completes on it).
  cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
}

// Arrive (one of the barrier's expected arrivals) and announce `bytes` of incoming TMA traffic.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  cuda::ptx::mbarrier_arrive_expect_tx(cuda::ptx::sem_release, cuda::ptx::scope_cta,
                                       cuda::ptx::space_shared, bar, bytes);
}

namespace detail {
// The wait after a first miss, out of line (a hot loop that usually finds the phase complete at
// its first try keeps only that try and a call; the EP dispatch's receive runs this per row),
// except in kernels that must hold no call (WEFT_DEVICE_NO_PRINTF, fault.cuh).
WEFT_FAULT_PATH void mbarrier_wait_missed(const Context& ctx, uint64_t* bar, uint32_t parity) {
  spin_with_timeout(
      ctx, [&] { return cuda::ptx::mbarrier_try_wait_parity(bar, parity); },
      [&](uint64_t waited) { mbarrier_timed_out(ctx, bar, parity, waited); });
}
}  // namespace detail

// Wait until the barrier's phase with the given parity has completed. Like every weft wait it
// gives up after ctx.wait_timeout_ns (0 = never) with a fault report and a trap: a wrong
// expect_tx count or parity would otherwise hang the kernel silently.
__device__ __forceinline__ void mbarrier_wait(const Context& ctx, uint64_t* bar, uint32_t parity) {
  if (!cuda::ptx::mbarrier_try_wait_parity(bar, parity)) detail::mbarrier_wait_missed(ctx, bar, parity);
}

// ---- raw bulk copies ----------------------------------------------------------------------------

// global -> shared; completes `bytes` of transaction count on `bar`.
__device__ __forceinline__ void bulk_load(void* smem_dst, const void* gmem_src, uint32_t bytes,
                                          uint64_t* bar) {
  cuda::ptx::cp_async_bulk(cuda::ptx::space_cluster, cuda::ptx::space_global, smem_dst, gmem_src,
                           bytes, bar);
}

// shared -> global (local or peer); part of this thread's current bulk group.
__device__ __forceinline__ void bulk_store(void* gmem_dst, const void* smem_src, uint32_t bytes) {
  cuda::ptx::cp_async_bulk(cuda::ptx::space_global, cuda::ptx::space_shared, gmem_dst, smem_src,
                           bytes);
}

__device__ __forceinline__ void bulk_commit() { cuda::ptx::cp_async_bulk_commit_group(); }

// Wait until at most N of this thread's bulk groups still read shared memory (their smem may be
// reused) / are incomplete (their writes are done).
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  cuda::ptx::cp_async_bulk_wait_group_read(cuda::ptx::n32_t<N>{});
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
  cuda::ptx::cp_async_bulk_wait_group(cuda::ptx::n32_t<N>{});
}

// ---- staged copies: put / get by TMA ----------------------------------------------------------

// Shared-memory staging ring for TMA copies: `stages` (2..32) buffers of `stage_bytes` each
// (16-byte aligned; stage_bytes a multiple of 16 and at most 1 MiB - 16) and one mbarrier per
// stage. For the links' full rate give the ring 128-byte alignment and stage_bytes a multiple of
// 128: bulk stores to a peer from 16-byte aligned shared memory, or of sizes that are not a
// multiple of 32, ran ~20% slower on H200 (docs/perf.md, twentieth pass). One thread owns a
// TmaStaging and issues every copy through it; `phases` remembers which mbarrier phase each stage
// waits for next, so a ring can serve many copies in a row.
struct TmaStaging {
  char* buffer;
  uint64_t* bars;
  uint32_t stage_bytes;
  uint32_t stages;
  uint32_t phases;  // bit s: parity of the next phase of bars[s] to complete
};

// Called by the owning thread before its first copy (initializes the mbarriers).
__device__ __forceinline__ TmaStaging make_tma_staging(char* buffer, uint64_t* bars,
                                                       uint32_t stage_bytes, uint32_t stages) {
  if (stages < 2 || stages > 32 || stage_bytes == 0 || stage_bytes % 16 != 0 ||
      stage_bytes >= (1u << 20))
    __trap();
  for (uint32_t s = 0; s < stages; ++s) mbarrier_init(&bars[s], 1);
  return TmaStaging{buffer, bars, stage_bytes, stages, 0u};
}

namespace detail {
// Move `n` pieces through the ring, keeping stages - 1 loads ahead of the stores: piece i is
// piece(i) = {dst, src, len} (len <= stage_bytes). Returns when every store is issued and has
// read its shared memory (the ring is free again); the writes may still be in flight: quiet()
// (or bulk_wait<0>) completes them. The sources may have been written by ordinary stores of this
// kernel: this thread's are ordered before the bulk loads by the proxy fence below, other
// threads' need a group sync before the call.
struct TmaPiece {
  char* dst;
  const char* src;
  uint32_t len;
};
template <class PieceOf>
__device__ __forceinline__ void tma_copy_pieces(const Context& ctx, TmaStaging& st, size_t n,
                                                PieceOf piece) {
  fence_proxy_async_global();  // generic-proxy writes of the sources before the async-proxy reads
  auto load = [&](size_t i) {
    const uint32_t s = i % st.stages;
    const TmaPiece p = piece(i);
    mbarrier_arrive_expect_tx(&st.bars[s], p.len);
    bulk_load(st.buffer + s * st.stage_bytes, p.src, p.len, &st.bars[s]);
  };
  for (size_t i = 0; i < min(n, size_t(st.stages - 1)); ++i) load(i);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t s = i % st.stages;
    mbarrier_wait(ctx, &st.bars[s], (st.phases >> s) & 1u);
    st.phases ^= 1u << s;
    const TmaPiece p = piece(i);
    bulk_store(p.dst, st.buffer + s * st.stage_bytes, p.len);
    bulk_commit();
    if (i + st.stages - 1 < n) {
      bulk_wait_read<1>();  // the store of step i-1 has read stage (i-1) % stages: reuse it
      load(i + st.stages - 1);
    }
  }
  bulk_wait_read<0>();
}

// `bytes` from src to dst in stage-sized pieces.
__device__ __forceinline__ void tma_copy(const Context& ctx, TmaStaging& st, char* dst,
                                         const char* src, size_t bytes) {
  const size_t chunk = st.stage_bytes;
  tma_copy_pieces(ctx, st, (bytes + chunk - 1) / chunk, [&](size_t i) {
    return TmaPiece{dst + i * chunk, src + i * chunk,
                    static_cast<uint32_t>(min(chunk, bytes - i * chunk))};
  });
}

// `rows` rows of `row_bytes` each, src rows `src_pitch` bytes apart and dst rows `dst_pitch`
// apart, in pieces of at most a stage: one pipeline over all rows (no drain between rows).
__device__ __forceinline__ void tma_copy_rows(const Context& ctx, TmaStaging& st, char* dst,
                                              size_t dst_pitch, const char* src, size_t src_pitch,
                                              size_t row_bytes, size_t rows) {
  const size_t chunk = st.stage_bytes;
  const size_t per_row = (row_bytes + chunk - 1) / chunk;
  tma_copy_pieces(ctx, st, rows * per_row, [&](size_t i) {
    const size_t r = i / per_row, off = (i - r * per_row) * chunk;
    return TmaPiece{dst + r * dst_pitch + off, src + r * src_pitch + off,
                    static_cast<uint32_t>(min(chunk, row_bytes - off))};
  });
}
}  // namespace detail

// One thread copies `bytes` from local `src` to the symmetric `dst` on `peer` with the TMA.
// Addresses 16-byte aligned, bytes a multiple of 16.
__device__ __forceinline__ void putmem_tma_nbi(const Context& ctx, TmaStaging& st, void* dst,
                                               const void* src, size_t bytes, int peer) {
  detail::tma_copy(ctx, st, reinterpret_cast<char*>(symm_at_span(ctx, dst, bytes, peer)),
                   static_cast<const char*>(src), bytes);
}

// One thread copies `rows` rows of `row_bytes` from local `src` (rows `src_pitch` bytes apart) to
// the symmetric `dst` on `peer` (rows `dst_pitch` apart) with the TMA, as one pipeline (a strided
// operand, e.g. a row block of a wider matrix). Addresses, pitches and row_bytes multiples of 16.
__device__ __forceinline__ void putmem_rows_tma_nbi(const Context& ctx, TmaStaging& st, void* dst,
                                                    size_t dst_pitch, const void* src,
                                                    size_t src_pitch, size_t row_bytes, size_t rows,
                                                    int peer) {
  const size_t span = rows > 0 ? (rows - 1) * dst_pitch + row_bytes : 0;
  detail::tma_copy_rows(ctx, st, reinterpret_cast<char*>(symm_at_span(ctx, dst, span, peer)),
                        dst_pitch, static_cast<const char*>(src), src_pitch, row_bytes, rows);
}

// ... and waits until the writes are complete, ordered before this thread's later generic
// accesses (so a notify() after it releases them).
__device__ __forceinline__ void putmem_tma(const Context& ctx, TmaStaging& st, void* dst,
                                           const void* src, size_t bytes, int peer) {
  putmem_tma_nbi(ctx, st, dst, src, bytes, peer);
  bulk_wait<0>();
  fence_proxy_async_global();
}

// One thread copies `bytes` of the symmetric `src` on `peer` into local `dst` with the TMA; on
// return the data is in `dst` (for this thread, and for the block after a barrier).
__device__ __forceinline__ void getmem_tma(const Context& ctx, TmaStaging& st, void* dst,
                                           const void* src, size_t bytes, int peer) {
  detail::tma_copy(ctx, st, static_cast<char*>(dst),
                   reinterpret_cast<const char*>(symm_at_span(ctx, src, bytes, peer)), bytes);
  bulk_wait<0>();
  fence_proxy_async_global();  // ordinary loads after this see what the bulk copies wrote
}

// TMA put, then (once the writes are complete) release-notify the peer's signal.
__device__ __forceinline__ void putmem_signal_tma(const Context& ctx, TmaStaging& st, void* dst,
                                                  const void* src, size_t bytes, signal_t* sig,
                                                  uint64_t value, SignalOp op, int peer) {
  putmem_tma(ctx, st, dst, src, bytes, peer);  // (ends with the proxy fence the release needs)
  notify<Scope::sys>(ctx, sig, peer, value, op);
}

}  // namespace weft::dev

#endif  // sm_90
