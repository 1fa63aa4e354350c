// Low-latency all-to-all for MoE dispatch at decode time, written with weft's device primitives:
// the C++ form of the `all_to_all_kernel` in Triton-distributed's README.
//
// Every rank holds rows (tokens, one per (token, expert) pair) sorted by expert, and a count of
// rows per expert (splits_src[E], E = W * experts_per_rank). Rank `r` owns experts
// [r * experts_per_rank, (r + 1) * experts_per_rank). One block (or `blocks_per_peer` blocks)
// per destination rank `peer` pushes the rows of the peer's experts into the peer's receive
// buffer, slot [parity][this rank], together with the per-expert counts and (fp8 path) one fp32
// scale per row, then sets one signal per (source rank, chunk) on the peer to the call's epoch,
// and finally waits until the peer's rows for this call have arrived here.
//
// Mapping of Triton-distributed's primitives (libshmem_device, NVSHMEM names) to weft::dev:
//
//   Triton-distributed                              weft::dev (this file)
//   ----------------------------------------------  -------------------------------------------
//   tl.program_id(0)  (= destination rank)          blockIdx.x / blocks_per_peer
//   rank, WORLD_SIZE kernel arguments               ctx.rank, ctx.world_size (dev::Context)
//   splits_cumsum (host-side exclusive prefix sum)  detail::scan_splits(): a block reduction
//                                                   over the device counts, in the kernel
//   call_count kernel argument                      LlA2AState::next_epoch in device memory,
//                                                   advanced by the kernel (graph replays work)
//   act_pos = call_count % 2                        parity = epoch & 1
//   putmem_nbi_block(dst, src, bytes, pe)           putmem_nbi(Block{}, ctx, dst, src, bytes, pe)
//   putmem_signal_nbi_block(dst, src, bytes, sig,   putmem_signal_nbi(Block{}, ctx, dst, src,
//       call_count, NVSHMEM_SIGNAL_SET, pe)             bytes, sig, epoch, SignalOp::set, pe)
//   fence(); if tid == 0: signal_op(sig,            notify(Block{}, ctx, sig, pe, epoch,
//       call_count, NVSHMEM_SIGNAL_SET, pe)             SignalOp::set): block barrier, then one
//                                                   release store at system scope. The release
//                                                   orders every thread's earlier puts before
//                                                   the signal (cumulative through the barrier),
//                                                   which is what fence() + signal_op provide.
//   signal_wait_until(sig, NVSHMEM_CMP_EQ, v)       wait(ctx, sig, Cmp::eq, v): acquire at system
//                                                   scope, times out with a report instead of
//                                                   hanging (WorldOptions::wait_timeout)
//   nvshmem_ptr / symmetric addresses               the puts call symm_at(ctx, dst, peer)
//
// Why double buffering by parity is enough (no "buffer free" handshake): a peer writes call
// k + 2 into the half that call k used only after it saw this rank's call k + 1 signal, which
// this rank sends only once its stream reached call k + 1, i.e. after everything the stream did
// with call k's rows. So call k's received half stays valid until this rank's call k + 1 starts.
#pragma once

#include <climits>
#include <cstdint>
#include <cstdio>

#include "examples/ll_all_to_all/ll_all_to_all_params.h"
#include "weft/device/weft.cuh"

