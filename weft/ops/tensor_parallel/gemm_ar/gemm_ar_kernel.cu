// The GEMM-AR all-reduce kernel. One launch per call; blocks take work items from a queue in
// device memory (ArState::next_item) in phase order, so every push of a call is handed out before
// any wait: a resident block never waits for an item that only a non-resident block could do,
// and the kernel cannot deadlock across ranks even with part of its grid resident.
//
//   one-shot  items [0, S):   push slice i of this rank's partial into every peer's slot
//                             [parity][this rank], then set flag (0, this rank, i) there to the
//                             epoch
//             items [S, 2S):  wait for every peer's flag (0, q, i) >= epoch, sum slice i over
//                             ranks 0..W-1 in order (fp32), write it to out
//   two-shot  items [0, S):   for every peer q, push slice i of q's share of the partial into q's
//                             slot [parity][this rank]; flag (0, this rank, i) on q
//             items [S, 2S):  wait for (0, q, i) from every peer, sum slice i of this rank's share
//                             in rank order, write it to out and push it into every peer's result
//                             buffer [parity] at its global offset; flag (1, this rank, i)
//             items [2S, 3S): wait for (1, q, i) from every peer, copy slice i of every other
//                             rank's share from the result buffer to out
//   scatter_only (GEMM-RS push_reduce): two-shot's items [0, 2S) only, the sum of slice i of
//                             this rank's share written to out as rows of the share; no flag 1
//   gather_only (AG-GEMM push_gather): items [0, S): push slice i of this rank's rows (src_ld
//                             apart) into every peer's slot [parity][this rank], flag (0, me, i);
//                             items [S, 2S): wait for (0, q, i) from every peer, write slice i of
//                             every rank's rows (the own from the source) to out in rank order
//
// Signatures: push item 0 stores the call's signature into every peer's slot [parity][me] before
// its flag; wait item 0 (the first of phase 1) loads the peers' after their flags and compares
// them after its work (weft/device/call_signature.cuh): ranks asked for different calls trap
// before the call completes.
//
// Epochs: the call's epoch is ArState::epoch + 1; the block that takes the call's last ticket
// stores it back and resets the queue. Receive buffers alternate by epoch parity: a rank writes
// call e + 2 into the half call e used only after it received this rank's call e + 1 data, which
// this rank sends after its call e finished reading that half. An abandoned call e + 1 (the
// abandon branch) sends nothing and waits for nothing, so call e + 2 keeps that order itself: the
// abandon branch marks ArState::last_abandoned, and a call that finds the mark waits, before its
// first push, for every peer's flag (0, q, 0) >= e + 1, which a peer raises in its own call e + 1
// (abandoned or not) and so only after its call e completed. (On the device because a CUDA graph
// replay runs no host code; AbandonFence's barrier on the host, weft/runtime/world.h, also orders
// eager calls and the signature slots of abandoned calls in a row.)
#include "weft/device/weft.cuh"
#include "weft/ops/tensor_parallel/common/convert.cuh"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar_kernel.h"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/pdl.h"

namespace weft::tp {
namespace {

constexpr int kThreads = 512;

template <class T>
struct Call {
  const dev::Context& ctx;
  const ArParams& p;
  int world, me, parity;
  uint64_t epoch;
  int64_t total8;  // total rounded up to whole vectors (buffers are sized for it)

  __device__ T* slot(int src) const {
    return static_cast<T*>(p.rx) + (int64_t(parity) * world + src) * p.rx_slot;
  }
  __device__ T* results() const { return static_cast<T*>(p.rx2) + int64_t(parity) * p.rx2_half; }
  __device__ const T* partial() const { return static_cast<const T*>(p.partial); }
  __device__ uint64_t* flag(int phase, int src, int i) const {
    return p.flags + (int64_t(phase) * world + src) * p.max_slices + i;
  }

  // The block's stores so far are released to every peer through flag (phase, me, i). Flag
  // (0, me, 0) also carries the call's signature (ArParams::sig_slots).
  __device__ void notify_peers(int phase, int i) const {
    if (phase == 0 && i == 0 && p.sig_slots != nullptr)
      dev::publish_call_signature(ctx, p.sig_slots, parity, p.signature, threadIdx.x);
    __syncthreads();
    const int q = threadIdx.x;
    if (q < world && q != me) dev::notify<dev::Scope::sys>(ctx, flag(phase, me, i), q, epoch);
  }

