// Multi-rank tests of the low-latency all-to-all. Start with
//   build/tools/weft/weft run -n 4 -- build/examples/ll_all_to_all/weft_ll_all_to_all_test
// Every rank runs every test in the same order. Inputs come from the shared seed, so each rank
// regenerates what every peer sent and checks its receive buffers exactly (bit for bit), rows
// beyond those sent included (they must keep the 0xFF poison written before each call).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "examples/ll_all_to_all/ll_all_to_all.cuh"
#include "examples/ll_all_to_all/ll_all_to_all.h"
#include "tests/gpu/test_world.h"
#include "tests/support/problems.h"
#include "weft/device/hash.cuh"
#include "weft/runtime/cuda_check.h"

namespace weft::examples {
namespace {

// DeepSeek-V3-like decode shapes: 128 tokens per rank, top-8 of 256 experts, hidden 7168.
constexpr int kHidden = 7168;
constexpr int kExperts = 256;
constexpr int kTokens = 128;
constexpr int kTopk = 8;
constexpr int kMaxM = kTokens * kTopk;  // a rank can route every (token, expert) pair to one rank
constexpr int kSourceRows = 2 * kMaxM;  // room for the over-full sends of DetectsBadSplits
constexpr uint64_t kPoisonWord = ~0ull;
constexpr uint32_t kPoisonScale = 0xFFFFFFFFu;
constexpr int32_t kPoisonSplit = -1;  // 0xFFFFFFFF

#define SKIP_UNLESS_EXPERTS_DIVIDE(world)                                                        \
  do {                                                                                           \
    if (kExperts % (world).size() != 0)                                                          \
      GTEST_SKIP() << kExperts << " experts do not divide among " << (world).size() << " ranks"; \
  } while (0)

// ---- deterministic inputs that every rank can regenerate --------------------------------------

using weft::dev::mix64;

// The stream of values rank `src` sends in the call tagged `tag`.
__host__ __device__ inline uint64_t source_key(uint64_t seed, uint64_t tag, int src) {
  return mix64(seed ^ mix64(tag ^ mix64(static_cast<uint64_t>(src) + 0x51EDull)));
}

// Word `word` of source row `row`: every byte in [1, 254], so never 0x00 (fresh memory) nor 0xFF
// (the poison), whatever the element type.
__host__ __device__ inline uint64_t row_word(uint64_t key, uint64_t row, uint64_t word) {
  const uint64_t h = mix64(key ^ mix64((row << 24) ^ word));
  uint64_t out = 0;
  for (int b = 0; b < 8; ++b) out |= (1 + ((h >> (8 * b)) & 0xFF) % 254) << (8 * b);
  return out;
}

// fp32 bits of the scale of source row `row`: a finite value in [1, 2).
__host__ __device__ inline uint32_t scale_bits(uint64_t key, uint64_t row) {
  return 0x3F800000u | static_cast<uint32_t>(mix64(key ^ mix64(row + 0xC0FFEEull)) & 0x7FFFFFu);
}

__device__ void fill_source_rows(uint64_t* data, int rows, int words, uint32_t* scales,
                                 uint64_t key) {
  const size_t n = static_cast<size_t>(rows) * words;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    data[i] = row_word(key, i / words, i % words);
  if (scales != nullptr)
    for (size_t r = blockIdx.x * size_t(blockDim.x) + threadIdx.x; r < size_t(rows); r += stride)
      scales[r] = scale_bits(key, r);
}

__global__ void fill_source_kernel(uint64_t* data, int rows, int words, uint32_t* scales,
                                   uint64_t key) {
  fill_source_rows(data, rows, words, scales, key);
}

// How rank `src` routes its tokens in one call.
enum class Route {
  random,  // each token picks kTopk distinct experts uniformly
  skew,    // every token picks kTopk experts of one rank: that rank gets exactly kMaxM rows
};

struct CallPlan {
  uint64_t tag = 0;
  Route route = Route::random;
  std::function<bool(int src, int dest)> drop;                      // drop src's rows to dest
  std::function<void(int src, std::vector<int32_t>& splits)> edit;  // then rewrite the counts
};

// Rows per expert that rank `src` sends in the call `plan` (E = kExperts counts).
std::vector<int32_t> make_splits(uint64_t seed, const CallPlan& plan, int src, int world) {
  const int epr = kExperts / world;
  std::vector<int32_t> splits(kExperts, 0);
  std::mt19937_64 rng(source_key(seed, plan.tag, src) ^ 0x5EEDull);
  const int skew_dest = static_cast<int>((plan.tag + src) % world);
  for (int t = 0; t < kTokens; ++t) {
    int chosen[kTopk];
    for (int k = 0; k < kTopk; ++k) {
      int e;
      bool again;
      do {
        e = plan.route == Route::skew ? skew_dest * epr + static_cast<int>(rng() % epr)
                                      : static_cast<int>(rng() % kExperts);
        again = std::find(chosen, chosen + k, e) != chosen + k;
      } while (again);
      chosen[k] = e;
      ++splits[e];
    }
  }
  if (plan.drop)
    for (int e = 0; e < kExperts; ++e)
      if (plan.drop(src, e / epr)) splits[e] = 0;
  if (plan.edit) plan.edit(src, splits);
  return splits;
}

std::vector<std::vector<int32_t>> make_all_splits(uint64_t seed, const CallPlan& plan, int world) {
  std::vector<std::vector<int32_t>> all;
  for (int s = 0; s < world; ++s) all.push_back(make_splits(seed, plan, s, world));
  return all;
}

// Where rank `dest`'s rows start in `splits`' source order, and how many there are.
struct Range {
  long long first = 0, rows = 0;
};
Range range_for(const std::vector<int32_t>& splits, int dest, int epr) {
  Range r;
  for (int e = 0; e < dest * epr; ++e) r.first += splits[e];
  for (int e = dest * epr; e < (dest + 1) * epr; ++e) r.rows += splits[e];
  return r;
}

// Collects the first few problems of one rank.
using Problems = testing::ProblemList<6>;
using testing::expect_invalid;

void poison(const LowLatencyAllToAll& op, cudaStream_t stream) {
  const size_t W = op.world_size();
  const auto rx = op.received(0);  // half 1 follows half 0 in each buffer
  WEFT_CUDA_CHECK(cudaMemsetAsync(const_cast<void*>(rx.data), 0xFF,
                                  2 * W * op.max_m() * op.row_bytes(), stream));
  WEFT_CUDA_CHECK(cudaMemsetAsync(const_cast<int32_t*>(rx.splits), 0xFF,
                                  2 * W * op.experts_per_rank() * sizeof(int32_t), stream));
  if (op.with_scale())
    WEFT_CUDA_CHECK(cudaMemsetAsync(const_cast<float*>(rx.scales), 0xFF,
                                    2 * W * op.max_m() * sizeof(float), stream));
}

// Copies both halves of this rank's receive buffers to the host and compares them with what the
// peers sent in the call tagged `tag` (`splits[s]` = rank s's counts), which landed in half
// `parity`; the other half must still hold the poison.
std::string compare_received(World& w, const LowLatencyAllToAll& op, int parity, uint64_t seed,
                             uint64_t tag, const std::vector<std::vector<int32_t>>& splits) {
  const int W = op.world_size(), epr = op.experts_per_rank(), max_m = op.max_m();
  const size_t words = op.row_bytes() / sizeof(uint64_t);
  const auto base = op.received(0);
  std::vector<uint64_t> data(2 * W * max_m * words);
  std::vector<int32_t> got_splits(2 * W * epr);
  std::vector<uint32_t> scales(op.with_scale() ? 2 * W * max_m : 0);
  WEFT_CUDA_CHECK(cudaMemcpyAsync(data.data(), base.data, data.size() * sizeof(uint64_t),
                                  cudaMemcpyDeviceToHost, w.stream()));
  WEFT_CUDA_CHECK(cudaMemcpyAsync(got_splits.data(), base.splits,
                                  got_splits.size() * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                  w.stream()));
  if (op.with_scale())
    WEFT_CUDA_CHECK(cudaMemcpyAsync(scales.data(), base.scales, scales.size() * sizeof(uint32_t),
                                    cudaMemcpyDeviceToHost, w.stream()));
  w.synchronize(w.stream());

  Problems pr;
  const int me = w.rank();
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < W; ++s) {
      const Range r = h == parity ? range_for(splits[s], me, epr) : Range{};
      const uint64_t key = source_key(seed, tag, s);
      const size_t slot = static_cast<size_t>(h) * W + s;
      for (int row = 0; row < max_m; ++row) {
        const uint64_t* got = &data[(slot * max_m + row) * words];
        for (size_t i = 0; i < words; ++i) {
          const uint64_t want = row < r.rows ? row_word(key, r.first + row, i) : kPoisonWord;
          if (got[i] != want) {
            pr.add(
                "tag {} half {} from rank {}: row {} (of {} sent) word {} is {:#018x}, want "
                "{:#018x}",
                tag, h, s, row, r.rows, i, got[i], want);
            break;
          }
        }
        if (op.with_scale()) {
          const uint32_t want = row < r.rows ? scale_bits(key, r.first + row) : kPoisonScale;
          if (scales[slot * max_m + row] != want)
            pr.add(
                "tag {} half {} from rank {}: scale of row {} (of {} sent) is {:#010x}, want "
                "{:#010x}",
                tag, h, s, row, r.rows, scales[slot * max_m + row], want);
        }
      }
      for (int j = 0; j < epr; ++j) {
        const int32_t want = h == parity ? splits[s][me * epr + j] : kPoisonSplit;
        if (got_splits[slot * epr + j] != want)
          pr.add("tag {} half {} from rank {}: count of local expert {} is {}, want {}", tag, h, s,
                 j, got_splits[slot * epr + j], want);
      }
    }
  }
  return pr.str();
}

