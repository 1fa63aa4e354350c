// OffsetAllocator: alignment, first fit, coalescing, reuse, misuse, exhaustion, contains(), and a
// randomized run against a granule-bitmap reference model.
#include "weft/runtime/offset_allocator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <vector>

#include "tests/support/expect_error.h"
#include "weft/runtime/error.h"

namespace weft {
namespace {

constexpr size_t kKiB = 1024;

TEST(OffsetAllocator, ConstructorValidates) {
  EXPECT_THROW(OffsetAllocator(4096, 0), InvalidArgument);
  EXPECT_THROW(OffsetAllocator(4096, 48), InvalidArgument);
  EXPECT_THROW(OffsetAllocator(1000, 256), InvalidArgument);  // not a multiple of 256
  OffsetAllocator empty(0);
  EXPECT_EQ(empty.largest_free_block(), 0u);
  EXPECT_THROW(empty.allocate(1), Error);
}

TEST(OffsetAllocator, AllocationsAreAlignedAndPacked) {
  OffsetAllocator a(64 * kKiB);
  EXPECT_EQ(a.capacity(), 64 * kKiB);
  EXPECT_EQ(a.min_alignment(), 256u);
  EXPECT_EQ(a.allocate(100), 0u);
  EXPECT_EQ(a.allocate(256), 256u);  // the first request was rounded up to 256
  EXPECT_EQ(a.allocate(1), 512u);
  EXPECT_EQ(a.bytes_in_use(), 768u);
  EXPECT_EQ(a.live_allocations(), 3u);
  size_t big = a.allocate(100, 4096);
  EXPECT_EQ(big % 4096, 0u);
  EXPECT_EQ(big, 4096u);
  // The gap in front of the aligned block stays usable.
  EXPECT_EQ(a.allocate(256), 768u);
  EXPECT_EQ(a.bytes_in_use(), 768u + 256u + 256u);
}

TEST(OffsetAllocator, ArgumentsAreValidated) {
  OffsetAllocator a(64 * kKiB);
  EXPECT_THROW(a.allocate(0), InvalidArgument);
  EXPECT_THROW(a.allocate(16, 128), InvalidArgument);  // below min_alignment
  EXPECT_THROW(a.allocate(16, 768), InvalidArgument);  // not a power of two
  EXPECT_EQ(a.allocate(16, 256), 0u);
  EXPECT_EQ(a.live_allocations(), 1u);
}

TEST(OffsetAllocator, FirstFit) {
  OffsetAllocator a(16 * kKiB, 1 * kKiB);
  std::vector<size_t> off;
  for (int i = 0; i < 8; ++i) off.push_back(a.allocate(kKiB));  // 0..7 KiB
  a.free(off[1]);                                               // hole of 1 KiB at 1 KiB
  a.free(off[4]);
  a.free(off[5]);  // hole of 2 KiB at 4 KiB
  // A 2 KiB request skips the 1 KiB hole and takes the first hole that fits.
  EXPECT_EQ(a.allocate(2 * kKiB), 4 * kKiB);
  // A 1 KiB request takes the lowest hole.
  EXPECT_EQ(a.allocate(kKiB), 1 * kKiB);
  EXPECT_EQ(a.allocate(kKiB), 8 * kKiB);
}

TEST(OffsetAllocator, CoalescesNeighbours) {
  OffsetAllocator a(4 * kKiB, kKiB);
  size_t x = a.allocate(kKiB), y = a.allocate(kKiB), z = a.allocate(kKiB), w = a.allocate(kKiB);
  EXPECT_EQ(a.largest_free_block(), 0u);
  a.free(x);
  a.free(z);
  EXPECT_EQ(a.largest_free_block(), kKiB);
  a.free(y);  // merges with both neighbours: x..z
  EXPECT_EQ(a.largest_free_block(), 3 * kKiB);
  EXPECT_EQ(a.allocate(3 * kKiB), 0u);
  a.free(0);
  a.free(w);  // merges with the block before it
  EXPECT_EQ(a.largest_free_block(), 4 * kKiB);
  EXPECT_EQ(a.bytes_in_use(), 0u);
  EXPECT_EQ(a.live_allocations(), 0u);
  EXPECT_EQ(a.allocate(4 * kKiB), 0u);
}

TEST(OffsetAllocator, ReuseAfterFreeIsDeterministic) {
  auto run = [] {
    OffsetAllocator a(1 << 20);
    std::vector<size_t> out;
    size_t p = a.allocate(1000), q = a.allocate(5000, 4096), r = a.allocate(300);
    a.free(q);
    out = {p, q, r, a.allocate(2000), a.allocate(7000, 1024), a.allocate(10)};
    a.free(p);
    out.push_back(a.allocate(900));
    return out;
  };
  std::vector<size_t> first = run();
  EXPECT_EQ(first, run());
  EXPECT_EQ(first[6], first[0]);  // the freed block is reused
}

TEST(OffsetAllocator, DoubleFreeAndForeignOffsets) {
  OffsetAllocator a(64 * kKiB);
  size_t x = a.allocate(512);
  size_t y = a.allocate(512);
  a.free(x);
  testing::expect_error([&] { a.free(x); }, {"not the start of a live allocation"});  // double free
  EXPECT_THROW(a.free(y + 256), InvalidArgument);  // inside a block, not its start
  EXPECT_THROW(a.free(1 << 30), InvalidArgument);
  EXPECT_EQ(a.live_allocations(), 1u);
  EXPECT_EQ(a.bytes_in_use(), 512u);
}

TEST(OffsetAllocator, ExhaustionMessage) {
  OffsetAllocator a(16 * kKiB);
  a.allocate(6 * kKiB);
  size_t mid = a.allocate(4 * kKiB);
  a.allocate(6 * kKiB);
  a.free(mid);
  try {
    a.allocate(5 * kKiB, 512);
    FAIL() << "expected an out-of-space error";
  } catch (const InvalidArgument&) {
    FAIL() << "out of space is not an argument error";
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const char* needle : {"requested 5120 bytes", "aligned to 512", "capacity 16384",
                               "in use 12288", "largest free block 4096"}) {
      EXPECT_NE(msg.find(needle), std::string::npos) << msg << "\nmissing: " << needle;
    }
  }
  EXPECT_THROW(a.allocate(SIZE_MAX), Error);  // no overflow while rounding
  EXPECT_THROW(a.allocate(1, size_t{1} << 63), Error);
  EXPECT_EQ(a.allocate(4 * kKiB), mid);  // a failed request changes nothing
}

TEST(OffsetAllocator, Contains) {
  OffsetAllocator a(64 * kKiB);
  size_t x = a.allocate(1000);  // reserved 1024, requested 1000
  size_t y = a.allocate(2048);
  EXPECT_TRUE(a.contains(x, 1000));
  EXPECT_TRUE(a.contains(x + 10, 990));
  EXPECT_FALSE(a.contains(x + 10, 991));  // runs past the requested bytes
  EXPECT_FALSE(a.contains(x, 1024));      // the rounding padding is not the caller's
  EXPECT_TRUE(a.contains(x + 999, 0));
  EXPECT_FALSE(a.contains(x + 1000, 0));
  EXPECT_FALSE(a.contains(x + 500, 2000));  // straddles two allocations
  EXPECT_TRUE(a.contains(y, 2048));
  EXPECT_FALSE(a.contains(y + 2048, 1));
  EXPECT_FALSE(a.contains(y, SIZE_MAX));
  a.free(y);
  EXPECT_FALSE(a.contains(y, 1));
  EXPECT_FALSE(a.contains(SIZE_MAX, 1));
}

// Reference model: one flag per min_alignment granule; first fit = the lowest aligned granule run
// that is entirely free. Complete coalescing makes the real allocator pick exactly that offset.
class Reference {
 public:
  Reference(size_t capacity, size_t granule)
      : granule_(granule), used_(capacity / granule, false) {}

