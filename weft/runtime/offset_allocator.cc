#include "weft/runtime/offset_allocator.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

#include "weft/runtime/error.h"

namespace weft {
namespace {

bool is_power_of_two(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace

OffsetAllocator::OffsetAllocator(size_t capacity, size_t min_alignment)
    : capacity_(capacity), min_alignment_(min_alignment) {
  WEFT_CHECK_ARG(is_power_of_two(min_alignment), "min_alignment must be a power of two, got {}",
                 min_alignment);
  WEFT_CHECK_ARG(capacity % min_alignment == 0, "capacity {} is not a multiple of min_alignment {}",
                 capacity, min_alignment);
  if (capacity > 0) free_.emplace(0, capacity);
}

size_t OffsetAllocator::allocate(size_t bytes, size_t alignment) {
  if (alignment == 0) alignment = min_alignment_;
  WEFT_CHECK_ARG(bytes > 0, "cannot allocate 0 bytes");
  WEFT_CHECK_ARG(is_power_of_two(alignment) && alignment >= min_alignment_,
                 "alignment {} must be a power of two of at least {}", alignment, min_alignment_);
  auto out_of_space = [&] {
    return Error(
        "OffsetAllocator::allocate",
        fmt::format("out of symmetric heap space: requested {} bytes aligned to {}; "
                    "capacity {}, in use {} in {} allocations, largest free block {}",
                    bytes, alignment, capacity_, in_use_, live_.size(), largest_free_block()));
  };
  // Checked before rounding so a huge request cannot overflow size_t.
  if (bytes > capacity_) throw out_of_space();
  const size_t reserved = (bytes + min_alignment_ - 1) & ~(min_alignment_ - 1);

  for (auto it = free_.begin(); it != free_.end(); ++it) {
    const size_t block = it->first, size = it->second;
    if (block > SIZE_MAX - (alignment - 1)) break;  // no aligned address at or above this one
    const size_t start = (block + alignment - 1) & ~(alignment - 1);
    // `start - block` may exceed `size` for a small block far below the next aligned address.
    if (start - block > size || size - (start - block) < reserved) continue;
    const size_t end = start + reserved, block_end = block + size;
    free_.erase(it);
    // The alignment gap in front stays free (it is min_alignment-aligned, so still usable).
    if (start > block) free_.emplace(block, start - block);
    if (end < block_end) free_.emplace(end, block_end - end);
    live_.emplace(start, Block{bytes, reserved});
    in_use_ += reserved;
    return start;
  }
  throw out_of_space();
}

void OffsetAllocator::free(size_t offset) {
  auto live = live_.find(offset);
  WEFT_CHECK_ARG(live != live_.end(),
                 "offset {} is not the start of a live allocation (double free, or not from this "
                 "heap)",
                 offset);
  size_t start = offset, size = live->second.reserved;
  in_use_ -= size;
  live_.erase(live);

  // Merge with the free neighbours on both sides so fragments never outlive their neighbours.
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + size) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      size += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(start, size);
}

size_t OffsetAllocator::largest_free_block() const {
  size_t largest = 0;
  for (const auto& [offset, size] : free_) largest = std::max(largest, size);
  return largest;
}

bool OffsetAllocator::contains(size_t offset, size_t bytes) const {
  auto it = live_.upper_bound(offset);
  if (it == live_.begin()) return false;
  --it;
  const size_t start = it->first, length = it->second.requested;
  if (offset - start >= length) return false;  // offset >= start here, so no wrap-around
  return bytes <= length - (offset - start);
}

}  // namespace weft
