// One-sided copies by SM loads/stores: put (to a peer's symmetric buffer), get (from one), put
// with signal, and the ordering/completion calls fence() and quiet().
//
// Groups: the first argument is the group that performs the copy together — Thread{}, Warp{} or
// Block{} (Triton-distributed's putmem / putmem_warp / putmem_block). Every thread of the group
// calls with the same arguments. Copies move 16-byte vectors when source and destination share
// their alignment modulo 16 (the fast path: keep buffers 16-byte aligned), else 4-byte words,
// else bytes, with several loads in flight per thread before the stores.
//
// Blocking vs non-blocking (_nbi): SM stores read their source before they issue, so a thread may
// reuse the source bytes it copied itself as soon as the call returns; bytes other threads of the
// group copy are free only after the blocking form (which synchronizes the group) or a group sync
// (likewise getmem_nbi's destination). Neither form guarantees the data reached the peer:
// put_signal (release + signal) or quiet() (completion) do.
#pragma once

#include "weft/device/signal.cuh"

namespace weft::dev {
namespace detail {

// Group-strided copy of n elements of V (a 16-, 4- or 1-byte type), Unroll loads in flight.
template <int Unroll, class V, class Group>
__device__ __forceinline__ void copy_elements(Group group, V* dst, const V* src, size_t n) {
  const size_t tid = group.thread_rank();
  const size_t nthreads = group.size();
  size_t i = tid;
  for (; i + (Unroll - 1) * nthreads < n; i += Unroll * nthreads) {
    V v[Unroll];
#pragma unroll
    for (int u = 0; u < Unroll; ++u) v[u] = src[i + u * nthreads];
#pragma unroll
    for (int u = 0; u < Unroll; ++u) dst[i + u * nthreads] = v[u];
  }
  for (; i < n; i += nthreads) dst[i] = src[i];
}

// Copy bytes with the widest access that both pointers allow: a head of bytes up to the first
// common `Width`-aligned address, a body of Width-byte vectors, and a tail of bytes.
template <class V, class Group>
__device__ __forceinline__ void copy_aligned_body(Group group, char* dst, const char* src,
                                                  size_t bytes) {
  constexpr size_t kWidth = sizeof(V);
  const size_t misalign = reinterpret_cast<uintptr_t>(dst) & (kWidth - 1);
  const size_t head = min(bytes, (kWidth - misalign) & (kWidth - 1));
  copy_elements<1>(group, dst, src, head);
  const size_t n = (bytes - head) / kWidth;
  copy_elements<4>(group, reinterpret_cast<V*>(dst + head), reinterpret_cast<const V*>(src + head),
                   n);
  const size_t done = head + n * kWidth;
  copy_elements<1>(group, dst + done, src + done, bytes - done);
}

}  // namespace detail

// Copy `bytes` from src to dst (any addresses this GPU can reach: local, peer, host-mapped) with
// the threads of `group`. No synchronization, no ordering beyond program order.
template <class Group>
__device__ __forceinline__ void copy(Group group, void* dst, const void* src, size_t bytes) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  const uintptr_t common = reinterpret_cast<uintptr_t>(d) ^ reinterpret_cast<uintptr_t>(s);
  if ((common & 15) == 0)
    detail::copy_aligned_body<uint4>(group, d, s, bytes);
  else if ((common & 3) == 0)
    detail::copy_aligned_body<uint32_t>(group, d, s, bytes);
  else
    detail::copy_elements<4>(group, d, s, bytes);
}

// ---- put / get ---------------------------------------------------------------------------------

// Write `bytes` from local memory `src` into `dst` on `peer`; `dst` is this rank's address of a
// symmetric buffer.
template <class Group>
__device__ __forceinline__ void putmem_nbi(Group group, const Context& ctx, void* dst,
                                           const void* src, size_t bytes, int peer) {
  copy(group, symm_at_span(ctx, dst, bytes, peer), src, bytes);
}

template <class Group>
__device__ __forceinline__ void putmem(Group group, const Context& ctx, void* dst, const void* src,
                                       size_t bytes, int peer) {
  putmem_nbi(group, ctx, dst, src, bytes, peer);
  group.sync();
}

// Read `bytes` of the symmetric buffer `src` on `peer` into local memory `dst`.
template <class Group>
__device__ __forceinline__ void getmem_nbi(Group group, const Context& ctx, void* dst,
                                           const void* src, size_t bytes, int peer) {
  copy(group, dst, symm_at_span(ctx, src, bytes, peer), bytes);
}

template <class Group>
__device__ __forceinline__ void getmem(Group group, const Context& ctx, void* dst, const void* src,
                                       size_t bytes, int peer) {
  getmem_nbi(group, ctx, dst, src, bytes, peer);
  group.sync();
}

// Typed conveniences: counts are in elements.
template <class Group, class T>
__device__ __forceinline__ void put(Group group, const Context& ctx, T* dst, const T* src,
                                    size_t count, int peer) {
  putmem(group, ctx, dst, src, count * sizeof(T), peer);
}

template <class Group, class T>
__device__ __forceinline__ void get(Group group, const Context& ctx, T* dst, const T* src,
                                    size_t count, int peer) {
  getmem(group, ctx, dst, src, count * sizeof(T), peer);
}

// ---- put with signal ---------------------------------------------------------------------------

// Put, then release and set/add `value` on the peer's signal `sig`: a peer that waits for the
// signal (acquire) then sees all `bytes`. The group's threads all contribute to the copy; one
// thread signals after the group has synchronized.
template <class Group>
__device__ __forceinline__ void putmem_signal_nbi(Group group, const Context& ctx, void* dst,
                                                  const void* src, size_t bytes, signal_t* sig,
                                                  uint64_t value, SignalOp op, int peer) {
  putmem_nbi(group, ctx, dst, src, bytes, peer);
  notify(group, ctx, sig, peer, value, op);
}

template <class Group>
__device__ __forceinline__ void putmem_signal(Group group, const Context& ctx, void* dst,
                                              const void* src, size_t bytes, signal_t* sig,
                                              uint64_t value, SignalOp op, int peer) {
  putmem_signal_nbi(group, ctx, dst, src, bytes, sig, value, op, peer);
  group.sync();
}

// ---- ordering and completion --------------------------------------------------------------------

// quiet(): every put, store and bulk (TMA) copy this thread issued before is complete and visible
// system-wide before anything it does after. (NVSHMEM's quiet.)
__device__ __forceinline__ void quiet() {
#if __CUDA_ARCH__ >= 900
  cuda::ptx::cp_async_bulk_wait_group(cuda::ptx::n32_t<0>{});
  fence_proxy_async_global();
#endif
  fence_sc<Scope::sys>();
}

// quiet for a whole group: each thread completes its own operations, then the group syncs.
template <class Group>
__device__ __forceinline__ void quiet(Group group) {
  quiet();
  group.sync();
}

}  // namespace weft::dev
