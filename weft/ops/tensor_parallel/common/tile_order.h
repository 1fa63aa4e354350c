// Tile orders for the fused GEMMs (GEMM engine hook (a)): which output tiles the persistent GEMM
// computes first.
//
//   AG-GEMM: an m-block (BLOCK_M rows of the gathered A) can start once every rank's chunk it
//            touches has arrived; chunks arrive in the order this rank, rank+1, rank+2, ... (the
//            copy schedule), so m-blocks are ordered by the arrival position of their last chunk.
//   GEMM-RS: the output rows of rank q are sent to q as soon as they are complete; they are sent
//            in the order rank+1, rank+2, ..., and this rank's own rows are needed last, so
//            m-blocks are ordered by the send position of the first rank that needs them.
//
// Either way the order is: a sequence of m-blocks split into segments (one per position), and
// inside a segment the GEMM's own grouped raster (groups of `raster_group` m-blocks, column by
// column inside a group, for L2 reuse). The host builds the sequence (TileOrderSpec, a plain
// struct small enough to be a kernel parameter); a kernel expands it into the unit-id array the
// GEMM reads, with tile_order_unit() below, which the host tests share.
#pragma once

#include <cstdint>
#include <vector>

#include "weft/gemm/gemm.h"

#if defined(__CUDACC__)
#define WEFT_TP_HD __host__ __device__ __forceinline__
#else
#define WEFT_TP_HD inline
#endif

namespace weft::tp {

inline constexpr int kMaxOrderMBlocks = 4096;  // m-blocks an order can hold (M <= 512K rows)
inline constexpr int kMaxOrderSegments = 65;   // positions (ranks) + 1

struct TileOrderSpec {
  int32_t units_n = 0;       // n-units of the GEMM grid
  int32_t num_mblocks = 0;   // entries of mb_seq (= the GEMM's tiles_m); 0 = no order
  int32_t raster_group = 1;  // m-blocks per raster group inside a segment
  int32_t num_segments = 0;
  int32_t seg_begin[kMaxOrderSegments] = {};  // segment s = mb_seq[seg_begin[s], seg_begin[s+1])
  uint16_t mb_seq[kMaxOrderMBlocks] = {};

  WEFT_TP_HD bool valid() const { return num_mblocks > 0; }
  WEFT_TP_HD int64_t num_units() const { return int64_t(num_mblocks) * units_n; }
};

// Unit id (m_unit * units_n + n_unit) at position i in [0, num_units()) of the order.
WEFT_TP_HD int32_t tile_order_unit(const TileOrderSpec& s, int64_t i) {
  int k = 0;
  while (k + 1 < s.num_segments && int64_t(s.seg_begin[k + 1]) * s.units_n <= i) ++k;
  const int64_t seg_first = s.seg_begin[k];
  const int64_t seg_len = s.seg_begin[k + 1] - seg_first;
  const int64_t local = i - seg_first * s.units_n;
  const int64_t per_group = int64_t(s.raster_group) * s.units_n;
  const int64_t g = local / per_group;
  const int64_t first = g * s.raster_group;
  const int64_t rest = seg_len - first;
  const int64_t gs = rest < s.raster_group ? rest : s.raster_group;
  const int64_t in = local - g * per_group;
  const int64_t mb = s.mb_seq[seg_first + first + in % gs];
  const int64_t nb = in / gs;
  return static_cast<int32_t>(mb * s.units_n + nb);
}

// The host-side expansion (tests, and a check that the order is a permutation).
std::vector<int32_t> expand_tile_order(const TileOrderSpec& s);

// AG-GEMM order for the gathered problem: M = world * m_local rows, `rank` = this rank. Invalid
// (num_mblocks = 0) when the grid has more m-blocks than kMaxOrderMBlocks or the world more ranks
// than kMaxOrderSegments - 1: the GEMM then runs in its own order (still correct, less overlap).
TileOrderSpec ag_gemm_tile_order(const gemm::TileGrid& grid, int64_t m_local, int world, int rank,
                                 int raster_group);

// GEMM-RS order for the partial product of M = world * m_local rows.
TileOrderSpec gemm_rs_tile_order(const gemm::TileGrid& grid, int64_t m_local, int world, int rank,
                                 int raster_group);

// Arrival position of rank `src`'s chunk at rank `rank` in the AG schedule (0 = own chunk).
WEFT_TP_HD int ag_arrival_position(int src, int rank, int world) {
  return (src - rank + world) % world;
}
// Send position of the chunk owned by `dest` in the RS schedule (own rows last = world - 1).
WEFT_TP_HD int rs_send_position(int dest, int rank, int world) {
  return (dest - rank - 1 + 2 * world) % world;
}

}  // namespace weft::tp
