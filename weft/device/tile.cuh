// The tile-centric layer (TileLink): producer/consumer tile signals, tile push/pull to peers and
// rank copies, as thin, named compositions of the primitives below it. Fused operators speak in
// tiles: "tile t of rank r is ready", "push my tile t into rank r's buffer and say so".
//
// Signals carry epochs: a producer marks tile t ready for call `epoch` by setting flags[t] = epoch;
// consumers of call `epoch` wait for flags[t] >= epoch. Nothing is ever reset.
#pragma once

#include "weft/device/copy.cuh"

namespace weft::dev {

// ---- producer / consumer inside one rank --------------------------------------------------------

// The group has produced tile `tile` of the local buffer; mark it ready for `epoch`. System scope
// by default, so peers may tile_pull it too (a gpu-scope release does not synchronize with another
// GPU's acquire); Scope::gpu is enough when only this GPU consumes the tile.
template <class Group, Scope S = Scope::sys>
__device__ __forceinline__ void tile_notify(Group group, const Context& ctx, signal_t* flags,
                                            int tile, uint64_t epoch) {
  group.sync();
  if (group.thread_rank() == 0) st<Sem::release, S>(flags + tile, epoch);
}

// Wait until tile `tile` is ready for `epoch`; afterwards every thread of the group may read it.
// (Scope::gpu suffices here: the producer is on this GPU.)
template <class Group, Scope S = Scope::gpu>
__device__ __forceinline__ void tile_wait(Group group, const Context& ctx, const signal_t* flags,
                                          int tile, uint64_t epoch) {
  wait<Group, S>(group, ctx, flags + tile, Cmp::ge, epoch);
}

// ---- across ranks --------------------------------------------------------------------------------

// Peer form: mark tile `tile` ready in `peer`'s flags (this rank wrote the tile into peer memory).
template <class Group>
__device__ __forceinline__ void peer_tile_notify(Group group, const Context& ctx, signal_t* flags,
                                                 int tile, uint64_t epoch, int peer) {
  notify(group, ctx, flags + tile, peer, epoch, SignalOp::set);
}

// Wait for a tile a peer wrote into this rank's memory (the flag is local; peers push it).
template <class Group>
__device__ __forceinline__ void peer_tile_wait(Group group, const Context& ctx,
                                               const signal_t* flags, int tile, uint64_t epoch) {
  wait<Group, Scope::sys>(group, ctx, flags + tile, Cmp::ge, epoch);
}

// A tile: `rows` x `cols` elements of T with a leading dimension (elements between rows).
template <class T>
struct TileRef {
  T* data;
  int64_t ld;
  int rows, cols;
};

// Copy a tile row by row with the group (16-byte vectors when the rows allow it).
template <class Group, class T>
__device__ __forceinline__ void copy_tile(Group group, TileRef<T> dst, TileRef<const T> src) {
  for (int r = 0; r < src.rows; ++r)
    copy(group, dst.data + r * dst.ld, src.data + r * src.ld, size_t(src.cols) * sizeof(T));
}

// Bytes a tile spans in memory, first element to last.
template <class T>
__device__ __forceinline__ size_t tile_span_bytes(const TileRef<T>& t) {
  return t.rows > 0 && t.cols > 0 ? (size_t(t.rows - 1) * t.ld + t.cols) * sizeof(T) : 0;
}

// Push a local tile into the symmetric buffer `dst` (this rank's address) on `peer`, then set
// peer's flags[tile] = epoch with release semantics.
template <class Group, class T>
__device__ __forceinline__ void tile_push(Group group, const Context& ctx, TileRef<T> dst,
                                          TileRef<const T> src, int peer, signal_t* flags,
                                          int tile, uint64_t epoch) {
  copy_tile(group,
            TileRef<T>{symm_at_span(ctx, dst.data, tile_span_bytes(dst), peer), dst.ld, dst.rows,
                       dst.cols},
            src);
  peer_tile_notify(group, ctx, flags, tile, epoch, peer);
}

// Pull tile `tile` from `peer`'s symmetric buffer `src` once the peer's flag for it says ready
// (the peer marks it with tile_notify at system scope, the default). The flag is read remotely
// here (pull model), so prefer tile_push where the producer knows the consumer.
template <class Group, class T>
__device__ __forceinline__ void tile_pull(Group group, const Context& ctx, TileRef<T> dst,
                                          TileRef<const T> src, int peer, const signal_t* flags,
                                          int tile, uint64_t epoch) {
  wait<Group, Scope::sys>(group, ctx, symm_at(ctx, flags + tile, peer), Cmp::ge, epoch);
  copy_tile(group, dst,
            TileRef<const T>{symm_at_span(ctx, src.data, tile_span_bytes(src), peer), src.ld,
                             src.rows, src.cols});
  group.sync();
}

// Rank copy: move a contiguous chunk to `peer` and signal it (put with signal, by name).
template <class Group>
__device__ __forceinline__ void rank_copy(Group group, const Context& ctx, void* dst,
                                          const void* src, size_t bytes, int peer, signal_t* sig,
                                          uint64_t epoch) {
  putmem_signal_nbi(group, ctx, dst, src, bytes, sig, epoch, SignalOp::set, peer);
}

}  // namespace weft::dev
