// Plain structs shared by the host launcher and the sm_90a GEMM kernels. No CUDA types beyond
// fixed-width integers, so both g++ and nvcc translation units can include it.
#pragma once

#include <cstdint>

namespace weft::gemm::detail {

// Signal written by the epilogue hook after a tile is stored.
enum SignalMode : int32_t {
  kSignalNone = 0,
  kSignalPerTile = 1,      // signals[m_blk * tiles_n + n_blk]
  kSignalPerRowChunk = 2,  // signals[(m_blk * block_m) / signal_rows]
};
enum SignalOp : int32_t { kSignalAdd = 0, kSignalStore = 1 };

// Written by a timed-out wait (in host-mapped pinned memory, so the host can still read it after
// the kernel traps and the context is lost). printf is not used in kernels that issue wgmma: any
// call in the kernel makes ptxas serialize every wgmma (warning C7510).
struct HangRecord {
  uint32_t magic;  // kHangMagic once written
  int32_t block, thread;
  int32_t what;     // HangWhat
  int32_t gave_up;  // kHangChunkFlag: 1 when the wait ended early because *give_up was raised
  int32_t reserved;
  uint64_t flag_addr, expected, seen, waited_ns;
};
constexpr uint32_t kHangMagic = 0x57454654u;  // "WEFT"
enum HangWhat : int32_t {
  kHangChunkFlag = 0,      // A-chunk flag wait timed out (flag_addr, expected, seen, waited_ns)
  kHangGroupOverflow = 2,  // grouped GEMM: sum of group rows (seen) > row capacity (expected)
  kHangStreamK = 3,        // stream-K: a peer CTA's partial tile never arrived (flag_addr, seen)
  kHangBadTileOrder = 4,   // Hooks::tile_order[flag_addr] = seen is not a unit id in [0, expected)
};

// Grouped GEMM: most groups (experts) one launch takes (the kernel keeps a per-group table in
// shared memory).
constexpr int kMaxGroups = 256;

// Everything the kernel needs besides the three tensor maps. Filled by the host launcher.
struct KernelParams {
  int32_t M, N, K;
  int32_t tiles_m, tiles_n;  // CTA tiles along M and N
  int32_t units_m;           // scheduler units along M: ceil(tiles_m / cluster_m)
  int32_t units_n;           // scheduler units along N: ceil(tiles_n / cluster_n)
  int32_t num_units;         // units_m * units_n
  int32_t raster_group;      // m-units per rasterization group (>= 1)
  int32_t num_kb;            // ceil(K / 64)

  // Stream-K (plain 1x1 kernels only). Units [0, dp_units) are computed whole, CTA c taking
  // c, c + grid, ...; the k-blocks of units [dp_units, num_units) (sk_iters of them, unit by
  // unit) are split into gridDim.x contiguous ranges, one per CTA. A CTA whose range holds the
  // last k-block of a tile finishes it (adds the partial tiles of the lower CTAs that hold its
  // first k-blocks, then runs the epilogue); the others store their part of it to
  // sk_partials[cta] and raise sk_flags[2 * cta + part] (the finisher resets it to 0).
  int32_t dp_units;      // == num_units without stream-K
  int64_t sk_iters;      // 0: no stream-K
  float* sk_partials;    // [gridDim.x][block_m * block_n] fp32
  uint32_t* sk_flags;    // [gridDim.x][2], all 0 between launches

  const void* bias;  // [N] in the input dtype, or nullptr

  // Epilogue. epi_direct == 0: TMA store through the C tensor map. epi_direct == 1: stores from
  // registers (staged through smem) to `out` with leading dimension `ldo` (elements); 16-byte
  // vector stores when epi_vec16 != 0 (out 16-byte aligned, ldo * sizeof(out) % 16 == 0).
  int32_t epi_direct;
  int32_t epi_vec16;
  void* out;
  int64_t ldo;

  // Overlap hooks; read only by kernels instantiated with hooks enabled.
  const int32_t* tile_order;  // [num_units] unit ids (m_unit * units_n + n_unit), or nullptr
  const uint64_t* wait_flags;  // [ceil(M / wait_chunk_rows)], or nullptr
  int64_t wait_chunk_rows;
  uint64_t wait_expected;      // wait until flags[c] >= wait_expected
  const uint64_t* wait_expected_ptr;  // or nullptr; when set, read at kernel start instead
  uint64_t* signals;           // or nullptr
  int32_t signal_mode;         // SignalMode
  int32_t signal_op;           // SignalOp
  int64_t signal_rows;         // rows per signal for kSignalPerRowChunk
  uint64_t signal_value;       // value added or stored
  uint64_t timeout_ns;         // 0: spin forever
  const volatile uint32_t* give_up;  // Hooks::give_up (host-mapped), or nullptr
  HangRecord* hang;            // host-mapped record for timeouts, or nullptr

  // Grouped mode; read only by kernels instantiated with kGrouped. M is the row capacity of the
  // packed A and C; group g owns the group_rows[g] rows after those of groups 0..g-1, and B_g is
  // rows [g * N, (g + 1) * N) of B. bias (if any) is [groups, N].
  const int32_t* group_rows;  // [groups] on the device (negative counts as 0)
  int32_t groups;             // 1..kMaxGroups
};

}  // namespace weft::gemm::detail