  // Every peer's flag (phase, q, i) reached this call's epoch; the barrier orders every thread's
  // later loads after the acquires.
  __device__ void wait_peers(int phase, int i) const {
    const int q = threadIdx.x;
    if (q < world && q != me)
      dev::wait<dev::Scope::sys>(ctx, flag(phase, q, i), dev::Cmp::ge, epoch);
    __syncthreads();
  }

  // wait_peers(0, i), then `work` (the item's reading of the peers' data); item 0 also checks the
  // peers' signatures: thread q loads peer q's digest right after its flag and compares it after
  // the work, which that load's round trip overlaps. The work touches only this rank's buffers
  // (and, two-shot, its own share of the peers' result buffers) within its own sizes, and a
  // mismatch traps before the kernel completes, so the call fails instead of returning.
  // Before it traps, thread q gives peer q this rank's signature and flag (0, me, 0) itself (the
  // same values item 0 stores, perhaps on another block not yet run), so that peer q's check
  // finds the mismatch too instead of waiting for a flag that a trapped kernel never raises.
  template <class Work>
  __device__ void after_peers(int i, Work&& work) const {
    wait_peers(0, i);
    const int q = threadIdx.x;
    const bool check = i == 0 && p.sig_slots != nullptr && q < world && q != me;
    unsigned long long theirs = 0;
    if (check) theirs = dev::load_call_digest(ctx, p.sig_slots, parity, q);
    work();
    if (check && theirs != p.signature.word[dev::CallSignature::digest]) {
      dev::publish_call_signature(ctx, p.sig_slots, parity, p.signature, q);
      dev::notify<dev::Scope::sys>(ctx, flag(0, me, 0), q, epoch);
      dev::compare_call_signature(ctx, p.sig_slots, parity, q, theirs, p.signature);  // traps
    }
  }

  // Elements [x, x + 8) of the result into out (rows of n elements, leading dimension ldo),
  // those below `total` (p.total, or the share's size for a scatter-only call).
  __device__ void store_out(int64_t x, const uint4& v, int64_t total) const {
    if (x >= total) return;
    T* out = static_cast<T*>(p.out);
    if (p.out_vec && x + 8 <= total) {
      const int64_t row = x / p.n, col = x - row * p.n;
      *reinterpret_cast<uint4*>(out + row * p.ldo + col) = v;
      return;
    }
    const T* e = reinterpret_cast<const T*>(&v);
    for (int j = 0; j < 8 && x + j < total; ++j) {
      const int64_t row = (x + j) / p.n, col = (x + j) - row * p.n;
      out[row * p.ldo + col] = e[j];
    }
  }

  // Sum over ranks 0..W-1 (in that order) of 8 elements: rank me's from `own`, the others' from
  // their receive slots at `slot_off`. Loads of up to 8 ranks are in flight together.
  __device__ uint4 sum_ranks(const T* own, int64_t slot_off) const {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    uint4 v[8];
    for (int q0 = 0; q0 < world; q0 += 8) {
      const int nq = min(8, world - q0);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j < nq) {
          const int q = q0 + j;
          const T* src = q == me ? own : slot(q) + slot_off;
          v[j] = *reinterpret_cast<const uint4*>(src);
        }
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j < nq) add8<T>(acc, v[j]);
    }
    return pack8<T>(acc);
  }

  // ---- one-shot ----------------------------------------------------------------------------------
  __device__ void oneshot_push(int i) const {
    const int64_t begin = int64_t(i) * p.slice, end = min(total8, begin + p.slice);
    for (int64_t x = begin + 8 * int64_t(threadIdx.x); x < end; x += 8 * int64_t(blockDim.x)) {
      const uint4 v = *reinterpret_cast<const uint4*>(partial() + x);
      for (int s = 1; s < world; ++s) {
        const int q = (me + s) % world;
        *reinterpret_cast<uint4*>(dev::symm_at(ctx, slot(me) + x, q)) = v;
      }
    }
    notify_peers(0, i);
  }

  __device__ void oneshot_reduce(int i) const {
    after_peers(i, [&] {
      const int64_t begin = int64_t(i) * p.slice, end = min(total8, begin + p.slice);
      for (int64_t x = begin + 8 * int64_t(threadIdx.x); x < end; x += 8 * int64_t(blockDim.x))
        store_out(x, sum_ranks(partial() + x, x), p.total);
    });
  }