namespace weft::examples {

// Threads per block: copies move 16-byte vectors, several in flight per thread.
inline constexpr int kLlA2AThreads = 512;

// For kernels that consume the result after the all-to-all on the same stream (inside a CUDA
// graph too, where the host cannot know the parity of a replay): the epoch and the half that the
// last completed call wrote.
__device__ __forceinline__ uint64_t ll_a2a_last_epoch(const LlA2AState* state) {
  return state->next_epoch - 1;
}
__device__ __forceinline__ int ll_a2a_last_parity(const LlA2AState* state) {
  return static_cast<int>(ll_a2a_last_epoch(state) & 1);
}

namespace detail {

struct SplitScan {
  long long before;    // rows of experts [0, exp_st): the row where the peer's rows start
  long long mine;      // rows of experts [exp_st, exp_ed): the rows the peer gets
  int first_negative;  // smallest expert < exp_ed with a negative count, INT_MAX if none
};

// Block-wide exclusive prefix sum of the per-expert counts at this destination's first expert,
// and its own total (Triton-distributed gets both from splits_cumsum, computed by the caller).
// E is small (hundreds), so every block scans independently: one launch, no host round trip.
__device__ __forceinline__ SplitScan scan_splits(const int32_t* splits, int exp_st, int exp_ed) {
  long long before = 0, mine = 0;
  int negative = INT_MAX;
  for (int e = threadIdx.x; e < exp_ed; e += blockDim.x) {
    const int c = splits[e];
    if (c < 0 && negative == INT_MAX) negative = e;
    if (e < exp_st)
      before += c;
    else
      mine += c;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    before += __shfl_down_sync(0xffffffffu, before, off);
    mine += __shfl_down_sync(0xffffffffu, mine, off);
    negative = min(negative, __shfl_down_sync(0xffffffffu, negative, off));
  }
  __shared__ long long s_before[32], s_mine[32];
  __shared__ int s_negative[32];
  __shared__ SplitScan s_result;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  if (lane == 0) s_before[warp] = before, s_mine[warp] = mine, s_negative[warp] = negative;
  __syncthreads();
  if (warp == 0) {
    before = lane < warps ? s_before[lane] : 0;
    mine = lane < warps ? s_mine[lane] : 0;
    negative = lane < warps ? s_negative[lane] : INT_MAX;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      before += __shfl_down_sync(0xffffffffu, before, off);
      mine += __shfl_down_sync(0xffffffffu, mine, off);
      negative = min(negative, __shfl_down_sync(0xffffffffu, negative, off));
    }
    if (lane == 0) s_result = SplitScan{before, mine, negative};
  }
  __syncthreads();
  return s_result;
}

// Bad device-resident counts: record the first error for the host (check_errors) and print it.
// `dest` is the destination concerned (for a negative count: the first one whose rows it shifts).
// The kernel sends no rows to it (but still its counts and its signal, so no peer waits forever).
__device__ __noinline__ inline void report_split_error(LlA2AError* e, int max_m, int rank,
                                                       uint64_t epoch, int dest, int first_negative,
                                                       long long rows) {
  const bool negative = first_negative != INT_MAX;
  // Only the first error of an unreported batch is kept and printed (a negative count trips the
  // block of every destination).
  if (e != nullptr) {
    if (atomicCAS(&e->claimed, 0u, 1u) != 0u) return;
    e->kind = negative ? LlA2AError::negative_split : LlA2AError::rows_exceed_max_m;
    e->dest = dest;
    e->expert = negative ? first_negative : -1;
    e->value = negative ? -1 : rows;
    e->epoch = epoch;
    __threadfence_system();
    e->ready = 1;
    __threadfence_system();
  }
  if (negative)
    printf(
        "weft ll_all_to_all: rank %d, call %llu: expert %d has a negative row count; no rows "
        "sent to rank %d nor to the ranks after it\n",
        rank, (unsigned long long)epoch, first_negative, dest);
  else
    printf(
        "weft ll_all_to_all: rank %d, call %llu: the counts for rank %d's experts sum to %lld "
        "rows, more than max_m = %d; no rows sent to it\n",
        rank, (unsigned long long)epoch, dest, rows, max_m);
}

}  // namespace detail

