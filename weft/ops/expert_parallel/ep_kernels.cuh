// Kernels of the MoE expert-parallel dispatch and combine (weft::ops::ExpertParallel), written
// with weft's device primitives. README.md has the design; the short version:
//
// Dispatch, on every rank (the "source"), for its T tokens with top-k expert ids:
//  1. layout: for every destination rank d, which tokens go to d (a token goes once to each rank
//     holding >= 1 of its experts) and the token's slot among them; for every (token, slot) pair
//     its rank among this source's pairs of the same expert, in (token, slot) order; per-expert
//     and per-destination totals. A stable counting scan: warps scan 16 tokens each (more when
//     fewer warps scan) with __match_any_sync / __ballot_sync, then a prefix over warps (and over
//     256-token chunks in throughput mode). No atomics, so the order is deterministic. (Low
//     latency: a row is staged at its token's own index, so it leaves as soon as the token's ids
//     are read; the pair ranks come from one bit per (expert, token) and popcounts, the scan only
//     when a token repeats an expert.)
//  2. counts: each source pushes to each destination its per-local-expert pair counts and its
//     token count (low latency: and a bitmap of the tokens going there) as tagged words
//     (st_counts[epoch & 1][source], tag = the epoch's low half: one trip, no fence, no signal).
//     Every destination waits for all sources' counts (even zero), which also tells it that the
//     source has finished its previous call: the token that makes double buffering by epoch parity
//     safe.
//  3. send: each token's bf16 row is read once (and quantized to fp8 with one scale per 128
//     channels on the fly), then stored into the staging slot [buffer][source][slot] of every
//     destination with its metadata (token, expert ids, ranks, weights) — low latency by SM
//     16-byte stores, throughput by TMA bulk copies — and the row's flag is set to the epoch by a
//     system-scope release (throughput: a flag warp per block releases many rows at once). Low
//     latency fp8 rows have no flag: their staging starts poisoned (kFp8Poison4) and their
//     metadata is tagged, so the bytes show their own arrival and no fence waits for the stores.
//  4. receive: each destination, once a row has arrived (its flag reads the epoch; low-latency fp8:
//     its first metadata word carries the epoch, and nothing it loads reads poisoned), copies the
//     row into one output row per local expert of the token: expert e's rows start at offsets[e]
//     (prefix of the per-expert totals), then source s's at + sum of earlier sources' counts for e,
//     then the pair's rank. So rows are grouped by expert and ordered by (source, token, slot)
//     whatever the arrival order. expert_ready[e] = epoch once the expert's rows are in place: low
//     latency with a hook set by whoever places its last row, throughput when the data kernel ends
//     (a low-latency call without a hook leaves the flags: nothing can wait for it).
//
// Combine, on every rank, for the rows it received in the last dispatch: per received token it sums
// its local experts' outputs weighted by the token's top-k weights (fp32 FMAs in slot order,
// rounded once to bf16) and pushes that one partial row to the token's home rank (staging
// [buffer][expert rank][token] + flag). The home rank waits for the partials of the ranks its token
// went to and adds them in rank order (fp32, one bf16 rounding) into out[T, H].
//
// Modes: low latency = one kernel per dispatch / combine on every SM, each block sending rows by
// groups of 4 warps and placing received ones by groups of 2 (dispatch), or moving two rows at a
// time by groups of 8 (combine), staging double buffered by epoch parity, no handshake before
// writing. Throughput = a multi-block layout kernel (counts
// copied to the host on a side stream), then data kernels whose first send_blocks blocks send and
// the rest receive, one warp per row (dispatch: whole rows by TMA through a shared-memory slot per
// warp); single-buffered staging (the count exchange of the layout kernel and the combine's hello
// signal are the handshakes).
//
// All blocks of a grid must be resident at once (blocks wait for peers' blocks); the host checks
// occupancy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <climits>
#include <cstdint>
#include <cstdio>

#include "weft/device/weft.cuh"
#include "weft/ops/expert_parallel/ep_numerics.h"
#include "weft/ops/expert_parallel/ep_params.h"

