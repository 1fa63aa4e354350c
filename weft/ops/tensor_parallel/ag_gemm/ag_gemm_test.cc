// Multi-rank tests of AG-GEMM against NCCL all-gather + cuBLASLt (fp32 output). Start with
//   build/tools/weft/weft run -n 4 -- build/weft/ops/tensor_parallel/weft_ag_gemm_test
// Every rank runs every test in the same order; each check is a job-wide verdict naming the
// failing ranks, the strategy, the dtype, the shape and the first wrong element.
#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "weft/ops/tensor_parallel/common/test_support.h"

namespace weft::tp {
namespace {

using namespace weft::tp::test;
namespace tpt = weft::tp::testing;

constexpr AgGemmStrategy kAllStrategies[] = {
    AgGemmStrategy::kFusedCopyEngine, AgGemmStrategy::kFusedPush,
    AgGemmStrategy::kDecomposedLocalFirst, AgGemmStrategy::kDecomposedPerChunk,
    AgGemmStrategy::kPushGather};
constexpr size_t kNumStrategies = std::size(kAllStrategies);

struct AgCase {
  int64_t m_local = 200, n = 392, k = 512;  // M = W * 200: not a multiple of any tile height
  DType dtype = DType::kBF16;
  AgGemmStrategy strategy = AgGemmStrategy::kAuto;
  int64_t lda_pad = 0, ldc_pad = 0;
  bool gather_a = true;
  bool zero_copy = false;  // write A into op.input_slot() and pass that
  int64_t b_kn_pad = -1;   // >= 0: B passed as [k, n] (BLayout::kKN), ldb = n + b_kn_pad
};

std::string describe(const AgCase& c) {
  return fmt::format("{} {} m_local={} n={} k={} lda=k+{} ldc=n+{}{}{}", to_string(c.strategy),
                     dtype_name(c.dtype), c.m_local, c.n, c.k, c.lda_pad, c.ldc_pad,
                     c.zero_copy ? " zero-copy" : "",
                     c.b_kn_pad >= 0 ? fmt::format(" B [k, n] ldb=n+{}", c.b_kn_pad) : "");
}

// One rank's buffers for a case.
struct AgData {
  AgData(const AgCase& c, int world)
      : m(c.m_local * world),
        lda(c.k + c.lda_pad),
        ldc(c.n + c.ldc_pad),
        a(size_t(c.m_local * c.k * 2)),
        a_op(size_t(c.m_local * lda * 2)),
        b(size_t(c.n * c.k * 2)),
        b_kn(size_t(c.k * (c.n + std::max<int64_t>(c.b_kn_pad, 0)) * 2)),
        c(size_t(m * ldc * 2)),
        gathered_ref(size_t(m * c.k * 2)),
        ref(size_t(m * c.n * 4)) {}
  int64_t m, lda, ldc;
  DeviceMemory a, a_op, b, b_kn, c, gathered_ref, ref;
};

class AgGemmGpu : public ::testing::Test {
 protected:
  cudaStream_t stream() { return world().stream(); }
  uint64_t seed(uint64_t tag, uint64_t round = 0) {
    return tpt::matrix_seed(::weft::testing::shared_seed(), tag, world().rank(), round);
  }

  // Fills the inputs for round `round`; returns the A the operator should read.
  const void* fill_inputs(AgGemm& op, const AgCase& c, AgData& d, uint64_t round) {
    tpt::fill_matrix(d.a.data(), c.m_local, c.k, c.k, c.dtype, seed(1, round), stream());
    tpt::fill_matrix(d.b.data(), c.n, c.k, c.k, c.dtype, seed(2), stream());
    if (c.b_kn_pad >= 0) write_transpose(d.b.data(), c.n, c.k, d.b_kn.data(), c.n + c.b_kn_pad);
    if (c.zero_copy) {
      void* slot = op.input_slot(c.m_local, c.k);
      tpt::fill_matrix(slot, c.m_local, c.k, c.k, c.dtype, seed(1, round), stream());
      return slot;
    }
    if (c.lda_pad == 0) return d.a.data();
    WEFT_CUDA_CHECK(cudaMemsetAsync(d.a_op.data(), 0xFF, d.a_op.bytes(), stream()));
    tpt::fill_matrix(d.a_op.data(), c.m_local, c.k, d.lda, c.dtype, seed(1, round), stream());
    return d.a_op.data();
  }

