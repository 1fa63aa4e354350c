// Multi-rank tests of weft::ops::ExpertParallel (MoE dispatch / combine). Start with
//   build/tools/weft/weft run -n 4 -- build/weft/ops/expert_parallel/weft_ep_test
//   build/tools/weft/weft run -n 2 -- build/weft/ops/expert_parallel/weft_ep_test
// Every rank runs every test in the same order. Inputs come from the shared seed, so each rank
// regenerates every rank's routing and checks what it received and what combine returned against
// the host reference model (testing/ep_reference.h) exactly: counts, offsets, row order, sources,
// weights, bf16 rows bit for bit, fp8 rows within quantization error (scales exact), combine
// output bit for bit. CUDA-graph replays are checked on the device (testing/ep_device_check.cuh).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "bench/common/cuda_resources.h"
#include "bench/common/timing.h"
#include "tests/gpu/test_world.h"
#include "tests/support/problems.h"
#include "weft/ops/expert_parallel/ep_hook.cuh"
#include "weft/ops/expert_parallel/expert_parallel.h"
#include "weft/ops/expert_parallel/testing/ep_device_check.cuh"
#include "weft/ops/expert_parallel/testing/ep_reference.h"
#include "weft/runtime/cuda_check.h"

namespace weft::ops::ep_testing {
namespace {

using bench::DeviceMemory;

// DeepSeek-V3-like decode shape.
constexpr int kExperts = 256, kHidden = 7168, kTopk = 8, kDecodeTokens = 128;

int sm_count(World& w) {
  int n = 0;
  WEFT_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, w.device()));
  return n;
}

// Collects the first few problems of one rank.
using Problems = testing::ProblemList<8>;
using testing::expect_invalid;

Problem make_problem(World& w, uint64_t tag, Routing routing, int param, int hidden,
                     int experts = kExperts, int topk = kTopk) {
  Problem P;
  P.seed = testing::shared_seed();
  P.tag = tag;
  P.world = w.size();
  P.experts = experts;
  P.hidden = hidden;
  P.topk = topk;
  P.routing = routing;
  P.param = param;
  return P;
}

TokenCounts same_tokens(int world, int T) {
  TokenCounts tc;
  for (int r = 0; r < world; ++r) tc.T[r] = T;
  return tc;
}

// Rank r gets T_max, 1, 0, T_max - 5, 1, ... (every world size sees a 1 and, from 3 ranks, a 0).
TokenCounts mixed_tokens(int world, int t_max) {
  TokenCounts tc;
  const int pattern[4] = {t_max, 1, 0, std::max(1, t_max - 5)};
  for (int r = 0; r < world; ++r) tc.T[r] = pattern[r % 4];
  if (world == 2) tc.T[1] = 1;
  return tc;
}

EpConfig low_latency_config(int hidden, int experts = kExperts, int topk = kTopk,
                            int max_tokens = kDecodeTokens) {
  EpConfig c;
  c.mode = EpMode::low_latency;
  c.num_experts = experts;
  c.hidden = hidden;
  c.topk = topk;
  c.max_tokens = max_tokens;
  return c;
}

EpConfig throughput_config(int hidden, int max_tokens, int experts = kExperts, int topk = kTopk) {
  EpConfig c;
  c.mode = EpMode::throughput;
  c.num_experts = experts;
  c.hidden = hidden;
  c.topk = topk;
  c.max_tokens = max_tokens;
  return c;
}

struct CallOptions {
  bool fp8 = false;
  bool idx64 = false;
  bool combine = true;
  bool counts_to_host = false;    // low-latency: ask for the host copy and check it
  std::string expect_error;       // the bad rank's check_errors() must throw this
  int error_rank = -1;
  bool check_errors = true;   // false: leave a report to the next call (set combine = false)
  std::string expect_thrown;  // error_rank's dispatch() must throw this, after enqueuing
};

// Inputs and outputs of one rank for one ExpertParallel, and a checked collective call.
class Harness {
 public:
  Harness(World& w, ExpertParallel& op)
      : w_(w),
        op_(op),
        x_(static_cast<size_t>(op.config().max_tokens) * op.config().hidden * 2),
        topk_(static_cast<size_t>(op.config().max_tokens) * op.config().topk * 8),
        weights_(static_cast<size_t>(op.config().max_tokens) * op.config().topk * 4),
        y_(static_cast<size_t>(op.capacity()) * op.config().hidden * 2),
        out_(static_cast<size_t>(op.config().max_tokens) * op.config().hidden * 2) {}

  void* x() const { return x_.data(); }
  void* topk() const { return topk_.data(); }
  float* weights() const { return weights_.as<float>(); }
  void* y() const { return y_.data(); }
  void* out() const { return out_.data(); }

  EpDispatchArgs args(int T, const CallOptions& o) const {
    EpDispatchArgs a;
    a.x = x_.data();
    a.topk_idx = topk_.data();
    a.topk_idx_dtype = o.idx64 ? EpDType::i64 : EpDType::i32;
    a.topk_weights = weights_.as<float>();
    a.num_tokens = T;
    a.fp8 = o.fp8;
    a.copy_counts_to_host = o.counts_to_host;
    return a;
  }