namespace weft::ops::ep {

using dev::Cmp;
using dev::Scope;
using dev::Sem;

inline constexpr unsigned kFullMask = 0xffffffffu;

// ---- small helpers --------------------------------------------------------------------------

// Phase timestamps (TraceSlot; trace == null: off, one predictable branch).
__device__ __forceinline__ void trace_stamp(uint64_t* trace, int slot) {
  if (trace != nullptr)
    atomicMax(reinterpret_cast<unsigned long long*>(trace + blockIdx.x * kTraceSlots + slot),
              static_cast<unsigned long long>(dev::detail::globaltimer_ns()));
}
__device__ __forceinline__ void trace_add(uint64_t* trace, int slot, uint64_t v) {
  if (trace != nullptr)
    atomicAdd(reinterpret_cast<unsigned long long*>(trace + blockIdx.x * kTraceSlots + slot),
              static_cast<unsigned long long>(v));
}

// Lap timer for the TraceSlot sums (lane 0 of a warp; no-op when tracing is off).
struct TraceLap {
  uint64_t* trace;
  uint64_t last;
  __device__ __forceinline__ explicit TraceLap(uint64_t* t)
      : trace(t), last(t ? dev::detail::globaltimer_ns() : 0) {}
  __device__ __forceinline__ void lap(int slot) {
    if (trace == nullptr || (threadIdx.x & 31) != 0) return;
    const uint64_t now = dev::detail::globaltimer_ns();
    trace_add(trace, slot, now - last);
    last = now;
  }
};

// The next work item of a warp from a kernel-wide ticket (lane 0 takes it, every lane gets it).
// Taking tokens / rows in order as warps free up balances the warps and keeps the rows in flight
// close to the order receivers wait for them; a fixed stride left some warps a third behind.
__device__ __forceinline__ uint32_t take_ticket(uint32_t* ticket, int lane) {
  uint32_t v = 0;
  if (lane == 0) v = atomicAdd(ticket, 1u);
  return __shfl_sync(kFullMask, v, 0);
}

__device__ __forceinline__ unsigned lanemask_lt() {
  unsigned m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

// Division by a divisor fixed for the kernel (E/W, k, W): one 64-bit multiply and a shift instead
// of the ~20-instruction sequence with a reciprocal that a `/` by a runtime value compiles to, in
// loops on the dispatch's critical path. Exact while n * (d - 1) < 2^32 (ids and row indices here
// are far below). magic = ceil(2^32 / d) = floor((2^32 - 1) / d) + 1 (2^32 for d = 1): one
// division per Divisor.
struct Divisor {
  uint64_t magic;
  __device__ __forceinline__ explicit Divisor(int d)
      : magic(uint64_t{0xffffffffu / static_cast<uint32_t>(d)} + 1) {}
  __device__ __forceinline__ int div(int n) const {
    return static_cast<int>((static_cast<uint64_t>(static_cast<uint32_t>(n)) * magic) >> 32);
  }
};

// Data written by peers during this kernel: load through L2 only (never a stale L1 line).
__device__ __forceinline__ uint4 ld_cg16(const void* p) {
  return __ldcg(reinterpret_cast<const uint4*>(p));
}
// Inputs that stay constant during the kernel.
__device__ __forceinline__ uint4 ld_nc16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}
__device__ __forceinline__ void st16(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

// ---- fp8 rows that show their own arrival (low latency; kFp8Poison4 in ep_params.h) ------------

// A 16-byte load that a wait may repeat: relaxed at system scope (peers write the bytes).
__device__ __forceinline__ uint4 ld_relaxed16(const void* p) {
  uint4 v;
  asm volatile("ld.relaxed.sys.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}

// A staged scale that may still be arriving.
__device__ __forceinline__ float ld_scale(const float* p) {
  return __uint_as_float(dev::ld<Sem::relaxed, Scope::sys>(reinterpret_cast<const uint32_t*>(p)));
}

// The sender's side: a 16-byte relaxed store at system scope (the receiver reads the bytes
// without a flag; each 4-byte element is single-copy atomic, and the poison check is per byte).
__device__ __forceinline__ void st_relaxed16(void* p, const uint4& v) {
  asm volatile("st.relaxed.sys.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}

// True while one of the 16 staged fp8 bytes still holds the poison.
__device__ __forceinline__ bool fp8_poisoned(const uint4& v) {
  return (__vcmpeq4(v.x, kFp8Poison4) | __vcmpeq4(v.y, kFp8Poison4) | __vcmpeq4(v.z, kFp8Poison4) |
          __vcmpeq4(v.w, kFp8Poison4)) != 0;
}

// Reloads the value at `p` (load()) until arrived(value), then returns it; a wait that outlives
// ctx.wait_timeout_ns traps with a report naming `p` (expected 1 = arrived, observed 0).
template <class T, class Load, class Arrived>
__device__ __forceinline__ T spin_until_arrived(const dev::Context& ctx, const void* p, Load&& load,
                                                Arrived&& arrived) {
  T v{};
  dev::detail::spin_until(
      ctx, static_cast<const dev::signal_t*>(p),
      [&] {
        v = load();
        return arrived(v) ? uint64_t{1} : uint64_t{0};
      },
      [](uint64_t done) { return done == 1; }, Cmp::eq, 1);
  return v;
}

// The slow paths, out of line (the kernels sit at their register cap): wait until every byte
// (the scale, the metadata word) has arrived.
__device__ __noinline__ inline uint4 wait_fp8_bytes(const dev::Context& ctx, const char* p) {
  return spin_until_arrived<uint4>(
      ctx, p, [p] { return ld_relaxed16(p); }, [](const uint4& v) { return !fp8_poisoned(v); });
}
__device__ __noinline__ inline float wait_fp8_scale(const dev::Context& ctx, const float* p) {
  return spin_until_arrived<float>(
      ctx, p, [p] { return ld_scale(p); },
      [](float f) { return __float_as_uint(f) != kScalePoison; });
}
__device__ __noinline__ inline uint32_t wait_meta_word(const dev::Context& ctx,
                                                       const uint64_t* word, uint32_t tag) {
  return dev::wait_tagged(ctx, word, tag);
}

// A staged scale as loaded (ld_scale), or waited for when it had not arrived yet.
__device__ __forceinline__ float arrived_scale(const dev::Context& ctx, const float* p,
                                               float loaded) {
  return __float_as_uint(loaded) == kScalePoison ? wait_fp8_scale(ctx, p) : loaded;
}

// Which 32 bytes of a bf16 row the thread handling unit u takes, for rows that are only copied or
// summed elementwise (never fp8 scaling or anything else where a thread must hold 16 consecutive
// channels): the rows stay in their plain layout in memory, and this only assigns bytes to
// threads. Within a run of 32 units (1 KiB; the last run r < 32 units) unit u takes the 16-byte
// pieces (u mod 32) and r + (u mod 32). A warp's 32 consecutive units (lane = u mod 32, as every
// caller's u = base + b x n + tid has it) then load or store 512 contiguous bytes per instruction,
// where 32u and 32u + 16 wrote 16 bytes of every 32 and cost two partial writes per 32-byte sector
// on NVLink. A thread must store exactly the offsets it loaded.
struct UnitHalves {
  size_t first, second;
};
__device__ __forceinline__ UnitHalves unit_halves(int u, int U) {
  const int run = u >> 5;
  const int r = min(32, U - (run << 5));
  const size_t first = static_cast<size_t>(run) * 1024 + static_cast<size_t>(u & 31) * 16;
  return {first, first + static_cast<size_t>(r) * 16};
}

__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ const uint32_t* words(const uint4& v) {
  return reinterpret_cast<const uint32_t*>(&v);
}

// |max| of 16 bf16 values held in two uint4.
__device__ __forceinline__ float amax16(const uint4 (&v)[2]) {
  float m = 0.f;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t w = words(v[h])[i];
      m = fmaxf(m, fmaxf(fabsf(bf16_lo(w)), fabsf(bf16_hi(w))));
    }
  return m;
}

// 16 bf16 values times `inv`, to 16 e4m3 bytes (channel order kept).
__device__ __forceinline__ uint4 quantize16(const uint4 (&v)[2], float inv) {
  uint32_t out[4];
#pragma unroll
  for (int o = 0; o < 4; ++o) {
    const uint32_t w0 = words(v[o >> 1])[(o & 1) * 2];
    const uint32_t w1 = words(v[o >> 1])[(o & 1) * 2 + 1];
    const uint32_t q0 = __nv_cvt_float2_to_fp8x2(make_float2(bf16_lo(w0) * inv, bf16_hi(w0) * inv),
                                                 __NV_SATFINITE, __NV_E4M3);
    const uint32_t q1 = __nv_cvt_float2_to_fp8x2(make_float2(bf16_lo(w1) * inv, bf16_hi(w1) * inv),
                                                 __NV_SATFINITE, __NV_E4M3);
    out[o] = (q0 & 0xffffu) | (q1 << 16);
    out[o] |= __vcmpeq4(out[o], kFp8Poison4) & 0x80808080u;  // NaN is 0xff, never the poison
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// acc[i] = fma(w, y_i, acc[i]) for the 16 bf16 values in a, b.
__device__ __forceinline__ void fma16(float (&acc)[16], const uint4& a, const uint4& b, float w) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    acc[2 * i] = __fmaf_rn(w, bf16_lo(words(a)[i]), acc[2 * i]);
    acc[2 * i + 1] = __fmaf_rn(w, bf16_hi(words(a)[i]), acc[2 * i + 1]);
    acc[8 + 2 * i] = __fmaf_rn(w, bf16_lo(words(b)[i]), acc[8 + 2 * i]);
    acc[8 + 2 * i + 1] = __fmaf_rn(w, bf16_hi(words(b)[i]), acc[8 + 2 * i + 1]);
  }
}

__device__ __forceinline__ void add16(float (&acc)[16], const uint4& a, const uint4& b) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    acc[2 * i] += bf16_lo(words(a)[i]);
    acc[2 * i + 1] += bf16_hi(words(a)[i]);
    acc[8 + 2 * i] += bf16_lo(words(b)[i]);
    acc[8 + 2 * i + 1] += bf16_hi(words(b)[i]);
  }
}

__device__ __forceinline__ void pack16(const float (&acc)[16], uint4& a, uint4& b) {
  a = make_uint4(pack_bf16x2(acc[0], acc[1]), pack_bf16x2(acc[2], acc[3]),
                 pack_bf16x2(acc[4], acc[5]), pack_bf16x2(acc[6], acc[7]));
  b = make_uint4(pack_bf16x2(acc[8], acc[9]), pack_bf16x2(acc[10], acc[11]),
                 pack_bf16x2(acc[12], acc[13]), pack_bf16x2(acc[14], acc[15]));
}

// Named barrier `id` of `n` threads (whole warps): wait for all n, or count this warp in and go on.
__device__ __forceinline__ void named_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}

// Named barriers of the low-latency dispatch (RowGroup uses 1 .. kWarps / 2): among its receiving
// warps, and the one its sending groups pass once the receivers' pair ranks are ready.
inline constexpr int kReceiversBarrier = 15;
inline constexpr int kLayoutReadyBarrier = 14;  // receive_rows_early_ll
inline constexpr int kScanReadyBarrier = 13;
static_assert(1 + kWarps / 2 < kScanReadyBarrier, "RowGroup's named barriers overlap the LL ones");

// The warps that move one row together: one warp, the whole block, or a span of warps in between
// (named barrier 1 + index).
struct RowGroup {
  int index;     // group within the block
  int tid;       // thread rank in the group
  int nthreads;  // 32 * warps
  int wpg;       // warps per group

  __device__ __forceinline__ void sync() const {
    if (wpg == 1)
      __syncwarp();
    else if (wpg == kWarps)
      __syncthreads();
    else
      named_sync(1 + index, nthreads);
  }
};

__device__ __forceinline__ RowGroup make_group(int wpg) {
  RowGroup g;
  g.wpg = wpg;
  g.nthreads = 32 * wpg;
  g.index = static_cast<int>(threadIdx.x >> 5) / wpg;
  g.tid = static_cast<int>(threadIdx.x) - g.index * g.nthreads;
  return g;
}

// ---- device-side input errors -----------------------------------------------------------------

// The record alone, inline (no call: see report_error); returns whether this thread wrote it.
__device__ __forceinline__ bool record_error(EpError* e, int kind, int rank, uint64_t epoch,
                                             int token, int slot, long long value,
                                             long long limit) {
  if (e == nullptr || atomicCAS(&e->claimed, 0u, 1u) != 0u) return false;  // first error wins
  e->kind = kind;
  e->rank = rank;
  e->token = token;
  e->slot = slot;
  e->value = value;
  e->limit = limit;
  e->epoch = epoch;
  __threadfence_system();
  e->ready = 1;
  __threadfence_system();
  return true;
}

// The record and a line on stdout. Out of line (printf is a call), so a kernel that has no other
// call records with record_error instead.
__device__ __noinline__ inline void report_error(EpError* e, int kind, int rank, uint64_t epoch,
                                                 int token, int slot, long long value,
                                                 long long limit) {
  if (!record_error(e, kind, rank, epoch, token, slot, value, limit)) return;
  if (kind == EpError::bad_expert_id)
    printf("weft ExpertParallel: rank %d, dispatch %llu: topk_idx[%d][%d] = %lld is not in "
           "[0, %lld) nor -1; treated as -1\n",
           rank, (unsigned long long)epoch, token, slot, value, limit);
  else if (kind == EpError::fp8_mismatch)
    printf(
        "weft ExpertParallel: rank %d, dispatch %llu: rank %d called it with fp8 = %lld, this "
        "rank with fp8 = %lld; no rows exchanged with it\n",
        rank, (unsigned long long)epoch, slot, value, limit);
  else if (kind == EpError::dispatch_abandoned || kind == EpError::combine_abandoned)
    printf(
        "weft ExpertParallel: rank %d, %s %llu: rank %d abandoned it (its arguments failed a "
        "check there)\n",
        rank, kind == EpError::dispatch_abandoned ? "dispatch" : "combine",
        (unsigned long long)epoch, slot);
  else
    printf("weft ExpertParallel: rank %d, dispatch %llu: %lld rows received, capacity %lld; "
           "rows past it dropped\n",
           rank, (unsigned long long)epoch, value, limit);
}

// Expert id of pair i (token i / k, slot i % k); -1 for "no expert" and for invalid ids.
__device__ __forceinline__ long long raw_expert(const EpDispatchParams& p, long long i) {
  return p.idx64 ? __ldg(static_cast<const long long*>(p.topk) + i)
                 : static_cast<long long>(__ldg(static_cast<const int*>(p.topk) + i));
}
__device__ __forceinline__ int load_expert(const EpDispatchParams& p, long long i) {
  const long long v = raw_expert(p, i);
  return (v >= 0 && v < p.E) ? static_cast<int>(v) : -1;
}
// Pair i's expert id `v` (as raw_expert loaded it) checked: -1 for "no expert" and for invalid
// ids, which are reported (once, when `report`).
__device__ __forceinline__ int checked_expert(const EpDispatchParams& p, long long i, long long v,
                                              bool report, int rank, uint64_t epoch) {
  if (v >= 0 && v < p.E) return static_cast<int>(v);
  if (v != -1 && report)
    report_error(p.error, EpError::bad_expert_id, rank, epoch, static_cast<int>(i / p.k),
                 static_cast<int>(i % p.k), v, p.E);
  return -1;
}

// All threads of the block: the expert ids of tokens [t0, t1) into shared memory (`ids`, pair q at
// q - t0 * k), invalid ones as -1 (and reported once, when `report`). One coalesced pass instead of
// the scan's dependent global loads: the scan is on every dispatch's critical path.
__device__ inline void load_ids(const dev::Context& ctx, const EpDispatchParams& p, uint64_t epoch,
                                int t0, int t1, int* ids, bool report) {
  constexpr int kInFlight = 4;  // loads a thread issues before checking any (one round trip)
  const long long q0 = static_cast<long long>(t0) * p.k, q1 = static_cast<long long>(t1) * p.k;
  const long long stride = blockDim.x;
#pragma unroll 1
  for (long long q = q0 + threadIdx.x; q < q1; q += kInFlight * stride) {
    long long v[kInFlight];
#pragma unroll
    for (int i = 0; i < kInFlight; ++i)
      v[i] = q + i * stride < q1 ? raw_expert(p, q + i * stride) : -1;
#pragma unroll
    for (int i = 0; i < kInFlight; ++i)
      if (q + i * stride < q1)
        ids[q + i * stride - q0] = checked_expert(p, q + i * stride, v[i], report, ctx.rank, epoch);
  }
  __syncthreads();
}

// The threads of a block that run a step together: [first, first + n) (whole warps), with
// barrier `bar` (0: the whole block, __syncthreads).
struct BlockPart {
  int first = 0, n = kThreads, bar = 0;
  __device__ __forceinline__ int tid() const { return static_cast<int>(threadIdx.x) - first; }
  __device__ __forceinline__ void sync() const {
    if (bar == 0)
      __syncthreads();
    else
      named_sync(bar, n);
  }
};

// ---- 1. layout: stable counting scan of one chunk of <= 256 tokens --------------------------

struct ScanOut {
  int32_t* dslot;   // [t][W] slot among this source's tokens for d (relative to the chunk), -1
  int32_t* wrank;   // [t][k] rank among this source's pairs of the expert (relative), -1
  uint32_t* dmask;  // [t] destination ranks of the token
  int32_t* totals;  // [E + W] the chunk's per-expert pair counts, then per-destination tokens
};

// The threads of `part` (whole warps; the whole block by default). `hist` is shared memory of
// kWarps * (E + W) ints; `ids` the chunk's expert ids (load_ids). Indices into the outputs are
// absolute (t, t * k + slot). On return (after part.sync()) the outputs are ranks relative to the
// chunk start t0. With out.dslot == nullptr only the pair ranks (wrank) and the per-expert totals
// are derived; dmask and dslot are then not touched.
__device__ inline void scan_chunk(const dev::Context& ctx, const EpDispatchParams& p, int t0,
                                  int t1, int* hist, const int* ids, const ScanOut& out,
                                  const BlockPart& part = BlockPart{}) {
  const int W = ctx.world_size, E = p.E, k = p.k, el = p.E_local;
  const long long q0 = static_cast<long long>(t0) * k;
  const int cols = E + W;
  const int tid = part.tid(), nt = part.n, nwarps = nt >> 5;
  const int tpw = (kScanChunk + nwarps - 1) / nwarps;  // tokens per warp
#pragma unroll 1
  for (int i = tid; i < nwarps * cols; i += nt) hist[i] = 0;
  part.sync();

  const int warp = tid >> 5, lane = tid & 31;
  const unsigned lt = lanemask_lt();
  int* mine = hist + warp * cols;
  const int tw0 = min(t1, t0 + warp * tpw);
  const int tw1 = min(t1, t0 + (warp + 1) * tpw);

  // Pairs in (token, slot) order, 32 at a time: rank among earlier pairs of the same expert.
  const long long p1 = static_cast<long long>(tw1) * k;
  for (long long base = static_cast<long long>(tw0) * k; base < p1; base += 32) {
    const long long q = base + lane;
    const int e = q < p1 ? ids[q - q0] : -1;
    const unsigned peers = __match_any_sync(kFullMask, e);
    const unsigned before = peers & lt;
    const int r = e >= 0 ? mine[e] + __popc(before) : -1;
    __syncwarp();
    if (e >= 0 && before == 0) mine[e] += __popc(peers);
    __syncwarp();
    if (q < p1) out.wrank[q] = r;
  }
  // Tokens: destination mask and slot among earlier tokens for the same destination.
  for (int tb = tw0; out.dslot != nullptr && tb < tw1; tb += 32) {
    const int t = tb + lane;
    uint32_t m = 0;
    if (t < tw1) {
      for (int kk = 0; kk < k; ++kk) {
        const int e = ids[static_cast<long long>(t) * k + kk - q0];
        if (e >= 0) m |= 1u << (e / el);
      }
      out.dmask[t] = m;
    }
    for (int d = 0; d < W; ++d) {
      const bool go = (m >> d) & 1u;
      const unsigned b = __ballot_sync(kFullMask, go);
      if (t < tw1) out.dslot[static_cast<size_t>(t) * W + d] = go ? mine[E + d] + __popc(b & lt) : -1;
      __syncwarp();
      if (lane == 0) mine[E + d] += __popc(b);
      __syncwarp();
    }
  }
  part.sync();

  // Exclusive prefix over warps, per column; the column totals are the chunk's.
  for (int c = tid; c < cols; c += nt) {
    int run = 0;
    for (int w = 0; w < nwarps; ++w) {
      const int v = hist[w * cols + c];
      hist[w * cols + c] = run;
      run += v;
    }
    out.totals[c] = run;
  }
  part.sync();
  for (long long q = static_cast<long long>(t0) * k + tid; q < static_cast<long long>(t1) * k;
       q += nt) {
    const int r = out.wrank[q];
    if (r >= 0) {
      const int w = (static_cast<int>(q / k) - t0) / tpw;
      out.wrank[q] = r + hist[w * cols + ids[q - q0]];
    }
  }
  for (int i = tid; out.dslot != nullptr && i < (t1 - t0) * W; i += nt) {
    const int t = t0 + i / W, d = i % W;
    const size_t at = static_cast<size_t>(t) * W + d;
    const int s = out.dslot[at];
    if (s >= 0) out.dslot[at] = s + hist[((t - t0) / tpw) * cols + E + d];
  }
  part.sync();
}

// The threads of `part` (low latency, T <= kScanChunk), once per block: the pair ranks of
// scan_chunk (wrank: rank among this source's pairs of the same expert, in (token, slot) order)
// from one bit per (expert, token) in `bits` (scan_chunk's hist: E * ceil(T / 32) words fit in its
// kWarps * (E + W)): a pair's rank is the number of earlier tokens with its expert, a popcount over
// at most 8 words. No warp-serial scan and no prefix over warps, so the ranks are ready in a
// fraction of scan_chunk's time. Holds only when no token lists an expert twice (then a token's bit
// would stand for two pairs; the second pair to set it finds it set): returns false, having
// written only `bits`, if one does; the caller then runs scan_chunk. Totals are not derived (the
// low-latency kernel's count blocks take them from histogram_for).
static_assert(kScanChunk / 32 <= kWarps, "pair_ranks_by_mask's bits fit in scan_chunk's hist");
__device__ inline bool pair_ranks_by_mask(const EpDispatchParams& p, const int* ids, uint32_t* bits,
                                          int32_t* wrank, const BlockPart& part) {
  __shared__ int s_repeated;
  const int T = p.T, k = p.k, words = (T + 31) / 32;
  const int tid = part.tid(), nt = part.n;
  const Divisor by_k(k);
  if (tid == 0) s_repeated = 0;
#pragma unroll 1
  for (int i = tid; i < p.E * words; i += nt) bits[i] = 0;
  part.sync();
#pragma unroll 1
  for (int q = tid; q < T * k; q += nt) {
    const int e = ids[q];
    if (e < 0) continue;
    const int t = by_k.div(q);
    const uint32_t bit = 1u << (t & 31);
    if (atomicOr(bits + e * words + (t >> 5), bit) & bit) s_repeated = 1;
  }
  part.sync();
  if (s_repeated) return false;  // uniform: read after the barrier, written only before it
#pragma unroll 1
  for (int q = tid; q < T * k; q += nt) {
    const int e = ids[q];
    int r = -1;
    if (e >= 0) {
      const int t = by_k.div(q);
      const uint32_t* row = bits + e * words;
      r = __popc(row[t >> 5] & ((1u << (t & 31)) - 1u));
#pragma unroll 1
      for (int w = 0; w < (t >> 5); ++w) r += __popc(row[w]);
    }
    wrank[q] = r;
  }
  part.sync();
  return true;
}

// ---- 2. counts ------------------------------------------------------------------------------

// All threads of the block: push this source's count message for destination d (`pairs` = its
// pair count for each of d's E/W experts, `tokens` = the tokens going to d, `bitmap` = which ones,
// p.count_bitmap_words words; see st_counts) into d's st_counts[par][me] as tagged words (tag: the
// epoch's low half). No fence and no signal behind them: one trip over the link instead of two
// (counts, fence, signal).
__device__ inline void send_counts(const dev::Context& ctx, const EpDispatchParams& p, int par,
                                   uint64_t epoch, int d, const int* pairs, int tokens,
                                   const int* bitmap) {
  const int W = ctx.world_size, me = ctx.rank, el = p.E_local;
  const int n = count_words(el, p.count_bitmap_words);
  uint64_t* dst = p.st_counts + (static_cast<size_t>(par) * W + me) * n;
#pragma unroll 1
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const uint32_t v = i < el    ? static_cast<uint32_t>(pairs[i])
                       : i == el ? static_cast<uint32_t>(tokens) | p.token_word_flags
                                 : static_cast<uint32_t>(bitmap[i - el - 1]);
    dev::put_tagged(ctx, dst + i, d, epoch_tag(epoch), v);
  }
}

// All threads of the block (low latency): destination d's count message (st_counts) into `c`
// (shared memory): a plain histogram of the (<= 256 x k) pairs [E/W pair counts], the token count,
// then the token bitmap (kLlTokenBitmapWords). Equal to the stable scan's totals, but ready in a
// fraction of the scan's time: the counts are what every receiver waits for, so the count blocks
// push them before they scan.
__device__ inline void histogram_for(const EpDispatchParams& p, const int* ids, int d, int* c) {
  const int el = p.E_local, k = p.k, lo = d * el;
#pragma unroll 1
  for (int i = threadIdx.x; i < count_words(el, p.count_bitmap_words); i += blockDim.x) c[i] = 0;
  __syncthreads();
#pragma unroll 1
  for (int t = threadIdx.x; t < p.T; t += blockDim.x) {
    bool any = false;
#pragma unroll 1
    for (int kk = 0; kk < k; ++kk) {
      const int e = ids[t * k + kk];
      if (e >= lo && e < lo + el) {
        atomicAdd(&c[e - lo], 1);
        any = true;
      }
    }
    if (any) {
      atomicAdd(&c[el], 1);
      atomicOr(reinterpret_cast<unsigned*>(c + el + 1 + (t >> 5)), 1u << (t & 31));
    }
  }
  __syncthreads();
}

// The token of a source's j-th row to this rank (low latency): the j-th set bit of its bitmap.
__device__ __forceinline__ int nth_token(const int* bitmap, int j) {
#pragma unroll 1
  for (int w = 0; w < kLlTokenBitmapWords; ++w) {
    const unsigned bits = static_cast<unsigned>(bitmap[w]);
    const int n = __popc(bits);
    if (j < n) return w * 32 + static_cast<int>(__fns(bits, 0, j + 1));
    j -= n;
  }
  return -1;  // not reached: j < the source's token count
}

struct RecvLayout {
  int* cnt;       // [W][count_words] count messages received from each source
  int* pos_base;  // [W][E_local] first output row of (source, local expert)
  int* tot;       // [E_local] rows per local expert
  int* off;       // [E_local + 1] exclusive prefix of tot
  int*
      nsrc;  // [W] tokens from each source (+ one int the throughput kernels use for their maximum)
};

// A source whose count message carries the other fp8 flag (in its token word) sends rows this call
// cannot read: reported by the layout step, and taken as sending nothing (its token word keeps the
// flag; nothing reads it but the layout step).
__device__ __forceinline__ bool fp8_flag_matches(const EpDispatchParams& p, uint32_t token_word) {
  return ((token_word & kCountFp8Bit) != 0) == (p.fp8 != 0);
}
__device__ __forceinline__ uint32_t fp8_mismatched_sources(const EpDispatchParams& p, int W,
                                                           const int* cnt) {
  const int cw = count_words(p.E_local, p.count_bitmap_words);
  uint32_t bad = 0;
#pragma unroll 1
  for (int s = 0; s < W; ++s)
    if (!fp8_flag_matches(p, static_cast<uint32_t>(cnt[s * cw + p.E_local]))) bad |= 1u << s;
  return bad;
}

// The threads of `part`: every source's count message into R.cnt and its row count into R.nsrc
// (shared memory; the thread that reads a source's token word writes it, 0 for a source whose
// call had the other fp8 flag: fp8_mismatched_sources). A thread's words are loaded two at a time
// and only those not yet tagged are waited for (one round trip per two words a thread reads).
// Ends with the part's barrier.
__device__ inline void receive_counts(const dev::Context& ctx, const EpDispatchParams& p, int par,
                                      uint64_t epoch, const RecvLayout& R, const BlockPart& part) {
  const int W = ctx.world_size, el = p.E_local;
  const int cw = count_words(el, p.count_bitmap_words);
  const int tid = part.tid(), nt = part.n;
  const uint64_t* src = p.st_counts + static_cast<size_t>(par) * W * cw;
  const Divisor by_cw(cw);
  constexpr int kBatch = 2;
  const uint32_t tag = epoch_tag(epoch);
#pragma unroll 1
  for (int base = 0; base < W * cw; base += kBatch * nt) {
    uint64_t v[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = base + b * nt + tid;
      if (i < W * cw) v[b] = dev::ld<Sem::relaxed, Scope::sys>(src + i);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = base + b * nt + tid;
      if (i >= W * cw) continue;
      const uint32_t w = static_cast<uint32_t>(v[b] >> 32) == tag
                             ? static_cast<uint32_t>(v[b])
                             : dev::wait_tagged(ctx, src + i, tag);
      R.cnt[i] = static_cast<int>(w);
      const int s = by_cw.div(i);
      if (i - s * cw == el)
        R.nsrc[s] = fp8_flag_matches(p, w) ? static_cast<int>(w & kCountTokenMask) : 0;
    }
  }
  part.sync();
}

// One thread of derive_recv_layout: the layout's totals, the masks of the sources that had the
// other fp8 flag (`bad`) or abandoned the call, and the report of the first problem. Out of line:
// the low-latency kernels sit at their register cap, and this runs once per call.
__device__ __noinline__ inline void publish_layout_totals(const EpDispatchParams& p, int me, int W,
                                                          uint64_t epoch, int rows, uint32_t bad,
                                                          uint32_t abandoned) {
  const int el = p.E_local;
  const int cap = static_cast<int>(p.capacity);
  int32_t* cb = p.counts_block;
  cb[cb_expert_offsets(el) + el] = min(rows, cap);
  cb[cb_total(el, W)] = min(rows, cap);
  cb[cb_fp8_mismatch(el, W)] = static_cast<int32_t>(bad);
  cb[cb_abandoned(el, W)] = static_cast<int32_t>(abandoned);
  // A rank that abandoned the call has thrown its own error already: it reports nothing (so ranks
  // that all abandon together stay quiet and usable), unless its peers had the other fp8 flag:
  // their rows then landed in its staging unread, and the operator must be replaced.
  if (p.abandon) {
    if (bad != 0)
      report_error(p.error, EpError::fp8_mismatch, me, epoch, -1, __ffs(bad) - 1, p.fp8 ? 0 : 1,
                   p.fp8);
    return;
  }
  if (abandoned != 0)
    report_error(p.error, EpError::dispatch_abandoned, me, epoch, -1, __ffs(abandoned) - 1, 0, 0);
  else if (bad != 0)
    report_error(p.error, EpError::fp8_mismatch, me, epoch, -1, __ffs(bad) - 1, p.fp8 ? 0 : 1,
                 p.fp8);
  else if (rows > p.capacity)
    report_error(p.error, EpError::capacity_exceeded, me, epoch, -1, -1, rows, p.capacity);
}

// The threads of `part`, once R.cnt and R.nsrc hold the counts (receive_counts): derive the
// receive layout into `R` (shared memory). With `write_outputs`, also publish it (counts block
// with the mismatch mask, ready flags of empty experts, the report of a mismatch (its lowest
// source) or else of an exceeded capacity, and pos_base to global memory when pos_base_out is
// given).
__device__ inline void derive_recv_layout(const dev::Context& ctx, const EpDispatchParams& p,
                                          uint64_t epoch, const RecvLayout& R, bool write_outputs,
                                          int32_t* pos_base_out, const BlockPart& part) {
  const int W = ctx.world_size, el = p.E_local;
  const int cw = count_words(el, p.count_bitmap_words);
  const int tid = part.tid(), lane = tid & 31, nt = part.n;
  const uint32_t bad = fp8_mismatched_sources(p, W, R.cnt);
#pragma unroll 1
  for (int e = tid; e < el; e += nt) {
    int t = 0;
#pragma unroll 1
    for (int s = 0; s < W; ++s) t += (bad >> s) & 1u ? 0 : R.cnt[s * cw + e];
    R.tot[e] = t;
  }
  part.sync();
  if (tid < 32) {
    int carry = 0;
#pragma unroll 1
    for (int base = 0; base < el; base += 32) {
      const int e = base + lane;
      const int v = e < el ? R.tot[e] : 0;
      int incl = v;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int n = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += n;
      }
      if (e < el) R.off[e] = carry + incl - v;
      carry += __shfl_sync(kFullMask, incl, 31);
    }
    if (lane == 0) R.off[el] = carry;
  }
  part.sync();
#pragma unroll 1
  for (int e = tid; e < el; e += nt) {
    int run = R.off[e];
#pragma unroll 1
    for (int s = 0; s < W; ++s) {
      R.pos_base[s * el + e] = run;
      run += (bad >> s) & 1u ? 0 : R.cnt[s * cw + e];
    }
  }
  part.sync();
  if (!write_outputs) return;
  int32_t* cb = p.counts_block;
  // Rows past the capacity are dropped (place_row) and the overflow is reported below: the
  // published layout stops at the capacity, so that a consumer reading an expert's rows
  // [offset, offset + count) stays inside the receive buffers.
  const int cap = static_cast<int>(p.capacity);  // <= INT_MAX (the plan checks it)
#pragma unroll 1
  for (int e = tid; e < el; e += nt) {
    const int off = min(R.off[e], cap);
    cb[cb_expert_counts(el) + e] = min(R.off[e] + R.tot[e], cap) - off;
    cb[cb_expert_offsets(el) + e] = off;
    // An expert without rows is published here (the others by their rows' arrivals), and only in
    // a hooked call: nothing else waits for it. GPU scope: the hook's readers are on this GPU (a
    // system-scope release waits for the fabric; a T = 1 call has ~120 empty experts).
    if (p.hooked && R.tot[e] == 0) dev::st<Sem::release, Scope::gpu>(p.ready + e, epoch);
  }
  if (tid < W) cb[cb_source_rows(el) + tid] = R.nsrc[tid];
  if (tid == 0) cb[cb_tokens(el, W)] = p.T;
  if (pos_base_out != nullptr)
#pragma unroll 1
    for (int i = tid; i < W * el; i += nt) pos_base_out[i] = R.pos_base[i];
  if (tid < 32) {  // (the whole first warp: W <= 32)
    const bool gone =
        tid < W && (static_cast<uint32_t>(R.cnt[tid * cw + el]) & kCountAbandonBit) != 0;
    const uint32_t abandoned = __ballot_sync(kFullMask, gone);
    if (tid == 0) publish_layout_totals(p, ctx.rank, W, epoch, R.off[el], bad, abandoned);
  }
}

