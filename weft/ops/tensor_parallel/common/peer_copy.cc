#include "weft/ops/tensor_parallel/common/peer_copy.h"

#include "weft/runtime/copy_engine.h"
#include "weft/runtime/cuda_check.h"

namespace weft::tp {

void copy_rows_to_peer(World& world, void* dst, int64_t ld_dst_bytes, const void* src,
                       int64_t ld_src_bytes, int64_t rows, int64_t row_bytes, int peer,
                       cudaStream_t stream) {
  if (rows <= 0 || row_bytes <= 0) return;
  if ((ld_dst_bytes == row_bytes && ld_src_bytes == row_bytes) || rows == 1) {
    copy_to_peer(world, dst, src, static_cast<size_t>(rows * row_bytes), peer, stream);
    return;
  }
  const size_t span = static_cast<size_t>((rows - 1) * ld_dst_bytes + row_bytes);
  WEFT_CHECK_ARG(world.heap().contains(dst, span),
                 "copy destination ({}, {} bytes) is not inside one symmetric buffer", dst, span);
  void* remote = world.heap().peer_ptr(dst, world.lsa_rank_of(peer));
  WEFT_CUDA_CHECK(cudaMemcpy2DAsync(remote, static_cast<size_t>(ld_dst_bytes), src,
                                    static_cast<size_t>(ld_src_bytes),
                                    static_cast<size_t>(row_bytes), static_cast<size_t>(rows),
                                    cudaMemcpyDefault, stream));
}

}  // namespace weft::tp