  // One collective dispatch (+ combine), checked against the host reference. Returns this rank's
  // problems ("" if none).
  std::string call(const Problem& P, const TokenCounts& tc, const CallOptions& o) {
    Problems pr;
    const int me = w_.rank(), W = w_.size(), T = tc.T[me];
    const int H = P.hidden, el = P.experts / W;
    cudaStream_t s = w_.stream();
    fill_inputs(P, nullptr, me, T, x_.data(), topk_.data(), o.idx64, weights_.as<float>(), s);
    // Poison what the dispatch and combine must overwrite.
    const EpDispatchResult before = op_.last_result();
    WEFT_CUDA_CHECK(cudaMemsetAsync(before.x, 0xff, op_.capacity() * op_.plan().row_stride, s));
    WEFT_CUDA_CHECK(cudaMemsetAsync(const_cast<EpPairSource*>(before.sources), 0xff,
                                    op_.capacity() * sizeof(EpPairSource), s));
    WEFT_CUDA_CHECK(cudaMemsetAsync(out_.data(), 0xff, out_.bytes(), s));

    // An earlier call's report is thrown after this call is enqueued: its results are those of
    // last_result() (without the host epoch) and must be right all the same.
    EpDispatchResult r;
    std::string thrown;
    try {
      r = op_.dispatch(args(T, o), s);
    } catch (const InvalidArgument& e) {
      thrown = e.detail();
      r = op_.last_result();
    }
    if (!o.expect_thrown.empty() && o.error_rank == me) {
      if (thrown.find(o.expect_thrown) == std::string::npos ||
          thrown.find("enqueued") == std::string::npos)
        pr.add("dispatch() threw '{}', want an error containing '{}' (and 'enqueued')", thrown,
               o.expect_thrown);
    } else if (!thrown.empty()) {
      pr.add("dispatch() threw: {}", thrown);
    }
    w_.synchronize(s);
    if (o.check_errors) {
      std::string reported;
      try {
        op_.check_errors();
      } catch (const InvalidArgument& e) {
        reported = e.detail();
      }
      if (o.error_rank == me && !o.expect_error.empty()) {
        if (reported.find(o.expect_error) == std::string::npos)
          pr.add("check_errors() gave '{}', want an error containing '{}'", reported,
                 o.expect_error);
      } else if (!reported.empty()) {
        pr.add("dispatch reported an error: {}", reported);
      }
    }

    const RefRouting R = make_routing(P, tc);
    const RefDispatch D = ref_dispatch(P, R, me);
    pr.add_text(check_dispatch_result(P, D, r, o.fp8));
    if (o.counts_to_host || op_.mode() == EpMode::throughput) {
      const EpHostCounts h = op_.host_counts();
      if (h.expert_counts != D.expert_counts || h.expert_offsets != D.expert_offsets ||
          h.source_rows != D.source_rows || h.total_rows != D.expert_offsets[el])
        pr.add("host_counts() differ from the reference (total {} want {})", h.total_rows,
               D.expert_offsets[el]);
    }
    // Eager and hooked (or throughput, which publishes at its end): every ready flag holds this
    // dispatch's epoch. (A low-latency call without a hook leaves them: nothing can wait for it.)
    if (r.epoch != 0 && (op_.mode() == EpMode::throughput || r.hook.expert_ready != nullptr)) {
      std::vector<uint64_t> ready(el);
      WEFT_CUDA_CHECK(cudaMemcpy(ready.data(), op_.hook().expert_ready, el * sizeof(uint64_t),
                                 cudaMemcpyDeviceToHost));
      for (int e = 0; e < el; ++e)
        if (ready[e] != r.epoch) {
          pr.add("expert_ready[{}] = {}, want the dispatch epoch {}", e, ready[e], r.epoch);
          break;
        }
    }
    if (!o.combine) return pr.str();

    fill_expert_out(P, nullptr, me, r.expert_offsets, r.sources, y_.data(), s);
    EpCombineArgs c;
    c.expert_out = y_.data();
    c.out = out_.data();
    op_.combine(c, s);
    w_.synchronize(s);
    const std::vector<uint16_t> want = ref_combine(P, R, me);
    std::vector<uint16_t> got(want.size());
    if (!got.empty())
      WEFT_CUDA_CHECK(cudaMemcpy(got.data(), out_.data(), got.size() * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != want[i]) {
        size_t bad = 0;
        for (size_t j = i; j < got.size(); ++j) bad += got[j] != want[j];
        pr.add("combine: out[{}][{}] = {:#06x}, want {:#06x} ({} of {} values differ)", i / H,
               i % H, got[i], want[i], bad, got.size());
        break;
      }
    return pr.str();
  }

  // bf16, then fp8: one checked call each on a fresh problem (make_problem(fp8)), with `tc`
  // tokens; `what` names the case in a failure.
  template <class MakeProblem>
  void call_both_formats(const std::string& what, const TokenCounts& tc,
                         MakeProblem&& make_problem) {
    for (bool fp8 : {false, true}) {
      CallOptions o;
      o.fp8 = fp8;
      const std::string p = call(make_problem(fp8), tc, o);
      WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("{} ({}): {}", what, fp8 ? "fp8" : "bf16", p));
    }
  }

  // Compares the dispatch outputs with the reference (copies them to the host).
  std::string check_dispatch_result(const Problem& P, const RefDispatch& D,
                                    const EpDispatchResult& r, bool fp8) {
    Problems pr;
    const int W = w_.size(), el = P.experts / W, H = P.hidden, G = H / 128;
    std::vector<int32_t> cb(ep::counts_block_ints(el, W));
    WEFT_CUDA_CHECK(cudaMemcpy(cb.data(), r.expert_counts, cb.size() * 4, cudaMemcpyDeviceToHost));
    const std::vector<int32_t> counts(cb.begin(), cb.begin() + el);
    const std::vector<int32_t> offsets(cb.begin() + el, cb.begin() + 2 * el + 1);
    const std::vector<int32_t> sources(cb.begin() + 2 * el + 1, cb.begin() + 2 * el + 1 + W);
    for (int e = 0; e < el; ++e)
      if (counts[e] != D.expert_counts[e] || offsets[e] != D.expert_offsets[e]) {
        pr.add("local expert {}: count {} offset {}, want {} and {}", e, counts[e], offsets[e],
               D.expert_counts[e], D.expert_offsets[e]);
        break;
      }
    if (offsets[el] != D.expert_offsets[el])
      pr.add("total rows {}, want {}", offsets[el], D.expert_offsets[el]);
    for (int s = 0; s < W; ++s)
      if (sources[s] != D.source_rows[s])
        pr.add("tokens from rank {}: {}, want {}", s, sources[s], D.source_rows[s]);
    const int total = std::min<int>(D.expert_offsets[el], static_cast<int>(op_.capacity()));
    if (total == 0 || pr.count > 0) return pr.str();

    std::vector<EpPairSource> src(total);
    WEFT_CUDA_CHECK(
        cudaMemcpy(src.data(), r.sources, total * sizeof(EpPairSource), cudaMemcpyDeviceToHost));
    const size_t row_bytes = fp8 ? H : 2 * static_cast<size_t>(H);
    std::vector<uint8_t> data(total * row_bytes);
    WEFT_CUDA_CHECK(cudaMemcpy(data.data(), r.x, data.size(), cudaMemcpyDeviceToHost));
    std::vector<float> scales(fp8 ? static_cast<size_t>(total) * G : 0);
    if (fp8)
      WEFT_CUDA_CHECK(
          cudaMemcpy(scales.data(), r.scales, scales.size() * 4, cudaMemcpyDeviceToHost));

    long long off_by_one = 0, data_rows_bad = 0;
    // Reference rows per (source rank, token): a token lands in one row per local expert.
    struct RefRow {
      std::vector<uint16_t> x;
      std::vector<uint8_t> q;
      std::vector<float> scales;
    };
    std::unordered_map<long long, RefRow> cache;
    auto ref_row = [&](int rank, int token) -> const RefRow& {
      const long long key = (static_cast<long long>(rank) << 32) | static_cast<uint32_t>(token);
      auto it = cache.find(key);
      if (it != cache.end()) return it->second;
      RefRow r;
      r.x = ref_x_row(P, rank, token);
      if (fp8) {
        r.q.resize(H);
        r.scales.resize(G);
        ep::host_quantize_row(r.x.data(), H, r.q.data(), r.scales.data());
      }
      return cache.emplace(key, std::move(r)).first->second;
    };
    for (int i = 0; i < total; ++i) {
      const RefPair& want = D.pairs[i];
      const EpPairSource& got = src[i];
      if (got.rank != want.rank || got.token != want.token || got.slot != want.slot ||
          ep::float_to_bits(got.weight) != ep::float_to_bits(want.weight)) {
        pr.add("row {}: source (rank {}, token {}, slot {}, weight {}), want ({}, {}, {}, {})", i,
               got.rank, got.token, got.slot, got.weight, want.rank, want.token, want.slot,
               want.weight);
        continue;
      }
      const uint8_t* row = data.data() + i * row_bytes;
      const RefRow& ref = ref_row(want.rank, want.token);
      const std::vector<uint16_t>& x = ref.x;
      if (!fp8) {
        if (std::memcmp(row, x.data(), row_bytes) != 0) {
          int c = 0;
          uint16_t v = 0;
          for (; c < H; ++c) {
            std::memcpy(&v, row + 2 * c, 2);
            if (v != x[c]) break;
          }
          if (data_rows_bad++ < 3)
            pr.add("row {} (rank {} token {}): channel {} is {:#06x}, want {:#06x}", i, want.rank,
                   want.token, c, v, x[c]);
        }
        continue;
      }
      const std::vector<uint8_t>& q = ref.q;
      const std::vector<float>& qs = ref.scales;
      bool bad = false;
      for (int g = 0; g < G && !bad; ++g)
        if (ep::float_to_bits(scales[static_cast<size_t>(i) * G + g]) != ep::float_to_bits(qs[g])) {
          pr.add("row {} scale {}: {}, want {}", i, g, scales[static_cast<size_t>(i) * G + g], qs[g]);
          bad = true;
        }
      for (int c = 0; c < H && !bad; ++c) {
        const uint8_t code = row[c];
        const float scale = qs[c / 128];
        if (!std::isfinite(scale) || !std::isfinite(ep::bf16_to_float(x[c]))) {
          // A group with an infinity (scale +inf: every code 0 or NaN) or a NaN channel: the
          // codes exactly, no error bound.
          if (code != q[c]) {
            pr.add("row {} channel {} (non-finite group): fp8 code {:#04x}, want {:#04x}", i, c,
                   code, q[c]);
            bad = true;
          }
          continue;
        }
        if (code != q[c]) {
          // Accept the neighbouring code (a rounding tie broken differently) but count it.
          const bool neighbour = (code & 0x80) == (q[c] & 0x80) && (code & 0x7f) != 0x7f &&
                                 std::abs(int(code & 0x7f) - int(q[c] & 0x7f)) == 1;
          if (!neighbour) {
            pr.add("row {} channel {}: fp8 code {:#04x}, want {:#04x}", i, c, code, q[c]);
            bad = true;
            break;
          }
          ++off_by_one;
        }
        // Within quantization error: half an e4m3 step at the value's magnitude (2^-4 relative,
        // 2^-10 absolute for subnormals), in units of the scale.
        const float xv = ep::bf16_to_float(x[c]);
        const float err = std::fabs(ep::e4m3_to_float(code) * scale - xv);
        const float bound =
            std::max(std::fabs(xv) * 0.0625f, 0.0009765625f * scale) * 1.001f + 1e-30f;
        if (!(err <= bound)) {
          pr.add("row {} channel {}: dequantized {} vs {} (error {} > {})", i, c,
                 ep::e4m3_to_float(code) * scale, xv, err, bound);
          bad = true;
        }
      }
      if (bad) ++data_rows_bad;
    }
    if (off_by_one > 0 && w_.rank() == 0)
      std::printf("[note] %lld fp8 codes differ by one step from the host model (ties)\n",
                  off_by_one);
    return pr.str();
  }

