// Persistent, warp-specialized bf16/fp16 GEMM for sm_90a:  C[M,N] = A[M,K] * B[N,K]^T (+ bias[N])
//
//   * A row-major [M,K], B row-major [N,K] (a PyTorch Linear weight): both K-contiguous.
//   * 3 warpgroups: WG0 is the producer (setmaxnreg down, one thread issues TMA loads into a
//     kStages-deep smem ring guarded by full/empty mbarriers); WG1 and WG2 are consumers
//     (setmaxnreg up), each owning kWgM = BLOCK_M / 2 rows of the CTA tile and issuing
//     wgmma.mma_async m64nBLOCK_Nk16 with both operands in smem (128-byte swizzle descriptors).
//   * Persistent grid (<= #SMs CTAs) walking scheduler units in grouped (swizzled) raster order,
//     or in a caller-given order. With thread-block clusters (kClusterM x kClusterN CTAs, 2x1
//     or 1x2), CTAs of a cluster take adjacent tiles and share the operand tile they have in
//     common through TMA multicast: each loads a 1/kClusterM slice of the B tile and multicasts it
//     to the CTAs in its cluster column, and a 1/kClusterN slice of the A tile to its cluster row.
//   * Epilogue per consumer WG in 64-row x 128-byte slabs staged in swizzled smem, then either a
//     TMA store (default) or 16-byte stores to an arbitrary row-major pointer (hook / odd ldc).
//   * Overlap hooks (kHooks): tile order, per-chunk flag wait before loading A, per-tile or
//     per-row-chunk signal after the tile is stored.
//   * Grouped mode (kGrouped, MoE): G problems C_g = A_g * B_g^T with A_g / C_g packed row
//     blocks of A / C (row counts read from device memory at kernel start) and B = [G, N, K].
//     The scheduler walks the concatenated m-tiles of all groups; a slab that crosses a group's
//     last row is stored with SM stores clipped at that row (TMA stores clip only at the end
//     of the tensor).
//   * Ping-pong (kPingPong): each consumer warpgroup owns whole tiles (BLOCK_M rows), the two
//     take the CTA's work items in turn, so one runs its epilogue while the other runs its main
//     loop. An order barrier lets a warpgroup wait on the ring's full barriers for item j only
//     after the other has passed all of item j-1's (each stage's phases complete in order).
//   * Stream-K (plain 1x1 kernels, KernelParams::sk_iters): the last partial wave of tiles is
//     split by k-blocks over all CTAs; partial tiles meet through a global fp32 workspace.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "weft/gemm/detail/params.h"
#include "weft/gemm/detail/ptx.cuh"
#include "weft/gemm/detail/signal.cuh"
#include "weft/gemm/detail/wgmma.cuh"

namespace weft::gemm::sm90 {

// Compile-time configuration of one kernel instantiation.
template <typename TIn_, typename TOut_, int kBlockM_, int kBlockN_, int kStages_, int kClusterM_,
          int kClusterN_, bool kHooks_, bool kGrouped_ = false, bool kPingPong_ = false>
struct Traits {
  using TIn = TIn_;    // __nv_bfloat16 or __half
  using TOut = TOut_;  // TIn or float

  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kBlockK = 64;  // one 128-byte swizzle row of 16-bit elements
  static constexpr int kStages = kStages_;
  static constexpr int kClusterM = kClusterM_;  // CTAs along M sharing each B tile
  static constexpr int kClusterN = kClusterN_;  // CTAs along N sharing each A tile
  static constexpr int kClusterSize = kClusterM * kClusterN;
  static constexpr bool kHooks = kHooks_;
  static constexpr bool kGrouped = kGrouped_;
  static constexpr bool kPingPong = kPingPong_;
  // Stream-K is compiled into the plain 1x1 kernels (enabled per launch by sk_iters != 0).
  static constexpr bool kStreamK = !kHooks && !kGrouped && kClusterM * kClusterN == 1;

  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Rows of a tile one consumer warpgroup computes: half the tile (cooperative), or all of it
  // (ping-pong: the two warpgroups work on different tiles).
  static constexpr int kWgM = kPingPong ? kBlockM : kBlockM / kConsumers;
  static constexpr int kWgsPerStage = kPingPong ? 1 : kConsumers;  // warpgroups reading a stage
  static constexpr int kMIters = kWgM / 64;          // m64 wgmmas per k16 step
  static constexpr int kAccRegs = kBlockN / 2;       // fp32 accumulators per m64 per thread

  static constexpr int kABytes = kBlockM * kBlockK * 2;
  static constexpr int kBBytes = kBlockN * kBlockK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;  // == expect_tx bytes (full boxes)
  static constexpr int kARowsPerCta = kBlockM / kClusterN;  // A rows each CTA loads (multicast)
  static constexpr int kBRowsPerCta = kBlockN / kClusterM;  // B rows each CTA loads (multicast)

