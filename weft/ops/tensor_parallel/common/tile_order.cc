#include "weft/ops/tensor_parallel/common/tile_order.h"

#include <algorithm>

namespace weft::tp {
namespace {

// Builds the spec from a key per m-block (its segment), keys in [0, world).
TileOrderSpec from_keys(const std::vector<int>& key, int world, int units_n, int raster_group) {
  TileOrderSpec s;
  const int n = static_cast<int>(key.size());
  if (n == 0 || n > kMaxOrderMBlocks || world + 1 > kMaxOrderSegments || units_n <= 0) return s;
  s.units_n = units_n;
  s.num_mblocks = n;
  s.raster_group = std::max(1, raster_group);
  s.num_segments = world;
  int pos = 0;
  for (int seg = 0; seg < world; ++seg) {
    s.seg_begin[seg] = pos;
    for (int mb = 0; mb < n; ++mb)
      if (key[mb] == seg) s.mb_seq[pos++] = static_cast<uint16_t>(mb);
  }
  s.seg_begin[world] = pos;
  return s;
}

// Ranks whose chunk (rows [q * m_local, (q + 1) * m_local)) m-block mb touches: [first, last].
void chunks_of(int64_t mb, int64_t block_m, int64_t m_total, int64_t m_local, int64_t& first,
               int64_t& last) {
  const int64_t r0 = mb * block_m;
  const int64_t r1 = std::min(m_total, r0 + block_m) - 1;
  first = r0 / m_local;
  last = r1 / m_local;
}

}  // namespace

std::vector<int32_t> expand_tile_order(const TileOrderSpec& s) {
  std::vector<int32_t> out;
  if (!s.valid()) return out;
  out.resize(static_cast<size_t>(s.num_units()));
  for (int64_t i = 0; i < s.num_units(); ++i) out[static_cast<size_t>(i)] = tile_order_unit(s, i);
  return out;
}

TileOrderSpec ag_gemm_tile_order(const gemm::TileGrid& grid, int64_t m_local, int world, int rank,
                                 int raster_group) {
  if (grid.cluster_m != 1 || grid.cluster_n != 1 || m_local <= 0 || world <= 0) return {};
  const int64_t m_total = m_local * world;
  std::vector<int> key(static_cast<size_t>(grid.tiles_m), 0);
  for (int64_t mb = 0; mb < grid.tiles_m; ++mb) {
    int64_t first, last;
    chunks_of(mb, grid.block_m, m_total, m_local, first, last);
    int k = 0;
    // At most `world` distinct chunks matter (an m-block can span many tiny chunks).
    for (int64_t c = first; c <= last && c < first + world; ++c)
      k = std::max(k, ag_arrival_position(static_cast<int>(c), rank, world));
    if (last - first + 1 >= world) k = world - 1;
    key[static_cast<size_t>(mb)] = k;
  }
  return from_keys(key, world, grid.units_n, raster_group);
}

TileOrderSpec gemm_rs_tile_order(const gemm::TileGrid& grid, int64_t m_local, int world, int rank,
                                 int raster_group) {
  if (grid.cluster_m != 1 || grid.cluster_n != 1 || m_local <= 0 || world <= 0) return {};
  const int64_t m_total = m_local * world;
  std::vector<int> key(static_cast<size_t>(grid.tiles_m), 0);
  for (int64_t mb = 0; mb < grid.tiles_m; ++mb) {
    int64_t first, last;
    chunks_of(mb, grid.block_m, m_total, m_local, first, last);
    int k = world - 1;
    for (int64_t c = first; c <= last && c < first + world; ++c)
      k = std::min(k, rs_send_position(static_cast<int>(c), rank, world));
    if (last - first + 1 >= world) k = 0;
    key[static_cast<size_t>(mb)] = k;
  }
  return from_keys(key, world, grid.units_n, raster_group);
}

}  // namespace weft::tp