  std::optional<size_t> allocate(size_t bytes, size_t alignment) {
    size_t n = (bytes + granule_ - 1) / granule_, step = alignment / granule_;
    for (size_t g = 0; g + n <= used_.size(); g += step) {
      bool free = true;
      for (size_t k = 0; k < n && free; ++k) free = !used_[g + k];
      if (!free) continue;
      for (size_t k = 0; k < n; ++k) used_[g + k] = true;
      live_[g * granule_] = bytes;
      return g * granule_;
    }
    return std::nullopt;
  }
  void free(size_t offset) {
    size_t n = (live_.at(offset) + granule_ - 1) / granule_;
    for (size_t k = 0; k < n; ++k) used_[offset / granule_ + k] = false;
    live_.erase(offset);
  }
  size_t in_use() const { return std::count(used_.begin(), used_.end(), true) * granule_; }
  size_t largest_free() const {
    size_t best = 0, run = 0;
    for (bool u : used_) {
      run = u ? 0 : run + 1;
      best = std::max(best, run);
    }
    return best * granule_;
  }
  const std::map<size_t, size_t>& live() const { return live_; }

 private:
  size_t granule_;
  std::vector<bool> used_;
  std::map<size_t, size_t> live_;
};

TEST(OffsetAllocator, RandomizedAgainstReference) {
  constexpr size_t kCapacity = 256 * kKiB, kGranule = 256;
  std::mt19937_64 rng(12345);
  for (int trial = 0; trial < 4; ++trial) {
    OffsetAllocator a(kCapacity, kGranule);
    Reference ref(kCapacity, kGranule);
    std::vector<size_t> live;
    for (int step = 0; step < 3000; ++step) {
      bool do_alloc = live.empty() || rng() % 100 < 55;
      if (do_alloc) {
        size_t bytes = 1 + rng() % (rng() % 8 == 0 ? 40 * kKiB : 3 * kKiB);
        size_t alignment = kGranule << (rng() % 5);  // 256 .. 4096
        std::optional<size_t> expected = ref.allocate(bytes, alignment);
        if (expected) {
          size_t got = a.allocate(bytes, alignment);
          ASSERT_EQ(got, *expected) << "step " << step;
          live.push_back(got);
        } else {
          ASSERT_THROW(a.allocate(bytes, alignment), Error) << "step " << step;
        }
      } else {
        size_t i = rng() % live.size();
        a.free(live[i]);
        ref.free(live[i]);
        live[i] = live.back();
        live.pop_back();
      }
      ASSERT_EQ(a.bytes_in_use(), ref.in_use()) << "step " << step;
      ASSERT_EQ(a.largest_free_block(), ref.largest_free()) << "step " << step;
      ASSERT_EQ(a.live_allocations(), live.size());
      if (step % 50 == 0) {
        for (const auto& [offset, bytes] : ref.live()) {
          ASSERT_TRUE(a.contains(offset, bytes));
          ASSERT_FALSE(a.contains(offset, bytes + 1));
        }
      }
    }
    for (size_t offset : live) a.free(offset);
    EXPECT_EQ(a.bytes_in_use(), 0u);
    EXPECT_EQ(a.largest_free_block(), kCapacity);
  }
}

}  // namespace
}  // namespace weft