 private:
  World& w_;
  ExpertParallel& op_;
  DeviceMemory x_, topk_, weights_, y_, out_;
};

// ---- low-latency mode -----------------------------------------------------------------------

TEST(EpLowLatency, Bf16RandomRoutingConsecutiveCalls) {
  World& w = testing::test_world();
  ExpertParallel op(w, low_latency_config(kHidden));
  Harness h(w, op);
  // Parity alternates 1, 0, 1, 0: consecutive calls use both staging halves.
  for (uint64_t tag : {1, 2, 3, 4}) {
    const Problem P = make_problem(w, tag, Routing::random, 0, kHidden);
    const std::string p = h.call(P, same_tokens(w.size(), kDecodeTokens), {});
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("call {}: {}", tag, p));
  }
}

TEST(EpLowLatency, Fp8RandomAndSkewedRouting) {
  World& w = testing::test_world();
  ExpertParallel op(w, low_latency_config(kHidden));
  Harness h(w, op);
  CallOptions o;
  o.fp8 = true;
  o.counts_to_host = true;
  const struct {
    uint64_t tag;
    Routing routing;
    int param;
  } cases[] = {{11, Routing::random, 0},
               {12, Routing::one_expert, 37},       // every token to expert 37 only
               {13, Routing::one_rank, 1},          // every token's experts on rank 1
               {14, Routing::sparse, 0},            // -1 slots, duplicates, tokens with none
               {15, Routing::random, 0}};
  for (const auto& c : cases) {
    const Problem P = make_problem(w, c.tag, c.routing, c.param, kHidden);
    const std::string p = h.call(P, same_tokens(w.size(), kDecodeTokens), o);
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("call {}: {}", c.tag, p));
  }
}

TEST(EpLowLatency, EmptyRanksSingleTokensAndInt64Ids) {
  World& w = testing::test_world();
  const int W = w.size(), H = 512;
  ExpertParallel op(w, low_latency_config(H));
  Harness h(w, op);
  const struct {
    uint64_t tag;
    Routing routing;
    int param;
    bool mixed;
    bool fp8, idx64;
  } cases[] = {
      {21, Routing::skip_rank, W - 1, false, false, false},  // the last rank receives nothing
      {22, Routing::skip_rank, 0, true, true, true},         // rank 0 receives nothing, T mixed
      {23, Routing::none, 0, false, true, false},            // nobody receives anything
      {24, Routing::one_expert, 0, true, false, true},
      {25, Routing::sparse, 0, true, true, false},
      {26, Routing::random, 0, true, false, false},
  };
  for (const auto& c : cases) {
    const Problem P = make_problem(w, c.tag, c.routing, c.param, H);
    CallOptions o;
    o.fp8 = c.fp8;
    o.idx64 = c.idx64;
    const TokenCounts tc = c.mixed ? mixed_tokens(W, kDecodeTokens) : same_tokens(W, kDecodeTokens);
    const std::string p = h.call(P, tc, o);
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("call {}: {}", c.tag, p));
  }
  h.call_both_formats("T = 1 on every rank", same_tokens(W, 1), [&](bool fp8) {
    return make_problem(w, fp8 ? 28 : 27, Routing::random, 0, H);
  });
}

// NaN and infinities in the input (every fourth token): fp8 codes NaN 0xff, never the 0x7f that
// marks a low-latency staging byte as not yet arrived (a 0x7f would hold the receiver until the
// wait timeout). bf16 and fp8 calls alternate on one operator, so each fp8 call finds staging
// that bf16 calls used in between.
TEST(EpLowLatency, NonFiniteInputs) {
  World& w = testing::test_world();
  const int W = w.size(), H = 1024;
  ExpertParallel op(w, low_latency_config(H));
  Harness h(w, op);
  for (int call = 0; call < 6; ++call) {
    Problem P = make_problem(w, 90 + call, call % 3 == 2 ? Routing::sparse : Routing::random, 0, H);
    P.non_finite = true;
    CallOptions o;
    o.fp8 = call % 2 == 0 || call == 5;  // fp8, bf16, fp8, bf16, fp8, fp8
    const std::string p =
        h.call(P, call == 4 ? mixed_tokens(W, kDecodeTokens) : same_tokens(W, kDecodeTokens), o);
    WEFT_EXPECT_ALL_RANKS(p.empty(),
                          fmt::format("call {} ({}): {}", call, o.fp8 ? "fp8" : "bf16", p));
  }
}

// bf16 rows whose last run of 32 units (unit_halves' byte assignment) is partial: H = 1152 is 72
// units of 16 channels, two runs of 32 and one of 8. Dispatch and combine, both modes.
TEST(EpBothModes, RowsEndingInAPartialRunOfUnits) {
  World& w = testing::test_world();
  const int W = w.size(), H = 1152;
  uint64_t tag = 111;
  for (bool low_latency : {true, false}) {
    const int T = low_latency ? kDecodeTokens : 600;
    ExpertParallel op(w, low_latency ? low_latency_config(H) : throughput_config(H, T));
    Harness h(w, op);
    h.call_both_formats(low_latency ? "low latency" : "throughput", mixed_tokens(W, T),
                        [&](bool) { return make_problem(w, tag++, Routing::random, 0, H); });
  }
}