// Grid: W * blocks_per_peer blocks of kLlA2AThreads threads; block b serves destination rank
// b / blocks_per_peer and the chunk b % blocks_per_peer of its rows. All blocks must be resident
// at once (they wait on peers whose blocks wait on ours); the host wrapper checks occupancy.
// With blocks_per_peer == 1 this is Triton-distributed's kernel block for block.
template <bool kWithScale>
__global__ void __launch_bounds__(kLlA2AThreads, 1)
    ll_all_to_all_kernel(const __grid_constant__ dev::Context ctx,
                         const __grid_constant__ LlA2AParams p) {
  using dev::Block;
  using dev::Cmp;
  using dev::Scope;
  using dev::Sem;
  using dev::SignalOp;

  const int world = ctx.world_size;
  const int rank = ctx.rank;
  const int chunks = p.blocks_per_peer;
  const int peer = blockIdx.x / chunks;  // Triton: pid
  const int chunk = blockIdx.x % chunks;
  const int epr = p.experts_per_rank;
  const int exp_st = peer * epr;
  const int exp_ed = exp_st + epr;

  // The call's epoch (Triton: call_count). The previous call's last block stored it before that
  // kernel ended, so every block of this launch reads the same value; it changes only after every
  // block of this launch has arrived below.
  __shared__ uint64_t s_epoch;
  if (threadIdx.x == 0) s_epoch = dev::ld<Sem::relaxed, Scope::gpu>(&p.state->next_epoch);
  const detail::SplitScan scan = detail::scan_splits(p.splits_src, exp_st, exp_ed);  // syncs
  const uint64_t epoch = s_epoch;
  const int parity = static_cast<int>(epoch & 1);  // Triton: act_pos

  const bool counts_ok = scan.first_negative == INT_MAX && scan.mine <= p.max_m;
  if (!counts_ok && chunk == 0 && threadIdx.x == 0)
    detail::report_split_error(p.error, p.max_m, rank, epoch,
                               scan.first_negative != INT_MAX ? scan.first_negative / epr : peer,
                               scan.first_negative, scan.mine);
  const long long rows = counts_ok ? scan.mine : 0;
  const long long src_row0 = counts_ok ? scan.before : 0;  // Triton: m_st
  const long long per_chunk = (rows + chunks - 1) / chunks;
  const long long r0 = min(rows, chunk * per_chunk);
  const long long r1 = min(rows, r0 + per_chunk);

  // Slot [parity][rank] of the destination's buffers (Triton: dst_off = rank * MAX_M).
  const size_t slot = static_cast<size_t>(parity) * world + rank;
  char* data_dst = static_cast<char*>(p.data_dst) + (slot * p.max_m + r0) * p.row_bytes;
  const char* data_src = static_cast<const char*>(p.data_src) + (src_row0 + r0) * p.row_bytes;
  dev::putmem_nbi(Block{}, ctx, data_dst, data_src, (r1 - r0) * p.row_bytes, peer);
  if (chunk == 0)
    dev::putmem_nbi(Block{}, ctx, p.splits_dst + slot * epr, p.splits_src + exp_st,
                    static_cast<size_t>(epr) * sizeof(int32_t), peer);

  uint64_t* sig = p.signals + slot * chunks + chunk;
  if constexpr (kWithScale) {
    // The last put carries the signal (Triton: putmem_signal_nbi_block on the scales).
    dev::putmem_signal_nbi(Block{}, ctx, p.scale_dst + slot * p.max_m + r0,
                           p.scale_src + src_row0 + r0, (r1 - r0) * sizeof(float), sig, epoch,
                           SignalOp::set, peer);
  } else {
    // Triton: fence(); signal_op(SET) from thread 0.
    dev::notify(Block{}, ctx, sig, peer, epoch, SignalOp::set);
  }

  if (threadIdx.x == 0) {
    // Triton: signal_wait_until(signal[act_pos][pid], EQ, call_count): rank `peer`'s rows (this
    // chunk of them) for this call are here.
    dev::wait(ctx, p.signals + (static_cast<size_t>(parity) * world + peer) * chunks + chunk,
              Cmp::eq, epoch);
    // Advance the epoch once every block of this launch is done with it. The acq_rel add orders
    // this block's read of next_epoch before the last block's store.
    const uint64_t arrived =
        dev::atomic_add<Sem::acq_rel, Scope::gpu>(&p.state->arrivals, uint64_t{1}) + 1;
    if (arrived == epoch * gridDim.x)
      dev::st<Sem::relaxed, Scope::gpu>(&p.state->next_epoch, epoch + 1);
  }
}

}  // namespace weft::examples