// Sources and the call sequence for one LowLatencyAllToAll.
class Harness {
 public:
  Harness(World& w, LowLatencyAllToAll& op) : w_(w), op_(op), seed_(testing::shared_seed()) {
    WEFT_CUDA_CHECK(cudaMalloc(&data_, static_cast<size_t>(kSourceRows) * op.row_bytes()));
    WEFT_CUDA_CHECK(cudaMalloc(&splits_, kExperts * sizeof(int32_t)));
    WEFT_CUDA_CHECK(cudaMalloc(&scales_, kSourceRows * sizeof(float)));
  }
  ~Harness() {
    cudaFree(data_);
    cudaFree(splits_);
    cudaFree(scales_);
  }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  void* data() const { return data_; }
  int32_t* splits() const { return splits_; }
  float* scales() const { return op_.with_scale() ? scales_ : nullptr; }
  uint64_t seed() const { return seed_; }
  void expect_next_epoch(uint64_t e) { next_epoch_ = e; }

  // Writes this rank's inputs of `plan` into the source buffers (stream-ordered).
  void prepare(const CallPlan& plan, const std::vector<int32_t>& mine) {
    long long rows = 0;
    for (int32_t c : mine) rows += std::max(c, 0);
    WEFT_CHECK(rows <= kSourceRows, "test plan sends {} rows, more than the {} allocated", rows,
               kSourceRows);
    WEFT_CUDA_CHECK(cudaMemcpyAsync(splits_, mine.data(), kExperts * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, w_.stream()));
    fill_source_kernel<<<132, 256, 0, w_.stream()>>>(
        static_cast<uint64_t*>(data_), static_cast<int>(rows),
        static_cast<int>(op_.row_bytes() / sizeof(uint64_t)),
        op_.with_scale() ? reinterpret_cast<uint32_t*>(scales_) : nullptr,
        source_key(seed_, plan.tag, w_.rank()));
    WEFT_CHECK_LAUNCH();
    w_.synchronize(w_.stream());  // `mine` may be pageable and short-lived
  }