// Rows too wide for the TMA receive's shared-memory buffers: at H = 16384 only fp8-sized buffers
// fit (bf16 rows go through registers), at H = 24576 none (both through registers). The plan's
// choice is checked on the CPU (EpPlan.LowLatencyRowBuffersShrinkToWhatFits).
TEST(EpLowLatency, WideRowsWithoutRowBuffers) {
  World& w = testing::test_world();
  const int W = w.size();
  uint64_t tag = 121;
  for (int H : {16384, 24576}) {
    ExpertParallel op(w, low_latency_config(H, kExperts, kTopk, 32));
    Harness h(w, op);
    h.call_both_formats(fmt::format("H = {}", H), mixed_tokens(W, 32),
                        [&](bool) { return make_problem(w, tag++, Routing::random, 0, H); });
  }
}

TEST(EpLowLatency, FewBlocksManyTokensSmallShapes) {
  World& w = testing::test_world();
  const int W = w.size();
  // As few blocks as ranks (each block loops over many tokens and rows), 256 tokens, k = 1 and
  // k = 32, few experts.
  EpConfig c = low_latency_config(256, 4 * W, 3, 256);
  c.num_sms = W;
  {
    ExpertParallel op(w, c);
    Harness h(w, op);
    h.call_both_formats("few blocks", mixed_tokens(W, 256), [&](bool fp8) {
      return make_problem(w, fp8 ? 32 : 31, Routing::random, 0, 256, 4 * W, 3);
    });
  }
  {
    ExpertParallel op(w, low_latency_config(128, 64, 32, 64));
    Harness h(w, op);
    const Problem P = make_problem(w, 33, Routing::random, 0, 128, 64, 32);
    const std::string p = h.call(P, same_tokens(W, 64), {});
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("k = 32: {}", p));
  }
  {
    ExpertParallel op(w, low_latency_config(128, W, 1, 16));
    Harness h(w, op);
    const Problem P = make_problem(w, 34, Routing::random, 0, 128, W, 1);
    CallOptions o;
    o.fp8 = true;
    const std::string p = h.call(P, mixed_tokens(W, 16), o);
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("k = 1, one expert per rank: {}", p));
  }
}

// The low-latency dispatch lets the first ceil(T / blocks) of a block's four row groups send and
// the others scan, derive the layout and receive (every group sends, then receives, when all four
// have tokens): two and three sending groups here, one and four in the tests above.
TEST(EpLowLatency, SendingAndReceivingGroupsAtEveryRatio) {
  World& w = testing::test_world();
  const int W = w.size();
  int ran = 0;
  for (int senders : {2, 3}) {
    const int blocks = (256 + senders - 1) / senders;  // ceil(256 / blocks) == senders
    if (blocks > sm_count(w)) continue;
    ++ran;
    EpConfig c = low_latency_config(256, 8 * W, 4, 256);
    c.num_sms = blocks;
    ExpertParallel op(w, c);
    Harness h(w, op);
    for (bool fp8 : {false, true}) {
      CallOptions o;
      o.fp8 = fp8;
      const Problem P = make_problem(w, 40 + senders * 2 + fp8, Routing::random, 0, 256, 8 * W, 4);
      std::string p = h.call(P, same_tokens(W, 256), o);
      if (p.empty()) p = h.call(P, mixed_tokens(W, 256), o);
      WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("{} sending groups ({}): {}", senders,
                                                   fp8 ? "fp8" : "bf16", p));
    }
  }
  if (ran == 0) GTEST_SKIP() << "needs >= 86 SMs for three sending groups per block";
}

// A consumer forked from the hook event waits per expert while the dispatch runs, then checksums
// the expert's rows; the checksums must equal those taken after the dispatch finished.
__global__ void hook_consumer_kernel(const __grid_constant__ dev::Context ctx, EpHook hook,
                                     const int32_t* counts, const int32_t* offsets,
                                     const uint8_t* x, unsigned long long row_bytes, int el,
                                     unsigned long long* sums, int* seen_counts) {
  for (int e = blockIdx.x; e < el; e += gridDim.x) {
    ep_wait_expert(dev::Block{}, ctx, hook, e);
    const unsigned long long begin = static_cast<unsigned long long>(offsets[e]) * row_bytes;
    const unsigned long long end = begin + static_cast<unsigned long long>(counts[e]) * row_bytes;
    unsigned long long sum = 0;
    for (unsigned long long i = begin + threadIdx.x * 8ull; i < end; i += blockDim.x * 8ull)
      sum += __ldcg(reinterpret_cast<const unsigned long long*>(x + i)) * (i | 1ull);
    atomicAdd(sums + e, sum);
    if (threadIdx.x == 0) seen_counts[e] = counts[e];
  }
}

TEST(EpLowLatency, HookLetsAConsumerStartPerExpert) {
  World& w = testing::test_world();
  const int W = w.size(), el = kExperts / W;
  EpConfig cfg = low_latency_config(kHidden);
  cfg.num_sms = std::max(W, sm_count(w) - 8);  // leave room for the consumer
  ExpertParallel op(w, cfg);
  Harness h(w, op);
  bench::Stream side;
  bench::Event fork(false), join(false);
  DeviceMemory sums(2 * el * sizeof(unsigned long long)), seen(2 * el * sizeof(int));
  Problems pr;
  cudaStream_t s = w.stream();
  for (uint64_t tag : {41, 42, 43}) {
    const Problem P = make_problem(w, tag, tag == 42 ? Routing::one_rank : Routing::random, 0,
                                   kHidden);
    CallOptions o;
    o.fp8 = tag != 43;
    fill_inputs(P, nullptr, w.rank(), kDecodeTokens, h.x(), h.topk(), false, h.weights(), s);
    WEFT_CUDA_CHECK(cudaMemsetAsync(sums.data(), 0, sums.bytes(), s));
    WEFT_CUDA_CHECK(cudaMemsetAsync(seen.data(), 0xff, seen.bytes(), s));
    w.synchronize(s);
    EpDispatchArgs a = h.args(kDecodeTokens, o);
    a.hook_event = fork;
    const EpDispatchResult r = op.dispatch(a, s);
    const size_t row_bytes = o.fp8 ? kHidden : 2 * kHidden;
    WEFT_CUDA_CHECK(cudaStreamWaitEvent(side, fork));
    hook_consumer_kernel<<<8, 128, 0, side>>>(w.context(), r.hook, r.expert_counts,
                                              r.expert_offsets, static_cast<const uint8_t*>(r.x),
                                              row_bytes, el, sums.as<unsigned long long>(),
                                              seen.as<int>());
    WEFT_CHECK_LAUNCH();
    WEFT_CUDA_CHECK(cudaEventRecord(join, side));
    WEFT_CUDA_CHECK(cudaStreamWaitEvent(s, join));
    // The same checksums once the dispatch is complete (stream order).
    hook_consumer_kernel<<<8, 128, 0, s>>>(w.context(), r.hook, r.expert_counts,
                                           r.expert_offsets, static_cast<const uint8_t*>(r.x),
                                           row_bytes, el, sums.as<unsigned long long>() + el,
                                           seen.as<int>() + el);
    WEFT_CHECK_LAUNCH();
    w.synchronize(s);
    op.check_errors();
    std::vector<unsigned long long> got(2 * el);
    std::vector<int> counts(2 * el);
    WEFT_CUDA_CHECK(cudaMemcpy(got.data(), sums.data(), sums.bytes(), cudaMemcpyDeviceToHost));
    WEFT_CUDA_CHECK(cudaMemcpy(counts.data(), seen.data(), seen.bytes(), cudaMemcpyDeviceToHost));
    for (int e = 0; e < el; ++e)
      if (got[e] != got[el + e] || counts[e] != counts[el + e]) {
        pr.add("call {} expert {}: the hooked consumer saw count {} checksum {:#x}, after the "
               "dispatch {} and {:#x}",
               tag, e, counts[e], got[e], counts[el + e], got[el + e]);
        break;
      }
    // And the results are right.
    const RefRouting R = make_routing(P, same_tokens(W, kDecodeTokens));
    pr.add_text(h.check_dispatch_result(P, ref_dispatch(P, R, w.rank()), r, o.fp8));
  }
  WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str());
}