  // ---- all-gather ----------------------------------------------------------------------------
  // Element x of this rank's rows (src_ld apart).
  __device__ uint4 own_rows(int64_t x) const {
    const int64_t row = x / p.n, col = x - row * p.n;
    return *reinterpret_cast<const uint4*>(partial() + row * p.src_ld + col);
  }

  __device__ void gather_push(int i) const {
    const int64_t begin = int64_t(i) * p.slice, end = min(p.chunk, begin + p.slice);
    for (int64_t x = begin + 8 * int64_t(threadIdx.x); x < end; x += 8 * int64_t(blockDim.x)) {
      const uint4 v = own_rows(x);
      for (int s = 1; s < world; ++s) {
        const int q = (me + s) % world;
        *reinterpret_cast<uint4*>(dev::symm_at(ctx, slot(me) + x, q)) = v;
      }
    }
    notify_peers(0, i);
  }

  __device__ void gather_collect(int i) const {
    after_peers(i, [&] {
      const int64_t begin = int64_t(i) * p.slice, end = min(p.chunk, begin + p.slice);
      for (int q = 0; q < world; ++q)
        for (int64_t x = begin + 8 * int64_t(threadIdx.x); x < end; x += 8 * int64_t(blockDim.x))
          store_out(int64_t(q) * p.chunk + x,
                    q == me ? own_rows(x) : *reinterpret_cast<const uint4*>(slot(q) + x), p.total);
    });
  }

  // ---- two-shot ----------------------------------------------------------------------------------
  // Slice i of rank q's share: global elements [q * chunk + i * slice, ...).
  __device__ void share_range(int q, int i, int64_t& begin, int64_t& end) const {
    begin = int64_t(q) * p.chunk + int64_t(i) * p.slice;
    end = min(min(begin + p.slice, int64_t(q + 1) * p.chunk), total8);
  }

  __device__ void twoshot_push(int i) const {
    for (int s = 1; s < world; ++s) {
      const int q = (me + s) % world;
      int64_t begin, end;
      share_range(q, i, begin, end);
      for (int64_t x = begin + 8 * int64_t(threadIdx.x); x < end; x += 8 * int64_t(blockDim.x)) {
        const uint4 v = *reinterpret_cast<const uint4*>(partial() + x);
        *reinterpret_cast<uint4*>(dev::symm_at(ctx, slot(me) + (x - int64_t(q) * p.chunk), q)) = v;
      }
    }
    notify_peers(0, i);
  }

  __device__ void twoshot_reduce(int i) const {
    after_peers(i, [&] {
      int64_t begin, end;
      share_range(me, i, begin, end);
      for (int64_t x = begin + 8 * int64_t(threadIdx.x); x < end; x += 8 * int64_t(blockDim.x)) {
        const uint4 v = sum_ranks(partial() + x, x - int64_t(me) * p.chunk);
        if (p.scatter_only) {
          // The share's element x - me * chunk is row (x - me * chunk) / n of out.
          store_out(x - int64_t(me) * p.chunk, v, min(p.chunk, p.total - int64_t(me) * p.chunk));
          continue;
        }
        store_out(x, v, p.total);
        for (int s = 1; s < world; ++s) {
          const int q = (me + s) % world;
          *reinterpret_cast<uint4*>(dev::symm_at(ctx, results() + x, q)) = v;
        }
      }
    });
    if (!p.scatter_only) notify_peers(1, i);
  }

  __device__ void twoshot_gather(int i) const {
    wait_peers(1, i);
    for (int s = 1; s < world; ++s) {
      const int q = (me + s) % world;
      int64_t begin, end;
      share_range(q, i, begin, end);
      for (int64_t x = begin + 8 * int64_t(threadIdx.x); x < end; x += 8 * int64_t(blockDim.x))
        store_out(x, *reinterpret_cast<const uint4*>(results() + x), p.total);
    }
  }
};