// Both: wait for every source's counts, then derive (and with write_outputs publish) the layout.
__device__ inline void compute_recv_layout(const dev::Context& ctx, const EpDispatchParams& p,
                                           int par, uint64_t epoch, const RecvLayout& R,
                                           bool write_outputs, int32_t* pos_base_out,
                                           const BlockPart& part = BlockPart{}) {
  receive_counts(ctx, p, par, epoch, R, part);
  derive_recv_layout(ctx, p, epoch, R, write_outputs, pos_base_out, part);
}

// ---- 3. send ---------------------------------------------------------------------------------

// What the low-latency kernel knows of its tokens' pairs (shared memory, one chunk), for the
// metadata. Its rows need no layout: a token's row is staged at the token's own index on every
// destination (the count message's bitmap tells the receiver which indices hold rows).
struct LlLayout {
  const int32_t* wrank;
  const int32_t* ids;
  const EpDispatchParams* p;
  __device__ int expert(int t, int kk) const { return ids[t * p->k + kk]; }
  __device__ int wrank_of(int t, int kk, int) const { return wrank[t * p->k + kk]; }
};

// Throughput: global memory, relative to 256-token chunks, plus the chunks' prefix.
struct TpLayout {
  const EpDispatchParams* p;
  int W, cols;
  __device__ uint32_t dmask(int t) const { return p->home_dmask[t]; }
  __device__ int slot(int t, int d) const {
    return p->lay_chunk_base[(t / kScanChunk) * cols + p->E + d] +
           p->lay_dslot[static_cast<size_t>(t) * W + d];
  }
  __device__ int expert(int t, int kk) const {
    return load_expert(*p, static_cast<long long>(t) * p->k + kk);
  }
  __device__ int wrank_of(int t, int kk, int e) const {
    return p->lay_chunk_base[(t / kScanChunk) * cols + e] +
           p->lay_wrank[static_cast<size_t>(t) * p->k + kk];
  }
};

// Loads units [base, base + kBatch * n) of a bf16 row (16 channels = 32 bytes per unit): 16
// consecutive channels each (kHalves false: what fp8 quantization needs), or laid out as
// unit_halves says (kHalves true: for copies).
template <int kBatch, bool kHalves>
__device__ __forceinline__ void load_bf16_units(const char* row, int base, int n, int tid, int U,
                                                uint4 (&v)[kBatch][2]) {
#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
    const int u = base + b * n + tid;
    if (u < U) {
      if constexpr (kHalves) {
        const UnitHalves h = unit_halves(u, U);
        v[b][0] = ld_nc16(row + h.first);
        v[b][1] = ld_nc16(row + h.second);
      } else {
        v[b][0] = ld_nc16(row + static_cast<size_t>(u) * 32);
        v[b][1] = ld_nc16(row + static_cast<size_t>(u) * 32 + 16);
      }
    } else {
      v[b][0] = v[b][1] = make_uint4(0, 0, 0, 0);
    }
  }
}

// Entry i of token t's metadata row: [token, expert id x k, rank within (source, expert) x k,
// weight bits x k].
template <class Layout>
__device__ __forceinline__ int meta_value(const EpDispatchParams& p, const Layout& L, int t, int i) {
  const int k = p.k;
  if (i == 0) return t;
  if (i <= k) return L.expert(t, i - 1);
  if (i <= 2 * k) {
    const int kk = i - 1 - k;
    const int e = L.expert(t, kk);
    return e >= 0 ? L.wrank_of(t, kk, e) : -1;
  }
  return __float_as_int(__ldg(p.weights + static_cast<size_t>(t) * k + (i - 1 - 2 * k)));
}

// Token t's bf16 row in global memory.
__device__ __forceinline__ const char* token_row(const EpDispatchParams& p, int t) {
  return static_cast<const char*>(p.x) + static_cast<size_t>(t) * p.H * 2;
}

// The ranks token t goes to (low latency), from its expert ids in shared memory (load_ids).
__device__ __forceinline__ uint32_t token_dmask(const EpDispatchParams& p, const int* ids, int t) {
  const Divisor by_el(p.E_local);
  uint32_t m = 0;
#pragma unroll 1
  for (int kk = 0; kk < p.k; ++kk) {
    const int e = ids[t * p.k + kk];
    if (e >= 0) m |= 1u << by_el.div(e);
  }
  return m;
}

