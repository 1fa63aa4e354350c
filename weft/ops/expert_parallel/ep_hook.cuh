// Device side of the dispatch hook: a kernel that overlaps the dispatch (a grouped GEMM, say)
// starts on the experts whose rows have arrived.
//
// clang-format off
//   host:  ep.dispatch({..., .hook_event = ev}, s0);             // publishes the epoch, records ev
//          cudaStreamWaitEvent(s1, ev); my_gemm<<<..., s1>>>(ctx, ep.hook(), rx.x, rx.expert_offsets,
//                                                             rx.expert_counts, ...);
//          cudaEventRecord(done, s1); cudaStreamWaitEvent(s0, done);   // join before combine
//   device (my_gemm): for each local expert e it owns:
//          weft::ops::ep_wait_expert(dev::Block{}, ctx, hook, e);   // then expert_offsets[e],
//          ...                                                      // expert_counts[e] and the rows
//                                                                   // (and scales) are readable
// clang-format on
// Low-latency mode only (a throughput dispatch publishes its experts when its data kernel ends, so
// a consumer may as well follow it in stream order; ExpertParallel::dispatch rejects hook_event
// there). The consumer must leave room on the GPU for the dispatch grid (every dispatch block must
// be resident; a dispatch block takes ~160 KB of shared memory at H = 7168 on sm_90, for its
// TMA row buffers, so a consumer block shares an SM with it only within the rest): use few, small
// blocks, or lower EpConfig::num_sms so that SMs stay free. The rows may be read with TMA
// or wgmma right after the wait: it ends with the proxy fence that needs.
#pragma once

#include "weft/device/weft.cuh"
#include "weft/ops/expert_parallel/ep_config.h"

namespace weft::ops {

// The epoch of the dispatch the consumer was forked from (published before the fork).
__device__ __forceinline__ uint64_t ep_hook_epoch(const EpHook& hook) {
  return dev::ld<dev::Sem::relaxed, dev::Scope::gpu>(hook.epoch);
}

// True once local expert e's rows, count and offset of that dispatch are all in place (acquire).
__device__ __forceinline__ bool ep_expert_ready(const EpHook& hook, int e) {
  return dev::ld_acquire<dev::Scope::sys>(hook.expert_ready + e) >= ep_hook_epoch(hook);
}

// One thread waits (times out with a report like every weft wait) for local expert e; the proxy
// fence lets this thread's later TMA loads see the rows too (DESIGN.md: acquire, then
// fence.proxy.async, then TMA).
__device__ __forceinline__ void ep_wait_expert(const dev::Context& ctx, const EpHook& hook, int e) {
  dev::wait(ctx, hook.expert_ready + e, dev::Cmp::ge, ep_hook_epoch(hook));
#if __CUDA_ARCH__ >= 900
  dev::fence_proxy_async_global();
#endif
}

// Group form: one thread waits, then the group synchronizes, so every thread may read the rows.
template <class Group>
__device__ __forceinline__ void ep_wait_expert(Group group, const dev::Context& ctx,
                                               const EpHook& hook, int e) {
  if (group.thread_rank() == 0) ep_wait_expert(ctx, hook, e);
  group.sync();
}

}  // namespace weft::ops