template <class T>
__global__ void __launch_bounds__(kThreads)
    allreduce_kernel(const __grid_constant__ dev::Context ctx, const __grid_constant__ ArParams p) {
  __shared__ uint64_t s_epoch;
  __shared__ int s_item;
  // Launched as a programmatic dependent of the kernel before it on the stream (launch_allreduce):
  // the grid is scheduled as that kernel's blocks exit (neither cuBLAS's nor weft's GEMM triggers
  // earlier), without the gap of a normal launch, and waits here until that kernel completed and
  // its writes (the partial product; a previous call's state) are visible. Nothing in global
  // memory is touched before this line.
  dev::wait_prior_grid();
  if (p.abandon) {
    if (threadIdx.x == 0) s_epoch = p.state->epoch + 1;
    __syncthreads();
    const uint64_t epoch = s_epoch;
    const int q = threadIdx.x, me = ctx.rank;
    if (q < ctx.world_size && q != me) {
      dev::publish_call_signature(ctx, p.sig_slots, static_cast<int>(epoch & 1), p.signature, q);
      dev::notify<dev::Scope::sys>(ctx, p.flags + int64_t(me) * p.max_slices, q, epoch);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      p.state->epoch = epoch;
      p.state->last_abandoned = 1;
    }
    return;
  }
  __shared__ unsigned s_after_abandoned;
  // The first ticket, the epoch and the abandon mark: their round trips in flight together.
  if (threadIdx.x == 0) {
    s_item = static_cast<int>(atomicAdd(&p.state->next_item, 1u));
    s_epoch = dev::ld<dev::Sem::relaxed, dev::Scope::gpu>(&p.state->epoch) + 1;
    s_after_abandoned = dev::ld<dev::Sem::relaxed, dev::Scope::gpu>(&p.state->last_abandoned);
  }
  __syncthreads();
  const uint64_t epoch = s_epoch;
  const Call<T> call{ctx, p, ctx.world_size, ctx.rank, static_cast<int>(epoch & 1), epoch,
                     (p.total + 7) / 8 * 8};
  // After an abandoned call on this rank: no push into a peer's half before that peer finished the
  // call before the abandoned one (see "Epochs" above). Every block, before its first item (a
  // block whose first ticket is past the last item waits too: harmless, the flags are up).
  if (s_after_abandoned != 0) {
    const int q = threadIdx.x;
    if (q < ctx.world_size && q != ctx.rank)
      dev::wait<dev::Scope::sys>(ctx, call.flag(0, q, 0), dev::Cmp::ge, epoch - 1);
    __syncthreads();
  }
  const int phases = p.two_shot && !p.scatter_only ? 3 : 2;
  const int items = phases * p.slices;
  int item = s_item;
  while (item < items) {
    const int phase = item / p.slices, i = item - phase * p.slices;
    if (p.gather_only) {
      if (phase == 0) call.gather_push(i);
      else call.gather_collect(i);
    } else if (!p.two_shot) {
      if (phase == 0) call.oneshot_push(i);
      else call.oneshot_reduce(i);
    } else {
      if (phase == 0) call.twoshot_push(i);
      else if (phase == 1) call.twoshot_reduce(i);
      else call.twoshot_gather(i);
    }
    __syncthreads();  // everyone read s_item (and finished the item) before it changes
    if (threadIdx.x == 0) s_item = static_cast<int>(atomicAdd(&p.state->next_item, 1u));
    __syncthreads();
    item = s_item;
  }
  // Every block takes tickets until one is >= items, so the call hands out exactly items +
  // gridDim.x tickets, and the block holding the last one knows no block takes another: it resets
  // the queue and publishes the epoch. Every block that works read the epoch before its last
  // ticket (a block whose first ticket is already >= items may read the new one: it does no
  // work); the next launch on the stream reads both after this kernel completed. No arrival
  // count, so no block's exit waits for one more round trip.
  if (threadIdx.x == 0 && item == items + static_cast<int>(gridDim.x) - 1) {
    p.state->next_item = 0;
    p.state->last_abandoned = 0;
    p.state->epoch = epoch;
  }
}

}  // namespace

void launch_allreduce_abandon(const dev::Context& ctx, ArParams p, cudaStream_t stream) noexcept {
  p.abandon = 1;
  allreduce_kernel<__nv_bfloat16><<<1, kThreads, 0, stream>>>(ctx, p);
}

void launch_allreduce(const dev::Context& ctx, const ArParams& p, int blocks, cudaStream_t stream) {
  // A programmatic dependent of the GEMM that produced the partial (weft/runtime/pdl.h): the
  // kernel-to-kernel gap is off the critical path; the kernel waits for that GEMM first thing.
  if (p.dtype == DType::kBF16)
    launch_dependent(allreduce_kernel<__nv_bfloat16>, dim3(blocks), dim3(kThreads), 0, stream, ctx,
                     p);
  else
    launch_dependent(allreduce_kernel<__half>, dim3(blocks), dim3(kThreads), 0, stream, ctx, p);
}

}  // namespace weft::tp