  // Epilogue slabs: 64 rows x 128 bytes (64 16-bit or 32 fp32 columns), 128-byte swizzled.
  // With BLOCK_N = 224 and 16-bit output the last slab of a row is half full (kPartialSlab): it
  // is stored with SM stores, as a 64-column TMA box would overwrite the next tile's columns.
  static constexpr int kSlabCols = 128 / int(sizeof(TOut));
  static constexpr int kSlabBytes = 64 * 128;
  static constexpr int kSlabsPerN = (kBlockN + kSlabCols - 1) / kSlabCols;
  static constexpr bool kPartialSlab = kBlockN % kSlabCols != 0;
  static constexpr int kSlabsPerWg = kMIters * kSlabsPerN;
  static constexpr int kEpiBufs = kSlabsPerWg >= 2 ? 2 : 1;
  static constexpr int kEpiBytes = kConsumers * kEpiBufs * kSlabBytes;

  // full[kStages], empty[kStages] (+ ping-pong: order[2]).
  static constexpr int kBarrierBytes = 2 * kStages * 8 + (kPingPong ? 16 : 0);
  // Stream-K partial tile: each warpgroup's accumulators, thread-major (float4 per thread).
  static constexpr int kPartFloats = kMIters * kAccRegs * 128;
  // Grouped mode: per-group first packed row (u32) and first m-tile (u16), kMaxGroups + 1 each.
  static constexpr int kGroupTableBytes =
      kGrouped ? ((::weft::gemm::detail::kMaxGroups + 1) * 6 + 15) / 16 * 16 : 0;
  static constexpr int kSmemBytes = 1024 /* alignment slack */ + kStages * kStageBytes +
                                    kEpiBytes + kBarrierBytes + kGroupTableBytes;

  static constexpr uint32_t kProducerRegs = 40;
  static constexpr uint32_t kConsumerRegs = 232;

  static_assert(kConsumers == 2, "the register split below assumes 2 consumer warpgroups");
  static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kConsumers <= 65536);
  static_assert(kWgM == 64 || kWgM == 128, "each consumer owns 64 or 128 rows");
  static_assert(kBlockN % 32 == 0 && kBlockN >= 64 && kBlockN <= 256);
  static_assert(kARowsPerCta <= 256 && kBRowsPerCta <= 256, "TMA box rows <= 256");
  static_assert((kClusterM == 1 || kClusterM == 2) && (kClusterN == 1 || kClusterN == 2));
  static_assert((kARowsPerCta * 128) % 1024 == 0 && (kBRowsPerCta * 128) % 1024 == 0,
                "multicast slices must be whole 1024-byte swizzle atoms");
  static_assert(kABytes % 1024 == 0 && kBBytes % 1024 == 0 && kSlabBytes % 1024 == 0,
                "stage and slab buffers must stay 1024-byte aligned (128-byte swizzle atoms)");
  static_assert(kSmemBytes <= 232448, "exceeds 227 KB of dynamic shared memory");
  static_assert(!kGrouped || (kClusterSize == 1 && !kHooks),
                "grouped kernels are 1x1-cluster kernels without hooks");
  static_assert(!kPingPong || (kClusterSize == 1 && !kHooks && !kGrouped),
                "ping-pong kernels are plain 1x1-cluster kernels");
  static_assert(kPartFloats * (kPingPong ? 1 : kConsumers) == kBlockM * kBlockN);
};