// The group sends token t to every destination in `dmask`, into the staging slot at index t:
// row (quantized when kFp8), scales, metadata, then (bf16) one flag per destination. kBatch units
// (16 channels) per thread are loaded before any is stored (into `v`; the caller may have loaded
// the first batch already, `loaded`, to have it in flight while the layout is derived); the first
// batch is in flight while the destinations are looked up.
template <bool kFp8, int kBatch, class BeforeMeta>
__device__ inline void send_token(const RowGroup& g, EpGroupScratch* sc, const dev::Context& ctx,
                                  const EpDispatchParams& p, uint64_t epoch, int parity, int t,
                                  uint32_t dmask, const LlLayout& L, BeforeMeta&& before_meta,
                                  uint4 (&v)[kBatch][2], bool loaded) {
  const int W = ctx.world_size, me = ctx.rank, k = p.k;
  if (dmask == 0) {  // uniform over the group
    before_meta();
    return;
  }
  const char* src = token_row(p, t);
  const int U = p.units;
  if (!loaded) load_bf16_units<kBatch, !kFp8>(src, 0, g.nthreads, g.tid, U, v);

  const size_t row = (static_cast<size_t>(parity) * W + me) * p.T_max + t;
  // Destinations in the order me + 1, me + 2, ..., me (scratch slot i holds rank (me + 1 + i) %
  // W), so that the ranks' first stores of a unit do not all go to rank 0 (4x H200: bf16 T = 128
  // -0.7 us, fp8 -0.2; docs/perf.md).
  const int rot = (me + 1) % W;
  const uint32_t full = W == 32 ? ~0u : (1u << W) - 1u;
  const uint32_t smask = rot == 0 ? dmask : ((dmask >> rot) | (dmask << (W - rot))) & full;
  if (g.tid < W && ((dmask >> g.tid) & 1u)) {
    const int d = g.tid;
    const int i = d >= rot ? d - rot : d - rot + W;
    sc->dst_row[i] = dev::symm_at(ctx, staged_row(p, row, kFp8), d);
    sc->dst_scales[i] = dev::symm_at(ctx, p.st_scales + row * p.groups, d);
    sc->dst_meta[i] = dev::symm_at(ctx, ll_meta_words(p.st_meta, row, k), d);
  }
  g.sync();
  for (int base = 0; base < U; base += kBatch * g.nthreads) {
    if (base > 0) load_bf16_units<kBatch, !kFp8>(src, base, g.nthreads, g.tid, U, v);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int u = base + b * g.nthreads + g.tid;
      if constexpr (kFp8) {
        // Units u..u+7 of a 128-channel group sit in 8 aligned lanes (u == lane mod 32).
        float amax = amax16(v[b]);
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 2));
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 4));
        const uint4 q = quantize16(v[b], fp8_inv_scale(amax));
        const float scale = fp8_scale(amax);
        if (u < U)
          for (uint32_t m = smask; m; m &= m - 1) {
            const int slot = __ffs(m) - 1;
            // Strong stores: the receiver reads these bytes and scales without a flag between.
            st_relaxed16(sc->dst_row[slot] + static_cast<size_t>(u) * 16, q);
            if ((g.tid & 7) == 0)
              dev::st<Sem::relaxed, Scope::sys>(
                  reinterpret_cast<uint32_t*>(sc->dst_scales[slot] + (u >> 3)),
                  __float_as_uint(scale));
          }
      } else {
        if (u < U) {
          const UnitHalves h = unit_halves(u, U);
          for (uint32_t m = smask; m; m &= m - 1) {
            char* dst = sc->dst_row[__ffs(m) - 1];
            st16(dst + h.first, v[b][0]);
            st16(dst + h.second, v[b][1]);
          }
        }
      }
    }
  }
  // Metadata after the row (the row needs only the slots; the pair ranks may still be coming):
  // [token, expert id x k, rank within (source, expert) x k, weight bits x k], each entry a
  // tagged word carrying the epoch; a warp group covers its 1 + 3k <= 97 entries in several steps.
  before_meta();
  const uint32_t tag = epoch_tag(epoch);
#pragma unroll 1
  for (int i = g.tid; i < 1 + 3 * k; i += g.nthreads) {
    const uint64_t word = dev::tagged_word(tag, static_cast<uint32_t>(meta_value(p, L, t, i)));
    for (uint32_t m = smask; m; m &= m - 1) {
      uint64_t* dst = sc->dst_meta[__ffs(m) - 1] + i;
      if constexpr (kFp8) {
        dev::st<Sem::relaxed, Scope::sys>(dst, word);  // read without a flag: single-copy atomic
      } else {
        *dst = word;  // the flag's release orders it
      }
    }
  }
  // An fp8 row needs no flag: its bytes, scales and tagged metadata each show their arrival, so
  // no fence waits here for the stores' round trip before a flag can follow them. A bf16 row can
  // hold any bits, so its receiver waits for the flag.
  if constexpr (!kFp8) {
    g.sync();  // every thread's stores happen before the release below
    if (g.tid < W && ((dmask >> g.tid) & 1u)) dev::notify(ctx, p.st_flags + row, g.tid, epoch);
  }
  g.sync();  // scratch is reused by the next token
}

// ---- 4. receive ------------------------------------------------------------------------------

__device__ __forceinline__ void arrive(const EpDispatchParams& p, int lexp, const int* tot,
                                       const int* off, uint64_t epoch) {
  const uint32_t old = dev::atomic_add<Sem::acq_rel, Scope::gpu>(p.arrived + lexp, 1u);
  if (old + 1u == static_cast<uint32_t>(tot[lexp])) {
    // The last pair of the expert this call: re-arm the counter (nobody adds to it again before
    // the next dispatch kernel), make the expert's count and offset visible with its rows (block 0
    // may not have written them yet), and publish the expert.
    dev::st<Sem::relaxed, Scope::gpu>(p.arrived + lexp, 0u);
    p.counts_block[cb_expert_counts(p.E_local) + lexp] = tot[lexp];
    p.counts_block[cb_expert_offsets(p.E_local) + lexp] = off[lexp];
    dev::st<Sem::release, Scope::sys>(p.ready + lexp, epoch);
  }
}

// Loads units of a staged row: fp8 = 16 bytes per unit, bf16 = 32 bytes (through L2: peers wrote
// it). fp8 rows may still be arriving (no flag orders them): strong loads, each checked by the
// caller (settle_fp8_units).
template <bool kFp8, int kBatch>
__device__ __forceinline__ void load_staged_units(const char* row, int base, int n, int tid, int U,
                                                  uint4 (&v)[kBatch][2]) {
#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
    const int u = base + b * n + tid;
    if (u < U) {
      if constexpr (kFp8) {
        v[b][0] = ld_relaxed16(row + static_cast<size_t>(u) * 16);
      } else {
        const UnitHalves h = unit_halves(u, U);  // bytes as send_token's threads took them
        v[b][0] = ld_cg16(row + h.first);
        v[b][1] = ld_cg16(row + h.second);
      }
    }
  }
}

// Thread kk < k of a group, once sc->meta holds the metadata of source s's row j (the j-th this
// rank receives from s; the combine handle's index): where
// the row's slot kk goes on this rank (sc->pos[kk], -1 = nowhere; sc->lexp[kk] its local expert),
// recorded with its source and in the combine handle of the row.
__device__ __forceinline__ void place_row(int kk, EpGroupScratch* sc, const EpDispatchParams& p,
                                          int me, int s, int j, const int* pos_base) {
  const int k = p.k, el = p.E_local;
  if (kk >= k) return;
  const int t = sc->meta[0];
  const int e = sc->meta[1 + kk];
  const int r = sc->meta[1 + k + kk];
  const int wbits = sc->meta[1 + 2 * k + kk];
  const int lexp = (e >= me * el && e < (me + 1) * el) ? e - me * el : -1;
  int pos = -1;
  if (lexp >= 0) {
    const long long at = static_cast<long long>(pos_base[s * el + lexp]) + r;
    if (at >= 0 && at < p.capacity) {  // else: reported by the layout step, row dropped
      pos = static_cast<int>(at);
      p.recv_src[pos] = EpPairSource{s, t, kk, __int_as_float(wbits)};
    }
  }
  sc->pos[kk] = pos;
  sc->lexp[kk] = lexp;
  int32_t* h = p.handle_rows + (static_cast<size_t>(s) * p.T_max + j) * handle_ints(k);
  h[1 + kk] = pos;
  h[1 + k + kk] = wbits;
  if (kk == 0) h[0] = t;
}

// fp8: every unit of a batch loaded (load_staged_units) is reloaded until none of its bytes is
// poisoned.
template <int kBatch>
__device__ __forceinline__ void settle_fp8_units(const dev::Context& ctx, const char* row, int base,
                                                 int n, int tid, int U, uint4 (&v)[kBatch][2]) {
#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
    const int u = base + b * n + tid;
    if (u < U && fp8_poisoned(v[b][0]))
      v[b][0] = wait_fp8_bytes(ctx, row + static_cast<size_t>(u) * 16);
  }
}

// Source s's j-th row to this rank (low latency; the combine handle's index j), staged at the
// index of s's token (LlLayout): its slot in the staging and where its bytes, scales and tagged
// metadata words are.
struct LlStagedRow {
  int s, j;
  size_t slot;
  uint64_t* meta_words;
  char* bytes;
  float* scales;
};

// Source s's j-th row to this rank, staged at the index t of s's token.
template <bool kFp8>
__device__ __forceinline__ LlStagedRow ll_staged_row(const EpDispatchParams& p, int W, int parity,
                                                     int s, int j, int t) {
  const size_t slot = (static_cast<size_t>(parity) * W + s) * p.T_max + t;
  return LlStagedRow{s,
                     j,
                     slot,
                     ll_meta_words(p.st_meta, slot, p.k),
                     staged_row(p, slot, kFp8),
                     p.st_scales + slot * p.groups};
}

// The rows group gidx of ngroups receives: u = j * W + s interleaves the sources, so that all of
// them progress together in the order they send, and group gidx takes rows gidx, gidx + ngroups,
// .... receive(row) runs for each row that exists (uniform over the group).
template <bool kFp8, class Receive>
__device__ __forceinline__ void for_each_staged_row(const EpDispatchParams& p, int W, int parity,
                                                    const int* counts, const int* nsrc, int gidx,
                                                    int ngroups, Receive&& receive) {
  const int cw = count_words(p.E_local, p.count_bitmap_words);
  int most = 0;
#pragma unroll 1
  for (int s = 0; s < W; ++s) most = max(most, nsrc[s]);
  const long long n_units = static_cast<long long>(most) * W;
  const Divisor by_W(W);
#pragma unroll 1
  for (long long u = gidx; u < n_units; u += ngroups) {
    const int j = by_W.div(static_cast<int>(u)), s = static_cast<int>(u) - j * W;
    if (j >= nsrc[s]) continue;
    receive(ll_staged_row<kFp8>(p, W, parity, s, j, nth_token(counts + s * cw + p.E_local + 1, j)));
  }
}

// One thread, until row r has landed: bf16 its flag; fp8 its first metadata word, which the
// sender stores after the whole row, so the row has mostly landed when it shows (what has not is
// still poisoned or untagged, and waited for where it is read).
template <bool kFp8>
__device__ __forceinline__ void wait_staged_row(const dev::Context& ctx, const EpDispatchParams& p,
                                                const LlStagedRow& r, uint64_t epoch) {
  if constexpr (kFp8)
    wait_meta_word(ctx, r.meta_words, epoch_tag(epoch));
  else
    dev::wait(ctx, p.st_flags + r.slot, Cmp::ge, epoch);
}

// The group loads a received row's 1 + 3k metadata words into sc->meta. fp8: tagged words, each
// waited for while it still carries another epoch's tag (they are cleared at the row's end,
// finish_fp8_row); bf16: they landed before the row's flag, and are cleared as they are read.
template <bool kFp8>
__device__ __forceinline__ void load_row_meta(const RowGroup& g, EpGroupScratch* sc,
                                              const dev::Context& ctx, uint64_t* meta_words, int k,
                                              uint32_t tag) {
#pragma unroll 1
  for (int i = g.tid; i < 1 + 3 * k; i += g.nthreads) {
    if constexpr (kFp8) {
      const uint64_t word = dev::ld<Sem::relaxed, Scope::sys>(meta_words + i);
      sc->meta[i] = static_cast<int32_t>(static_cast<uint32_t>(word >> 32) == tag
                                             ? static_cast<uint32_t>(word)
                                             : wait_meta_word(ctx, meta_words + i, tag));
    } else {
      sc->meta[i] = static_cast<int32_t>(__ldcg(meta_words + i));
      meta_words[i] = 0;
    }
  }
}

