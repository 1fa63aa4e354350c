// Deterministic inputs for the expert-parallel tests and benchmarks that any rank, host or device,
// regenerates from a seed: token values x(rank, token, channel), routing (expert ids per token and
// slot, under several routing patterns), top-k weights, and the "expert output" y of a
// dispatched pair. Everything is built from exact bit patterns (no rounding), so host and device
// agree bit for bit.
#pragma once

#include <cstdint>

#include "weft/device/hash.cuh"
#include "weft/ops/expert_parallel/ep_numerics.h"

namespace weft::ops::ep_testing {

enum class Routing : int {
  random = 0,      // k distinct experts, uniform
  one_expert = 1,  // every token to expert `param` only (slot 0; the other slots -1)
  one_rank = 2,    // every token to min(k, E/W) distinct experts of rank `param` (the rest -1)
  skip_rank = 3,   // k distinct experts, none on rank `param` (that rank receives nothing)
  sparse = 4,      // random, then some slots -1, some duplicates of slot 0, every 7th token none
  none = 5,        // every slot -1
};

struct Problem {
  uint64_t seed = 0;
  uint64_t tag = 0;
  int world = 1, experts = 1, hidden = 128, topk = 1;
  Routing routing = Routing::random;
  int param = 0;
  // One deliberately bad expert id (tests of the device-side check): bad_rank < 0 = none.
  int bad_rank = -1, bad_token = 0, bad_slot = 0;
  long long bad_value = 0;
  // The routing pattern follows the tag (graph replays): see resolved().
  bool vary_routing = false;
  // Every fourth token (1, 5, 9, ...) holds a NaN, a +inf and a -inf in three adjacent channels
  // (x_bits): fp8 must code them without writing the staging's 0x7f poison.
  bool non_finite = false;
};

// With vary_routing, the tag picks the routing pattern and its rank parameter.
WEFT_EP_HD inline Problem resolved(Problem P) {
  if (P.vary_routing) {
    P.routing = static_cast<Routing>(P.tag % 5);  // random, one_expert, one_rank, skip_rank, sparse
    P.param = static_cast<int>((P.tag / 5) % 1024);
  }
  return P;
}

WEFT_EP_HD inline uint64_t key(const Problem& P, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  return dev::mix_key(P.seed ^ (P.tag * 0x9E3779B97F4A7C15ull), a, b, c);
}

// bf16 bits of x(rank, token, channel): exact values; each 128-channel group has its own
// magnitude (2^-8 .. 2^7), and about one group in 29 is all zeros (the fp8 amax = 0 path).
WEFT_EP_HD inline uint16_t x_bits(const Problem& P, int rank, int token, int c) {
  if (P.non_finite && token % 4 == 1 && P.hidden > 3) {
    const int c0 = static_cast<int>(key(P, 0x13, uint64_t(rank), uint64_t(token)) % (P.hidden - 2));
    if (c == c0) return 0x7fc1;      // NaN
    if (c == c0 + 1) return 0x7f80;  // +inf
    if (c == c0 + 2) return 0xff80;  // -inf
  }
  const uint64_t g = key(P, 0x11, (uint64_t(rank) << 32) | uint32_t(token), uint64_t(c / 128));
  if (g % 29 == 0) return 0;
  const uint64_t h = key(P, 0x12, (uint64_t(rank) << 32) | uint32_t(token), uint64_t(c));
  const uint32_t exponent = 127 - 8 + static_cast<uint32_t>(g % 16) - static_cast<uint32_t>(h % 3);
  const uint32_t mantissa = static_cast<uint32_t>((h >> 8) & 0x7f);
  const uint32_t sign = static_cast<uint32_t>((h >> 20) & 1);
  return static_cast<uint16_t>((sign << 15) | (exponent << 7) | mantissa);
}

// fp32 top-k weight in [0.5, 1): exact.
WEFT_EP_HD inline float weight(const Problem& P, int rank, int token, int slot) {
  const uint64_t h = key(P, 0x21, (uint64_t(rank) << 32) | uint32_t(token), uint64_t(slot));
  return ep::bits_to_float(0x3f000000u | static_cast<uint32_t>(h & 0x7fffffu));
}

// bf16 bits of the expert output for the pair (global expert e, home rank, token, slot): values in
// +-[0.25, 4), exact. (Tests make the "expert" a function of the pair's bookkeeping only, so the
// combine check does not depend on the dispatch's quantization.)
WEFT_EP_HD inline uint16_t y_bits(const Problem& P, int expert, int rank, int token, int slot, int c) {
  const uint64_t h = key(P, 0x31 + uint64_t(expert) * 0x100,
                         (uint64_t(rank) << 40) | (uint64_t(token) << 8) | uint32_t(slot), uint64_t(c));
  const uint32_t exponent = 125 + static_cast<uint32_t>(h % 4);
  return static_cast<uint16_t>((((h >> 9) & 1) << 15) | (exponent << 7) | ((h >> 16) & 0x7f));
}

WEFT_EP_HD inline bool contains(const long long* v, int n, long long e) {
  for (int i = 0; i < n; ++i)
    if (v[i] == e) return true;
  return false;
}

// Expert ids of token `token` of rank `rank` (out[0..k)). Requires k <= 32.
WEFT_EP_HD inline void experts_of(const Problem& P, int rank, int token, long long* out) {
  const int E = P.experts, k = P.topk, W = P.world, el = E / W;
  const uint64_t tk = (uint64_t(rank) << 32) | uint32_t(token);
  for (int s = 0; s < k; ++s) out[s] = -1;
  switch (P.routing) {
    case Routing::none:
      break;
    case Routing::one_expert:
      out[0] = P.param % E;
      break;
    case Routing::one_rank: {
      const int d = P.param % W;
      const int n = k < el ? k : el;
      for (int s = 0; s < n; ++s) {
        long long e;
        uint64_t attempt = 0;
        do e = d * el + static_cast<long long>(key(P, 0x41, tk, uint64_t(s) * 1000 + attempt++) % el);
        while (contains(out, s, e));
        out[s] = e;
      }
      break;
    }
    case Routing::skip_rank: {
      const int d = P.param % W;
      const int pool = E - el;
      const int n = k < pool ? k : pool;
      for (int s = 0; s < n; ++s) {
        long long e;
        uint64_t attempt = 0;
        do {
          const long long i = static_cast<long long>(key(P, 0x42, tk, uint64_t(s) * 1000 + attempt++) % pool);
          e = i < d * el ? i : i + el;  // skip rank d's experts
        } while (contains(out, s, e));
        out[s] = e;
      }
      break;
    }
    case Routing::random:
    case Routing::sparse: {
      const int n = k < E ? k : E;
      for (int s = 0; s < n; ++s) {
        long long e;
        uint64_t attempt = 0;
        do e = static_cast<long long>(key(P, 0x43, tk, uint64_t(s) * 1000 + attempt++) % E);
        while (contains(out, s, e));
        out[s] = e;
      }
      if (P.routing == Routing::sparse) {
        if (token % 7 == 3) {
          for (int s = 0; s < k; ++s) out[s] = -1;
        } else {
          for (int s = 1; s < k; ++s) {
            const uint64_t h = key(P, 0x44, tk, uint64_t(s));
            if (h % 4 == 0) out[s] = -1;
            else if (h % 8 == 1) out[s] = out[0];  // a duplicate: two pairs of the same expert
          }
        }
      }
      break;
    }
  }
  if (rank == P.bad_rank && token == P.bad_token && P.bad_slot < k) out[P.bad_slot] = P.bad_value;
}

// Tokens per rank for the tests: up to 32 ranks.
struct TokenCounts {
  int T[kEpMaxRanks] = {};
};

}  // namespace weft::ops::ep_testing
