// Device barriers across the ranks of this node, on NCCL's LSA barrier (ncclLsaBarrierSession);
// arrive_all is a barrier's arrival alone.
//
// A barrier index names one barrier; the group that passes it must be the same kind of group on
// every rank (e.g. block b of the kernel on each rank uses index b). Two groups that may run at the
// same time must use different indices. Valid indices: [0, ctx.barrier_count).
#pragma once

#include "weft/device/copy.cuh"

namespace weft::dev {
namespace detail {

// ncclLsaBarrierSession::sync() with weft's timeout: NCCL's arrive(), then the loop of NCCL's
// wait() (each thread polls some peers' inboxes in this rank's memory until they reach this
// session's epoch + 1, compared with wraparound) - which spins without a limit - giving up after
// ctx.wait_timeout_ns with a fault report naming the missing rank. Unicast only (weft never uses
// multimem). Written against NCCL 2.28.9's session members (epoch, team, ucInbox), the version
// weft pins. Any index the communicator has: the runtime's own (World::barrier, index
// ctx.barrier_count) included; lsa_barrier_sync checks a user kernel's.
template <class Group>
__device__ __forceinline__ void lsa_barrier_sync_any(Group group, const Context& ctx,
                                                     uint32_t index, bool acq_rel) {
  ncclLsaBarrierSession<Group> bar(group, ctx.comm, ncclTeamTagLsa{}, index);
  bar.arrive(group, acq_rel ? cuda::memory_order_acq_rel : cuda::memory_order_relaxed);
  const uint32_t want = bar.epoch + 1;
  for (int i = group.thread_rank(); i < bar.team.nRanks - 1; i += group.size()) {
    const int peer = i + (bar.team.rank <= i ? 1 : 0);
    const uint32_t* inbox = bar.ucInbox(bar.team.rank, peer);
    uint32_t got = 0;
    auto arrived = [&] {
      got = acq_rel ? ld<Sem::acquire, Scope::sys>(inbox) : ld<Sem::relaxed, Scope::sys>(inbox);
      return got - want <= (~0u >> 1);  // (epochs wrap: compared as a signed difference)
    };
    if (!arrived())
      spin_with_timeout(ctx, arrived, [&](uint64_t waited) {
        barrier_timed_out(ctx, index, peer - ctx.lsa_rank + ctx.rank, want, got, waited);
      });
  }
  bar.epoch += 1;
  group.sync();
}

template <class Group>
__device__ __forceinline__ void lsa_barrier_sync(Group group, const Context& ctx, uint32_t index,
                                                 bool acq_rel) {
  if (index >= static_cast<uint32_t>(ctx.barrier_count)) bad_barrier_index(ctx, index);
  lsa_barrier_sync_any(group, ctx, index, acq_rel);
}

}  // namespace detail

// sync_all: every rank's group reaches the barrier before any leaves it. No memory ordering beyond
// that (NVSHMEM's sync_all). Times out like every weft wait (a fault report names the rank that
// did not arrive).
template <class Group>
__device__ __forceinline__ void sync_all(Group group, const Context& ctx, uint32_t index) {
  detail::lsa_barrier_sync(group, ctx, index, /*acq_rel=*/false);
}

// barrier_all: complete this group's outstanding puts (quiet), then a barrier with acquire-release
// ordering, so every rank sees what every group wrote before the barrier (NVSHMEM's barrier_all).
template <class Group>
__device__ __forceinline__ void barrier_all(Group group, const Context& ctx, uint32_t index) {
  quiet();
  detail::lsa_barrier_sync(group, ctx, index, /*acq_rel=*/true);
}

// arrive_all: this group's arrival at barrier `index` (after a quiet, with release ordering),
// without waiting for the others: for a rank that abandons a call but must let its peers pass their
// barrier (and see what it published before: an 'aborted' call signature). The barrier's epoch
// moves on as after barrier_all, so the next barrier on `index` lines up with the peers' again.
template <class Group>
__device__ __forceinline__ void arrive_all(Group group, const Context& ctx, uint32_t index) {
  quiet();
  if (index >= static_cast<uint32_t>(ctx.barrier_count)) detail::bad_barrier_index(ctx, index);
  ncclLsaBarrierSession<Group> bar(group, ctx.comm, ncclTeamTagLsa{}, index);
  bar.arrive(group, cuda::memory_order_release);
  bar.epoch += 1;
  group.sync();
}

}  // namespace weft::dev
