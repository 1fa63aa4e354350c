// Host-side sub-allocator behind the symmetric heap: hands out offsets into one big registered
// buffer. Symmetric by construction: it is fully deterministic, so ranks that make the same calls
// in the same order get the same offsets, which is what makes a pointer valid on every peer.
// Host-only, no CUDA, not thread-safe (SymmetricHeap locks around it).
//
// First fit over an address-ordered free list, coalescing neighbours on free. Reservations are
// rounded up to min_alignment so every block boundary stays min_alignment-aligned.
#pragma once

#include <cstddef>
#include <map>

namespace weft {

class OffsetAllocator {
 public:
  // `min_alignment` must be a power of two and `capacity` a multiple of it (InvalidArgument).
  explicit OffsetAllocator(size_t capacity, size_t min_alignment = 256);

  // Returns the offset of a new block of at least `bytes` bytes aligned to `alignment`
  // (0 = min_alignment). Throws InvalidArgument for bytes == 0 or an alignment that is not a power
  // of two >= min_alignment; weft::Error when no free block fits (the message gives the request,
  // the capacity, the bytes in use and the largest free block).
  size_t allocate(size_t bytes, size_t alignment = 0);

  // Releases the block at `offset`. Throws InvalidArgument if `offset` is not the start of a live
  // allocation (a double free, or an offset that never came from allocate()).
  void free(size_t offset);

  size_t capacity() const { return capacity_; }
  size_t min_alignment() const { return min_alignment_; }
  // Bytes reserved by live allocations (each request rounded up to min_alignment).
  size_t bytes_in_use() const { return in_use_; }
  size_t largest_free_block() const;
  size_t live_allocations() const { return live_.size(); }

  // True if [offset, offset + bytes) lies inside one live allocation's requested bytes (not its
  // rounding padding). With bytes == 0: whether `offset` itself lies inside one.
  bool contains(size_t offset, size_t bytes) const;

 private:
  struct Block {
    size_t requested;  // what allocate() was asked for
    size_t reserved;   // requested rounded up to min_alignment
  };

  size_t capacity_;
  size_t min_alignment_;
  size_t in_use_ = 0;
  std::map<size_t, size_t> free_;  // offset -> size, address order, never two adjacent blocks
  std::map<size_t, Block> live_;   // offset -> block
};

}  // namespace weft
