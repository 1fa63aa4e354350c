// The symmetric heap: one NCCL window per world (registration is collective and slow), carved into
// symmetric buffers by a deterministic sub-allocator. Every rank makes the same allocations in the
// same order, so a buffer sits at the same offset on every rank, and a kernel reaches a peer's copy
// with dev::symm_at(). SymmetricBuffer<T> owns one allocation (RAII, move-only).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <nccl.h>

#include "weft/runtime/offset_allocator.h"

namespace weft {

class SymmetricHeap {
 public:
  // Collective over `comm`: allocates `bytes` with ncclMemAlloc on every rank and registers them as
  // one NCCL_WIN_COLL_SYMMETRIC window. `lsa_rank`/`lsa_size` describe this node's team.
  SymmetricHeap(ncclComm_t comm, size_t bytes, int lsa_rank, int lsa_size);
  ~SymmetricHeap();
  SymmetricHeap(const SymmetricHeap&) = delete;
  SymmetricHeap& operator=(const SymmetricHeap&) = delete;

  // Reserve `bytes` (alignment a power of two >= 256; 0 means 256). Symmetric only when every rank
  // makes the same calls in the same order; World::alloc checks that across ranks. allocate, free,
  // contains and bytes_in_use may be called from several threads (a lock serializes them), but
  // symmetric allocations only stay symmetric in a deterministic order.
  void* allocate(size_t bytes, size_t alignment = 0);
  void free(void* p);

  // True when [p, p + bytes) lies inside one live allocation of this heap.
  bool contains(const void* p, size_t bytes = 1) const;
  size_t offset_of(const void* p) const;

  // Host-side address of `p`'s counterpart on LSA peer `lsa_peer`: for copy engines
  // (cudaMemcpyAsync) and stream memory operations. Kernels use dev::symm_at instead.
  void* peer_ptr(const void* p, int lsa_peer) const;

  char* base() const { return base_; }
  size_t capacity() const { return bytes_; }
  size_t bytes_in_use() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return allocator_.bytes_in_use();
  }
  ncclWindow_t window() const { return window_; }
  char* lsa_base() const { return lsa_base_; }
  uint64_t lsa_stride() const { return lsa_stride_; }

 private:
  ncclComm_t comm_;
  char* base_ = nullptr;
  size_t bytes_ = 0;
  ncclWindow_t window_ = nullptr;
  char* lsa_base_ = nullptr;
  uint64_t lsa_stride_ = 0;
  int lsa_size_ = 0;
  int lsa_rank_ = 0;
  mutable std::mutex mutex_;  // guards allocator_
  OffsetAllocator allocator_;
};

// One symmetric allocation of `count` elements of T. Freed (back to the heap) on destruction; the
// owner must make sure no peer still writes into it (e.g. a barrier before freeing). It refers to
// its World's heap: destroy (or reset()) every buffer, and every operator holding some, before
// the World.
template <class T>
class SymmetricBuffer {
 public:
  SymmetricBuffer() = default;
  SymmetricBuffer(SymmetricHeap* heap, T* data, size_t count)
      : heap_(heap), data_(data), count_(count) {}
  ~SymmetricBuffer() { reset(); }
  SymmetricBuffer(SymmetricBuffer&& o) noexcept { *this = std::move(o); }
  SymmetricBuffer& operator=(SymmetricBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      heap_ = std::exchange(o.heap_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }

  T* data() const { return data_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }
  explicit operator bool() const { return data_ != nullptr; }
  // Host-side address of this buffer on LSA peer `lsa_peer` (copy engines, stream memory ops).
  T* peer(int lsa_peer) const { return static_cast<T*>(heap_->peer_ptr(data_, lsa_peer)); }

  void reset() {
    if (heap_ && data_) heap_->free(data_);
    heap_ = nullptr;
    data_ = nullptr;
    count_ = 0;
  }

 private:
  SymmetricHeap* heap_ = nullptr;
  T* data_ = nullptr;
  size_t count_ = 0;
};

}  // namespace weft