  // One collective call without checking the result (it synchronizes the stream).
  LowLatencyAllToAll::Received call_unchecked(const CallPlan& plan) {
    const auto all = make_all_splits(seed_, plan, w_.size());
    prepare(plan, all[w_.rank()]);
    poison(op_, w_.stream());
    w_.barrier(w_.stream());  // every rank poisoned before any rank writes
    const auto rx = op_.run(data_, splits_, scales(), w_.stream());
    w_.synchronize(w_.stream());
    ++next_epoch_;
    return rx;
  }

  // One collective call, checked; returns this rank's problems ("" if none).
  std::string call(const CallPlan& plan) {
    const auto all = make_all_splits(seed_, plan, w_.size());
    const uint64_t epoch = next_epoch_;
    const auto rx = call_unchecked(plan);
    Problems pr;
    const int parity = static_cast<int>(epoch & 1);
    if (rx.epoch != epoch || rx.parity != parity)
      pr.add("run() returned epoch {} parity {}, want {} and {}", rx.epoch, rx.parity, epoch,
             parity);
    const auto half = op_.received(parity);
    if (rx.data != half.data || rx.splits != half.splits || rx.scales != half.scales)
      pr.add("run() returned views that are not half {}", parity);
    const std::string data = compare_received(w_, op_, parity, seed_, plan.tag, all);
    return pr.str() + data;
  }