// One captured dispatch (fp8, hooked) + expert stand-in + combine + device-side checks, replayed
// with new routing every replay (the routing pattern cycles through random, one expert, one rank,
// skip a rank, sparse); eager calls before and after must keep working.
TEST(EpLowLatency, CudaGraphReplay) {
  World& w = testing::test_world();
  const int W = w.size(), me = w.rank(), H = 2048, el = kExperts / W;
  constexpr int kReplays = 200;
  constexpr uint64_t kTagBase = 1000;
  ExpertParallel op(w, low_latency_config(H));
  Harness h(w, op);
  cudaStream_t s = w.stream();
  TokenCounts tc;
  for (int r = 0; r < W; ++r) tc.T[r] = r == W - 1 && W > 2 ? 1 : kDecodeTokens - 13 * r;

  CallOptions fp8;
  fp8.fp8 = true;
  std::string p = h.call(make_problem(w, 51, Routing::random, 0, H), tc, fp8);
  WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("eager call before the graph: {}", p));

  DeviceMemory counter(sizeof(uint64_t)), expected((el + W) * sizeof(int)),
      mismatch(sizeof(Mismatch));
  WEFT_CUDA_CHECK(cudaMemset(counter.data(), 0, counter.bytes()));
  WEFT_CUDA_CHECK(cudaMemset(mismatch.data(), 0, mismatch.bytes()));
  Problem P = make_problem(w, kTagBase, Routing::random, 0, H);
  P.vary_routing = true;
  bench::Event fork(false);
  const uint64_t* tag = counter.as<uint64_t>();
  bench::GraphExec graph = bench::capture_on_all_ranks(w, s, [&] {
    fill_inputs(P, tag, me, tc.T[me], h.x(), h.topk(), false, h.weights(), s);
    EpDispatchArgs a = h.args(tc.T[me], fp8);
    a.hook_event = fork;
    const EpDispatchResult r = op.dispatch(a, s);
    if (r.epoch != 0) throw Error("test", "a captured dispatch returned a host epoch");
    fill_expert_out(P, tag, me, r.expert_offsets, r.sources, h.y(), s);
    EpCombineArgs c;
    c.expert_out = h.y();
    c.out = h.out();
    op.combine(c, s);
    DispatchView v{r.x,           r.scales, r.sources, r.expert_counts, r.expert_offsets,
                   r.source_rows, r.hook.expert_ready, 0, r.hook.epoch};
    check_dispatch(P, tag, tc, me, true, v, expected.as<int>(), mismatch.as<Mismatch>(), s);
    check_combine(P, tag, me, tc.T[me], h.out(), mismatch.as<Mismatch>(), s);
    increment(counter.as<uint64_t>(), s);
  });
  for (int i = 0; i < kReplays; ++i) graph.launch(s);
  Mismatch m{};
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&m, mismatch.data(), sizeof(m), cudaMemcpyDeviceToHost, s));
  w.synchronize(s);
  std::string replay_problems = describe(m);
  try {
    op.check_errors();
  } catch (const InvalidArgument& e) {
    replay_problems += e.detail();
  }
  WEFT_EXPECT_ALL_RANKS(replay_problems.empty(),
                        fmt::format("{} replays: {}", kReplays, replay_problems));

  p = h.call(make_problem(w, 52, Routing::sparse, 0, H), tc, fp8);
  WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("eager call after the replays: {}", p));
  p = h.call(make_problem(w, 53, Routing::random, 0, H), tc, {});
  WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("eager bf16 call after the replays: {}", p));
}

// combine() combines the dispatch that ran last on the device. Here the host's last dispatch (an
// eager one of many tokens) is not that one: a graph replay of a dispatch of fewer tokens runs
// after it, and the combine must take the replayed dispatch's token count (it reads it on the
// device), not the eager call's, or it would wait for partials of tokens nobody sent.
TEST(EpLowLatency, CombineAfterAReplayedDispatchUsesItsTokenCount) {
  World& w = testing::test_world();
  const int W = w.size(), me = w.rank(), H = 1024;
  ExpertParallel op(w, low_latency_config(H));
  Harness h(w, op);
  cudaStream_t s = w.stream();
  TokenCounts few, many;
  for (int r = 0; r < W; ++r) {
    few.T[r] = 5 + 3 * r;
    many.T[r] = kDecodeTokens - r;
  }
  DeviceMemory counter(sizeof(uint64_t)), mismatch(sizeof(Mismatch));
  WEFT_CUDA_CHECK(cudaMemset(counter.data(), 0, counter.bytes()));
  WEFT_CUDA_CHECK(cudaMemset(mismatch.data(), 0, mismatch.bytes()));
  const uint64_t* tag = counter.as<uint64_t>();
  const Problem replayed = make_problem(w, 71, Routing::random, 0, H);
  EpDispatchResult r;
  bench::GraphExec graph = bench::capture_on_all_ranks(w, s, [&] {
    fill_inputs(replayed, tag, me, few.T[me], h.x(), h.topk(), false, h.weights(), s);
    r = op.dispatch(h.args(few.T[me], {}), s);
  });
  const Problem eager = make_problem(w, 72, Routing::random, 0, H);
  fill_inputs(eager, tag, me, many.T[me], h.x(), h.topk(), false, h.weights(), s);
  op.dispatch(h.args(many.T[me], {}), s);
  graph.launch(s);
  fill_expert_out(replayed, tag, me, r.expert_offsets, r.sources, h.y(), s);
  WEFT_CUDA_CHECK(cudaMemsetAsync(h.out(), 0xff, static_cast<size_t>(kDecodeTokens) * H * 2, s));
  EpCombineArgs c;
  c.expert_out = h.y();
  c.out = h.out();
  op.combine(c, s);
  check_combine(replayed, tag, me, few.T[me], h.out(), mismatch.as<Mismatch>(), s);
  Mismatch m{};
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&m, mismatch.data(), sizeof(m), cudaMemcpyDeviceToHost, s));
  w.synchronize(s);
  const std::string problems = describe(m);
  WEFT_EXPECT_ALL_RANKS(problems.empty(), problems);
}

// ---- throughput mode --------------------------------------------------------------------------

TEST(EpThroughput, RandomRoutingLargeT) {
  World& w = testing::test_world();
  const int W = w.size(), H = 1024;
  ExpertParallel op(w, throughput_config(H, 4096));
  Harness h(w, op);
  h.call_both_formats("T = 4096", same_tokens(W, 4096), [&](bool fp8) {
    return make_problem(w, fp8 ? 62 : 61, Routing::random, 0, H);
  });
  const Problem P = make_problem(w, 63, Routing::random, 0, H);
  const std::string p = h.call(P, mixed_tokens(W, 4096), {});
  WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("mixed T: {}", p));
}

