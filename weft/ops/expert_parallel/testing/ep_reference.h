// Host reference model of the expert-parallel dispatch and combine: what every rank must receive
// and output, from the routing of all ranks (which each rank regenerates from the shared seed).
// It implements README.md's semantics literally (loops in the defining order), with the number
// formats of ep_numerics.h, so results compare exactly.
#pragma once

#include <cstdint>
#include <vector>

#include "weft/ops/expert_parallel/testing/ep_test_data.h"

namespace weft::ops::ep_testing {

// The routing of every rank: topk[r][t * k + s] (raw ids, possibly invalid) and weights.
struct RefRouting {
  std::vector<int> T;
  std::vector<std::vector<long long>> topk;
  std::vector<std::vector<float>> weights;
};
RefRouting make_routing(const Problem& P, const TokenCounts& tokens);

// A valid expert id, or -1 (ids outside [0, E) count as "no expert", as the kernel treats them).
inline int valid_expert(const Problem& P, long long e) {
  return (e >= 0 && e < P.experts) ? static_cast<int>(e) : -1;
}

struct RefPair {
  int rank, token, slot, expert_local;
  float weight;
};

// What rank `me` receives: rows grouped by local expert, ordered by (source rank, token, slot).
struct RefDispatch {
  std::vector<int> expert_counts;   // [E/W]
  std::vector<int> expert_offsets;  // [E/W + 1]
  std::vector<int> source_rows;     // [W]: tokens received from each rank
  std::vector<RefPair> pairs;       // output order
};
RefDispatch ref_dispatch(const Problem& P, const RefRouting& R, int me);

// The bf16 row rank `rank` sends for `token` (hidden values), and its fp8 quantization.
std::vector<uint16_t> ref_x_row(const Problem& P, int rank, int token);
void ref_x_row_fp8(const Problem& P, int rank, int token, std::vector<uint8_t>& q,
                   std::vector<float>& scales);

// Rank r's combine output [T_r][H] (bf16 bits) when every pair's expert output is y_bits(...).
std::vector<uint16_t> ref_combine(const Problem& P, const RefRouting& R, int r);

// Bitmask of ranks that token t of rank r goes to.
uint32_t ref_dest_mask(const Problem& P, const RefRouting& R, int r, int t);

}  // namespace weft::ops::ep_testing