 private:
  World& w_;
  LowLatencyAllToAll& op_;
  uint64_t seed_;
  uint64_t next_epoch_ = 1;
  void* data_ = nullptr;
  int32_t* splits_ = nullptr;
  float* scales_ = nullptr;
};

CallPlan random_call(uint64_t tag) { return CallPlan{tag, Route::random, {}, {}}; }
CallPlan skewed_call(uint64_t tag) { return CallPlan{tag, Route::skew, {}, {}}; }

// ---- tests ----------------------------------------------------------------------------------

TEST(LlAllToAll, Bf16ConsecutiveCalls) {
  World& w = testing::test_world();
  SKIP_UNLESS_EXPERTS_DIVIDE(w);
  LowLatencyAllToAll op(w, kMaxM, kHidden, kExperts / w.size(), 2, /*with_scale=*/false);
  Harness h(w, op);
  // Parity alternates 1, 0, 1, 0, 1; different data every call; call 4 fills one slot exactly.
  for (uint64_t tag : {1, 2, 3}) {
    const std::string p = h.call(random_call(tag));
    WEFT_EXPECT_ALL_RANKS(p.empty(), p);
  }
  std::string p = h.call(skewed_call(4));
  WEFT_EXPECT_ALL_RANKS(p.empty(), p);
  p = h.call(random_call(5));
  WEFT_EXPECT_ALL_RANKS(p.empty(), p);
}

TEST(LlAllToAll, Fp8WithScales) {
  World& w = testing::test_world();
  SKIP_UNLESS_EXPERTS_DIVIDE(w);
  LowLatencyAllToAll op(w, kMaxM, kHidden, kExperts / w.size(), 1, /*with_scale=*/true);
  Harness h(w, op);
  for (const CallPlan& plan :
       {random_call(11), random_call(12), skewed_call(13), random_call(14)}) {
    const std::string p = h.call(plan);
    WEFT_EXPECT_ALL_RANKS(p.empty(), p);
  }
}

TEST(LlAllToAll, EmptySends) {
  World& w = testing::test_world();
  SKIP_UNLESS_EXPERTS_DIVIDE(w);
  const int W = w.size();
  LowLatencyAllToAll op(w, kMaxM, kHidden, kExperts / W, 1, /*with_scale=*/true);
  Harness h(w, op);
  const std::vector<CallPlan> plans = {
      {21, Route::random, [W](int s, int d) { return d == (s + 1) % W; }, {}},  // skip next rank
      {22, Route::random, [](int s, int) { return s == 0; }, {}},               // rank 0 sends none
      {23, Route::random, [](int s, int d) { return s == d; }, {}},             // none to itself
      {24, Route::random, [](int, int) { return true; }, {}},                   // nobody sends
      random_call(25),
  };
  for (const CallPlan& plan : plans) {
    const std::string p = h.call(plan);
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("plan {}: {}", plan.tag, p));
  }
}

