// A stateless 64-bit mixer (the splitmix64 finalizer): deterministic pseudo-random values that any
// rank, host or device, can regenerate from a seed. weft's checks, tests and benchmarks use it to
// make data a receiver can verify without the sender shipping it.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace weft::dev {

__host__ __device__ constexpr uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// One well-mixed key from several parts (a seed, a test tag, a rank, a round...).
__host__ __device__ constexpr uint64_t mix_key(uint64_t seed, uint64_t a, uint64_t b = 0,
                                               uint64_t c = 0) {
  return mix64(seed ^ mix64(a * 0x1000193ull ^ mix64(b * 0x100000001B3ull ^ mix64(c))));
}

}  // namespace weft::dev