namespace detail_k {

using namespace ::weft::gemm::detail;

template <typename T>
struct OutPack;
template <>
struct OutPack<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <>
struct OutPack<__half> {
  __device__ __forceinline__ static uint32_t pack(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// One CTA tile, as the producer and the consumers see it.
struct TileInfo {
  int m_blk, n_blk;  // tile coordinates (grouped mode: m_blk counts the m-tiles of all groups)
  int row0;          // first row of A and C
  int row_end;       // rows >= row_end belong to no part of this problem (M, or the group's end)
  int col0;          // first column of C (= n_blk * BLOCK_N)
  int b_row;         // first row of B (grouped: group * N + col0)
  int group;         // grouped mode: the group (expert); 0 otherwise
};

// Cold path of Scheduler::tile (inlined: this kernel must hold no call, see README).
__device__ __forceinline__ void bad_tile_order(HangRecord* hang, int unit, int id, int num_units) {
  record_and_trap(hang, kHangBadTileOrder, uint64_t(unit), uint64_t(num_units),
                  uint64_t(int64_t(id)), 0);
}

// Maps scheduler unit ids to CTA tiles. A unit is the kClusterM x kClusterN block of tiles one
// cluster computes (CTA (rank_m, rank_n) takes tile (mu * kClusterM + rank_m, nu * kClusterN +
// rank_n)); unit id = mu * units_n + nu. Units are visited in groups of `raster_group` m-units,
// column by column inside a group, so concurrently running CTAs share A and B tiles in L2.
//
// With a caller-given tile order (hook a), order_id(unit) is the entry of the order array; the
// loops below fetch it one unit ahead, so the dependent global load never sits between the end
// of one tile and the first TMA load of the next.
template <class T>
struct Scheduler {
  const KernelParams& p;
  int rank_m, rank_n;
  int units_m;    // plain: p.units_m; grouped: m-tiles of all groups (computed on the device)
  int num_units;  // units_m * units_n
  const uint32_t* row_start;   // grouped: [groups + 1] first packed row of each group (smem)
  const uint16_t* tile_start;  // grouped: [groups + 1] first m-tile of each group (smem)

  __device__ __forceinline__ int order_id(int unit) const {
    if constexpr (T::kHooks) {
      if (p.tile_order != nullptr) return unit < num_units ? __ldg(p.tile_order + unit) : 0;
    }
    return unit;
  }

  __device__ __forceinline__ TileInfo tile(int unit, int id) const {
    int mu, nu;
    bool ordered = false;
    if constexpr (T::kHooks) {
      if (p.tile_order != nullptr) {
        // A bad entry would compute (and, with direct stores or signals, write) outside the
        // output: trap with a report instead. Checked here, where the prefetched id is used.
        if (static_cast<unsigned>(id) >= static_cast<unsigned>(num_units))
          bad_tile_order(p.hang, unit, id, num_units);
        mu = id / p.units_n;
        nu = id - mu * p.units_n;
        ordered = true;
      }
    }
    if (!ordered) {
      const int per_group = p.raster_group * p.units_n;
      const int group = unit / per_group;
      const int in_group = unit - group * per_group;
      const int first_mu = group * p.raster_group;
      const int group_size = min(units_m - first_mu, p.raster_group);
      mu = first_mu + in_group % group_size;
      nu = in_group / group_size;
    }
    TileInfo t;
    t.m_blk = mu * T::kClusterM + rank_m;
    t.n_blk = nu * T::kClusterN + rank_n;
    t.col0 = t.n_blk * T::kBlockN;
    if constexpr (T::kGrouped) {
      // The group owning m-tile m_blk: the last g with tile_start[g] <= m_blk (empty groups
      // share their start with the next group, so the search lands on a non-empty one).
      int lo = 0, hi = p.groups - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (int(tile_start[mid]) <= t.m_blk) lo = mid;
        else hi = mid - 1;
      }
      t.group = lo;
      t.row0 = int(row_start[lo]) + (t.m_blk - int(tile_start[lo])) * T::kBlockM;
      t.row_end = int(row_start[lo + 1]);
      t.b_row = lo * p.N + t.col0;
    } else {
      t.group = 0;
      t.row0 = t.m_blk * T::kBlockM;
      t.row_end = p.M;
      t.b_row = t.col0;
    }
    return t;
  }
};

// One piece of work of a CTA: k-blocks [kb0, kb1) of a unit's tile.
enum : int {
  kWorkFull = 0,     // the whole tile: main loop + epilogue
  kWorkPartial = 1,  // stream-K: the tile's first k-blocks (not its last): store the partial sum
  kWorkFinal = 2,    // stream-K: the tile's last k-blocks: add the lower CTAs' partials, epilogue
};
struct Work {
  int unit;
  int kb0, kb1;
  int role;
};

// The work items of one CTA, in the order producer and consumers process them: its share of
// the whole units (c, c + grid, ... below dp_units), then its stream-K range. The range covers
// the end of one tile, maybe whole tiles, and the start of another; the pieces are taken last
// tile first, so the piece a CTA hands to a higher CTA (the start of its last tile) is stored
// before anything else of the range, and the piece that waits for a lower CTA's partial (the
// end of its first tile) comes last. Waits therefore only go to lower CTAs, which never wait
// before storing: no cycle, and in practice the partial is already there.
struct WorkList {
  int cta, grid, num_kb;
  int dp_units;      // units [0, dp_units) are whole
  int n_dp;          // this CTA's whole units
  int64_t sk_iters;  // k-blocks of the stream-K units [dp_units, dp_units + sk_iters / num_kb)
  int64_t s0, s1;    // this CTA's stream-K range
  int t_last;        // last stream-K tile (relative to dp_units) the range touches
  int n_sk;          // stream-K pieces of this CTA