TEST(LlAllToAll, SeveralBlocksPerPeer) {
  World& w = testing::test_world();
  SKIP_UNLESS_EXPERTS_DIVIDE(w);
  const int W = w.size();
  // 3 blocks split each destination's rows unevenly (and leave some blocks without rows).
  LowLatencyAllToAll op(w, kMaxM, kHidden, kExperts / W, 2, /*with_scale=*/true,
                        /*blocks_per_peer=*/3);
  Harness h(w, op);
  const std::vector<CallPlan> plans = {
      random_call(31),
      skewed_call(32),
      {33, Route::random, [W](int s, int d) { return d == (s + 1) % W; }, {}},
      {34,
       Route::random,
       {},
       [](int, std::vector<int32_t>& c) {  // single rows, 8 in all
         std::fill(c.begin(), c.end(), 0);
         for (size_t e = 0; e < c.size(); e += c.size() / 8) c[e] = 1;
       }},
      random_call(35),
  };
  for (const CallPlan& plan : plans) {
    const std::string p = h.call(plan);
    WEFT_EXPECT_ALL_RANKS(p.empty(), fmt::format("plan {}: {}", plan.tag, p));
  }
}

// Counts that break the contract live on the device: the kernel must notice, send no rows to the
// destination concerned (still its signal: nobody hangs), and report it on the sending rank.
TEST(LlAllToAll, DetectsBadSplitsOnDevice) {
  World& w = testing::test_world();
  SKIP_UNLESS_EXPERTS_DIVIDE(w);
  const int W = w.size(), epr = kExperts / W;
  LowLatencyAllToAll op(w, kMaxM, kHidden, epr, 2, /*with_scale=*/false);
  Harness h(w, op);
  CallPlan bad = random_call(41);
  bad.edit = [W, epr](int src, std::vector<int32_t>& c) {
    if (src == 0) {  // kMaxM + 1 rows for rank 1, nothing else
      std::fill(c.begin(), c.end(), 0);
      c[1 * epr] = kMaxM + 1;
    } else if (src == W - 1) {
      c[0] = -1;  // a negative count
    }
  };
  h.call_unchecked(bad);
  std::string problem;
  try {
    op.check_errors();
    if (w.rank() == 0 || w.rank() == W - 1) problem = "check_errors() did not throw";
  } catch (const InvalidArgument& e) {
    const std::string want =
        w.rank() == 0 ? fmt::format("destination rank 1 (experts [{}, {})) sum to {}", epr, 2 * epr,
                                    kMaxM + 1)
        : w.rank() == W - 1 ? std::string("splits_src[0] (rows for expert 0) is negative")
                            : std::string("<no error>");
    if (e.detail().find(want) == std::string::npos)
      problem = fmt::format("error '{}' lacks '{}'", e.detail(), want);
  }
  WEFT_EXPECT_ALL_RANKS(problem.empty(), problem);
  // The report is consumed, and the next good call works.
  problem.clear();
  try {
    op.check_errors();
  } catch (const std::exception& e) {
    problem = std::string("second check_errors() threw: ") + e.what();
  }
  WEFT_EXPECT_ALL_RANKS(problem.empty(), problem);
  const std::string p = h.call(random_call(42));
  WEFT_EXPECT_ALL_RANKS(p.empty(), p);
}

// ---- CUDA graph: capture one call, replay it with new inputs every time ------------------------

struct Mismatch {
  unsigned long long count;
  unsigned int claimed;
  int replay, src, row, what;  // what: 0 data word, 1 scale, 2 count, 3 epoch
  long long index;
  unsigned long long got, want;
};

__device__ void record(Mismatch* m, int replay, int src, int row, int what, long long index,
                       unsigned long long got, unsigned long long want) {
  atomicAdd(&m->count, 1ull);
  if (atomicCAS(&m->claimed, 0u, 1u) == 0u) {
    m->replay = replay, m->src = src, m->row = row, m->what = what, m->index = index;
    m->got = got, m->want = want;
  }
}

// Per-replay tables (built on the host from the shared seed).
struct ReplayTables {
  const int32_t* my_splits;  // [replays][kExperts]: what this rank sends
  const int* my_rows;        // [replays]: sum of the above
  const long long* first;    // [replays][W]: where src's rows for this rank start in its source
  const int* rows;           // [replays][W]: how many rows src sends to this rank
  const int32_t* counts;     // [replays][W][epr]: src's counts for this rank's experts
};

