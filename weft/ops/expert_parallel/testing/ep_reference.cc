#include "weft/ops/expert_parallel/testing/ep_reference.h"

#include "weft/ops/expert_parallel/ep_numerics.h"

namespace weft::ops::ep_testing {

RefRouting make_routing(const Problem& given, const TokenCounts& tokens) {
  const Problem P = resolved(given);
  RefRouting R;
  R.T.assign(tokens.T, tokens.T + P.world);
  R.topk.resize(P.world);
  R.weights.resize(P.world);
  long long ids[kEpMaxTopk];
  for (int r = 0; r < P.world; ++r) {
    R.topk[r].resize(static_cast<size_t>(R.T[r]) * P.topk);
    R.weights[r].resize(static_cast<size_t>(R.T[r]) * P.topk);
    for (int t = 0; t < R.T[r]; ++t) {
      experts_of(P, r, t, ids);
      for (int s = 0; s < P.topk; ++s) {
        R.topk[r][static_cast<size_t>(t) * P.topk + s] = ids[s];
        R.weights[r][static_cast<size_t>(t) * P.topk + s] = weight(P, r, t, s);
      }
    }
  }
  return R;
}

uint32_t ref_dest_mask(const Problem& P, const RefRouting& R, int r, int t) {
  const int el = P.experts / P.world;
  uint32_t m = 0;
  for (int s = 0; s < P.topk; ++s) {
    const int e = valid_expert(P, R.topk[r][static_cast<size_t>(t) * P.topk + s]);
    if (e >= 0) m |= 1u << (e / el);
  }
  return m;
}

RefDispatch ref_dispatch(const Problem& P, const RefRouting& R, int me) {
  const int W = P.world, el = P.experts / W, k = P.topk;
  std::vector<std::vector<RefPair>> per_expert(el);
  RefDispatch D;
  D.source_rows.assign(W, 0);
  for (int s = 0; s < W; ++s)
    for (int t = 0; t < R.T[s]; ++t) {
      bool any = false;
      for (int kk = 0; kk < k; ++kk) {
        const size_t i = static_cast<size_t>(t) * k + kk;
        const int e = valid_expert(P, R.topk[s][i]);
        if (e < 0 || e / el != me) continue;
        per_expert[e - me * el].push_back(RefPair{s, t, kk, e - me * el, R.weights[s][i]});
        any = true;
      }
      if (any) ++D.source_rows[s];
    }
  D.expert_counts.resize(el);
  D.expert_offsets.assign(el + 1, 0);
  for (int e = 0; e < el; ++e) {
    D.expert_counts[e] = static_cast<int>(per_expert[e].size());
    D.expert_offsets[e + 1] = D.expert_offsets[e] + D.expert_counts[e];
    D.pairs.insert(D.pairs.end(), per_expert[e].begin(), per_expert[e].end());
  }
  return D;
}

std::vector<uint16_t> ref_x_row(const Problem& P, int rank, int token) {
  std::vector<uint16_t> row(P.hidden);
  for (int c = 0; c < P.hidden; ++c) row[c] = x_bits(P, rank, token, c);
  return row;
}

void ref_x_row_fp8(const Problem& P, int rank, int token, std::vector<uint8_t>& q,
                   std::vector<float>& scales) {
  const std::vector<uint16_t> row = ref_x_row(P, rank, token);
  q.resize(P.hidden);
  scales.resize(P.hidden / 128);
  ep::host_quantize_row(row.data(), P.hidden, q.data(), scales.data());
}

std::vector<uint16_t> ref_combine(const Problem& given, const RefRouting& R, int r) {
  const Problem P = resolved(given);
  const int W = P.world, el = P.experts / W, k = P.topk, H = P.hidden;
  std::vector<uint16_t> out(static_cast<size_t>(R.T[r]) * H);
  for (int t = 0; t < R.T[r]; ++t) {
    const uint32_t m = ref_dest_mask(P, R, r, t);
    for (int c = 0; c < H; ++c) {
      float sum = 0.f;
      for (int d = 0; d < W; ++d) {
        if (!((m >> d) & 1u)) continue;
        float acc = 0.f;
        for (int kk = 0; kk < k; ++kk) {
          const size_t i = static_cast<size_t>(t) * k + kk;
          const int e = valid_expert(P, R.topk[r][i]);
          if (e < 0 || e / el != d) continue;
          acc = std::fmaf(R.weights[r][i], ep::bf16_to_float(y_bits(P, e, r, t, kk, c)), acc);
        }
        sum += ep::bf16_to_float(ep::float_to_bf16_rne(acc));
      }
      out[static_cast<size_t>(t) * H + c] = ep::float_to_bf16_rne(sum);
    }
  }
  return out;
}

}  // namespace weft::ops::ep_testing