// fp8, once the row's bytes are placed or on their way: its scales (the thread's first one,
// scale0, loaded with the row) into every copy's recv_scales, then the staged scales poisoned and
// the metadata words cleared for the slot's next use (epoch_tag: no tagged word outlives its
// call), last, off the row's chain of loads and stores.
__device__ __forceinline__ void finish_fp8_row(const RowGroup& g, const EpGroupScratch* sc,
                                               const dev::Context& ctx, const EpDispatchParams& p,
                                               const LlStagedRow& r, float scale0) {
#pragma unroll 1
  for (int gi = g.tid; gi < p.groups; gi += g.nthreads) {
    const float f =
        arrived_scale(ctx, r.scales + gi, gi == g.tid ? scale0 : ld_scale(r.scales + gi));
    r.scales[gi] = __uint_as_float(kScalePoison);
#pragma unroll 1
    for (int kk = 0; kk < p.k; ++kk) {
      const int pos = sc->pos[kk];
      if (pos >= 0) p.recv_scales[static_cast<size_t>(pos) * p.groups + gi] = f;
    }
  }
#pragma unroll 1
  for (int i = g.tid; i < 1 + 3 * p.k; i += g.nthreads) r.meta_words[i] = 0;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// receive_rows for a group with a row buffer in shared memory (p.tma_bytes): per row, one thread
// waits for it (bf16: its flag; fp8: its first metadata word) and bulk-loads the whole row into
// the buffer while the group loads the metadata (and scales) and places the row; for fp8 the
// group then checks the buffer for bytes that had not landed yet (still poisoned: waited for in
// global memory and patched into the buffer) and poisons the staged row again; one thread
// bulk-stores the buffer once per local expert. The chain after the wait is one load round (and,
// fp8, a shared-memory pass), against two load and two store rounds through registers; nothing
// waits for the copies until the group's last row (or, hooked, until the row's arrivals count it).
//
// fp8: the bulk load races with the sender's stores as the register path's loads do; every byte
// is either the poison or its final value, and a unit that reads poisoned is waited for with
// strong loads. The staged bytes are then poisoned again by ordinary stores once the mbarrier
// reported the bulk load complete. The PTX ISA ("Async Proxy") follows a bulk copy's completion
// with an implicit generic-async proxy fence, worded for its result becoming visible; the
// explicit fence before the stores states the order for its read as well (no measured cost).
//
// The rows come from for_each_row(receive) (for_each_staged_row); before_place() runs before the
// group first reads the layout (pos_base, tot, off), which receive_rows_early_ll may still be
// deriving while its groups wait for and load their rows.
template <bool kFp8, class ForEachRow, class BeforePlace>
__device__ inline void receive_rows_tma_ll(const RowGroup& g, EpGroupScratch* sc,
                                           const dev::Context& ctx, const EpDispatchParams& p,
                                           uint64_t epoch, const int* pos_base, const int* tot,
                                           const int* off, char* buf, ForEachRow&& for_each_row,
                                           BeforePlace&& before_place) {
  const int me = ctx.rank, k = p.k;
  const uint32_t row_bytes = static_cast<uint32_t>(p.H) * (kFp8 ? 1u : 2u);
  char* out = static_cast<char*>(p.recv_x);
  const uint32_t tag = epoch_tag(epoch);
  uint32_t phase = 0;
  if (g.tid == 0) dev::mbarrier_init(&sc->rx_bar, 1);
  g.sync();
  auto receive = [&](const LlStagedRow& r) {
    const uint64_t t0 = p.trace && g.tid == 0 ? dev::detail::globaltimer_ns() : 0;
    if (g.tid == 0) {
      wait_staged_row<kFp8>(ctx, p, r, epoch);
      dev::bulk_wait_read<0>();  // the previous row's copies have read the buffer
      dev::fence_proxy_async_global();
      dev::mbarrier_arrive_expect_tx(&sc->rx_bar, row_bytes);
      dev::bulk_load(buf, r.bytes, row_bytes, &sc->rx_bar);
    }
    g.sync();
    float scale0 = 0.f;
    if constexpr (kFp8)
      if (g.tid < p.groups) scale0 = ld_scale(r.scales + g.tid);
    load_row_meta<kFp8>(g, sc, ctx, r.meta_words, k, tag);
    g.sync();
    const uint64_t t1 = p.trace && g.tid == 0 ? dev::detail::globaltimer_ns() : 0;
    before_place();
    // (the wait for the layout is not the row's: left out of tr_wait_ns)
    const uint64_t t2 = p.trace && g.tid == 0 ? dev::detail::globaltimer_ns() : 0;
    place_row(g.tid, sc, p, me, r.s, r.j, pos_base);
    dev::mbarrier_wait(ctx, &sc->rx_bar, phase);
    phase ^= 1u;
    if (p.trace && g.tid == 0) {
      trace_add(p.trace, tr_wait_ns, dev::detail::globaltimer_ns() - t0 - (t2 - t1));
      trace_add(p.trace, tr_rows, 1);
    }
    if constexpr (kFp8) {
      dev::fence_proxy_async_global();  // the bulk load's read, before the re-poisoning writes
      bool patched = false;
#pragma unroll 1
      for (int uu = g.tid; uu < p.units; uu += g.nthreads) {
        uint4* unit = reinterpret_cast<uint4*>(buf + static_cast<size_t>(uu) * 16);
        char* staged = r.bytes + static_cast<size_t>(uu) * 16;
        if (fp8_poisoned(*unit)) {
          *unit = wait_fp8_bytes(ctx, staged);
          patched = true;
        }
        st16(staged, make_uint4(kFp8Poison4, kFp8Poison4, kFp8Poison4, kFp8Poison4));
      }
      if (patched) dev::fence_proxy_async_shared();  // the patches, before the bulk stores
    }
    g.sync();  // the buffer is final; sc->pos is set
    if (g.tid == 0) {
#pragma unroll 1
      for (int kk = 0; kk < k; ++kk)
        if (sc->pos[kk] >= 0)
          dev::bulk_store(out + static_cast<size_t>(sc->pos[kk]) * row_bytes, buf, row_bytes);
      dev::bulk_commit();
    }
    if constexpr (kFp8) finish_fp8_row(g, sc, ctx, p, r, scale0);
    if (p.hooked && g.tid == 0) {  // the row's copies are complete before its arrivals count it
      dev::bulk_wait<0>();
      dev::fence_proxy_async_global();
    }
    g.sync();
    if (p.hooked && g.tid < k && sc->lexp[g.tid] >= 0) arrive(p, sc->lexp[g.tid], tot, off, epoch);
  };
  for_each_row(receive);
  // The copies have read the buffer before the block may exit; their writes are complete when
  // the kernel is (as for any kernel's TMA stores), which is all a caller after it needs.
  if (g.tid == 0) dev::bulk_wait_read<0>();
}

// The low-latency receive with the layout off the rows' chain: every receiving thread (`receivers`:
// rpb groups of g.nthreads from group first_rg on) waits for its words of the count messages
// (one word, one round trip, in a typical call: ~300 words, 384 threads); then the block's first
// receiving group derives the receive layout alone and arrives at kLayoutReadyBarrier, while the
// other groups look for their rows, wait for them and load them with their metadata, and wait at
// the barrier only to place them. So a row that has landed by the time the layout is known is
// placed at once instead of being looked for, polled and loaded after it. The layout group takes
// the last rows of the order (none where the other groups have a row each).
template <bool kFp8>
__device__ inline void receive_rows_early_ll(const RowGroup& g, EpGroupScratch* sc,
                                             const dev::Context& ctx, const EpDispatchParams& p,
                                             uint64_t epoch, int parity, const RecvLayout& R,
                                             const BlockPart& receivers, bool layout_group,
                                             int ridx, int ngroups, char* buf) {
  receive_counts(ctx, p, parity, epoch, R, receivers);
  if (layout_group) {
    derive_recv_layout(ctx, p, epoch, R, blockIdx.x == 0, nullptr,
                       BlockPart{static_cast<int>(threadIdx.x) - g.tid, g.nthreads, 1 + g.index});
    if (g.tid == 0) trace_stamp(p.trace, tr_counts);
    named_arrive(kLayoutReadyBarrier, receivers.n);
  }
  bool layout_known = layout_group;
  auto wait_layout = [&] {
    if (!layout_known) named_sync(kLayoutReadyBarrier, receivers.n);
    layout_known = true;
  };
  receive_rows_tma_ll<kFp8>(
      g, sc, ctx, p, epoch, R.pos_base, R.tot, R.off, buf,
      [&](auto&& receive) {
        for_each_staged_row<kFp8>(p, ctx.world_size, parity, R.cnt, R.nsrc, ridx, ngroups, receive);
      },
      wait_layout);
  wait_layout();  // every receiving thread passes the barrier once
}
#endif

// The low-latency receive: the groups share the received rows (for_each_staged_row). Per row:
// wait for it (bf16: its flag; fp8: its first tagged metadata word, then any unit, scale or word
// still poisoned or untagged), with the row's first batch, its metadata and scales loaded
// together; place one copy per local expert of the token; poison the staged fp8 bytes and scales
// again for the slot's next use. Groups with a row buffer take receive_rows_tma_ll instead. (A
// kernel-wide ticket instead of the fixed stride balanced groups that had several rows each, at a
// global atomic round trip per row; the split kernel now has a group per row instead.)
//
// The path through registers is not inlined: where a row buffer fits (sm_90 at the usual sizes) it
// is never taken, and its code would sit in the kernel's instruction stream beside the path that
// is (every launch fetches the kernel's code afresh; docs/perf.md, twenty-second pass). Where it
// is taken (below sm_90, or rows too wide for a buffer per group) it costs one call per kernel.
template <bool kFp8, int kBatch>
__device__ __noinline__ void receive_rows_regs(const RowGroup& g, EpGroupScratch* sc,
                                               const dev::Context& ctx, const EpDispatchParams& p,
                                               uint64_t epoch, int parity, const int* counts,
                                               const int* pos_base, const int* tot, const int* off,
                                               const int* nsrc, int gidx, int ngroups);

template <bool kFp8, int kBatch>
__device__ inline void receive_rows(const RowGroup& g, EpGroupScratch* sc, const dev::Context& ctx,
                                    const EpDispatchParams& p, uint64_t epoch, int parity,
                                    const int* counts, const int* pos_base, const int* tot,
                                    const int* off, const int* nsrc, int gidx, int ngroups,
                                    char* rx_buf) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (rx_buf != nullptr) {
    receive_rows_tma_ll<kFp8>(
        g, sc, ctx, p, epoch, pos_base, tot, off, rx_buf,
        [&](auto&& receive) {
          for_each_staged_row<kFp8>(p, ctx.world_size, parity, counts, nsrc, gidx, ngroups,
                                    receive);
        },
        [] {});
    return;
  }
#endif
  receive_rows_regs<kFp8, kBatch>(g, sc, ctx, p, epoch, parity, counts, pos_base, tot, off, nsrc,
                                  gidx, ngroups);
}

template <bool kFp8, int kBatch>
__device__ __noinline__ void receive_rows_regs(const RowGroup& g, EpGroupScratch* sc,
                                               const dev::Context& ctx, const EpDispatchParams& p,
                                               uint64_t epoch, int parity, const int* counts,
                                               const int* pos_base, const int* tot, const int* off,
                                               const int* nsrc, int gidx, int ngroups) {
  const int W = ctx.world_size, me = ctx.rank, k = p.k;
  const size_t out_row = kFp8 ? static_cast<size_t>(p.H) : static_cast<size_t>(p.H) * 2;
  char* out = static_cast<char*>(p.recv_x);
  const int U = p.units;
  const uint32_t tag = epoch_tag(epoch);
  auto receive = [&](const LlStagedRow& r) {
    uint4 v[kBatch][2];
    float scale0 = 0.f;
    const uint64_t t0 = p.trace && g.tid == 0 ? dev::detail::globaltimer_ns() : 0;
    // One thread waits for the row; then the row's first batch, its metadata (and scales) load
    // together: one round trip before the stores.
    if (g.tid == 0) wait_staged_row<kFp8>(ctx, p, r, epoch);
    g.sync();
    load_staged_units<kFp8, kBatch>(r.bytes, 0, g.nthreads, g.tid, U, v);
    if constexpr (kFp8)
      if (g.tid < p.groups) scale0 = ld_scale(r.scales + g.tid);
    load_row_meta<kFp8>(g, sc, ctx, r.meta_words, k, tag);
    if constexpr (kFp8) settle_fp8_units<kBatch>(ctx, r.bytes, 0, g.nthreads, g.tid, U, v);
    if (p.trace && g.tid == 0) {
      trace_add(p.trace, tr_wait_ns, dev::detail::globaltimer_ns() - t0);
      trace_add(p.trace, tr_rows, 1);
    }
    g.sync();
    place_row(g.tid, sc, p, me, r.s, r.j, pos_base);
    g.sync();
    for (int base = 0; base < U; base += kBatch * g.nthreads) {
      if (base > 0) {
        load_staged_units<kFp8, kBatch>(r.bytes, base, g.nthreads, g.tid, U, v);
        if constexpr (kFp8) settle_fp8_units<kBatch>(ctx, r.bytes, base, g.nthreads, g.tid, U, v);
      }
      for (int kk = 0; kk < k; ++kk) {
        const int pos = sc->pos[kk];
        if (pos < 0) continue;
        char* dst = out + static_cast<size_t>(pos) * out_row;
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int uu = base + b * g.nthreads + g.tid;
          if (uu < U) {
            if constexpr (kFp8) {
              st16(dst + static_cast<size_t>(uu) * 16, v[b][0]);
            } else {
              const UnitHalves h = unit_halves(uu, U);
              st16(dst + h.first, v[b][0]);
              st16(dst + h.second, v[b][1]);
            }
          }
        }
      }
      if constexpr (kFp8) {  // the units this thread read, poisoned again for the slot's next use
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int uu = base + b * g.nthreads + g.tid;
          if (uu < U)
            st16(r.bytes + static_cast<size_t>(uu) * 16,
                 make_uint4(kFp8Poison4, kFp8Poison4, kFp8Poison4, kFp8Poison4));
        }
      }
    }
    if constexpr (kFp8) finish_fp8_row(g, sc, ctx, p, r, scale0);
    g.sync();  // the whole row is in place before its experts' arrivals count it
    // Only a hooked call counts arrivals: the atomics are on every row's tail, and without a hook
    // the expert counts and offsets come from the layout step (block 0) alone.
    if (p.hooked && g.tid < k && sc->lexp[g.tid] >= 0) arrive(p, sc->lexp[g.tid], tot, off, epoch);
  };
  for_each_staged_row<kFp8>(p, W, parity, counts, nsrc, gidx, ngroups, receive);
}

// ---- throughput send and receive by TMA ------------------------------------------------------
// (sm_90 only: the host refuses throughput mode below compute capability 9.0.)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
//
// Each warp owns one shared-memory slot and lets its lane 0 move whole rows with bulk copies, so
// a warp keeps a full row (or, sending, a row per destination) in flight instead of the 4 KiB its
// registers hold, and the links and HBM see few, large transactions. A row's completion is
// checked one row later (the bulk group of the previous row), so no warp waits for its own
// stores' round trip.

// Layout of a sending warp's slot: bf16 row (with fp8, quantized in place into its first H bytes)
// | fp8 scales | metadata, each on kTmaAlign bytes (tma_send_slot_layout).
struct TmaSendSlot {
  char* bf16;
  char* fp8;
  float* scales;
  int32_t* meta;
};
template <bool kFp8>
__device__ __forceinline__ TmaSendSlot tma_send_slot(char* slot, int H, int k) {
  const TmaSendSlotLayout l = tma_send_slot_layout(H, k, kFp8);
  TmaSendSlot t;
  t.bf16 = slot;
  t.fp8 = slot;
  t.scales = reinterpret_cast<float*>(slot + l.scales);
  t.meta = reinterpret_cast<int32_t*>(slot + l.meta);
  return t;
}

// Flags of the throughput dispatch. A row's flag must be a release at system scope, and a
// release (a fence that waits for the thread's memory traffic) cost a sending warp a third of its
// time per token when every warp raised its own flags. So a sending warp queues the
// (destination, slot) of each token whose bulk stores are complete (lane d holds the token's slot
// on destination d, -1 = none), and one flag warp per block raises everything queued with one
// fence: the sending warp's wait for completion, its proxy fence and the queue's release / acquire
// in shared memory order the data before that fence, and the fence before the flag stores.
__device__ inline void queue_flags(FlagQueue* q, int lane, int slot_on_lane_dest) {
  const bool has = slot_on_lane_dest >= 0;
  const unsigned m = __ballot_sync(kFullMask, has);
  if (m == 0) return;
  const uint32_t n = static_cast<uint32_t>(__popc(m));
  uint32_t tail = 0;
  if (lane == 0) {
    tail = q->tail;  // only this warp writes it
    while (tail + n - dev::ld<Sem::acquire, Scope::cta>(&q->head) > kFlagRing) {
    }
  }
  tail = __shfl_sync(kFullMask, tail, 0);
  if (has)
    q->ring[(tail + static_cast<uint32_t>(__popc(m & lanemask_lt()))) % kFlagRing] =
        (static_cast<uint32_t>(lane) << 24) | static_cast<uint32_t>(slot_on_lane_dest);
  __syncwarp();
  if (lane == 0) dev::st<Sem::release, Scope::cta>(&q->tail, tail + n);
}

// The flag warp of a sending block: lane w serves the queue of sending warp w < senders, until
// every sending warp is done and its queue empty.
__device__ inline void raise_flags(const dev::Context& ctx, const EpDispatchParams& p,
                                   uint64_t epoch, FlagQueue* queues, int senders) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  FlagQueue* q = lane < senders ? queues + lane : nullptr;
  uint64_t* flags = p.st_flags + static_cast<size_t>(ctx.rank) * p.T_max;
  uint32_t head = 0;
  for (;;) {
    bool done = true;
    uint32_t tail = head;
    if (q != nullptr) {
      done = dev::ld<Sem::acquire, Scope::cta>(&q->done) != 0u;  // before tail: done is set last
      tail = dev::ld<Sem::acquire, Scope::cta>(&q->tail);
    }
    const bool work = tail != head;
    if (__all_sync(kFullMask, done && !work)) break;
    if (!__any_sync(kFullMask, work)) continue;
    dev::fence<Scope::sys>();  // releases every queued row at once
    for (; head != tail; ++head) {
      const uint32_t e = q->ring[head % kFlagRing];
      dev::st<Sem::relaxed, Scope::sys>(
          dev::symm_at(ctx, flags + (e & 0xffffffu), static_cast<int>(e >> 24)), epoch);
    }
    if (q != nullptr) dev::st<Sem::release, Scope::cta>(&q->head, head);
  }
}