// Stage replay i's inputs into the buffers the graph captured.
__global__ void prepare_replay(ReplayTables t, int replay, uint64_t seed, uint64_t tag, int rank,
                               int words, uint64_t* data, int32_t* splits, uint32_t* scales) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < kExperts; e += gridDim.x * blockDim.x)
    splits[e] = t.my_splits[static_cast<size_t>(replay) * kExperts + e];
  fill_source_rows(data, t.my_rows[replay], words, scales, source_key(seed, tag, rank));
}

// Check replay i on the device, picking the half the way a consumer inside the graph would.
// One block per (source, row) slot.
__global__ void check_replay(ReplayTables t, int replay, uint64_t expected_epoch,
                             const LlA2AState* state, uint64_t seed, uint64_t tag, int world,
                             int max_m, int words, int epr, const uint64_t* data,
                             const int32_t* splits, const uint32_t* scales, Mismatch* m) {
  const int parity = ll_a2a_last_parity(state);
  if (blockIdx.x == 0 && threadIdx.x == 0 && ll_a2a_last_epoch(state) != expected_epoch)
    record(m, replay, -1, -1, 3, 0, ll_a2a_last_epoch(state), expected_epoch);
  const int src = blockIdx.x / max_m, row = blockIdx.x % max_m;
  const size_t at = static_cast<size_t>(replay) * world + src;
  const int n = t.rows[at];
  const long long first = t.first[at];
  const uint64_t key = source_key(seed, tag, src);
  const size_t slot = static_cast<size_t>(parity) * world + src;
  const uint64_t* got = data + (slot * max_m + row) * words;
  for (int i = threadIdx.x; i < words; i += blockDim.x) {
    const uint64_t want = row < n ? row_word(key, first + row, i) : kPoisonWord;
    if (got[i] != want) record(m, replay, src, row, 0, i, got[i], want);
  }
  if (threadIdx.x == 0 && scales != nullptr) {
    const uint32_t want = row < n ? scale_bits(key, first + row) : kPoisonScale;
    if (scales[slot * max_m + row] != want)
      record(m, replay, src, row, 1, 0, scales[slot * max_m + row], want);
  }
  if (row == 0)
    for (int j = threadIdx.x; j < epr; j += blockDim.x) {
      const int32_t want = t.counts[at * epr + j];
      if (splits[slot * epr + j] != want)
        record(m, replay, src, row, 2, j, static_cast<uint32_t>(splits[slot * epr + j]),
               static_cast<uint32_t>(want));
    }
}

