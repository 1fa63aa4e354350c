// Reporting a device-side fault: fill the host-mapped FaultReport (first fault wins), print the
// same facts, and trap. A trapped kernel fails its stream with an error instead of hanging, and
// the host (World::synchronize) reads the report to say what happened where.
#pragma once

#include <cstdio>

#include "weft/device/context.h"
#include "weft/device/types.cuh"

// A kernel that issues wgmma must not contain a function call (ptxas then serializes every wgmma,
// warning C7510) — and printf is a call. Such kernels define WEFT_DEVICE_NO_PRINTF before including
// weft/device: the fault paths (and the out-of-line slow paths of waits) are then inlined and leave
// only the host-mapped report.
#if defined(WEFT_DEVICE_NO_PRINTF)
#define WEFT_FAULT_PATH __device__ __forceinline__
#define WEFT_FAULT_PRINTF(...) ((void)0)
#else
#define WEFT_FAULT_PATH __device__ __noinline__ inline
#define WEFT_FAULT_PRINTF(...) printf(__VA_ARGS__)
#endif

namespace weft::dev::detail {

__device__ __forceinline__ unsigned long long heap_offset_of(const Context& ctx, const void* p) {
  const size_t off = reinterpret_cast<const char*>(p) - ctx.heap_base;
  return off < ctx.heap_bytes ? off : ~0ull;
}

// Whether a rank on this host (this one included) has marked the abort board (one load of host
// memory).
__device__ __forceinline__ bool board_marked(const Context& ctx) {
  return ctx.abort_any != nullptr && *ctx.abort_any != 0u;
}

// How a timed-out wait's message says why it ended.
__device__ __forceinline__ const char* gave_up_why(bool peer) {
  return peer ? "gave up (a rank on this host gave up)" : "timed out";
}

// Returns true for the thread whose report is kept.
__device__ __forceinline__ bool claim_fault(const Context& ctx, FaultReport::Kind kind,
                                            const void* address) {
  FaultReport* f = ctx.fault;
  if (f == nullptr || atomicCAS(&f->claimed, 0u, 1u) != 0u) return false;
  f->kind = kind;
  f->rank = ctx.rank;
  f->address = reinterpret_cast<unsigned long long>(address);
  f->heap_offset = heap_offset_of(ctx, address);
  f->block[0] = blockIdx.x, f->block[1] = blockIdx.y, f->block[2] = blockIdx.z;
  f->thread[0] = threadIdx.x, f->thread[1] = threadIdx.y, f->thread[2] = threadIdx.z;
  return true;
}

// The claiming thread, once it has written the report's fields: make them visible, then `ready`
// (the host reads nothing before it, so a context torn down by a second trap meanwhile leaves no
// half-written report); then, unless the fault is a peer's doing, mark this rank on the host's
// abort board so that the peers waiting for it give up now rather than at their timeout.
__device__ __forceinline__ void publish_fault(const Context& ctx, bool mark_board = true) {
  __threadfence_system();
  ctx.fault->ready = 1u;
  __threadfence_system();
  if (mark_board && ctx.abort_mark != nullptr) {
    *ctx.abort_mark = 1;  // AbortBoard::kDevice
    __threadfence_system();
    *ctx.abort_any = 1u;
    __threadfence_system();
  }
}

[[noreturn]] WEFT_FAULT_PATH void wait_timed_out(const Context& ctx, const signal_t* sig, Cmp cmp,
                                                 uint64_t expected, uint64_t observed,
                                                 uint64_t waited_ns) {
  const bool peer = board_marked(ctx);
  if (claim_fault(ctx, FaultReport::wait_timeout, sig)) {
    FaultReport* f = ctx.fault;
    f->cmp = static_cast<int>(cmp);
    f->expected = expected;
    f->observed = observed;
    f->waited_ns = waited_ns;
    f->peer_gave_up = peer;
    publish_fault(ctx, /*mark_board=*/!peer);
  }
  WEFT_FAULT_PRINTF(
      "weft: rank %d: wait %s after %llu ms on signal %p (symmetric heap offset %lld): "
      "expected value %s %llu, observed %llu [block (%d,%d,%d) thread (%d,%d,%d)]\n",
      ctx.rank, gave_up_why(peer), (unsigned long long)(waited_ns / 1000000), sig,
      (long long)heap_offset_of(ctx, sig), to_string(cmp), (unsigned long long)expected,
      (unsigned long long)observed, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
      threadIdx.z);
  __trap();
}

[[noreturn]] WEFT_FAULT_PATH void barrier_timed_out(const Context& ctx, uint32_t index,
                                                    int late_rank, uint32_t expected,
                                                    uint32_t observed, uint64_t waited_ns) {
  const bool peer = board_marked(ctx);
  if (claim_fault(ctx, FaultReport::barrier_timeout, nullptr)) {
    FaultReport* f = ctx.fault;
    f->peer_or_index = static_cast<int>(index);
    f->late_rank = late_rank;
    f->expected = expected;
    f->observed = observed;
    f->waited_ns = waited_ns;
    f->peer_gave_up = peer;
    publish_fault(ctx, /*mark_board=*/!peer);
  }
  WEFT_FAULT_PRINTF(
      "weft: rank %d: device barrier %u %s after %llu ms waiting for rank %d (its arrival "
      "count is %u, expected %u) [block (%d,%d,%d) thread (%d,%d,%d)]\n",
      ctx.rank, index, gave_up_why(peer), (unsigned long long)(waited_ns / 1000000), late_rank,
      observed, expected, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
      threadIdx.z);
  __trap();
}

[[noreturn]] WEFT_FAULT_PATH void bad_symm_at(const Context& ctx, const void* p, int peer) {
  if (claim_fault(ctx, FaultReport::bad_symm_at, p)) {
    ctx.fault->peer_or_index = peer;
    publish_fault(ctx);
  }
  WEFT_FAULT_PRINTF(
      "weft: rank %d: symm_at(%p, peer %d) is invalid: the pointer must lie in this rank's "
      "symmetric heap [%p, %p) and the peer among this node's ranks [%d, %d) [block (%d,%d,%d) "
      "thread %d]\n",
      ctx.rank, p, peer, ctx.heap_base, ctx.heap_base + ctx.heap_bytes, ctx.rank - ctx.lsa_rank,
      ctx.rank - ctx.lsa_rank + ctx.lsa_size, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
  __trap();
}

// `bar` is a shared-memory mbarrier; `parity` the phase waited for. Its transaction count never
// reached zero: fewer bytes arrived than announced (expect_tx), or a bulk copy never completed.
[[noreturn]] WEFT_FAULT_PATH void mbarrier_timed_out(const Context& ctx, const uint64_t* bar,
                                                     uint32_t parity, uint64_t waited_ns) {
  const bool peer = board_marked(ctx);
  if (claim_fault(ctx, FaultReport::mbarrier_timeout, bar)) {
    FaultReport* f = ctx.fault;
    f->expected = parity;
    f->waited_ns = waited_ns;
    f->peer_gave_up = peer;
    publish_fault(ctx, /*mark_board=*/!peer);
  }
  WEFT_FAULT_PRINTF(
      "weft: rank %d: TMA mbarrier wait %s after %llu ms (barrier %p, phase parity %u): "
      "its bulk copies never completed the bytes announced [block (%d,%d,%d) thread (%d,%d,%d)]\n",
      ctx.rank, gave_up_why(peer), (unsigned long long)(waited_ns / 1000000), bar, parity,
      blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  __trap();
}

// Peer `peer` was asked for another call than this rank: word `field` of their CallSignatures
// differs (this rank's `mine`, the peer's `theirs`).
[[noreturn]] WEFT_FAULT_PATH void call_mismatch(const Context& ctx, const void* slot, int peer,
                                                int field, uint64_t mine, uint64_t theirs) {
  if (claim_fault(ctx, FaultReport::call_mismatch, slot)) {
    FaultReport* f = ctx.fault;
    f->peer_or_index = peer;
    f->field = field;
    f->expected = mine;
    f->observed = theirs;
    publish_fault(ctx);
  }
  WEFT_FAULT_PRINTF(
      "weft: rank %d: collective call mismatch: rank %d was asked for another call (signature "
      "word '%s' is %llu here, %llu there) [block (%d,%d,%d) thread (%d,%d,%d)]\n",
      ctx.rank, peer, to_string(static_cast<CallSignature::Field>(field)), (unsigned long long)mine,
      (unsigned long long)theirs, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
      threadIdx.z);
  __trap();
}

[[noreturn]] WEFT_FAULT_PATH void bad_barrier_index(const Context& ctx, uint32_t index) {
  if (claim_fault(ctx, FaultReport::bad_barrier_index, nullptr)) {
    ctx.fault->peer_or_index = static_cast<int>(index);
    publish_fault(ctx);
  }
  WEFT_FAULT_PRINTF("weft: rank %d: barrier index %u out of range [0, %d) [block (%d,%d,%d)]\n",
                    ctx.rank, index, ctx.barrier_count, blockIdx.x, blockIdx.y, blockIdx.z);
  __trap();
}

}  // namespace weft::dev::detail