// One warp sends the tokens it takes from the ticket: lane 0 bulk-loads the bf16 row; the lanes
// write the metadata (and quantize the row for fp8) into the slot; lane 0 bulk-stores row, scales
// and metadata into every destination's staging slot; one token later, once those stores are
// complete, the token's (destination, slot) pairs go to the block's flag warp (queue_flags).
template <bool kFp8>
__device__ inline void send_rows_tma(const dev::Context& ctx, const EpDispatchParams& p,
                                     const TpLayout& L, char* slot_mem, uint64_t* bar,
                                     FlagQueue* q) {
  const int lane = static_cast<int>(threadIdx.x & 31), W = ctx.world_size, me = ctx.rank;
  const int k = p.k, mi = meta_ints(k);
  const uint32_t bf16_bytes = 2u * p.H;
  const uint32_t row_bytes = kFp8 ? static_cast<uint32_t>(p.H) : bf16_bytes;
  const uint32_t scale_bytes = static_cast<uint32_t>(p.groups) * 4u;
  const bool scales_bulk = (scale_bytes & 15u) == 0;  // else the lanes store them
  const TmaSendSlot sl = tma_send_slot<kFp8>(slot_mem, p.H, k);
  uint32_t phase = 0;
  int pending_slot = -1;  // lane d < W: staging slot on d of the token whose flag is pending
  if (lane == 0) dev::mbarrier_init(bar, 1);
  __syncwarp();
  TraceLap lap(p.trace);
  for (;;) {
    const int t = static_cast<int>(take_ticket(&p.state->send_ticket, lane));
    if (t >= p.T) break;
    const uint32_t dmask = L.dmask(t);
    if (dmask == 0) continue;  // uniform over the warp
    lap.lap(tr_send_queue_ns);
    if (lane == 0) {
      dev::bulk_wait_read<0>();  // the previous token's stores have read the slot
      dev::mbarrier_arrive_expect_tx(bar, bf16_bytes);
      dev::bulk_load(sl.bf16, static_cast<const char*>(p.x) + static_cast<size_t>(t) * bf16_bytes,
                     bf16_bytes, bar);
    }
    __syncwarp();  // the slot's other areas are free too
    for (int i = lane; i < mi; i += 32) sl.meta[i] = i < 1 + 3 * k ? meta_value(p, L, t, i) : 0;
    const int dslot = lane < W && ((dmask >> lane) & 1u) ? L.slot(t, lane) : -1;
    char* my_row = nullptr;
    int32_t* my_meta = nullptr;
    float* my_scales = nullptr;
    if (dslot >= 0) {
      const size_t row = static_cast<size_t>(me) * p.T_max + dslot;
      my_row = dev::symm_at(ctx, staged_row(p, row, false), lane);
      my_meta = dev::symm_at(ctx, p.st_meta + row * mi, lane);
      my_scales = dev::symm_at(ctx, p.st_scales + row * p.groups, lane);
    }
    dev::mbarrier_wait(ctx, bar, phase);  // every lane: the bf16 row is in the slot
    phase ^= 1u;
    lap.lap(tr_send_load_ns);
    if constexpr (kFp8) {
      // Unit u (16 channels) by lane u % 32: the 8 lanes of a 128-channel group are aligned. In
      // place: unit u's 16 fp8 bytes go to [16u, 16u + 16), bf16 bytes that earlier iterations
      // read, or (first iteration) this one, whose reads all precede the __syncwarp.
      for (int base = 0; base < p.units; base += 32) {
        const int u = base + lane;
        uint4 v[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
        if (u < p.units) {
          v[0] = *reinterpret_cast<const uint4*>(sl.bf16 + static_cast<size_t>(u) * 32);
          v[1] = *reinterpret_cast<const uint4*>(sl.bf16 + static_cast<size_t>(u) * 32 + 16);
        }
        __syncwarp();
        float amax = amax16(v);
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 2));
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 4));
        if (u < p.units) {
          *reinterpret_cast<uint4*>(sl.fp8 + static_cast<size_t>(u) * 16) =
              quantize16(v, fp8_inv_scale(amax));
          if ((lane & 7) == 0) sl.scales[u >> 3] = fp8_scale(amax);
        }
      }
    }
    dev::fence_proxy_async_shared();  // this lane's shared-memory writes, before the bulk stores
    __syncwarp();
    lap.lap(tr_send_prep_ns);
    // Destinations in the order me + 1, me + 2, ..., me, so the ranks' first stores of a token
    // go to different peers.
    for (int i = 0; i < W; ++i) {
      const int d = (me + 1 + i) % W;
      if (((dmask >> d) & 1u) == 0) continue;  // uniform over the warp
      char* drow = reinterpret_cast<char*>(__shfl_sync(kFullMask, reinterpret_cast<uintptr_t>(my_row), d));
      int32_t* dmeta = reinterpret_cast<int32_t*>(
          __shfl_sync(kFullMask, reinterpret_cast<uintptr_t>(my_meta), d));
      float* dscales = reinterpret_cast<float*>(
          __shfl_sync(kFullMask, reinterpret_cast<uintptr_t>(my_scales), d));
      if (lane == 0) {
        dev::bulk_store(drow, kFp8 ? sl.fp8 : sl.bf16, row_bytes);
        dev::bulk_store(dmeta, sl.meta, static_cast<uint32_t>(mi) * 4u);
        if (kFp8 && scales_bulk) dev::bulk_store(dscales, sl.scales, scale_bytes);
      }
      if (kFp8 && !scales_bulk)
        for (int gi = lane; gi < p.groups; gi += 32) dscales[gi] = sl.scales[gi];
    }
    if (lane == 0) {
      dev::bulk_commit();
      dev::bulk_wait<1>();  // the previous token's bulk group is complete
      dev::fence_proxy_async_global();
    }
    __syncwarp();
    lap.lap(tr_send_store_ns);
    queue_flags(q, lane, pending_slot);
    pending_slot = dslot;
  }
  if (lane == 0) {
    dev::bulk_wait<0>();
    dev::fence_proxy_async_global();
  }
  __syncwarp();
  queue_flags(q, lane, pending_slot);
  if (lane == 0) dev::st<Sem::release, Scope::cta>(&q->done, 1u);
}

// One warp receives the rows it takes from the ticket, in (slot j, source s) order: lane 0
// waits for the flag and bulk-loads the staged row while the lanes read its metadata and place it;
// lane 0 bulk-stores one copy per local expert of the token (fp8 scales: the lanes). Nothing waits
// for the copies to complete until the warp's last row: the experts are published when the whole
// kernel has finished (finish_dispatch), which is what lets a warp keep its slot busy. (Per-row
// expert arrivals, as the low-latency kernel counts them, cost a third of a row's time here.)
template <bool kFp8>
__device__ inline void receive_rows_tma(const dev::Context& ctx, const EpDispatchParams& p,
                                        uint64_t epoch, const int* pos_base, const int* nsrc,
                                        char* slot, uint64_t* bar, EpGroupScratch* sc) {
  const int lane = static_cast<int>(threadIdx.x & 31), W = ctx.world_size, me = ctx.rank;
  const int k = p.k, mi = meta_ints(k);
  const uint32_t row_bytes = kFp8 ? static_cast<uint32_t>(p.H) : 2u * p.H;
  char* out = static_cast<char*>(p.recv_x);
  uint32_t phase = 0;
  if (lane == 0) dev::mbarrier_init(bar, 1);
  __syncwarp();
  const long long n_units = static_cast<long long>(nsrc[W]) * W;
  TraceLap lap(p.trace);
  for (;;) {
    const long long u = take_ticket(&p.state->recv_ticket, lane);
    if (u >= n_units) break;
    const int j = static_cast<int>(u / W), s = static_cast<int>(u % W);
    if (j >= nsrc[s]) continue;  // uniform over the warp
    const size_t row = static_cast<size_t>(s) * p.T_max + j;
    if (lane == 0) {
      lap.lap(tr_recv_next_ns);
      dev::wait(ctx, p.st_flags + row, Cmp::ge, epoch);
      lap.lap(tr_wait_ns);
      trace_add(p.trace, tr_rows, 1);
      dev::fence_proxy_async_global();  // the bulk load sees what the flag released
      dev::bulk_wait_read<0>();         // the previous row's stores have read the slot
      dev::mbarrier_arrive_expect_tx(bar, row_bytes);
      dev::bulk_load(slot, staged_row(p, row, false), row_bytes, bar);
    }
    __syncwarp();
    for (int i = lane; i < 1 + 3 * k; i += 32) sc->meta[i] = __ldcg(p.st_meta + row * mi + i);
    __syncwarp();
    place_row(lane, sc, p, me, s, j, pos_base);
    __syncwarp();
    lap.lap(tr_recv_place_ns);
    if constexpr (kFp8) {
      for (int gi = lane; gi < p.groups; gi += 32) {
        const float f = __ldcg(p.st_scales + row * p.groups + gi);
        for (int kk = 0; kk < k; ++kk) {
          const int pos = sc->pos[kk];
          if (pos >= 0) p.recv_scales[static_cast<size_t>(pos) * p.groups + gi] = f;
        }
      }
    }
    if (lane == 0) {
      dev::mbarrier_wait(ctx, bar, phase);
      lap.lap(tr_recv_load_ns);
      for (int kk = 0; kk < k; ++kk)
        if (sc->pos[kk] >= 0)
          dev::bulk_store(out + static_cast<size_t>(sc->pos[kk]) * row_bytes, slot, row_bytes);
      dev::bulk_commit();
      lap.lap(tr_recv_store_ns);
    }
    phase ^= 1u;
    __syncwarp();  // sc is reused by the next row
  }
  if (lane == 0) {
    dev::bulk_wait<0>();              // every copy is complete ...
    dev::fence_proxy_async_global();  // ... and ordered before the block's finish ticket
  }
  __syncwarp();
}

#endif  // sm_90

// The throughput data kernel's end: the last block to finish publishes every local expert (its
// rows are all in place: every block arrived here after its copies completed), re-arms the
// tickets and the arrival count, then advances the epoch.
__device__ inline void finish_dispatch(const EpDispatchParams& p, uint64_t epoch) {
  __shared__ int s_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    const uint32_t old = dev::atomic_add<Sem::acq_rel, Scope::gpu>(&p.state->dispatch_arrivals, 1u);
    s_last = old + 1u == gridDim.x;
  }
  __syncthreads();
  if (!s_last) return;
  // GPU scope: the rows were placed by this GPU's threads (the peers' staging writes were
  // acquired at system scope by whoever placed them), and the readers of `ready` are on this GPU.
  // A system-scope release would wait for the fabric on the kernel's last step.
  for (int e = threadIdx.x; e < p.E_local; e += blockDim.x)
    dev::st<Sem::release, Scope::gpu>(p.ready + e, epoch);
  __syncthreads();
  if (threadIdx.x == 0) {
    // Every block finished: nobody takes tickets of this call any more.
    dev::st<Sem::relaxed, Scope::gpu>(&p.state->send_ticket, 0u);
    dev::st<Sem::relaxed, Scope::gpu>(&p.state->recv_ticket, 0u);
    dev::st<Sem::relaxed, Scope::gpu>(&p.state->dispatch_arrivals, 0u);
    dev::st<Sem::relaxed, Scope::gpu>(&p.state->dispatch_epoch, epoch + 1);
  }
}

// Last block of a grid to finish advances the epoch (all blocks read it at their start).
// (`ticket`, if given, is re-armed too: every block is done taking work from it.)
__device__ inline void finish_epoch(uint64_t* epoch_ptr, uint32_t* arrivals, uint64_t epoch,
                                    uint32_t* ticket = nullptr) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const uint32_t old = dev::atomic_add<Sem::acq_rel, Scope::gpu>(arrivals, 1u);
    if (old + 1u == gridDim.x) {
      if (ticket != nullptr) dev::st<Sem::relaxed, Scope::gpu>(ticket, 0u);
      dev::st<Sem::relaxed, Scope::gpu>(arrivals, 0u);
      dev::st<Sem::relaxed, Scope::gpu>(epoch_ptr, epoch + 1);
    }
  }
}

// The low-latency kernels' epoch step, without a grid-wide step at the end: each block counts
// itself in once every one of its threads has read the epoch (call count_in past a block barrier
// that follows the reads: the release orders them first), and the last block to arrive advances
// the epoch at its own end (finish). The count's result is consumed only there, so its round trip
// is off every path (a count at the end cost the kernel's last block a round trip and two block
// barriers). One thread per block (of kThreads) holds the count: the block's last.
struct EpochCountIn {
  uint32_t arrival = 0;
  __device__ __forceinline__ void count_in(uint32_t* arrivals) {
    if (threadIdx.x == kThreads - 1)
      arrival = dev::atomic_add<Sem::acq_rel, Scope::gpu>(arrivals, 1u);
  }
  __device__ __forceinline__ void finish(uint32_t* arrivals, uint64_t* epoch_ptr,
                                         uint64_t epoch) const {
    if (threadIdx.x == kThreads - 1 && arrival + 1u == gridDim.x) {
      dev::st<Sem::relaxed, Scope::gpu>(arrivals, 0u);
      dev::st<Sem::relaxed, Scope::gpu>(epoch_ptr, epoch + 1);
    }
  }
};

template <class T>
__device__ __forceinline__ T* smem_at(unsigned char* smem, uint32_t offset) {
  return reinterpret_cast<T*>(smem + offset);
}

// The TMA region of a dispatch kernel, its start rounded up to kTmaAlign shared-memory bytes (the
// layout keeps kTmaSlack bytes for that in front of it).
__device__ __forceinline__ char* tma_region(unsigned char* smem, const EpSmemLayout& L) {
  char* p = smem_at<char>(smem, L.tma) - kTmaSlack;
  const uint32_t off = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return p + ((kTmaAlign - off % kTmaAlign) % kTmaAlign);
}

// ---- kernels ----------------------------------------------------------------------------------

