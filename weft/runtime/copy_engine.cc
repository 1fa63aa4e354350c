#include "weft/runtime/copy_engine.h"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <mutex>

#include "weft/runtime/cuda_check.h"

namespace weft {
namespace {

// Stream memory operations live in the driver API. weft does not link libcuda (its host-only
// tools and CPU tests must load on machines without a driver), so it asks the runtime for them.
struct StreamMemOps {
  PFN_cuStreamWriteValue64_v11070 write64 = nullptr;
  PFN_cuStreamWaitValue64_v11070 wait64 = nullptr;
};

const StreamMemOps& stream_mem_ops() {
  static StreamMemOps ops;
  static std::once_flag once;
  std::call_once(once, [] {
    cudaDriverEntryPointQueryResult found{};
    WEFT_CUDA_CHECK(cudaGetDriverEntryPointByVersion(
        "cuStreamWriteValue64", reinterpret_cast<void**>(&ops.write64), 11070, cudaEnableDefault,
        &found));
    WEFT_CHECK(found == cudaDriverEntryPointSuccess, "the driver has no cuStreamWriteValue64");
    WEFT_CUDA_CHECK(cudaGetDriverEntryPointByVersion(
        "cuStreamWaitValue64", reinterpret_cast<void**>(&ops.wait64), 11070, cudaEnableDefault,
        &found));
    WEFT_CHECK(found == cudaDriverEntryPointSuccess, "the driver has no cuStreamWaitValue64");
  });
  return ops;
}

void check_symmetric(World& world, const void* p, size_t bytes, const char* what) {
  WEFT_CHECK_ARG(world.heap().contains(p, bytes),
                 "{} ({}, {} bytes) is not inside one symmetric buffer of this world's heap; "
                 "allocate it with World::alloc",
                 what, p, bytes);
}

}  // namespace

void copy_to_peer(World& world, void* dst, const void* src, size_t bytes, int peer,
                  cudaStream_t stream) {
  if (bytes == 0) return;
  check_symmetric(world, dst, bytes, "copy_to_peer destination");
  void* remote = world.heap().peer_ptr(dst, world.lsa_rank_of(peer));
  WEFT_CUDA_CHECK(cudaMemcpyAsync(remote, src, bytes, cudaMemcpyDefault, stream));
}

void copy_from_peer(World& world, void* dst, const void* src, size_t bytes, int peer,
                    cudaStream_t stream) {
  if (bytes == 0) return;
  check_symmetric(world, src, bytes, "copy_from_peer source");
  const void* remote = world.heap().peer_ptr(src, world.lsa_rank_of(peer));
  WEFT_CUDA_CHECK(cudaMemcpyAsync(dst, remote, bytes, cudaMemcpyDefault, stream));
}

void stream_write_signal(World& world, signal_t* sig, int peer, uint64_t value,
                         cudaStream_t stream) {
  check_symmetric(world, sig, sizeof(signal_t), "stream_write_signal signal");
  void* remote = world.heap().peer_ptr(sig, world.lsa_rank_of(peer));
  // Default flags: the write is ordered after (fenced behind) all earlier work on the stream.
  WEFT_CU_CHECK(stream_mem_ops().write64(stream, reinterpret_cast<CUdeviceptr>(remote), value,
                                         CU_STREAM_WRITE_VALUE_DEFAULT));
}

void stream_wait_signal(const signal_t* sig, uint64_t value, cudaStream_t stream) {
  WEFT_CHECK_ARG(reinterpret_cast<uintptr_t>(sig) % sizeof(signal_t) == 0,
                 "signal {} is not 8-byte aligned", static_cast<const void*>(sig));
  WEFT_CU_CHECK(stream_mem_ops().wait64(stream, reinterpret_cast<CUdeviceptr>(sig), value,
                                        CU_STREAM_WAIT_VALUE_GEQ));
}

}  // namespace weft
