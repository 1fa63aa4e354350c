// Copy-engine transfer of a block of rows into a peer's symmetric buffer (0 SMs): one
// cudaMemcpyAsync when both sides are contiguous, a pitched cudaMemcpy2DAsync otherwise.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "weft/runtime/world.h"

namespace weft::tp {

// rows x row_bytes from local `src` (ld_src_bytes apart) into the symmetric buffer at `dst` (this
// rank's address; ld_dst_bytes apart) on world rank `peer`, on `stream`.
void copy_rows_to_peer(World& world, void* dst, int64_t ld_dst_bytes, const void* src,
                       int64_t ld_src_bytes, int64_t rows, int64_t row_bytes, int peer,
                       cudaStream_t stream);

}  // namespace weft::tp