TEST(EpThroughput, SkewedEmptyAndSparseRouting) {
  World& w = testing::test_world();
  const int W = w.size(), H = 256;
  EpConfig cfg = throughput_config(H, 2048);
  cfg.max_recv_pairs = static_cast<int64_t>(W) * 2048 * kTopk;  // the worst case: one_rank skew
  ExpertParallel op(w, cfg);
  Harness h(w, op);
  const struct {
    uint64_t tag;
    Routing routing;
    int param;
    bool mixed, fp8, idx64;
  } cases[] = {
      {71, Routing::one_expert, 3, false, false, false},
      {72, Routing::one_rank, W - 1, false, true, false},
      {73, Routing::skip_rank, 0, true, false, true},
      {74, Routing::sparse, 0, true, true, true},
      {75, Routing::none, 0, false, false, false},
      {76, Routing::random, 0, true, true, false},
  };
  for (const auto& c : cases) {
    CallOptions o;
    o.fp8 = c.fp8;
    o.idx64 = c.idx64;
    const Problem P = make_problem(w, c.tag, c.routing, c.param, H);
    const std::string p = h.call(P, c.mixed ? mixed_tokens(W, 2048) : same_tokens(W, 2048), o);
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("call {}: {}", c.tag, p));
  }
  const Problem P = make_problem(w, 77, Routing::random, 0, H);
  const std::string p = h.call(P, same_tokens(W, 1), {});
  WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("T = 1: {}", p));
}

TEST(EpThroughput, FewSmsAndUnevenSplits) {
  World& w = testing::test_world();
  const int W = w.size(), H = 384;
  const struct {
    int sms, send;
  } splits[] = {{2, 1}, {5, 1}, {7, 5}};
  uint64_t tag = 81;
  for (const auto& sp : splits) {
    EpConfig cfg = throughput_config(H, 1500);
    cfg.num_sms = sp.sms;
    cfg.send_sms = sp.send;
    ExpertParallel op(w, cfg);
    Harness h(w, op);
    h.call_both_formats(fmt::format("{} SMs ({} send)", sp.sms, sp.send), mixed_tokens(W, 1500),
                        [&](bool) { return make_problem(w, tag++, Routing::random, 0, H); });
  }
}

TEST(EpThroughput, WideTopkAndOneExpertPerRank) {
  World& w = testing::test_world();
  const int W = w.size();
  {  // k = 32 (metadata wider than a warp), 64 experts
    ExpertParallel op(w, throughput_config(128, 700, 64, 32));
    Harness h(w, op);
    h.call_both_formats("k = 32", mixed_tokens(W, 700), [&](bool fp8) {
      return make_problem(w, fp8 ? 86 : 85, Routing::sparse, 0, 128, 64, 32);
    });
  }
  {  // k = 1, one expert per rank
    ExpertParallel op(w, throughput_config(128, 300, W, 1));
    Harness h(w, op);
    const Problem P = make_problem(w, 87, Routing::random, 0, 128, W, 1);
    const std::string p = h.call(P, same_tokens(W, 300), {});
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("k = 1: {}", p));
  }
}

TEST(EpThroughput, CapacityOverflowIsReportedAndRecoverable) {
  World& w = testing::test_world();
  const int W = w.size(), H = 128;
  EpConfig cfg = throughput_config(H, 512);
  cfg.max_recv_pairs = 64;
  ExpertParallel op(w, cfg);
  Harness h(w, op);
  cudaStream_t s = w.stream();
  const Problem P = make_problem(w, 91, Routing::random, 0, H);
  fill_inputs(P, nullptr, w.rank(), 512, h.x(), h.topk(), false, h.weights(), s);
  op.dispatch(h.args(512, {}), s);
  const EpHostCounts counts = op.host_counts();
  w.synchronize(s);
  Problems pr;
  // The published layout stops at the capacity: every expert's rows lie inside the buffers.
  if (counts.total_rows != 64)
    pr.add("total rows {}, want the capacity (64): the layout must stop there", counts.total_rows);
  int64_t sum = 0;
  for (size_t e = 0; e < counts.expert_counts.size(); ++e) {
    sum += counts.expert_counts[e];
    if (counts.expert_offsets[e] < 0 || counts.expert_offsets[e] + counts.expert_counts[e] > 64 ||
        counts.expert_offsets[e + 1] != counts.expert_offsets[e] + counts.expert_counts[e])
      pr.add("expert {}: offset {} count {} next offset {}: past the capacity or not contiguous", e,
             counts.expert_offsets[e], counts.expert_counts[e], counts.expert_offsets[e + 1]);
  }
  if (sum != counts.total_rows)
    pr.add("the counts sum to {}, total rows {}", sum, counts.total_rows);
  try {
    op.check_errors();
    pr.add("check_errors() did not report the overflow");
  } catch (const InvalidArgument& e) {
    if (e.detail().find("capacity") == std::string::npos ||
        e.detail().find("max_recv_pairs") == std::string::npos)
      pr.add("unexpected overflow message: {}", e.detail());
  }
  WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str());
  // A call that fits works normally afterwards.
  const std::string p = h.call(make_problem(w, 92, Routing::random, 0, H), same_tokens(W, 2), {});
  WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("call after the overflow: {}", p));
}

// Either mode at a small hidden size H, for the tests of calls that go wrong on some ranks: the
// configuration, the tokens per rank and the mode's name.
struct SmallModeCase {
  EpConfig cfg;
  int T;
  const char* name;
};
SmallModeCase small_mode_case(EpMode mode, int H) {
  if (mode == EpMode::low_latency) return {low_latency_config(H), kDecodeTokens, "low latency"};
  return {throughput_config(H, 512), 512, "throughput"};
}

// Rank 0 dispatches fp8 while the others dispatch bf16 (a caller's bug the host cannot see: each
// rank's arguments are valid). The count messages carry the flag, so every rank reports the
// disagreement, exchanges no rows with the ranks that differ, and the dispatch and the combine
// complete instead of waiting for rows that never come (low latency) or reading rows of the wrong
// size (throughput). A new operator then works.
TEST(EpBothModes, DisagreeingFp8FlagsAreReportedWithoutHanging) {
  World& w = testing::test_world();
  const int W = w.size(), me = w.rank(), H = 256;
  if (W < 2) GTEST_SKIP() << "needs two ranks to disagree";
  for (EpMode mode : {EpMode::low_latency, EpMode::throughput}) {
    const auto [cfg, T, name] = small_mode_case(mode, H);
    Problems pr;
    {
      ExpertParallel op(w, cfg);
      Harness h(w, op);
      cudaStream_t s = w.stream();
      const Problem P = make_problem(w, 95, Routing::random, 0, H);
      fill_inputs(P, nullptr, me, T, h.x(), h.topk(), false, h.weights(), s);
      CallOptions o;
      o.fp8 = me == 0;
      op.dispatch(h.args(T, o), s);
      EpCombineArgs c;
      c.expert_out = h.y();
      c.out = h.out();
      // The combine throws the dispatch's report where it has arrived by then (after enqueuing
      // itself), else check_errors() does.
      std::string reported;
      try {
        op.combine(c, s);
      } catch (const InvalidArgument& e) {
        reported = e.detail();
      }
      w.synchronize(s);
      try {
        op.check_errors();
      } catch (const InvalidArgument& e) {
        reported = e.detail();
      }
      // Each rank reports its lowest-numbered disagreeing peer: rank 0 names rank 1, the others
      // rank 0.
      if (reported.find(me == 0 ? "rank 1 called it with fp8 = false"
                                : "rank 0 called it with fp8 = true") == std::string::npos ||
          reported.find("create a new one") == std::string::npos)
        pr.add("{}: check_errors() gave '{}', want the fp8 disagreement", name, reported);
    }
    const std::string p = [&] {
      ExpertParallel op(w, cfg);
      Harness h(w, op);
      CallOptions o;
      o.fp8 = true;
      return h.call(make_problem(w, 96, Routing::random, 0, H), same_tokens(W, 7), o);
    }();
    if (!p.empty()) pr.add("{}: a new operator afterwards: {}", name, p);
    WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str());
  }
}