  __device__ __forceinline__ void init(int cta_, int grid_, int num_kb_, int dp_units_,
                                       int64_t sk_iters_) {
    cta = cta_;
    grid = grid_;
    num_kb = num_kb_;
    dp_units = dp_units_;
    sk_iters = sk_iters_;
    n_dp = cta < dp_units ? (dp_units - cta + grid - 1) / grid : 0;
    n_sk = 0;
    s0 = s1 = 0;
    t_last = 0;
    if (sk_iters > 0) {
      s0 = range_start(cta);
      s1 = range_start(cta + 1);
      if (s1 > s0) {
        const int t_first = int(s0 / num_kb);
        t_last = int((s1 - 1) / num_kb);
        n_sk = t_last - t_first + 1;
      }
    }
  }
  __device__ __forceinline__ int64_t range_start(int c) const {
    return int64_t(c) * sk_iters / grid;
  }
  __device__ __forceinline__ int count() const { return n_dp + n_sk; }
  __device__ __forceinline__ Work get(int j) const {
    Work w;
    if (j < n_dp) {
      w.unit = cta + j * grid;
      w.kb0 = 0;
      w.kb1 = num_kb;
      w.role = kWorkFull;
      return w;
    }
    const int t = t_last - (j - n_dp);
    const int64_t t0 = int64_t(t) * num_kb;
    const int64_t lo = s0 > t0 ? s0 : t0;
    const int64_t hi = s1 < t0 + num_kb ? s1 : t0 + num_kb;
    w.unit = dp_units + t;
    w.kb0 = int(lo - t0);
    w.kb1 = int(hi - t0);
    w.role = hi < t0 + num_kb ? kWorkPartial : (lo > t0 ? kWorkFinal : kWorkFull);
    return w;
  }
  // The lowest CTA whose range holds k-blocks of stream-K tile t (relative to dp_units).
  __device__ __forceinline__ int first_holder(int t) const {
    const int64_t i = int64_t(t) * num_kb;
    return int(((i + 1) * grid - 1) / sk_iters);
  }
};

}  // namespace detail_k

template <class T>
__global__ void __launch_bounds__(T::kThreads, 1)
    gemm_kernel(const __grid_constant__ CUtensorMap tmap_a,
                const __grid_constant__ CUtensorMap tmap_b,
                const __grid_constant__ CUtensorMap tmap_c,
                const __grid_constant__ detail::KernelParams p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace detail_k;
  using TIn = typename T::TIn;
  using TOut = typename T::TOut;
  using Mma = WgmmaSS<T::kBlockN, TIn>;
  static_assert(Mma::kAccRegs == T::kAccRegs);

  extern __shared__ uint8_t smem_raw[];
  // 128-byte swizzle atoms are 1024 bytes: align the carve-out base explicitly.
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* smem_a = smem;
  uint8_t* smem_b = smem_a + T::kStages * T::kABytes;
  uint8_t* smem_epi = smem_b + T::kStages * T::kBBytes;
  uint64_t* full_bar = reinterpret_cast<uint64_t*>(smem_epi + T::kEpiBytes);
  uint64_t* empty_bar = full_bar + T::kStages;
  uint64_t* order_bar = empty_bar + T::kStages;  // ping-pong only: [2]
  uint32_t* grp_row_start =
      reinterpret_cast<uint32_t*>(order_bar + (T::kPingPong ? 2 : 0));
  uint16_t* grp_tile_start = reinterpret_cast<uint16_t*>(grp_row_start + (kMaxGroups + 1));

  const int wg = threadIdx.x / 128;
  const int tid_wg = threadIdx.x % 128;
  // 1-D grid, cluster dims (kClusterSize, 1, 1): rank = blockIdx.x % kClusterSize.
  const uint32_t cta_rank = T::kClusterSize > 1 ? cluster_cta_rank() : 0;
  const int rank_m = int(cta_rank) % T::kClusterM;
  const int rank_n = int(cta_rank) / T::kClusterM;
  const int cta_in_grid = blockIdx.x / T::kClusterSize;  // cluster index
  const int ctas_in_grid = gridDim.x / T::kClusterSize;  // clusters in the grid

  if (threadIdx.x == 0) {
    tma_prefetch_desc(&tmap_a);
    tma_prefetch_desc(&tmap_b);
    if (!p.epi_direct) tma_prefetch_desc(&tmap_c);
#pragma unroll
    for (int s = 0; s < T::kStages; ++s) {
      mbar_init(&full_bar[s], 1);
      // One arrival per consumer warp reading the stage, of every CTA in the cluster: the
      // slices this CTA multicasts land in its peers' stage buffers, so all of them must have
      // released it.
      mbar_init(&empty_bar[s], T::kWgsPerStage * 4 * T::kClusterSize);
    }
    if constexpr (T::kPingPong) {
      mbar_init(&order_bar[0], 1);
      mbar_init(&order_bar[1], 1);
    }
    fence_barrier_init();
  }
  if constexpr (T::kGrouped) {
    // Warp 1 turns the device-side row counts into prefix tables (first packed row and first
    // m-tile of every group) while thread 0 initializes the barriers.
    if (threadIdx.x / 32 == 1) {
      constexpr int kPer = (kMaxGroups + 31) / 32;
      const int lane = threadIdx.x % 32;
      const int per = (p.groups + 31) / 32;
      const int g0 = lane * per;
      uint32_t rows[kPer];
      uint64_t my_rows = 0;  // 64-bit: garbage counts must not wrap below the capacity
      uint32_t my_tiles = 0;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int g = g0 + j;
        const int r = (j < per && g < p.groups) ? max(0, p.group_rows[g]) : 0;
        rows[j] = uint32_t(r);
        my_rows += uint32_t(r);
        my_tiles += (uint32_t(r) + T::kBlockM - 1) / T::kBlockM;
      }
      uint64_t inc_rows = my_rows;  // inclusive warp scans
      uint32_t inc_tiles = my_tiles;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const uint64_t r = __shfl_up_sync(0xffffffffu, inc_rows, off);
        const uint32_t t = __shfl_up_sync(0xffffffffu, inc_tiles, off);
        if (lane >= off) {
          inc_rows += r;
          inc_tiles += t;
        }
      }
      uint64_t r_at = inc_rows - my_rows;
      uint32_t t_at = inc_tiles - my_tiles;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int g = g0 + j;
        if (j < per && g < p.groups) {
          grp_row_start[g] = uint32_t(r_at);
          grp_tile_start[g] = uint16_t(t_at);
          r_at += rows[j];
          t_at += (rows[j] + T::kBlockM - 1) / T::kBlockM;
        }
      }
      if (lane == 31) {
        grp_row_start[p.groups] = uint32_t(inc_rows);
        grp_tile_start[p.groups] = uint16_t(inc_tiles);
        // More rows than A and C hold: stop loudly (the host cannot check device counts).
        if (inc_rows > uint64_t(p.M))
          record_and_trap(p.hang, kHangGroupOverflow, 0, uint64_t(p.M), inc_rows, 0);
      }
    }
  }
  if constexpr (T::kClusterSize > 1) {
    cluster_sync();
  } else {
    __syncthreads();
  }

  Scheduler<T> sched{p, rank_m, rank_n, p.units_m, p.num_units, grp_row_start, grp_tile_start};
  int dp_units = p.dp_units;
  int64_t sk_iters = 0;
  if constexpr (T::kGrouped) {
    sched.units_m = int(grp_tile_start[p.groups]);
    sched.num_units = sched.units_m * p.units_n;
    dp_units = sched.num_units;
  }
  if constexpr (T::kStreamK) sk_iters = p.sk_iters;
  WorkList work;
  work.init(cta_in_grid, ctas_in_grid, p.num_kb, dp_units, sk_iters);
  const int num_items = work.count();

  // Hang check (WEFT_GEMM_HANG_CHECK): bound on any mbarrier wait. A hook kernel's producer may
  // legitimately sit in a flag wait for up to p.timeout_ns (or forever), and every pipeline
  // wait behind it with it, so the bound grows accordingly (or is lifted).
  uint64_t mbar_timeout = WEFT_GEMM_MBAR_TIMEOUT_NS;
  if constexpr (T::kHooks) {
    if (p.wait_flags != nullptr) mbar_timeout = p.timeout_ns ? mbar_timeout + p.timeout_ns : 0;
  }

  if (wg == 0) {
    // ------------------------------------------------------------------ producer warpgroup
    setmaxnreg_dec<T::kProducerRegs>();
    if (threadIdx.x == 0) {
      int stage = 0;
      uint32_t phase = 0;
      int waited_m_blk = -1;
      uint64_t wait_expected = 0;
      if constexpr (T::kHooks) {
        // Hook (b) with a device-side epoch: read once, before the first load.
        wait_expected = p.wait_expected_ptr != nullptr ? ld_acquire_sys_u64(p.wait_expected_ptr)
                                                       : p.wait_expected;
      }
      // Hook kernels have no stream-K: item j is unit cta + j * grid.
      int next_id = sched.order_id(cta_in_grid);
      for (int j = 0; j < num_items; ++j) {
        const Work w = work.get(j);
        const int id = next_id;
        next_id = sched.order_id(w.unit + ctas_in_grid);  // prefetch (hook a)
        const TileInfo t = sched.tile(w.unit, id);
        if constexpr (T::kHooks) {
          // Hook (b): rows [row0, row0 + BLOCK_M) of A may still be in flight (written by a peer
          // or a copy engine). Wait for every chunk they touch, then order the acquire before the
          // TMA reads (async proxy).
          if (p.wait_flags != nullptr && t.m_blk != waited_m_blk && t.row0 < t.row_end) {
            const int64_t last_row = min(int64_t(t.row0) + T::kBlockM, int64_t(t.row_end)) - 1;
            const int64_t c_first = int64_t(t.row0) / p.wait_chunk_rows;
            const int64_t c_last = last_row / p.wait_chunk_rows;
            for (int64_t c = c_first; c <= c_last; ++c) {
              wait_flag_geq(p.wait_flags + c, wait_expected, p.timeout_ns, p.give_up, p.hang,
                            kHangChunkFlag);
            }
            fence_proxy_async_global();
            waited_m_blk = t.m_blk;
          }
        }
        // With clusters, a unit at the edge may hold tiles entirely outside the matrix (odd
        // tiles_m or tiles_n). Their operand tile is skipped by every CTA sharing it (they
        // all see the same row0 / col0), and excluded from the transaction count; the consumers
        // compute garbage that the epilogue never stores. The other operand is still loaded
        // and multicast, as the peers need it.
        const bool load_a = T::kClusterSize == 1 || t.row0 < t.row_end;
        const bool load_b = T::kClusterSize == 1 || t.col0 < p.N;
        const uint32_t tx_bytes = (load_a ? T::kABytes : 0) + (load_b ? T::kBBytes : 0);
        // CTAs of the same cluster column (same rank_n) share B; of the same row share A.
        const uint16_t mask_b = uint16_t(((1u << T::kClusterM) - 1) << (rank_n * T::kClusterM));
        uint16_t mask_a = 0;
#pragma unroll
        for (int jj = 0; jj < T::kClusterN; ++jj)
          mask_a |= uint16_t(1u << (rank_m + jj * T::kClusterM));
        for (int kb = w.kb0; kb < w.kb1; ++kb) {
          mbar_wait(&empty_bar[stage], phase ^ 1, mbar_timeout);
          mbar_arrive_expect_tx(&full_bar[stage], tx_bytes);
          const int k0 = kb * T::kBlockK;
          if (load_a) {
            if constexpr (T::kClusterN == 1) {
              tma_load_2d(smem_a + stage * T::kABytes, &tmap_a, &full_bar[stage], k0, t.row0);
            } else {
              tma_load_2d_multicast(smem_a + stage * T::kABytes + rank_n * T::kARowsPerCta * 128,
                                    &tmap_a, &full_bar[stage], k0,
                                    t.row0 + rank_n * T::kARowsPerCta, mask_a);
            }
          }
          if (load_b) {
            if constexpr (T::kClusterM == 1) {
              tma_load_2d(smem_b + stage * T::kBBytes, &tmap_b, &full_bar[stage], k0, t.b_row);
            } else {
              tma_load_2d_multicast(smem_b + stage * T::kBBytes + rank_m * T::kBRowsPerCta * 128,
                                    &tmap_b, &full_bar[stage], k0,
                                    t.b_row + rank_m * T::kBRowsPerCta, mask_b);
            }
          }
          if (++stage == T::kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
    }
    __syncwarp();
  } else {
    // ------------------------------------------------------------------ consumer warpgroups
    setmaxnreg_inc<T::kConsumerRegs>();
    // Cooperative: consumer cw computes rows [cw * kWgM, (cw + 1) * kWgM) of every tile.
    // Ping-pong: consumer cw computes all rows of the items j with j % 2 == cw.
    const int cw = wg - 1;
    const int warp = tid_wg / 32;
    const int lane = tid_wg % 32;
    const uint32_t epi_bar_id = 2 + cw;  // named barrier of this consumer warpgroup
    const int row_off = T::kPingPong ? 0 : cw * T::kWgM;

    float acc[T::kMIters][T::kAccRegs];
#pragma unroll
    for (int mi = 0; mi < T::kMIters; ++mi)
#pragma unroll
      for (int i = 0; i < T::kAccRegs; ++i) acc[mi][i] = 0.f;

    const uint32_t a_base = smem_u32(smem_a) + row_off * 128;
    const uint32_t b_base = smem_u32(smem_b);
    uint8_t* epi_base = smem_epi + cw * T::kEpiBufs * T::kSlabBytes;

    auto release = [&](int s) {
      if constexpr (T::kClusterSize == 1) {
        if (lane == 0) mbar_arrive(&empty_bar[s]);
      } else {
        if (lane < T::kClusterSize) mbar_arrive_cluster(&empty_bar[s], uint32_t(lane));
      }
    };

    int stage = 0;
    uint32_t phase = 0;
    uint32_t slab_count = 0;
    uint32_t order_phase = 0;  // ping-pong: parity of the next wait on order_bar[cw]

    int next_id = sched.order_id(cta_in_grid);
    for (int j = 0; j < num_items; ++j) {
      const Work w = work.get(j);
      if constexpr (T::kPingPong) {
        if ((j & 1) != cw) {
          // The other warpgroup's item: its k-blocks pass through the ring; skip them.
          const int tot = stage + (w.kb1 - w.kb0);
          phase ^= uint32_t(tot / T::kStages) & 1u;
          stage = tot % T::kStages;
          continue;
        }
        // Wait until the other warpgroup has seen every stage of item j - 1 arrive, so that no
        // stage of item j is two phases behind when it is waited on.
        if (j > 0) {
          mbar_wait(&order_bar[cw], order_phase, mbar_timeout);
          order_phase ^= 1;
        }
      }
      const int id = next_id;
      next_id = sched.order_id(w.unit + ctas_in_grid);  // prefetch (hook a)
      const TileInfo t = sched.tile(w.unit, id);

      // ---------------------------------------------------------------- main loop
      int prev_stage = 0;
      for (int kb = w.kb0; kb < w.kb1; ++kb) {
        mbar_wait(&full_bar[stage], phase, mbar_timeout);
        if constexpr (T::kPingPong) {
          // Every stage of this item has arrived once this one has: let the other go on.
          if (kb == w.kb1 - 1 && tid_wg == 0) mbar_arrive(&order_bar[cw ^ 1]);
        }
        const uint64_t desc_a = make_smem_desc_sw128(a_base + stage * T::kABytes);
        const uint64_t desc_b = make_smem_desc_sw128(b_base + stage * T::kBBytes);
#pragma unroll
        for (int mi = 0; mi < T::kMIters; ++mi) fence_operands(acc[mi]);
        wgmma_fence();
#pragma unroll
        for (int k = 0; k < T::kBlockK / 16; ++k) {
#pragma unroll
          for (int mi = 0; mi < T::kMIters; ++mi) {
            // K-advance inside the 128-byte swizzled row: +32 bytes (16 elements) per k16 step,
            // i.e. +2 in the (addr >> 4) field. Rows of the second m64 are 64 * 128 B further.
            Mma::mma(acc[mi], desc_a + uint64_t(mi * (64 * 128 >> 4) + 2 * k),
                     desc_b + uint64_t(2 * k), (kb > w.kb0 || k > 0) ? 1u : 0u);
          }
        }
        wgmma_commit();
#pragma unroll
        for (int mi = 0; mi < T::kMIters; ++mi) fence_operands(acc[mi]);
        if (kb > w.kb0) {
          // Keep one wgmma group in flight: the previous k-block's group is complete, so its
          // stage can go back to the producer.
          wgmma_wait<1>();
#pragma unroll
          for (int mi = 0; mi < T::kMIters; ++mi) fence_operands(acc[mi]);
          release(prev_stage);
        }
        prev_stage = stage;
        if (++stage == T::kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      wgmma_wait<0>();
#pragma unroll
      for (int mi = 0; mi < T::kMIters; ++mi) fence_operands(acc[mi]);
      release(prev_stage);

      if constexpr (T::kStreamK) {
        // ---------------------------------------------------------------- stream-K fixup
        const int part = T::kPingPong ? 0 : cw;
        if (w.role == kWorkPartial) {
          // The tile's first k-blocks: hand the partial sum to the CTA that finishes the tile.
          float4* dst = reinterpret_cast<float4*>(
              p.sk_partials + int64_t(cta_in_grid) * (T::kBlockM * T::kBlockN) +
              part * T::kPartFloats);
#pragma unroll
          for (int mi = 0; mi < T::kMIters; ++mi)
#pragma unroll
            for (int q = 0; q < T::kAccRegs / 4; ++q)
              __stcg(dst + (mi * (T::kAccRegs / 4) + q) * 128 + tid_wg,
                     make_float4(acc[mi][4 * q], acc[mi][4 * q + 1], acc[mi][4 * q + 2],
                                 acc[mi][4 * q + 3]));
          fence_acq_rel_gpu();
          named_barrier_sync(epi_bar_id, 128);
          if (tid_wg == 0) st_release_gpu_u32(p.sk_flags + 2 * cta_in_grid + part, 1u);
          continue;
        }
        if (w.role == kWorkFinal) {
          // The tile's last k-blocks: add the partial sums of the lower CTAs holding its first
          // k-blocks (their partials were the first thing they stored).
          const int t_rel = w.unit - dp_units;
          for (int c = work.first_holder(t_rel); c < cta_in_grid; ++c) {
            if (work.range_start(c + 1) == work.range_start(c)) continue;  // empty range
            uint32_t* flag = p.sk_flags + 2 * c + part;
            if (tid_wg == 0) {
              wait_flag_eq_gpu(flag, 1u, 10'000'000'000ull, p.hang, kHangStreamK);
              st_relaxed_gpu_u32(flag, 0u);  // consumed: ready for the next launch
            }
            named_barrier_sync(epi_bar_id, 128);
            const float4* src = reinterpret_cast<const float4*>(
                p.sk_partials + int64_t(c) * (T::kBlockM * T::kBlockN) + part * T::kPartFloats);
#pragma unroll
            for (int mi = 0; mi < T::kMIters; ++mi)
#pragma unroll
              for (int q = 0; q < T::kAccRegs / 4; ++q) {
                const float4 v = __ldcg(src + (mi * (T::kAccRegs / 4) + q) * 128 + tid_wg);
                acc[mi][4 * q] += v.x;
                acc[mi][4 * q + 1] += v.y;
                acc[mi][4 * q + 2] += v.z;
                acc[mi][4 * q + 3] += v.w;
              }
          }
        }
      }

      // ---------------------------------------------------------------- epilogue
      const TIn* bias = static_cast<const TIn*>(p.bias);
      if constexpr (T::kGrouped) {
        if (bias != nullptr) bias += int64_t(t.group) * p.N;  // bias is [groups, N]
      }
#pragma unroll
      for (int mi = 0; mi < T::kMIters; ++mi) {
        const int row0 = t.row0 + row_off + mi * 64;  // first global row of this slab
        if (row0 >= t.row_end) continue;                    // uniform across the warpgroup
        // A TMA store clips only at the end of the tensor: a grouped slab that runs past its
        // group's last row (into the next group's rows) is stored with clipped SM stores.
        bool direct = p.epi_direct != 0;
        if constexpr (T::kGrouped) direct = direct || (row0 + 64 > t.row_end && t.row_end < p.M);
#pragma unroll
        for (int sl = 0; sl < T::kSlabsPerN; ++sl) {
          const int col0 = t.col0 + sl * T::kSlabCols;  // first global column of this slab
          if (col0 >= p.N) continue;                    // uniform across the warpgroup
          // The half-full last slab of a 224-wide tile is stored with SM stores (see Traits).
          const bool slab_direct =
              direct || (T::kPartialSlab && sl == T::kSlabsPerN - 1);
          uint8_t* buf = epi_base + (slab_count % T::kEpiBufs) * T::kSlabBytes;
          ++slab_count;
          const uint32_t buf_addr = smem_u32(buf);

          // The TMA store that last read this buffer must be done with it. Every TMA-stored slab
          // commits one bulk group, so with kEpiBufs buffers all but the newest kEpiBufs - 1
          // groups must have finished reading. A grouped kernel's SM-stored slab commits no
          // group, so before reusing a buffer for one it waits for all of them (H100: waiting
          // for all but one let a slab overwrite the buffer a TMA store was still reading).
          if (!p.epi_direct && tid_wg == 0) {
            if ((T::kGrouped || T::kPartialSlab) && slab_direct) tma_store_wait_read<0>();
            else tma_store_wait_read<T::kEpiBufs - 1>();
          }
          named_barrier_sync(epi_bar_id, 128);

          // Registers -> swizzled smem. Thread holds rows r, r + 8 (r = 16 * warp + lane / 4) and
          // column pairs 8 * i + 2 * (lane % 4) of each 8-column block i.
#pragma unroll
          for (int i = 0; i < T::kSlabCols / 8; ++i) {
            const int cb = sl * (T::kSlabCols / 8) + i;  // 8-column block inside the tile
            if (cb >= T::kBlockN / 8) break;               // past a partial slab's columns
            const int c = i * 8 + 2 * (lane % 4);          // column inside the slab
            float b0 = 0.f, b1 = 0.f;
            if (bias != nullptr) {
              if (col0 + c < p.N) b0 = to_float(bias[col0 + c]);
              if (col0 + c + 1 < p.N) b1 = to_float(bias[col0 + c + 1]);
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int r = warp * 16 + h * 8 + lane / 4;
              const float v0 = acc[mi][cb * 4 + h * 2 + 0] + b0;
              const float v1 = acc[mi][cb * 4 + h * 2 + 1] + b1;
              const int byte = c * int(sizeof(TOut));
              const uint32_t addr =
                  buf_addr + r * 128 + ((((byte >> 4) ^ (r & 7)) << 4) | (byte & 15));
              if constexpr (sizeof(TOut) == 4) {
                st_shared_v2_f32(addr, v0, v1);
              } else {
                st_shared_b32(addr, OutPack<TOut>::pack(v0, v1));
              }
            }
          }

          if (!slab_direct) {
            fence_proxy_async_smem();  // st.shared (generic proxy) -> TMA store (async proxy)
            named_barrier_sync(epi_bar_id, 128);
            if (tid_wg == 0) {
              tma_store_2d(&tmap_c, buf, col0, row0);
              tma_store_commit();
            }
          } else {
            named_barrier_sync(epi_bar_id, 128);
            // Smem -> global, 16 bytes per thread per step, 8 threads per 128-byte row.
            constexpr int kElems16 = 16 / int(sizeof(TOut));
            TOut* out = static_cast<TOut*>(p.out);
            const int col_end = min(p.N, t.col0 + T::kBlockN);  // this tile's columns only
#pragma unroll
            for (int j = 0; j < 64 * 8 / 128; ++j) {
              const int q = tid_wg + j * 128;
              const int r = q / 8;
              const int ch = q % 8;
              const int grow = row0 + r;
              const int gcol = col0 + ch * kElems16;
              if (grow < t.row_end && gcol < col_end) {
                const uint4 v = ld_shared_v4(buf_addr + r * 128 + ((ch ^ (r & 7)) << 4));
                TOut* dst = out + int64_t(grow) * p.ldo + gcol;
                if (p.epi_vec16 && gcol + kElems16 <= col_end) {
                  *reinterpret_cast<uint4*>(dst) = v;
                } else {
                  const TOut* e = reinterpret_cast<const TOut*>(&v);
#pragma unroll
                  for (int j = 0; j < kElems16; ++j)
                    if (gcol + j < col_end) dst[j] = e[j];
                }
              }
            }
          }
        }
      }

      if constexpr (T::kHooks) {
        // Hook (c): tell the consumer of this tile (possibly on a peer GPU) that it is written.
        if (p.signal_mode != kSignalNone) {
          if (!p.epi_direct && tid_wg == 0) {
            tma_store_wait_all<0>();     // the bulk stores have completed their writes
            fence_proxy_async_global();  // order them before the generic-proxy release below
          }
          named_barrier_sync(1, 128 * T::kConsumers);  // both consumer warpgroups are done
          if (threadIdx.x == 128 && t.row0 < t.row_end && t.col0 < p.N) {
            const int64_t idx = p.signal_mode == kSignalPerTile
                                    ? int64_t(t.m_blk) * p.tiles_n + t.n_blk
                                    : int64_t(t.row0) / p.signal_rows;
            fence_acq_rel_sys();
            if (p.signal_op == kSignalStore) {
              st_release_sys_u64(p.signals + idx, p.signal_value);
            } else {
              red_add_release_sys_u64(p.signals + idx, p.signal_value);
            }
          }
        }
      }
    }
    // Bulk stores must finish reading smem before the CTA exits.
    if (!p.epi_direct && tid_wg == 0) tma_store_wait_all<0>();
  }

  if constexpr (T::kClusterSize > 1) {
    // No CTA may exit while its peer can still multicast into its smem or arrive on its
    // barriers.
    cluster_sync();
  }
#endif
}

}  // namespace weft::gemm::sm90