// Low latency: the whole dispatch in one launch. Grid: plan.grid blocks (>= W) of kThreads, all
// resident. Every block scans the (<= 256) tokens itself (no grid-wide sync); the last W blocks
// (idle in the send phase when T < grid) push the counts; rows are moved by groups of
// p.warps_per_group warps (four per block), token t by group t of the grid (blocks first). A
// token's row leaves as soon as its ids are read (it is staged at the token's index), its metadata
// (and bf16 flags) once the pair ranks are known; the warps of a block that have no token compute
// those ranks (pair_ranks_by_mask), derive the receive layout and place the received rows in groups
// of kLlRecvWarps warps, a fixed share each, while the others send. (When every group has a token,
// each block scans, sends, derives the layout and receives rows gidx, gidx + ngroups, ... in
// turn.)
template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1)
    ep_ll_dispatch_kernel(const __grid_constant__ dev::Context ctx,
                          const __grid_constant__ EpDispatchParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int W = ctx.world_size;
  const int gpb = kWarps / p.warps_per_group;
  const EpSmemLayout L = ep_smem_layout(EpKernel::ll_dispatch, p.E, W, p.k,
                                        ll_dispatch_groups(p.warps_per_group), p.tma_bytes);
  // Receiving group i's row buffer (receive_rows_tma_ll), where the plan made room for it.
  const size_t rx_bytes = static_cast<size_t>(p.H) * (kFp8 ? 1 : 2);
  const bool rx_fits = p.tma_bytes >= rx_bytes * ll_dispatch_groups(p.warps_per_group);
  auto rx_buf = [&](int i) -> char* {
    return rx_fits ? tma_region(smem, L) + static_cast<size_t>(i) * rx_bytes : nullptr;
  };
  if (threadIdx.x == 0) trace_stamp(p.trace, tr_start);
  // Three independent loads start the kernel, all in flight at once: the epoch (every thread
  // reads it: no shared-memory round and barrier for one value), the expert ids, and — in a group
  // that sends a token — the first batch of the token's row, which needs only the token's index.
  const uint64_t epoch = dev::ld<Sem::relaxed, Scope::gpu>(&p.state->dispatch_epoch);
  const RowGroup g = make_group(p.warps_per_group);
  const int gidx = g.index * gridDim.x + blockIdx.x;
  const int grid = static_cast<int>(gridDim.x);
  const int block = static_cast<int>(blockIdx.x);
  const LlSenders senders(p.T, grid, W, gpb, p.ll_pack);
  const int send_groups = senders.groups(block);
  // The token this thread's group sends (-1: none).
  const int token = send_groups < gpb && g.index < send_groups ? senders.token(block, g.index) : -1;
  // Units a sending thread loads before it stores any (a 7168-channel row: two rounds of 256 units
  // over a group's 128 threads; more spill registers).
  constexpr int kSendBatch = 2;
  uint4 row_batch[kSendBatch][2];
  const bool row_loaded = token >= 0;
  if (row_loaded)
    load_bf16_units<kSendBatch, !kFp8>(token_row(p, token), 0, g.nthreads, g.tid, p.units,
                                       row_batch);

  int32_t* wrank = smem_at<int32_t>(smem, L.wrank);
  int32_t* totals = smem_at<int32_t>(smem, L.totals);
  int32_t* ids = smem_at<int32_t>(smem, L.ids);
  load_ids(ctx, p, epoch, 0, p.T, ids, blockIdx.x == 0);
  EpochCountIn epoch_step;  // past load_ids' block barrier: every thread has read the epoch
  epoch_step.count_in(&p.state->dispatch_arrivals);
  const int parity = static_cast<int>(epoch & 1);
  const int count_dest = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);
  if (count_dest < W) {  // (uniform over the block)
    histogram_for(p, ids, count_dest, totals);
    send_counts(ctx, p, parity, epoch, count_dest, totals, totals[p.E_local],
                totals + p.E_local + 1);
    __syncthreads();  // every thread has read the message before a scan_chunk may reuse totals
  }

  EpGroupScratch* const scratch = smem_at<EpGroupScratch>(smem, L.scratch);
  EpGroupScratch* sc = scratch + g.index;
  const int ngroups = gpb * gridDim.x;
  const LlLayout layout{wrank, ids, &p};
  const RecvLayout R{smem_at<int>(smem, L.cnt), smem_at<int>(smem, L.pos_base),
                     smem_at<int>(smem, L.tot), smem_at<int>(smem, L.off),
                     smem_at<int>(smem, L.nsrc)};
  // Token t is sent by group t of the grid (blocks first; LlSenders, which can also pack them),
  // so only the first send_groups groups of a block have tokens. Those send their rows as soon as
  // they have read the token's ids and the metadata once the other warps have ranked the pairs;
  // the other warps rank the pairs, derive the receive layout (fp8 on 2 ranks: one group of them,
  // while the others already wait for and load their rows: receive_rows_early_ll) and place the
  // received rows in smaller groups (kLlRecvWarps warps), receiving group r of LlSenders' row
  // order (blocks that send nothing first) taking rows r, r + groups, ...: in a typical call (T =
  // 128 on 4 ranks: ~460 rows, 792 groups) every row has a group waiting for it from the start,
  // so the last row to land is placed at once (no second round, no ticket round trip, no wait for
  // a sender to free up). With every group sending (T > (gpb - 1) x grid) the block scans, sends,
  // derives the layout and receives, in turn.
  if (send_groups < gpb) {
    const int first = send_groups * g.nthreads;
    // Every sending thread passes (named_sync) and every receiving one arrives at (named_arrive)
    // kScanReadyBarrier once: kThreads in all.
    if (g.index < send_groups) {
      if (token >= 0) {
        // The token's destinations from its own ids: all its row needs to leave.
        const uint32_t m = token_dmask(p, ids, token);
        if (g.tid == 0) p.home_dmask[token] = m;
        send_token<kFp8, kSendBatch>(
            g, sc, ctx, p, epoch, parity, token, m, layout,
            [&] { named_sync(kScanReadyBarrier, kThreads); }, row_batch, row_loaded);
      } else {
        named_sync(kScanReadyBarrier, kThreads);
      }
      if (g.tid == 0) trace_stamp(p.trace, tr_sent);
    } else {
      const BlockPart receivers{first, kThreads - first, kReceiversBarrier};
      if (send_groups > 0) {  // the pair ranks this block's senders put in their metadata
        if (!pair_ranks_by_mask(p, ids, smem_at<uint32_t>(smem, L.hist), wrank, receivers))
          scan_chunk(ctx, p, 0, p.T, smem_at<int>(smem, L.hist), ids,
                     ScanOut{nullptr, wrank, nullptr, totals}, receivers);
        named_arrive(kScanReadyBarrier, kThreads);
      }
      if (threadIdx.x == first) trace_stamp(p.trace, tr_prologue);
      // Receiving groups: warps [first / 32, kWarps) in groups of rw (a multiple of a sending
      // group's warps, so their scratch entries and named barriers 1 + index are disjoint from
      // the sending groups').
      const int rw = min(kLlRecvWarps, p.warps_per_group);
      const RowGroup rg = make_group(rw);
      const int first_rg = send_groups * p.warps_per_group / rw, rpb = kWarps / rw - first_rg;
      const int ngroups_rx = senders.receiving_groups(kWarps / rw, p.warps_per_group / rw);
      auto row_order = [&](int i) { return senders.row_order(block, i, kWarps / rw); };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      // fp8 only, and by default on 2 ranks only: bf16 rows (twice the bytes, behind a flag) came
      // out 0.3 us slower this way on 2x H200, fp8 0.8 us slower on 4x H200 (docs/perf.md,
      // twenty-second pass).
      // (Receiving groups of at least two warps: the layout group's BlockPart takes the named
      // barrier 1 + its index, which 1-warp groups, numbered up to 15, would not leave free.)
      static_assert(kLlRecvWarps >= 2, "receive_rows_early_ll's layout group needs >= 2 warps");
      if (kFp8 && rx_fits && rw >= 2 && rpb >= 2 && p.ll_layout_first == 0) {
        // The layout group (first_rg) takes the block's last place in the row order.
        const int i = rg.index == first_rg ? rpb - 1 : rg.index - first_rg - 1;
        receive_rows_early_ll<kFp8>(rg, scratch + rg.index, ctx, p, epoch, parity, R, receivers,
                                    rg.index == first_rg, row_order(i), ngroups_rx,
                                    rx_buf(rg.index));
      } else
#endif
      {
        compute_recv_layout(ctx, p, parity, epoch, R, blockIdx.x == 0, nullptr, receivers);
        if (threadIdx.x == first) trace_stamp(p.trace, tr_counts);
        receive_rows<kFp8, kFp8 ? 4 : 2>(
            rg, scratch + rg.index, ctx, p, epoch, parity, R.cnt, R.pos_base, R.tot, R.off, R.nsrc,
            row_order(rg.index - first_rg), ngroups_rx, rx_buf(rg.index));
      }
      if (rg.tid == 0) trace_stamp(p.trace, tr_received);
    }
  } else {
    scan_chunk(ctx, p, 0, p.T, smem_at<int>(smem, L.hist), ids,
               ScanOut{nullptr, wrank, nullptr, totals});
    if (threadIdx.x == 0) trace_stamp(p.trace, tr_prologue);
    for (int t = gidx; t < p.T; t += ngroups) {
      const uint32_t m = token_dmask(p, ids, t);
      if (g.tid == 0) p.home_dmask[t] = m;
      send_token<kFp8, kSendBatch>(
          g, sc, ctx, p, epoch, parity, t, m, layout, [] {}, row_batch, false);
    }
    if (g.tid == 0) trace_stamp(p.trace, tr_sent);
    compute_recv_layout(ctx, p, parity, epoch, R, blockIdx.x == 0, nullptr);
    if (threadIdx.x == 0) trace_stamp(p.trace, tr_counts);
    receive_rows<kFp8, 2>(g, sc, ctx, p, epoch, parity, R.cnt, R.pos_base, R.tot, R.off, R.nsrc,
                          gidx, ngroups, rx_buf(g.index));
    if (g.tid == 0) trace_stamp(p.trace, tr_received);
  }
  if (p.trace != nullptr) {
    __syncthreads();
    if (threadIdx.x == 0) trace_stamp(p.trace, tr_end);
  }
  // Experts are published per row only in a hooked call (arrive): without a hook nothing can wait
  // for them (only a hooked call publishes the epoch to wait for), and stream order covers the
  // rest. So the kernel ends without a grid-wide step.
  epoch_step.finish(&p.state->dispatch_arrivals, &p.state->dispatch_epoch, epoch);
}

// Throughput, step 1: ceil(T / 256) blocks scan one chunk each into global memory; the last block
// to finish takes the prefix over chunks, exchanges counts with every rank and publishes the
// receive layout (counts block, pos_base). The host copies the counts block after this kernel.
__global__ void __launch_bounds__(kThreads, 1)
    ep_layout_kernel(const __grid_constant__ dev::Context ctx,
                     const __grid_constant__ EpDispatchParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int W = ctx.world_size, cols = p.E + W;
  const EpSmemLayout L = ep_smem_layout(EpKernel::layout, p.E, W, p.k, 0);
  __shared__ uint64_t s_epoch;
  __shared__ int s_last;
  if (threadIdx.x == 0) s_epoch = dev::ld<Sem::relaxed, Scope::gpu>(&p.state->dispatch_epoch);
  __syncthreads();
  const uint64_t epoch = s_epoch;
  if (threadIdx.x == 0) trace_stamp(p.trace, tr_prologue);
  const int t0 = blockIdx.x * kScanChunk, t1 = min(p.T, t0 + kScanChunk);
  int32_t* chunk_hist = p.lay_chunk_hist + static_cast<size_t>(blockIdx.x) * cols;
  int32_t* ids = smem_at<int32_t>(smem, L.ids);
  load_ids(ctx, p, epoch, t0, t1, ids, true);
  scan_chunk(ctx, p, t0, t1, smem_at<int>(smem, L.hist), ids,
             ScanOut{p.lay_dslot, p.lay_wrank, p.home_dmask, chunk_hist});
  if (threadIdx.x == 0) {
    __threadfence();
    s_last = atomicAdd(&p.state->layout_ticket, 1u) + 1u == gridDim.x;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  if (threadIdx.x == 0) p.state->layout_ticket = 0;

  int32_t* totals = smem_at<int32_t>(smem, L.totals);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    int run = 0;
    for (int ch = 0; ch < static_cast<int>(gridDim.x); ++ch) {
      const int v = __ldcg(p.lay_chunk_hist + static_cast<size_t>(ch) * cols + c);
      p.lay_chunk_base[static_cast<size_t>(ch) * cols + c] = run;
      run += v;
    }
    totals[c] = run;
  }
  __syncthreads();
  const int par = static_cast<int>(epoch & 1);
  for (int d = 0; d < W; ++d)
    send_counts(ctx, p, par, epoch, d, totals + d * p.E_local, totals[p.E + d], nullptr);
  const RecvLayout R{smem_at<int>(smem, L.cnt), smem_at<int>(smem, L.pos_base),
                     smem_at<int>(smem, L.tot), smem_at<int>(smem, L.off),
                     smem_at<int>(smem, L.nsrc)};
  compute_recv_layout(ctx, p, par, epoch, R, true, p.lay_pos_base);
  if (threadIdx.x == 0) trace_stamp(p.trace, tr_counts);
}

// Throughput, step 2: blocks [0, send_blocks) send (one warp per token), the rest receive (one
// warp per row). Single-buffered staging: the layout kernel's count exchange already guaranteed
// that every destination finished its previous dispatch.
template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1)
    ep_tp_dispatch_kernel(const __grid_constant__ dev::Context ctx,
                          const __grid_constant__ EpDispatchParams p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char smem[];
  const int W = ctx.world_size, el = p.E_local;
  const int gpb = kWarps / p.warps_per_group;
  const EpSmemLayout L = ep_smem_layout(EpKernel::tp_dispatch, p.E, W, p.k, gpb, p.tma_bytes);
  __shared__ uint64_t s_epoch;
  if (threadIdx.x == 0) s_epoch = dev::ld<Sem::relaxed, Scope::gpu>(&p.state->dispatch_epoch);
  if (threadIdx.x < kWarps) {
    FlagQueue* q = smem_at<FlagQueue>(smem, L.flag_q) + threadIdx.x;
    q->head = q->tail = q->done = 0u;
  }
  __syncthreads();
  const uint64_t epoch = s_epoch;
  const RowGroup g = make_group(p.warps_per_group);
  EpGroupScratch* sc = smem_at<EpGroupScratch>(smem, L.scratch) + g.index;
  if (threadIdx.x == 0) trace_stamp(p.trace, tr_start);
  const int warp = static_cast<int>(threadIdx.x >> 5);
  char* tma = tma_region(smem, L);
  uint64_t* bars = smem_at<uint64_t>(smem, L.tma_bars);
  if (p.tma_bytes < tma_send_slot_bytes(p.H, p.k, kFp8)) __trap();  // the host sizes it (plan)
  if (static_cast<int>(blockIdx.x) < p.send_blocks) {
    // As many sending warps as slots fit (13 at H = 7168), then the flag warp (the last).
    const uint32_t slot_bytes = tma_send_slot_bytes(p.H, p.k, kFp8);
    const int nw = min(kWarps - 1, static_cast<int>(p.tma_bytes / slot_bytes));
    FlagQueue* queues = smem_at<FlagQueue>(smem, L.flag_q);
    if (warp < nw) {
      const TpLayout layout{&p, W, p.E + W};
      send_rows_tma<kFp8>(ctx, p, layout, tma + warp * slot_bytes, bars + warp, queues + warp);
      if (g.tid == 0) trace_stamp(p.trace, tr_sent);
    } else if (warp == kWarps - 1) {
      raise_flags(ctx, p, epoch, queues, nw);
    }
  } else {
    int* pos_base = smem_at<int>(smem, L.pos_base);
    int* nsrc = smem_at<int>(smem, L.nsrc);
    for (int i = threadIdx.x; i < W * el; i += blockDim.x) pos_base[i] = p.lay_pos_base[i];
    if (threadIdx.x < W) nsrc[threadIdx.x] = p.counts_block[cb_source_rows(el) + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
      int mx = 0;
      for (int s = 0; s < W; ++s) mx = max(mx, nsrc[s]);
      nsrc[W] = mx;
    }
    __syncthreads();
    const uint32_t slot_bytes = tma_recv_slot_bytes(p.H, kFp8);
    const int nw = min(kWarps, static_cast<int>(p.tma_bytes / slot_bytes));
    if (warp < nw) {
      receive_rows_tma<kFp8>(ctx, p, epoch, pos_base, nsrc, tma + warp * slot_bytes,
                             bars + warp, sc);
      if (g.tid == 0) trace_stamp(p.trace, tr_received);
    }
  }
  if (threadIdx.x == 0) trace_stamp(p.trace, tr_end);
  finish_dispatch(p, epoch);
#else
  __trap();  // TMA: the host accepts throughput mode on sm_90 only
#endif
}