// The last rank's own arguments fail a check (num_tokens above max_tokens to a dispatch, a null
// expert_out to a combine) while the others call correctly. The failing rank abandons the call
// before it throws, so the peers' calls complete at once instead of waiting for it until their
// wait timeout (which would trap), and their check_errors() names it. An abandoned dispatch is
// void everywhere (the failing rank's combine() refuses it, the others' does nothing); after an
// abandoned combine the dispatch stays valid. Checked calls on every rank then pass.
TEST(EpBothModes, ARankWhoseArgumentsFailAbandonsTheCall) {
  World& w = testing::test_world();
  const int W = w.size(), me = w.rank(), last = W - 1, H = 256;
  if (W < 2) GTEST_SKIP() << "needs two ranks: nobody to wait for the failing one";
  for (EpMode mode : {EpMode::low_latency, EpMode::throughput}) {
    const auto [cfg, T, name] = small_mode_case(mode, H);
    Problems pr;
    ExpertParallel op(w, cfg);
    Harness h(w, op);
    cudaStream_t s = w.stream();
    auto error_of = [](auto&& body) {
      try {
        body();
      } catch (const InvalidArgument& e) {
        return std::string(e.detail());
      }
      return std::string();
    };
    // What this rank's next call or check_errors() reports (after synchronizing).
    auto reported_after = [&](const std::string& thrown_by_call) {
      w.synchronize(s);
      const std::string later = error_of([&] { op.check_errors(); });
      return thrown_by_call.empty() ? later : thrown_by_call;
    };
    for (bool fp8 : {false, true}) {
      const std::string what = fmt::format("{} {}", name, fp8 ? "fp8" : "bf16");
      const Problem P = make_problem(w, 97 + (fp8 ? 1 : 0), Routing::random, 0, H);
      fill_inputs(P, nullptr, me, T, h.x(), h.topk(), false, h.weights(), s);
      CallOptions o;
      o.fp8 = fp8;
      EpCombineArgs c;
      c.expert_out = h.y();
      c.out = h.out();

      // 1. The dispatch.
      const auto start = std::chrono::steady_clock::now();
      const std::string thrown =
          error_of([&] { op.dispatch(h.args(me == last ? cfg.max_tokens + 1 : T, o), s); });
      if (me == last) {
        if (thrown.find("is outside [0, max_tokens") == std::string::npos)
          pr.add("{}: the bad dispatch threw '{}'", what, thrown);
        const std::string refused = error_of([&] { op.combine(c, s); });
        if (refused.find("was abandoned") == std::string::npos)
          pr.add("{}: combine() after the abandoned dispatch threw '{}'", what, refused);
        const std::string quiet = reported_after("");
        if (!quiet.empty()) pr.add("{}: the abandoning rank reported '{}'", what, quiet);
        const std::string counts = error_of([&] { op.host_counts(); });
        if (counts.find("it was abandoned") == std::string::npos)
          pr.add("{}: host_counts() after the abandoned dispatch threw '{}'", what, counts);
      } else {
        if (!thrown.empty()) pr.add("{}: dispatch threw '{}'", what, thrown);
        // The combine of the void dispatch does nothing (there is nothing to wait for).
        const std::string r = reported_after(error_of([&] { op.combine(c, s); }));
        if (r.find(fmt::format("rank {} abandoned it", last)) == std::string::npos)
          pr.add("{}: the peers' report after the abandoned dispatch is '{}'", what, r);
        if (mode == EpMode::throughput && op.host_counts().abandoned_by != 1u << last)
          pr.add("{}: host_counts().abandoned_by = {:#x}, want {:#x}", what,
                 op.host_counts().abandoned_by, 1u << last);
      }
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (seconds > 5)
        pr.add("{}: the abandoned dispatch took {:.1f} s on this rank", what, seconds);

      // 2. A valid dispatch everywhere, then the last rank's combine fails its check.
      std::string d = error_of([&] { op.dispatch(h.args(T, o), s); });
      if (!d.empty()) pr.add("{}: the dispatch after the abandoned one threw '{}'", what, d);
      EpCombineArgs bad = c;
      if (me == last) bad.expert_out = nullptr;
      const std::string cthrown = error_of([&] { op.combine(bad, s); });
      const std::string r = reported_after(me == last ? "" : cthrown);
      if (me == last) {
        if (cthrown.find("expert_out is null") == std::string::npos)
          pr.add("{}: the bad combine threw '{}'", what, cthrown);
        if (!r.empty()) pr.add("{}: the abandoning rank reported '{}'", what, r);
      } else if (r.find(fmt::format("rank {} abandoned it", last)) == std::string::npos) {
        pr.add("{}: the peers' report after the abandoned combine is '{}'", what, r);
      }

      // 3. Checked calls on every rank.
      const std::string p =
          h.call(make_problem(w, 99 + (fp8 ? 1 : 0), Routing::random, 0, H), mixed_tokens(W, T), o);
      if (!p.empty()) pr.add("{}: a checked call afterwards: {}", what, p);
    }
    WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str());
  }
}

// ---- validation --------------------------------------------------------------------------------

TEST(EpValidation, RejectsBadConfigurations) {
  World& w = testing::test_world();
  const int W = w.size();
  Problems pr;
  auto with = [&](auto edit) {
    EpConfig c = low_latency_config(256, 4 * W, 2, 16);
    edit(c);
    return c;
  };
  // Ranks built alike but for one setting would read each other's staging with different layouts.
  expect_invalid(pr, "topk differs across ranks", "same plan settings",
                 [&] { ExpertParallel(w, with([&](EpConfig& c) { c.topk = 2 + w.rank() % 2; })); });
  expect_invalid(pr, "E not divisible", "divisible by the world size",
                 [&] { ExpertParallel(w, with([&](EpConfig& c) { c.num_experts = 4 * W + 1; })); });
  expect_invalid(pr, "hidden 100", "multiple of 128",
                 [&] { ExpertParallel(w, with([](EpConfig& c) { c.hidden = 100; })); });
  expect_invalid(pr, "topk 0", "topk", [&] { ExpertParallel(w, with([](EpConfig& c) { c.topk = 0; })); });
  expect_invalid(pr, "topk 33", "topk",
                 [&] { ExpertParallel(w, with([](EpConfig& c) { c.topk = 33; })); });
  expect_invalid(pr, "LL max_tokens 300", "low-latency mode takes max_tokens",
                 [&] { ExpertParallel(w, with([](EpConfig& c) { c.max_tokens = 300; })); });
  expect_invalid(pr, "num_sms too many", "num_sms",
                 [&] { ExpertParallel(w, with([](EpConfig& c) { c.num_sms = 100000; })); });
  expect_invalid(pr, "LL send_sms", "send_sms applies to throughput mode",
                 [&] { ExpertParallel(w, with([](EpConfig& c) { c.send_sms = 3; })); });
  expect_invalid(pr, "TP one SM", "throughput num_sms", [&] {
    ExpertParallel(w, with([](EpConfig& c) {
      c.mode = EpMode::throughput;
      c.num_sms = 1;
    }));
  });
  expect_invalid(pr, "TP send_sms = num_sms", "send_sms must be 0 (per-kernel defaults) or in",
                 [&] {
    ExpertParallel(w, with([](EpConfig& c) {
      c.mode = EpMode::throughput;
      c.num_sms = 4;
      c.send_sms = 4;
    }));
  });
  WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str());
}

