// Identity and peer addressing: rank(), world_size(), symm_at().
#pragma once

#include "weft/device/context.h"
#include "weft/device/fault.cuh"
#include "weft/device/types.cuh"

namespace weft::dev {

__device__ __forceinline__ int rank(const Context& ctx) { return ctx.rank; }
__device__ __forceinline__ int world_size(const Context& ctx) { return ctx.world_size; }
__device__ __forceinline__ int lsa_rank(const Context& ctx) { return ctx.lsa_rank; }
__device__ __forceinline__ int lsa_size(const Context& ctx) { return ctx.lsa_size; }

// True when `peer` (a world rank) is in this node's load/store-accessible team, i.e. when
// symm_at() may be used for it.
__device__ __forceinline__ bool is_lsa_peer(const Context& ctx, int peer) {
  int lsa_peer = peer - ctx.rank + ctx.lsa_rank;
  return 0 <= lsa_peer && lsa_peer < ctx.lsa_size;
}


// symm_at(ctx, p, peer): the address on `peer` (a world rank on this node) of the symmetric object
// `p` points to in this rank's heap. Plain loads, stores, atomics and TMA may use it. For this
// rank it is `p` itself, not NCCL's second mapping of the local heap: accesses through two
// virtual aliases of one location are not ordered by the memory model (no fence.proxy.alias
// here), so a notify to the own rank must hit the address its waiter polls.
// Builds with WEFT_DEVICE_DEBUG check the pointer and the peer and trap with a message.
template <class T>
__device__ __forceinline__ T* symm_at(const Context& ctx, T* p, int peer) {
  const size_t offset = reinterpret_cast<const char*>(p) - ctx.heap_base;
  const int lsa_peer = peer - ctx.rank + ctx.lsa_rank;
#if defined(WEFT_DEVICE_DEBUG) && WEFT_DEVICE_DEBUG
  if (offset >= ctx.heap_bytes || lsa_peer < 0 || lsa_peer >= ctx.lsa_size)
    detail::bad_symm_at(ctx, p, peer);
#endif
  char* base =
      lsa_peer == ctx.lsa_rank ? ctx.heap_base : ctx.lsa_base + uint64_t(lsa_peer) * ctx.lsa_stride;
  return reinterpret_cast<T*>(base + offset);
}

// symm_at for an access of `bytes` bytes starting at `p` (puts, gets, tile copies): debug builds
// check its last byte as well, so a copy that runs past the heap's end traps with a report.
template <class T>
__device__ __forceinline__ T* symm_at_span(const Context& ctx, T* p, size_t bytes, int peer) {
#if defined(WEFT_DEVICE_DEBUG) && WEFT_DEVICE_DEBUG
  if (bytes > 0) (void)symm_at(ctx, reinterpret_cast<const char*>(p) + (bytes - 1), peer);
#endif
  return symm_at(ctx, p, peer);
}

// Triton-distributed's name for the same thing.
template <class T>
__device__ __forceinline__ T* remote_ptr(const Context& ctx, T* p, int peer) {
  return symm_at(ctx, p, peer);
}

}  // namespace weft::dev
