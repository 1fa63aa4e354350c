// Test data for benchmarks: a pseudo-random, non-zero byte pattern that any rank can regenerate
// from a 64-bit seed, so that a receiver checks what its peer sent without shipping the data.
// Benchmarks fill their sources with a fresh seed per run and check every destination byte after
// the timed loop, so a copy that moved nothing (or the wrong bytes) cannot report a good number.
//
// Word i (4 bytes) of pattern `seed` is a bijective hash of i mixed with the seed, never zero: a
// shifted, truncated or stale buffer does not match.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime.h>

namespace weft {
class World;
}

namespace weft::bench {

// Fill `bytes` at `dst` (device memory, 4-byte aligned) with pattern `seed`; asynchronous.
void fill_pattern(void* dst, size_t bytes, uint64_t seed, cudaStream_t stream);

struct PatternCheck {
  uint64_t mismatched_words = 0;  // 4-byte words that differ (a partial tail counts as one word)
  uint64_t first_bad_byte = ~0ull;  // byte offset of the first mismatched word, ~0 when none
  bool ok() const { return mismatched_words == 0; }
  std::string describe() const;  // "ok" or "N mismatched words, first at byte offset X"
};

// Compare `bytes` at `data` (device memory, 4-byte aligned) with pattern `seed`. Enqueued on
// `stream`, which this call then synchronizes.
PatternCheck check_pattern(const void* data, size_t bytes, uint64_t seed, cudaStream_t stream);

// A well-mixed seed from several parts (e.g. run nonce, test id, sending rank).
uint64_t mix_seed(uint64_t a, uint64_t b = 0, uint64_t c = 0);

// Collective: a nonce equal on every rank (rank 0 draws it from the clock), so each run uses fresh
// data while every rank can regenerate its peers' patterns.
uint64_t shared_nonce(World& world);

}  // namespace weft::bench