// ---- combine -------------------------------------------------------------------------------------

// The group's pair list of one received token: rows of y and weights, valid pairs only, in slot
// order (compacted by warp 0 of the group from the dispatch's handle row).
__device__ __forceinline__ int load_pair_list(const RowGroup& g, EpGroupScratch* sc,
                                              const int32_t* h, int k) {
  if (g.tid < 32) {
    const int kk = g.tid;
    const int pos = kk < k ? h[1 + kk] : -1;
    const int wbits = kk < k ? h[1 + k + kk] : 0;
    const unsigned valid = __ballot_sync(kFullMask, pos >= 0);
    if (pos >= 0) {
      const int i = __popc(valid & lanemask_lt());
      sc->pos[i] = pos;
      sc->lexp[i] = wbits;  // (reused: the weight's bits)
    }
    if (kk == 0) {
      sc->meta[0] = h[0];
      sc->meta[1] = __popc(valid);
    }
  }
  g.sync();
  return sc->meta[1];
}

// Units [base, base + kBatch * n) of a bf16 row, bytes assigned as unit_halves says, into a (first
// pieces) and c (second pieces): through the read-only path for rows constant during the kernel,
// through L2 only (kPeerWritten) for rows peers write during it.
template <int kBatch, bool kPeerWritten>
__device__ __forceinline__ void load_row_halves(const char* row, int base, int n, int tid, int U,
                                                uint4 (&a)[kBatch], uint4 (&c)[kBatch]) {
#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
    const int u = base + b * n + tid;
    if (u < U) {
      const UnitHalves h = unit_halves(u, U);
      a[b] = kPeerWritten ? ld_cg16(row + h.first) : ld_nc16(row + h.first);
      c[b] = kPeerWritten ? ld_cg16(row + h.second) : ld_nc16(row + h.second);
    }
  }
}

// The fp32 sums of those units, rounded to bf16, stored to the same bytes of `row`.
template <int kBatch>
__device__ __forceinline__ void store_row_halves(char* row, int base, int n, int tid, int U,
                                                 const float (&acc)[kBatch][16]) {
#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
    const int u = base + b * n + tid;
    if (u < U) {
      uint4 a, c;
      pack16(acc[b], a, c);
      const UnitHalves h = unit_halves(u, U);
      st16(row + h.first, a);
      st16(row + h.second, c);
    }
  }
}

// Throughput combine: a sending warp releases its rows' flags kCombineFlagBatch at a time, with one
// system-scope fence for all of them: one wait for the stores' acknowledgements (a round trip over
// the links, which stalls the whole warp) per four rows instead of one per row. A row's flag may
// so wait for up to three more rows (or for a peer's hello): fine for throughput, where the
// receivers' last rows, not the first ones, set the time.
inline constexpr int kCombineFlagBatch = 4;

// Rows u = gidx, gidx + ngroups, ... of the (slot j, source s) interleave, or (`ticket`, groups
// of one warp) the rows the group takes from that ticket.
template <int kBatch>
__device__ inline void combine_send(const RowGroup& g, EpGroupScratch* sc,
                                    const dev::Context& ctx, const EpCombineParams& p,
                                    uint64_t epoch, int parity, const int* nsrc, int gidx,
                                    int ngroups, uint32_t* ticket) {
  const int W = ctx.world_size, me = ctx.rank, k = p.k, U = p.units;
  const int hi = handle_ints(k);
  const size_t row_bytes = static_cast<size_t>(p.H) * 2;
  const char* y = static_cast<const char*>(p.y);
  uint32_t hello_seen = 0;
  const long long n_units = static_cast<long long>(nsrc[W]) * W;
  if (ticket != nullptr && g.wpg != 1) __trap();  // tickets are taken by one warp (throughput)
  auto next = [&](long long u) -> long long {
    return ticket != nullptr ? static_cast<long long>(take_ticket(ticket, g.tid)) : u + ngroups;
  };
  const Divisor by_W(W);
  // Flags not yet raised (throughput: up to kCombineFlagBatch; low latency releases each row at
  // once, its groups rarely hold two).
  const int flag_batch = ticket != nullptr ? kCombineFlagBatch : 1;
  int pending = 0;
  signal_t* pending_flag[kCombineFlagBatch];
  auto raise_pending = [&] {
    g.sync();  // every thread's stores of the pending rows before the release
    if (g.tid == 0 && pending > 0) {
      dev::fence<Scope::sys>();
      for (int i = 0; i < pending; ++i) dev::st<Sem::relaxed, Scope::sys>(pending_flag[i], epoch);
    }
    pending = 0;
  };
  for (long long u = ticket != nullptr ? next(0) : gidx; u < n_units; u = next(u)) {
    const int j = by_W.div(static_cast<int>(u)), s = static_cast<int>(u) - j * W;
    if (j >= nsrc[s]) continue;  // uniform over the group
    if (p.nbuf == 1 && !((hello_seen >> s) & 1u)) {
      // Single buffer: write into s's staging only once s has started this combine (so it has
      // finished reading the previous one). The group sync in load_pair_list orders the wait
      // before the group's stores.
      if (g.tid == 0) dev::wait(ctx, p.cb_hello + s, Cmp::ge, hello_word(epoch, false));
      hello_seen |= 1u << s;
    }
    const int npairs =
        load_pair_list(g, sc, p.handle_rows + (static_cast<size_t>(s) * p.T_max + j) * hi, k);
    const int t = sc->meta[0];
    char* dst = dev::symm_at(
        ctx, p.cb_rows + ((static_cast<size_t>(parity) * W + me) * p.T_max + t) * row_bytes, s);
    // An abandoned call raises the row's flag without its row (s is told by the hello).
    for (int base = 0; base < (p.abandon ? 0 : U); base += kBatch * g.nthreads) {
      float acc[kBatch][16];
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
#pragma unroll
        for (int i = 0; i < 16; ++i) acc[b][i] = 0.f;
      // Ascending slot order; two pairs' loads in flight at a time.
      for (int i = 0; i < npairs; i += 2) {
        uint4 a0[kBatch], c0[kBatch], a1[kBatch], c1[kBatch];
        load_row_halves<kBatch, false>(y + static_cast<size_t>(sc->pos[i]) * row_bytes, base,
                                       g.nthreads, g.tid, U, a0, c0);
        const bool two = i + 1 < npairs;
        if (two)
          load_row_halves<kBatch, false>(y + static_cast<size_t>(sc->pos[i + 1]) * row_bytes,
                                         base, g.nthreads, g.tid, U, a1, c1);
        const float w0 = __int_as_float(sc->lexp[i]);
#pragma unroll
        for (int b = 0; b < kBatch; ++b)
          if (base + b * g.nthreads + g.tid < U) fma16(acc[b], a0[b], c0[b], w0);
        if (two) {
          const float w1 = __int_as_float(sc->lexp[i + 1]);
#pragma unroll
          for (int b = 0; b < kBatch; ++b)
            if (base + b * g.nthreads + g.tid < U) fma16(acc[b], a1[b], c1[b], w1);
        }
      }
      store_row_halves<kBatch>(dst, base, g.nthreads, g.tid, U, acc);
    }
    pending_flag[pending++] =
        dev::symm_at(ctx, p.cb_flags + (static_cast<size_t>(parity) * W + me) * p.T_max + t, s);
    if (pending == flag_batch)
      raise_pending();  // (its sync also frees the pair list for the next row)
    else
      g.sync();  // the pair list may be reused
  }
  raise_pending();
}

template <int kBatch>
__device__ inline void combine_receive(const RowGroup& g, const dev::Context& ctx,
                                       const EpCombineParams& p, uint64_t epoch, int parity, int T,
                                       int gidx, int ngroups) {
  const int W = ctx.world_size, U = p.units;
  const size_t row_bytes = static_cast<size_t>(p.H) * 2;
  // Ranks whose dispatch had the other fp8 flag received nothing from this one (reported there).
  const uint32_t skip = static_cast<uint32_t>(p.counts_block[cb_fp8_mismatch(p.E_local, W)]);
  for (int t = gidx; t < T; t += ngroups) {
    const uint32_t m = p.home_dmask[t] & ~skip;
    const uint64_t w0 = p.trace && g.tid == 0 ? dev::detail::globaltimer_ns() : 0;
    if (g.tid < W && ((m >> g.tid) & 1u))
      dev::wait(ctx, p.cb_flags + (static_cast<size_t>(parity) * W + g.tid) * p.T_max + t,
                Cmp::ge, epoch);
    g.sync();
    if (p.trace && g.tid == 0) {
      trace_add(p.trace, tr_wait_ns, dev::detail::globaltimer_ns() - w0);
      trace_add(p.trace, tr_rows, 1);
    }
    auto partial = [&](int d) {
      return p.cb_rows + ((static_cast<size_t>(parity) * W + d) * p.T_max + t) * row_bytes;
    };
    char* out = static_cast<char*>(p.out) + static_cast<size_t>(t) * row_bytes;
    for (int base = 0; base < U; base += kBatch * g.nthreads) {
      float acc[kBatch][16];
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
#pragma unroll
        for (int i = 0; i < 16; ++i) acc[b][i] = 0.f;
      // Ascending rank order; two partials' loads in flight at a time.
      for (uint32_t mm = m; mm;) {
        const int d0 = __ffs(mm) - 1;
        mm &= mm - 1;
        const int d1 = mm ? __ffs(mm) - 1 : -1;
        if (mm) mm &= mm - 1;
        uint4 a0[kBatch], c0[kBatch], a1[kBatch], c1[kBatch];
        load_row_halves<kBatch, true>(partial(d0), base, g.nthreads, g.tid, U, a0, c0);
        if (d1 >= 0)
          load_row_halves<kBatch, true>(partial(d1), base, g.nthreads, g.tid, U, a1, c1);
#pragma unroll
        for (int b = 0; b < kBatch; ++b)
          if (base + b * g.nthreads + g.tid < U) add16(acc[b], a0[b], c0[b]);
        if (d1 >= 0) {
#pragma unroll
          for (int b = 0; b < kBatch; ++b)
            if (base + b * g.nthreads + g.tid < U) add16(acc[b], a1[b], c1[b]);
        }
      }
      store_row_halves<kBatch>(out, base, g.nthreads, g.tid, U, acc);
    }
  }
}

// Combine: low latency (send_blocks == 0): every block sends its share of partial rows, then
// reduces its share of this rank's tokens; throughput: blocks [0, send_blocks) send, the rest
// reduce. Block 0 announces the combine (hello) to every rank once the counts are read and, last,
// waits for every rank's hello of this combine, so no peer writes into this rank's staging after it
// returns. The combine of a void dispatch (one a rank abandoned: cb_abandoned) does nothing on any
// rank.
template <int kBatch>
__global__ void __launch_bounds__(kThreads, 1)
    ep_combine_kernel(const __grid_constant__ dev::Context ctx,
                      const __grid_constant__ EpCombineParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int W = ctx.world_size, me = ctx.rank;
  const int gpb = kWarps / p.warps_per_group;
  const EpSmemLayout L = ep_smem_layout(EpKernel::combine, p.E_local * W, W, p.k, gpb);
  // Every thread reads the epoch (no shared-memory round and barrier for one value).
  const uint64_t epoch = dev::ld<Sem::relaxed, Scope::gpu>(&p.state->combine_epoch);
  const bool split = p.send_blocks > 0;
  const int parity = p.nbuf == 2 ? static_cast<int>(epoch & 1) : 0;
  if (threadIdx.x == 0) trace_stamp(p.trace, tr_start);
  int* nsrc = smem_at<int>(smem, L.nsrc);
  if (threadIdx.x == 0) {
    int mx = 0;
    for (int s = 0; s < W; ++s) {
      nsrc[s] = p.counts_block[cb_source_rows(p.E_local) + s];
      mx = max(mx, nsrc[s]);
    }
    nsrc[W] = mx;
    nsrc[W + 1] = p.counts_block[cb_tokens(p.E_local, W)];
    nsrc[W + 2] = p.counts_block[cb_abandoned(p.E_local, W)];
  }
  __syncthreads();
  // A void dispatch's combine returns before its hello and its epoch step, on every rank alike.
  if (nsrc[W + 2] != 0) return;
  if (blockIdx.x == 0 && static_cast<int>(threadIdx.x) < W) {
    dev::notify(ctx, p.cb_hello + me, threadIdx.x, hello_word(epoch, p.abandon != 0));
  }
  // Without tickets (low latency), the epoch step of the low-latency dispatch: past this barrier
  // every thread has read the epoch. (Tickets are re-armed once every block is done: finish_epoch.)
  EpochCountIn epoch_step;
  if (!split) epoch_step.count_in(&p.state->combine_arrivals);
  const RowGroup g = make_group(p.warps_per_group);
  EpGroupScratch* sc = smem_at<EpGroupScratch>(smem, L.scratch) + g.index;
  const int blk = blockIdx.x;
  if (!split || blk < p.send_blocks) {
    const int nsb = split ? p.send_blocks : static_cast<int>(gridDim.x);
    combine_send<kBatch>(g, sc, ctx, p, epoch, parity, nsrc, g.index * nsb + blk, nsb * gpb,
                         split ? &p.state->combine_ticket : nullptr);
    if (g.tid == 0) trace_stamp(p.trace, tr_sent);
  }
  if (!p.abandon && (!split || blk >= p.send_blocks)) {
    const int rb = split ? blk - p.send_blocks : blk;
    const int nrb = split ? static_cast<int>(gridDim.x) - p.send_blocks : gridDim.x;
    const int tokens = nsrc[W + 1];
    if (tokens > p.out_rows && rb == 0 && threadIdx.x == 0)
      record_error(p.error, EpError::out_too_small, me, epoch, -1, -1, tokens, p.out_rows);
    combine_receive<kBatch>(g, ctx, p, epoch, parity, min(tokens, p.out_rows), g.index * nrb + rb,
                            nrb * gpb);
    if (g.tid == 0) trace_stamp(p.trace, tr_received);
  }
  if (blockIdx.x == 0 && static_cast<int>(threadIdx.x) < W) {
    const uint64_t hello =
        dev::wait(ctx, p.cb_hello + threadIdx.x, Cmp::ge, hello_word(epoch, false));
    if (!p.abandon && hello == hello_word(epoch, true))
      record_error(p.error, EpError::combine_abandoned, me, epoch, -1,
                   static_cast<int>(threadIdx.x), 0, 0);
  }
  if (threadIdx.x == 0) trace_stamp(p.trace, tr_end);
  if (split) {
    finish_epoch(&p.state->combine_epoch, &p.state->combine_arrivals, epoch,
                 &p.state->combine_ticket);
  } else {
    epoch_step.finish(&p.state->combine_arrivals, &p.state->combine_epoch, epoch);
  }
}

}  // namespace weft::ops::ep