  AgGemmArgs args_for(const AgCase& c, AgData& d, const void* a) {
    AgGemmArgs args;
    args.a = a;
    args.lda = d.lda;
    args.b = d.b.data();
    if (c.b_kn_pad >= 0) {
      args.b = d.b_kn.data();
      args.ldb = c.n + c.b_kn_pad;
      args.b_layout = BLayout::kKN;
    }
    args.c = d.c.data();
    args.ldc = d.ldc;
    args.m_local = c.m_local;
    args.n = c.n;
    args.k = c.k;
    args.dtype = c.dtype;
    args.gather_a = c.gather_a;
    args.strategy = c.strategy;
    return args;
  }

  // One eager call checked against the reference: "" when right.
  std::string run_case(AgGemm& op, tpt::Reference& ref, const AgCase& c) {
    std::string err = capture_error([&] {
      AgData d(c, world().size());
      const void* a = fill_inputs(op, c, d, 0);
      WEFT_CUDA_CHECK(cudaMemsetAsync(d.c.data(), 0xFF, d.c.bytes(), stream()));  // poison
      const AgGemmPlan plan = op.run(args_for(c, d, a), stream());
      check_ran(plan.strategy, c.strategy);
      ref.ag_gemm(d.a.data(), c.m_local, c.k, d.b.data(), c.n, c.dtype, d.gathered_ref.data(),
                  d.ref.as<float>(), stream());
      tpt::Comparator cmp;
      cmp.reset(stream());
      cmp.compare(d.c.data(), d.ldc, c.dtype, d.ref.as<float>(), c.n, d.m, c.n,
                  tpt::gemm_tolerance(c.dtype, c.k), 0, stream());
      sync_or_throw();
      const auto r = cmp.read(stream());
      std::string problems;
      if (!r.ok()) problems += "C: " + r.describe() + "; ";
      problems += padding_problem(d.c.data(), d.m, c.n, c.ldc_pad, d.ldc, "C");
      if (c.gather_a || plan.strategy == AgGemmStrategy::kFusedCopyEngine ||
          plan.strategy == AgGemmStrategy::kFusedPush) {
        const uint64_t diff = tpt::count_bit_differences(op.gathered_a(), c.k,
                                                         d.gathered_ref.data(), c.k, d.m, c.k,
                                                         stream());
        if (diff) problems += fmt::format("gathered A differs from NCCL's in {} elements; ", diff);
      }
      if (!problems.empty()) throw Error("check", problems + "plan: " + plan.reason);
    });
    return err.empty() ? "" : describe(c) + ": " + err;
  }
};

AgGemmOptions small_options() {
  AgGemmOptions o;
  o.max_m = 4096;
  o.max_k = 1024;
  o.max_n = 4096;
  o.push_sms = 8;
  return o;
}

// Ranks asked for different calls must all fail with the mismatch report instead of completing:
// rank 1 with twice the rows (WEFT_TEST_VARIANT <strategy>) or with fp16 (<strategy>:fp16),
// caught by the prologue's signature check (fused_ce) or the push kernel's (push_gather). In
// children, since the trap ends the CUDA context.
WEFT_CHILD_BODY(ag_gemm_mismatch) {
  AgGemm op(world, small_options());
  const MismatchVariant v = mismatch_variant(world);
  const int64_t W = world.size(), m_local = 64 * v.size_factor, n = 256, k = 128;
  MismatchOperands o = mismatch_operands(world, m_local, n, k, m_local * W * n, v.dtype);
  AgGemmArgs args;
  args.a = o.a.data();
  args.b = o.b.data();
  args.c = o.out(v);
  if (v.bad_ld) args.ldc = n - 8;
  args.m_local = m_local;
  args.n = n;
  args.k = k;
  args.dtype = v.dtype;
  args.strategy = parse_ag_gemm_strategy(v.strategy);
  return run_mismatched_call(world, [&] { op.run(args, world.stream()); });
}

TEST_F(AgGemmGpu, CallsThatDifferAcrossRanksTrapOnEveryRank) {
  if (world().size() < 2) GTEST_SKIP() << "needs two ranks";
  expect_mismatch_trap("ag_gemm_mismatch", {{"fused_ce", "m"},
                                            {"push_gather", "m"},
                                            {"fused_ce:fp16", "dtype"},
                                            {"push_gather:fp16", "dtype"}});
  // A rank whose own check fails abandons the call; its peers fail at once instead of timing out.
  expect_abandon_fails_peers("ag_gemm_mismatch", {"fused_ce", "push_gather"});
  // ... also when it is the shape check that fails, before the rank has a plan.
  expect_abandon_fails_peers("ag_gemm_mismatch", {"fused_ce", "push_gather"}, "abandon_ld");
}

// Ranks whose own N slices differ, so that their planners may differ, and that run strategies
// exchanging the same rows the same way (fused_ce / decomposed_per_chunk with one chunk per rank:
// copy engines, one flag per chunk) agree: no mismatch, and every rank's result is right.
TEST_F(AgGemmGpu, UnevenSlicesAndEquivalentStrategiesAgree) {
  AgGemm op(world(), small_options());
  tpt::Reference ref(world());
  AgCase c;
  c.n = 256 * (1 + world().rank() % 2);
  c.strategy =
      world().rank() % 2 ? AgGemmStrategy::kDecomposedPerChunk : AgGemmStrategy::kFusedCopyEngine;
  const std::string err = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

TEST_F(AgGemmGpu, EveryStrategyAndDtypeMatchesNcclPlusCublas) {
  AgGemm op(world(), small_options());
  tpt::Reference ref(world());
  for (DType t : {DType::kBF16, DType::kFP16}) {
    AgCase c;
    c.dtype = t;
    expect_each_strategy(c, kAllStrategies,
                         [&](const AgCase& each) { return run_case(op, ref, each); });
  }
}

TEST_F(AgGemmGpu, AutomaticChoiceIsCorrect) {
  // Default thresholds pick the decomposed path at these sizes; fused_min_waves = 0 makes the
  // automatic choice fuse.
  for (double min_waves : {2.0, 0.0}) {
    AgGemmOptions o = small_options();
    o.fused_min_waves = min_waves;
    AgGemm op(world(), o);
    tpt::Reference ref(world());
    for (int64_t m_local : {8, 700}) {
      AgCase c;
      c.m_local = m_local;
      c.n = 520;
      c.k = 256;
      const std::string err = run_case(op, ref, c);
      WEFT_EXPECT_ALL_RANKS(err.empty(), fmt::format("fused_min_waves {}: {}", min_waves, err));
    }
  }
}

TEST_F(AgGemmGpu, OneRowPerRank) {
  AgGemm op(world(), small_options());
  tpt::Reference ref(world());
  AgCase c;
  c.m_local = 1;
  c.n = 72;
  c.k = 64;
  expect_each_strategy(c, kAllStrategies,
                       [&](const AgCase& each) { return run_case(op, ref, each); });
}

TEST_F(AgGemmGpu, StridedOperandsAndPaddedOutput) {
  AgGemm op(world(), small_options());
  tpt::Reference ref(world());
  AgCase c;
  c.n = 100;  // rows of C not 16-byte multiples: the GEMM's direct-store epilogue
  c.lda_pad = 24;
  c.ldc_pad = 12;
  expect_each_strategy(c, kAllStrategies,
                       [&](const AgCase& each) { return run_case(op, ref, each); });
}

TEST_F(AgGemmGpu, SeveralChunksPerRank) {
  AgGemmOptions o = small_options();
  o.chunks_per_rank = 4;  // 200 rows per rank: 4 flags of 50 rows each
  AgGemm op(world(), o);
  tpt::Reference ref(world());
  constexpr AgGemmStrategy kFused[] = {AgGemmStrategy::kFusedCopyEngine,
                                       AgGemmStrategy::kFusedPush};
  expect_each_strategy(AgCase{}, kFused,
                       [&](const AgCase& each) { return run_case(op, ref, each); });
}

TEST_F(AgGemmGpu, ZeroCopyInputSlot) {
  AgGemm op(world(), small_options());
  tpt::Reference ref(world());
  AgCase c;
  c.zero_copy = true;
  expect_each_strategy(c, kAllStrategies,
                       [&](const AgCase& each) { return run_case(op, ref, each); });
}

// B as [k, n] (a transposed weight read in place, BLayout::kKN): every strategy that takes it and
// the automatic choice, both dtypes, contiguous and with a padded ldb, a strided A and an odd n; a
// fused strategy is an argument error. The automatic choice runs on a second operator with
// push_gather off (it would take these sizes) and fused_min_waves = 0, so that the model's choice
// is fused_ce and the planner's fall-back to decomposed_local_first runs.
TEST_F(AgGemmGpu, TransposedBForEveryStrategyThatTakesIt) {
  AgGemm op(world(), small_options());
  AgGemmOptions o = small_options();
  o.fused_min_waves = 0.0;
  o.push_gather_max_bytes = 0;
  AgGemm auto_op(world(), o);
  tpt::Reference ref(world());
  constexpr AgGemmStrategy kTakeKn[] = {
      AgGemmStrategy::kAuto, AgGemmStrategy::kDecomposedLocalFirst,
      AgGemmStrategy::kDecomposedPerChunk, AgGemmStrategy::kPushGather};
  for (DType t : {DType::kBF16, DType::kFP16})
    for (int64_t pad : {0, 28}) {  // (ldb = 100 + 28: a multiple of 8)
      AgCase c;
      c.dtype = t;
      c.b_kn_pad = pad;
      if (pad > 0) {
        c.n = 100;
        c.lda_pad = 24;
      }
      expect_each_strategy(c, kTakeKn, [&](const AgCase& each) {
        return run_case(each.strategy == AgGemmStrategy::kAuto ? auto_op : op, ref, each);
      });
    }
  AgGemmArgs shape;  // what the automatic choice ran above
  shape.m_local = 200;
  shape.n = 392;
  shape.k = 512;
  shape.b_layout = BLayout::kKN;
  const AgGemmPlan plan = auto_op.plan(shape);
  WEFT_EXPECT_ALL_RANKS(plan.strategy == AgGemmStrategy::kDecomposedLocalFirst, plan.reason);
  AgCase c;
  c.b_kn_pad = 0;
  c.strategy = AgGemmStrategy::kFusedPush;
  AgData d(c, world().size());
  expect_invalid([&] { op.run(args_for(c, d, d.a.data()), stream()); }, "[n, k] only");
}

// Back-to-back eager calls with different shapes and strategies and no host synchronization in
// between: the flags must be re-armed correctly from call to call.
TEST_F(AgGemmGpu, BackToBackCallsWithChangingShapes) {
  AgGemm op(world(), small_options());
  tpt::Reference ref(world());
  const std::vector<AgCase> cases = [] {
    std::vector<AgCase> v;
    const int64_t shapes[][3] = {{200, 392, 512}, {64, 128, 256}, {333, 256, 128}, {1, 64, 64}};
    int i = 0;
    for (int rep = 0; rep < 3; ++rep)
      for (const auto& s : shapes) {
        AgCase c;
        c.m_local = s[0];
        c.n = s[1];
        c.k = s[2];
        c.strategy = kAllStrategies[i++ % kNumStrategies];
        v.push_back(c);
      }
    return v;
  }();
  std::string err = capture_error([&] {
    std::vector<std::unique_ptr<AgData>> data;
    check_back_to_back(
        cases.size(),
        [&](tpt::Comparator& cmp, size_t i) {
          const AgCase& c = cases[i];
          data.push_back(std::make_unique<AgData>(c, world().size()));
          AgData& d = *data.back();
          const void* a = fill_inputs(op, c, d, i + 1);
          op.run(args_for(c, d, a), stream());
          ref.ag_gemm(d.a.data(), c.m_local, c.k, d.b.data(), c.n, c.dtype, d.gathered_ref.data(),
                      d.ref.as<float>(), stream());
          cmp.compare(d.c.data(), d.ldc, c.dtype, d.ref.as<float>(), c.n, d.m, c.n,
                      tpt::gemm_tolerance(c.dtype, c.k), uint32_t(i), stream());
        },
        [&](uint32_t tag) { return "that call: " + describe(cases[tag]); });
  });
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

// Capture one call in a CUDA graph, replay it 1000 times with new A each time (written before
// each replay), and check every replay's C on the device.
TEST_F(AgGemmGpu, GraphReplayWithChangingInputs) {
  constexpr int kReplays = 1000;
  for (AgGemmStrategy s : kAllStrategies) {
    AgGemm op(world(), small_options());
    tpt::Reference ref(world());
    AgCase c;
    c.m_local = 136;
    c.n = 264;
    c.k = 256;
    c.strategy = s;
    c.gather_a = false;
    std::string err = capture_error([&] {
      AgData d(c, world().size());
      const void* a = fill_inputs(op, c, d, 0);
      const AgGemmArgs args = args_for(c, d, a);
      check_graph_replays(
          kReplays, uint64_t(d.m * c.n), [&] { op.run(args, stream()); },
          [&](int i) { fill_inputs(op, c, d, uint64_t(i)); },
          [&](tpt::Comparator& cmp, int i) {
            ref.ag_gemm(d.a.data(), c.m_local, c.k, d.b.data(), c.n, c.dtype, d.gathered_ref.data(),
                        d.ref.as<float>(), stream());
            cmp.compare(d.c.data(), d.ldc, c.dtype, d.ref.as<float>(), c.n, d.m, c.n,
                        tpt::gemm_tolerance(c.dtype, c.k), uint32_t(i), stream());
          });
    });
    WEFT_EXPECT_ALL_RANKS(err.empty(), describe(c) + ": " + err);
  }
}

// ---- the all-gather alone (AgGemm::all_gather)
// ---------------------------------------------------

// Both ways all_gather gathers: push_gather's kernel (the default options: these cases fit) and
// the copy engines (push_gather disabled).
AgGemmOptions gather_options(bool push) {
  AgGemmOptions o = small_options();
  if (!push) o.push_gather_max_bytes = 0;
  return o;
}

class AgGatherGpu : public AgGemmGpu {
 protected:
  AgGatherArgs gather_args(const AgCase& c, const AgData& d, const void* a) {
    AgGatherArgs g;
    g.a = a;
    g.lda = a == d.a_op.data() ? d.lda : c.k;
    g.m_local = c.m_local;
    g.k = c.k;
    g.dtype = c.dtype;
    return g;
  }

  // Elements of the gathered A (op.gathered_a()) that differ from every rank's A of `round`,
  // regenerated here from the ranks' seeds.
  uint64_t gathered_differences(AgGemm& op, const AgCase& c, DeviceMemory& expected,
                                uint64_t round) {
    for (int q = 0; q < world().size(); ++q)
      tpt::fill_matrix(static_cast<char*>(expected.data()) + q * c.m_local * c.k * 2, c.m_local,
                       c.k, c.k, c.dtype,
                       tpt::matrix_seed(::weft::testing::shared_seed(), 1, q, round), stream());
    return tpt::count_bit_differences(op.gathered_a(), c.k, expected.data(), c.k,
                                      c.m_local * world().size(), c.k, stream());
  }

  std::string gather_case(AgGemm& op, const AgCase& c, const char* want) {
    std::string err = capture_error([&] {
      AgData d(c, world().size());
      const void* a = fill_inputs(op, c, d, 7);
      const std::string ran = op.all_gather(gather_args(c, d, a), stream());
      if (ran != want) throw Error("check", fmt::format("ran {}, expected {}", ran, want));
      const uint64_t diff = gathered_differences(op, c, d.gathered_ref, 7);
      if (diff) throw Error("check", fmt::format("{} elements of the gathered A differ", diff));
    });
    return err.empty() ? "" : fmt::format("all_gather ({}) {}: {}", want, describe(c), err);
  }
};

// Bit-exact gathers of every dtype, one row per rank, strided and zero-copy A, by both ways;
// AG-GEMM calls on the same object between them still right.
TEST_F(AgGatherGpu, AllGatherAloneIsExactAndLeavesTheOperatorWorking) {
  for (bool push : {true, false}) {
    AgGemm op(world(), gather_options(push));
    tpt::Reference ref(world());
    const char* want = push ? "push_gather" : "copy_engine";
    std::vector<AgCase> cases(5);
    cases[1].dtype = DType::kFP16;
    cases[2].m_local = 1;
    cases[2].k = 64;
    cases[3].m_local = 333;
    cases[3].k = 128;
    cases[3].lda_pad = 24;
    cases[4].zero_copy = true;
    std::string err;
    for (const AgCase& c : cases) {
      err += gather_case(op, c, want);
      AgCase g = c;
      g.zero_copy = false;
      g.strategy = kAllStrategies[&c - cases.data()];
      if (g.strategy == AgGemmStrategy::kPushGather && !push) g.strategy = AgGemmStrategy::kAuto;
      err += run_case(op, ref, g);
    }
    WEFT_EXPECT_ALL_RANKS(err.empty(), err);
  }
}

// Ranks that fail one call at different checks (even ranks a shape check, before they have a
// plan; odd ranks a pointer check, after it) all abandon it and step both exchanges on alike, so
// the operator stays usable: afterwards every strategy runs right, on the push kernel's exchange
// and on the prologue's. The odd ranks' plans: push_gather (the push kernel's exchange), then at
// once (two abandoned calls in a row) decomposed_per_chunk (the prologue's); then, after the
// checks, the all-gather alone.
TEST_F(AgGatherGpu, RanksThatFailAtDifferentChecksStayInStep) {
  if (world().size() < 2) GTEST_SKIP() << "needs two ranks";
  AgGemm op(world(), small_options());
  tpt::Reference ref(world());
  AgCase c;
  const std::string before = run_case(op, ref, c);  // a real call first (see AbandonFence)
  WEFT_EXPECT_ALL_RANKS(before.empty(), before);
  const bool odd = world().rank() % 2 == 1;
  const char* needle = odd ? "host memory" : "multiple of 8";
  std::vector<uint16_t> host(size_t(c.m_local * c.k));
  AgData d(c, world().size());
  const void* a = fill_inputs(op, c, d, 0);
  auto spoil = [&](auto args) {  // AgGemmArgs or AgGatherArgs
    if (odd)
      args.a = host.data();
    else
      args.k = 500;
    return args;
  };
  for (bool gather_alone : {false, true}) {
    if (gather_alone) {
      test::expect_invalid([&] { op.all_gather(spoil(gather_args(c, d, a)), stream()); }, needle);
    } else {
      for (AgGemmStrategy plan :
           {AgGemmStrategy::kPushGather, AgGemmStrategy::kDecomposedPerChunk}) {
        AgGemmArgs bad = spoil(args_for(c, d, a));
        bad.strategy = plan;
        test::expect_invalid([&] { op.run(bad, stream()); }, needle);
      }
    }
    expect_each_strategy(c, kAllStrategies,
                         [&](const AgCase& each) { return run_case(op, ref, each); });
    const std::string err = gather_case(op, c, "push_gather");
    WEFT_EXPECT_ALL_RANKS(err.empty(), err);
  }
}

// A push_gather request (the options' default strategy) that the rows do not fit falls back to
// the copy engines, as run() does.
TEST_F(AgGatherGpu, PushGatherRequestThatDoesNotFitTakesTheCopyEngines) {
  AgGemmOptions o = small_options();
  o.strategy = AgGemmStrategy::kPushGather;
  o.push_gather_max_bytes = 4096;
  AgGemm op(world(), o);
  AgCase fits, too_big;
  fits.m_local = 1;
  fits.k = 64;
  std::string err = gather_case(op, too_big, "copy_engine");
  err += gather_case(op, fits, "push_gather");
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

// all_gather captured in a CUDA graph, replayed with new A each time, every replay checked.
TEST_F(AgGatherGpu, GraphReplayWithChangingInputs) {
  constexpr int kReplays = 200;
  for (bool push : {true, false}) {
    AgGemm op(world(), gather_options(push));
    AgCase c;
    c.m_local = 136;
    c.k = 256;
    std::string err = capture_error([&] {
      AgData d(c, world().size());
      const void* a = fill_inputs(op, c, d, 0);
      const AgGatherArgs args = gather_args(c, d, a);
      op.all_gather(args, stream());
      sync_or_throw("device (eager call)");
      bench::GraphExec graph =
          bench::capture_on_all_ranks(world(), stream(), [&] { op.all_gather(args, stream()); });
      uint64_t bad = 0;
      int first_bad = -1;
      for (int i = 1; i <= kReplays; ++i) {
        fill_inputs(op, c, d, uint64_t(i));
        graph.launch(stream());
        if (const uint64_t diff = gathered_differences(op, c, d.gathered_ref, uint64_t(i))) {
          bad += diff;
          if (first_bad < 0) first_bad = i;
        }
      }
      if (bad)
        throw Error("check", fmt::format("{} elements wrong over the replays, first in replay {}",
                                         bad, first_bad));
    });
    WEFT_EXPECT_ALL_RANKS(err.empty(),
                          fmt::format("{}: {}", push ? "push_gather" : "copy_engine", err));
  }
}

TEST_F(AgGatherGpu, RejectsBadArgumentsOnEveryRank) {
  AgGemm op(world(), small_options());
  AgCase c;
  // A real exchange before the rejected calls (each of which abandons the call on every rank), so
  // that the first abandoned call follows one: the call after an abandoned one starts with a
  // barrier (AbandonFence), or it could run ahead of a peer still in the call before.
  const std::string before = gather_case(op, c, "push_gather");
  WEFT_EXPECT_ALL_RANKS(before.empty(), before);
  AgData d(c, world().size());
  const void* a = fill_inputs(op, c, d, 0);
  auto expect_invalid = [&](AgGatherArgs args, const char* needle) {
    test::expect_invalid([&] { op.all_gather(args, stream()); }, needle);
  };
  AgGatherArgs bad = gather_args(c, d, a);
  bad.k = 500;
  expect_invalid(bad, "multiple of 8");
  bad = gather_args(c, d, a);
  bad.lda = c.k - 8;
  expect_invalid(bad, "lda must be >= k");
  std::vector<uint16_t> host(size_t(c.m_local * c.k));
  bad = gather_args(c, d, a);
  bad.a = host.data();
  expect_invalid(bad, "host memory");
  bad = gather_args(c, d, a);
  bad.a = static_cast<const char*>(op.gathered_a()) + 64;  // inside the workspace, not the slot
  expect_invalid(bad, "workspace");
  bad = gather_args(c, d, a);
  bad.m_local = 100000;
  expect_invalid(bad, "workspace");
  const std::string err = gather_case(op, c, "push_gather");
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

TEST_F(AgGemmGpu, RejectsBadArgumentsOnEveryRank) {
  AgGemm op(world(), small_options());
  tpt::Reference ref(world());
  AgCase c;
  // A real exchange before the rejected calls (each of which abandons the call on every rank), so
  // that the first abandoned call follows one: the call after an abandoned one starts with a
  // barrier (AbandonFence), or it could run ahead of a peer still in the call before.
  const std::string before = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(before.empty(), before);
  AgData d(c, world().size());
  const void* a = fill_inputs(op, c, d, 0);
  auto expect_invalid = [&](AgGemmArgs args, const char* needle) {
    test::expect_invalid([&] { op.run(args, stream()); }, needle);
  };
  AgGemmArgs bad = args_for(c, d, a);
  bad.k = 500;
  expect_invalid(bad, "multiple of 8");
  bad = args_for(c, d, a);
  bad.c = static_cast<char*>(d.c.data()) + 2;
  expect_invalid(bad, "16-byte aligned");
  std::vector<uint16_t> host(size_t(c.m_local * c.k));
  bad = args_for(c, d, a);
  bad.a = host.data();
  bad.lda = c.k;
  expect_invalid(bad, "host memory");
  bad = args_for(c, d, a);
  bad.a = static_cast<const char*>(op.gathered_a()) + 64;  // inside the workspace, not the slot
  bad.lda = c.k;
  expect_invalid(bad, "workspace");
  bad = args_for(c, d, a);
  bad.m_local = 100000;
  expect_invalid(bad, "workspace");
  // plan() checks the shape as run() does, but not the operands (a dry run passes none).
  test::expect_invalid([&] { op.plan(bad); }, "AgGemm::plan");
  bad = AgGemmArgs{};
  bad.m_local = c.m_local;
  bad.n = c.n;
  bad.k = c.k;
  test::expect_no_throw([&] { op.plan(bad); });
  // Options no call could use are rejected at construction, on every rank alike.
  AgGemmOptions o = small_options();
  o.chunks_per_rank = kAgMaxChunksPerRank + 1;
  test::expect_invalid([&] { AgGemm bad_op(world(), o); }, "chunks_per_rank");
  o = small_options();
  o.push_sms = world().min_sm_count();
  test::expect_invalid([&] { AgGemm bad_op(world(), o); }, "push_sms");
  // The object still works after rejected calls.
  const std::string err = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

}  // namespace
}  // namespace weft::tp