TEST(LlAllToAll, CudaGraphReplay) {
  World& w = testing::test_world();
  SKIP_UNLESS_EXPERTS_DIVIDE(w);
  constexpr int kReplays = 1000;
  constexpr uint64_t kTagBase = 100000;
  const int W = w.size(), epr = kExperts / W, me = w.rank();
  cudaStream_t s = w.stream();
  LowLatencyAllToAll op(w, kMaxM, kHidden, epr, 2, /*with_scale=*/true);
  Harness h(w, op);
  const uint64_t seed = h.seed();
  Problems pr;

  // One eager call first, so the graph starts from epoch 2 (and the eager path is mixed in).
  std::string p = h.call(random_call(51));
  WEFT_EXPECT_ALL_RANKS(p.empty(), p);

  // Host reference for every replay: each rank regenerates every rank's counts.
  std::vector<std::vector<std::vector<int32_t>>> all(kReplays);
  std::vector<int32_t> my_splits(static_cast<size_t>(kReplays) * kExperts);
  std::vector<int> my_rows(kReplays), rows(static_cast<size_t>(kReplays) * W);
  std::vector<long long> first(static_cast<size_t>(kReplays) * W);
  std::vector<int32_t> counts(static_cast<size_t>(kReplays) * W * epr);
  for (int i = 0; i < kReplays; ++i) {
    // Every fifth replay some ranks send nothing to their neighbour; every seventh is skewed.
    CallPlan plan = i % 7 == 3 ? skewed_call(kTagBase + i) : random_call(kTagBase + i);
    if (i % 5 == 2) plan.drop = [W, i](int src, int d) { return d == (src + i) % W; };
    all[i] = make_all_splits(seed, plan, W);
    std::copy(all[i][me].begin(), all[i][me].end(), my_splits.begin() + size_t(i) * kExperts);
    my_rows[i] = std::accumulate(all[i][me].begin(), all[i][me].end(), 0);
    for (int src = 0; src < W; ++src) {
      const Range r = range_for(all[i][src], me, epr);
      first[size_t(i) * W + src] = r.first;
      rows[size_t(i) * W + src] = static_cast<int>(r.rows);
      for (int j = 0; j < epr; ++j)
        counts[(size_t(i) * W + src) * epr + j] = all[i][src][me * epr + j];
    }
  }
  int32_t *d_my_splits, *d_counts;
  int *d_my_rows, *d_rows;
  long long* d_first;
  Mismatch* d_mismatch;
  auto upload = [&](auto** dst, const auto& v) {
    WEFT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(dst), v.size() * sizeof(v[0])));
    WEFT_CUDA_CHECK(cudaMemcpy(*dst, v.data(), v.size() * sizeof(v[0]), cudaMemcpyHostToDevice));
  };
  upload(&d_my_splits, my_splits);
  upload(&d_my_rows, my_rows);
  upload(&d_first, first);
  upload(&d_rows, rows);
  upload(&d_counts, counts);
  WEFT_CUDA_CHECK(cudaMalloc(&d_mismatch, sizeof(Mismatch)));
  WEFT_CUDA_CHECK(cudaMemset(d_mismatch, 0, sizeof(Mismatch)));
  const ReplayTables tables{d_my_splits, d_my_rows, d_first, d_rows, d_counts};

  // Capture one call on the stream (global mode: the strictest).
  const uint64_t epoch0 = op.next_epoch(s);
  if (epoch0 != 2) pr.add("next_epoch() before the replays is {}, want 2", epoch0);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  WEFT_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  LowLatencyAllToAll::Received captured;
  try {
    captured = op.run(h.data(), h.splits(), h.scales(), s);
  } catch (...) {
    cudaStreamEndCapture(s, &graph);
    throw;
  }
  WEFT_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  WEFT_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  if (captured.parity != -1 || captured.data != nullptr)
    pr.add("a captured run() returned parity {} and data {}, want -1 and null", captured.parity,
           captured.data);

  const int words = static_cast<int>(op.row_bytes() / sizeof(uint64_t));
  const auto base = op.received(0);
  for (int i = 0; i < kReplays; ++i) {
    prepare_replay<<<132, 256, 0, s>>>(tables, i, seed, kTagBase + i, me, words,
                                       static_cast<uint64_t*>(h.data()), h.splits(),
                                       reinterpret_cast<uint32_t*>(h.scales()));
    WEFT_CHECK_LAUNCH();
    poison(op, s);
    w.barrier(s);  // every rank poisoned before any rank's replay writes into it
    WEFT_CUDA_CHECK(cudaGraphLaunch(exec, s));
    check_replay<<<W * kMaxM, 256, 0, s>>>(
        tables, i, epoch0 + i, op.device_state(), seed, kTagBase + i, W, kMaxM, words, epr,
        static_cast<const uint64_t*>(base.data), base.splits,
        reinterpret_cast<const uint32_t*>(base.scales), d_mismatch);
    WEFT_CHECK_LAUNCH();
    if (i < 2 || i == kReplays / 2 || i == kReplays - 1) {  // and a host-side check of a sample
      const std::string q =
          compare_received(w, op, static_cast<int>((epoch0 + i) & 1), seed, kTagBase + i, all[i]);
      if (!q.empty()) pr.add("replay {} (host check): {}", i, q);
    }
  }
  Mismatch m{};
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&m, d_mismatch, sizeof(m), cudaMemcpyDeviceToHost, s));
  w.synchronize(s);
  if (m.count != 0) {
    static const char* what[] = {"data word", "scale", "count", "epoch"};
    pr.add(
        "{} mismatches over {} replays; first: replay {} from rank {} row {} {} {}: got {:#x}, "
        "want {:#x}",
        m.count, kReplays, m.replay, m.src, m.row, what[m.what], m.index, m.got, m.want);
  }
  WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str());

  // Eager again after the replays: the host re-reads the epoch the replays advanced.
  h.expect_next_epoch(epoch0 + kReplays);
  p = h.call(random_call(52));
  WEFT_EXPECT_ALL_RANKS(p.empty(), p);

  WEFT_CUDA_CHECK(cudaGraphExecDestroy(exec));
  WEFT_CUDA_CHECK(cudaGraphDestroy(graph));
  for (void* d :
       {static_cast<void*>(d_my_splits), static_cast<void*>(d_my_rows), static_cast<void*>(d_first),
        static_cast<void*>(d_rows), static_cast<void*>(d_counts), static_cast<void*>(d_mismatch)})
    WEFT_CUDA_CHECK(cudaFree(d));
}

