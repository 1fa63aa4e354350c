// Copy-engine helpers: move data between local memory and peers' symmetric buffers with the GPU's
// copy engines (no SMs used), and raise / await signals from a stream with stream memory
// operations. Together they build overlap pipelines whose communication costs no SM time:
//
//   copy_to_peer(world, dst, src, bytes, peer, s);       // DMA into peer's buffer
//   stream_write_signal(world, sig, peer, epoch, s);     // then tell the peer (ordered after it)
//   ...                                                  // peer: stream_wait_signal or dev::wait
//
// Ranks are world ranks on this node. Every call is asynchronous on `stream` and capturable in a
// CUDA graph.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "weft/runtime/world.h"

namespace weft {

// Copy `bytes` from local memory `src` into the symmetric buffer `dst` (this rank's address) on
// `peer`.
void copy_to_peer(World& world, void* dst, const void* src, size_t bytes, int peer,
                  cudaStream_t stream);

// Copy `bytes` of the symmetric buffer `src` (this rank's address) on `peer` into local `dst`.
void copy_from_peer(World& world, void* dst, const void* src, size_t bytes, int peer,
                    cudaStream_t stream);

// When the stream reaches this point (all earlier work on it done and visible), write `value`
// into the symmetric signal `sig` on `peer` (peer may be this rank).
void stream_write_signal(World& world, signal_t* sig, int peer, uint64_t value,
                         cudaStream_t stream);

// Hold later work on the stream until the local signal `sig` is >= value (a peer's notify, a
// kernel, or another stream's stream_write_signal raises it). Uses no SM while waiting. The
// comparison is the driver's cyclic one, (int64_t)(*sig - value) >= 0, not an unsigned >=: a
// signal more than 2^63 above `value` (e.g. ~0 as "always ready") reads as not yet reached.
void stream_wait_signal(const signal_t* sig, uint64_t value, cudaStream_t stream);

}  // namespace weft
