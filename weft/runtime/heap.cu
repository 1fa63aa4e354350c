#include "weft/runtime/heap.h"

#include <algorithm>

#include <nccl_device.h>

#include "weft/runtime/cuda_check.h"

namespace weft {
namespace {

// Ask NCCL where each LSA peer's copy of the window starts in this process's address space.
__global__ void read_lsa_pointers(ncclWindow_t window, int lsa_size, uintptr_t* out) {
  for (int p = threadIdx.x; p < lsa_size; p += blockDim.x)
    out[p] = reinterpret_cast<uintptr_t>(ncclGetLsaPointer(window, 0, p));
}

}  // namespace

SymmetricHeap::SymmetricHeap(ncclComm_t comm, size_t bytes, int lsa_rank, int lsa_size)
    : comm_(comm), bytes_(bytes), lsa_size_(lsa_size), allocator_(bytes, 256) {
  WEFT_CHECK_ARG(bytes >= NCCL_WIN_REQUIRED_ALIGNMENT && bytes % NCCL_WIN_REQUIRED_ALIGNMENT == 0,
                 "symmetric heap size must be a positive multiple of {} bytes, got {}",
                 NCCL_WIN_REQUIRED_ALIGNMENT, bytes);
  void* base = nullptr;
  WEFT_NCCL_CHECK(ncclMemAlloc(&base, bytes));
  base_ = static_cast<char*>(base);
  try {
    WEFT_NCCL_CHECK(ncclCommWindowRegister(comm, base_, bytes, &window_, NCCL_WIN_COLL_SYMMETRIC));

    uintptr_t* d_ptrs = nullptr;
    WEFT_CUDA_CHECK(cudaMalloc(&d_ptrs, sizeof(uintptr_t) * lsa_size));
    std::vector<uintptr_t> ptrs(lsa_size);
    read_lsa_pointers<<<1, 64>>>(window_, lsa_size, d_ptrs);
    cudaError_t launch = cudaGetLastError();
    cudaError_t copy = cudaMemcpy(ptrs.data(), d_ptrs, sizeof(uintptr_t) * lsa_size,
                                  cudaMemcpyDeviceToHost);
    cudaFree(d_ptrs);
    WEFT_CUDA_CHECK(launch);
    WEFT_CUDA_CHECK(copy);

    // NCCL maps the team's windows at a fixed stride; weft's symm_at relies on that layout.
    lsa_base_ = reinterpret_cast<char*>(ptrs[0]);
    lsa_stride_ = lsa_size > 1 ? ptrs[1] - ptrs[0] : 0;
    for (int p = 0; p < lsa_size; ++p)
      WEFT_CHECK(ptrs[p] == ptrs[0] + p * lsa_stride_,
                 "NCCL's LSA mapping is not evenly strided (peer {} at {:#x}, base {:#x}, stride "
                 "{:#x}); weft's symm_at cannot address it",
                 p, ptrs[p], ptrs[0], lsa_stride_);
    lsa_rank_ = lsa_rank;
  } catch (...) {
    // Only this rank failed here (a local allocation, the stride check), while deregistration is
    // collective: calling it alone could wait for peers forever. Leak the window and its memory;
    // the World aborts the communicator next (release(false)), which the peers' waits then see.
    if (!window_) ncclMemFree(base_);
    throw;
  }
}

SymmetricHeap::~SymmetricHeap() {
  // Errors cannot be thrown from here; a failing deregistration only leaks.
  if (window_) ncclCommWindowDeregister(comm_, window_);
  if (base_) ncclMemFree(base_);
}

void* SymmetricHeap::allocate(size_t bytes, size_t alignment) {
  WEFT_CHECK_ARG(alignment == 0 || (alignment & (alignment - 1)) == 0,
                 "alignment must be a power of two, got {}", alignment);
  // Every block starts on the allocator's 256-byte grid, which satisfies smaller alignments.
  std::lock_guard<std::mutex> lock(mutex_);
  return base_ + allocator_.allocate(bytes, std::max(alignment, allocator_.min_alignment()));
}

void SymmetricHeap::free(void* p) {
  WEFT_CHECK_ARG(p >= base_ && static_cast<char*>(p) < base_ + bytes_,
                 "pointer {} does not belong to the symmetric heap [{}, {})", p,
                 static_cast<void*>(base_), static_cast<void*>(base_ + bytes_));
  std::lock_guard<std::mutex> lock(mutex_);
  allocator_.free(static_cast<char*>(p) - base_);
}

bool SymmetricHeap::contains(const void* p, size_t bytes) const {
  const char* c = static_cast<const char*>(p);
  if (c < base_ || c >= base_ + bytes_) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  return allocator_.contains(c - base_, bytes);
}

size_t SymmetricHeap::offset_of(const void* p) const {
  const char* c = static_cast<const char*>(p);
  WEFT_CHECK_ARG(c >= base_ && c < base_ + bytes_,
                 "pointer {} is not in the symmetric heap [{}, {})", p,
                 static_cast<const void*>(base_), static_cast<const void*>(base_ + bytes_));
  return c - base_;
}

void* SymmetricHeap::peer_ptr(const void* p, int lsa_peer) const {
  WEFT_CHECK_ARG(lsa_peer >= 0 && lsa_peer < lsa_size_, "peer {} is not in this node's team [0, {})",
                 lsa_peer, lsa_size_);
  // The own rank's is `p` itself, not NCCL's second mapping of it (dev::symm_at does the same).
  if (lsa_peer == lsa_rank_) return base_ + offset_of(p);
  return lsa_base_ + lsa_peer * lsa_stride_ + offset_of(p);
}

}  // namespace weft