// ---- argument validation ----------------------------------------------------------------------

TEST(LlAllToAll, RejectsBadArguments) {
  World& w = testing::test_world();
  Problems pr;
  // Constructor arguments are checked before any collective step, identically on every rank.
  expect_invalid(pr, "max_m 0", "max_m", [&] { LowLatencyAllToAll(w, 0, 128, 4, 2, false); });
  expect_invalid(pr, "hidden -1", "hidden", [&] { LowLatencyAllToAll(w, 8, -1, 4, 2, false); });
  expect_invalid(pr, "0 experts", "experts_per_rank",
                 [&] { LowLatencyAllToAll(w, 8, 128, 0, 2, false); });
  expect_invalid(pr, "3-byte elements", "element_bytes must be 1 (fp8), 2 (bf16/fp16) or 4",
                 [&] { LowLatencyAllToAll(w, 8, 128, 4, 3, false); });
  expect_invalid(pr, "0 blocks per peer", "blocks_per_peer",
                 [&] { LowLatencyAllToAll(w, 8, 128, 4, 2, false, 0); });
  expect_invalid(pr, "65 blocks per peer", "blocks_per_peer",
                 [&] { LowLatencyAllToAll(w, 8, 128, 4, 2, false, 65); });

  // run() arguments: checked before the launch, so no rank launches and none waits.
  LowLatencyAllToAll with_scale(w, 8, 128, 4, 2, true);
  LowLatencyAllToAll without_scale(w, 8, 128, 4, 2, false);
  void* data = nullptr;
  int32_t* splits = nullptr;
  float* scales = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&data, 8 * 128 * 2 + 16));
  WEFT_CUDA_CHECK(cudaMalloc(&splits, 4 * w.size() * sizeof(int32_t)));
  WEFT_CUDA_CHECK(cudaMalloc(&scales, 8 * sizeof(float)));
  std::vector<char> host(8 * 128 * 2);
  cudaStream_t s = w.stream();
  expect_invalid(pr, "null data", "data_src", [&] { with_scale.run(nullptr, splits, scales, s); });
  expect_invalid(pr, "null splits", "splits_src",
                 [&] { with_scale.run(data, nullptr, scales, s); });
  expect_invalid(pr, "no scales", "scale_src (one fp32 per row) is required",
                 [&] { with_scale.run(data, splits, nullptr, s); });
  expect_invalid(pr, "unexpected scales", "with_scale = false",
                 [&] { without_scale.run(data, splits, scales, s); });
  expect_invalid(pr, "host data", "pageable host memory",
                 [&] { without_scale.run(host.data(), splits, nullptr, s); });
  expect_invalid(pr, "misaligned bf16 data", "aligned to 2 bytes",
                 [&] { without_scale.run(static_cast<char*>(data) + 1, splits, nullptr, s); });
  expect_invalid(pr, "misaligned splits", "aligned to 4 bytes", [&] {
    without_scale.run(data, reinterpret_cast<int32_t*>(reinterpret_cast<char*>(splits) + 2),
                      nullptr, s);
  });
  expect_invalid(pr, "parity 2", "parity", [&] { with_scale.received(2); });
  WEFT_CUDA_CHECK(cudaFree(data));
  WEFT_CUDA_CHECK(cudaFree(splits));
  WEFT_CUDA_CHECK(cudaFree(scales));
  WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str());
}

}  // namespace
}  // namespace weft::examples