TEST(EpValidation, RejectsBadCalls) {
  World& w = testing::test_world();
  const int W = w.size();
  Problems pr;
  ExpertParallel op(w, low_latency_config(256, 4 * W, 2, 16));
  Harness h(w, op);
  cudaStream_t s = w.stream();
  expect_invalid(pr, "combine before dispatch", "there was none yet", [&] {
    EpCombineArgs c;
    c.expert_out = h.y();
    c.out = h.out();
    op.combine(c, s);
  });
  expect_invalid(pr, "host counts before dispatch", "no host copy", [&] { op.host_counts(); });
  auto dispatch = [&](auto edit) {
    EpDispatchArgs a = h.args(8, {});
    edit(a);
    op.dispatch(a, s);
  };
  expect_invalid(pr, "T above max", "num_tokens = 17",
                 [&] { dispatch([](EpDispatchArgs& a) { a.num_tokens = 17; }); });
  expect_invalid(pr, "T negative", "num_tokens = -1",
                 [&] { dispatch([](EpDispatchArgs& a) { a.num_tokens = -1; }); });
  expect_invalid(pr, "x f16", "x must be bf16",
                 [&] { dispatch([](EpDispatchArgs& a) { a.x_dtype = EpDType::f16; }); });
  expect_invalid(pr, "idx f32", "topk_idx must be i32 or i64",
                 [&] { dispatch([](EpDispatchArgs& a) { a.topk_idx_dtype = EpDType::f32; }); });
  expect_invalid(pr, "weights bf16", "topk_weights must be f32",
                 [&] { dispatch([](EpDispatchArgs& a) { a.topk_weights_dtype = EpDType::bf16; }); });
  expect_invalid(pr, "null x", "x is null",
                 [&] { dispatch([](EpDispatchArgs& a) { a.x = nullptr; }); });
  std::vector<char> host(4096);
  expect_invalid(pr, "host x", "pageable host memory",
                 [&] { dispatch([&](EpDispatchArgs& a) { a.x = host.data() + 0; }); });
  expect_invalid(pr, "misaligned x", "aligned to 16", [&] {
    dispatch([&](EpDispatchArgs& a) { a.x = static_cast<const char*>(h.x()) + 2; });
  });
  expect_invalid(pr, "misaligned i64 ids", "aligned to 8", [&] {
    dispatch([&](EpDispatchArgs& a) {
      a.topk_idx_dtype = EpDType::i64;
      a.topk_idx = static_cast<const char*>(h.topk()) + 4;
    });
  });
  expect_invalid(pr, "null weights", "topk_weights is null",
                 [&] { dispatch([](EpDispatchArgs& a) { a.topk_weights = nullptr; }); });
  // A valid call, then combine argument errors.
  const Problem P = make_problem(w, 101, Routing::random, 0, 256, 4 * W, 2);
  std::string p = h.call(P, same_tokens(W, 8), {});
  if (!p.empty()) pr.add("valid call: {}", p);
  expect_invalid(pr, "combine null y", "expert_out is null", [&] {
    EpCombineArgs c;
    c.out = h.out();
    op.combine(c, s);
  });
  expect_invalid(pr, "combine misaligned out", "aligned to 16", [&] {
    EpCombineArgs c;
    c.expert_out = h.y();
    c.out = static_cast<char*>(h.out()) + 2;
    op.combine(c, s);
  });
  expect_invalid(pr, "combine f32 out", "out must be bf16", [&] {
    EpCombineArgs c;
    c.expert_out = h.y();
    c.out = h.out();
    c.out_dtype = EpDType::f32;
    op.combine(c, s);
  });
  expect_invalid(pr, "LL host counts not requested", "no host copy", [&] { op.host_counts(); });
  {
    // Throughput mode publishes its experts when the data kernel ends: no hook.
    ExpertParallel tp(w, throughput_config(256, 64, 4 * W, 2));
    Harness ht(w, tp);
    bench::Event ev(false);
    expect_invalid(pr, "TP hook_event", "hook_event applies to low-latency mode", [&] {
      EpDispatchArgs a = ht.args(8, {});
      a.hook_event = ev;
      tp.dispatch(a, s);
    });
  }
  WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str());
}

// Expert ids live on the device: the kernel treats a bad id as -1, reports it, and everything else
// of that call (and later calls) is right.
TEST(EpValidation, BadExpertIdsAreReportedByTheDevice) {
  World& w = testing::test_world();
  const int W = w.size();
  for (EpMode mode : {EpMode::low_latency, EpMode::throughput}) {
    EpConfig cfg = mode == EpMode::low_latency ? low_latency_config(256) : throughput_config(256, 600);
    ExpertParallel op(w, cfg);
    Harness h(w, op);
    const struct {
      long long value;
      bool idx64;
    } bad[] = {{kExperts, false}, {-2, false}, {(1ll << 40) + 3, true}};
    uint64_t tag = mode == EpMode::low_latency ? 111 : 121;
    for (const auto& b : bad) {
      Problem P = make_problem(w, tag++, Routing::random, 0, 256);
      P.bad_rank = W - 1;
      P.bad_token = 5;
      P.bad_slot = 3;
      P.bad_value = b.value;
      CallOptions o;
      o.idx64 = b.idx64;
      o.error_rank = W - 1;
      o.expect_error = fmt::format("topk_idx[5][3] = {}", b.value);
      const int T = mode == EpMode::low_latency ? kDecodeTokens : 600;
      const std::string p = h.call(P, same_tokens(W, T), o);
      WEFT_EXPECT_ALL_RANKS(p.empty(),
                            fmt::format("{} bad id {}: {}", to_string(mode), b.value, p));
    }
    const Problem P = make_problem(w, tag++, Routing::random, 0, 256);
    std::string p = h.call(P, same_tokens(W, 7), {});
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("{} call after: {}", to_string(mode), p));

    // Left unchecked, the report is thrown by the bad rank's next dispatch() only once that call
    // is enqueued, so the peers' calls complete (none waits for the bad rank) and are right.
    Problem B = make_problem(w, tag++, Routing::random, 0, 256);
    B.bad_rank = W - 1;
    B.bad_token = 5;
    B.bad_slot = 3;
    B.bad_value = kExperts;
    CallOptions unchecked;
    unchecked.error_rank = W - 1;
    unchecked.check_errors = false;
    unchecked.combine = false;  // (a combine would throw it)
    const int T = mode == EpMode::low_latency ? kDecodeTokens : 600;
    p = h.call(B, same_tokens(W, T), unchecked);
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("{} unchecked bad id: {}", to_string(mode), p));
    CallOptions next;
    next.error_rank = W - 1;
    next.expect_thrown = fmt::format("topk_idx[5][3] = {}", kExperts);
    p = h.call(make_problem(w, tag++, Routing::random, 0, 256), same_tokens(W, T), next);
    WEFT_EXPECT_ALL_RANKS(p.empty(),
                          fmt::format("{} call after an unchecked report: {}", to_string(mode), p));
  }
}

}  // namespace
}  // namespace weft::ops::ep_testing
