// Device barriers across the ranks of this node, on NCCL's LSA barrier (ncclLsaBarrierSession).
//
// A barrier index names one barrier; the group that passes it must be the same kind of group on
// every rank (e.g. block b of the kernel on each rank uses index b). Two groups that may run at the
// same time must use different indices. Valid indices: [0, ctx.barrier_count).
#pragma once

#include "weft/device/copy.cuh"

namespace weft::dev {


// sync_all: every rank's group reaches the barrier before any leaves it. No memory ordering beyond
// that (NVSHMEM's sync_all).
template <class Group>
__device__ __forceinline__ void sync_all(Group group, const Context& ctx, uint32_t index) {
  if (index >= static_cast<uint32_t>(ctx.barrier_count)) detail::bad_barrier_index(ctx, index);
  ncclLsaBarrierSession<Group> bar(group, ctx.comm, ncclTeamTagLsa{}, index);
  bar.sync(group, cuda::memory_order_relaxed);
}

// barrier_all: complete this group's outstanding puts (quiet), then a barrier with acquire-release
// ordering, so every rank sees what every group wrote before the barrier (NVSHMEM's barrier_all).
template <class Group>
__device__ __forceinline__ void barrier_all(Group group, const Context& ctx, uint32_t index) {
  if (index >= static_cast<uint32_t>(ctx.barrier_count)) detail::bad_barrier_index(ctx, index);
  quiet();
  ncclLsaBarrierSession<Group> bar(group, ctx.comm, ncclTeamTagLsa{}, index);
  bar.sync(group, cuda::memory_order_acq_rel);
}

}  // namespace weft::dev
