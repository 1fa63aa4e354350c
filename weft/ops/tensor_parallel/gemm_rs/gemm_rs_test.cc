// Multi-rank tests of GEMM-RS against cuBLASLt (fp32 partials) + NCCL reduce-scatter (fp32).
//   build/tools/weft/weft run -n 4 -- build/weft/ops/tensor_parallel/weft_gemm_rs_test
#include <gtest/gtest.h>

#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "weft/ops/tensor_parallel/common/test_support.h"
#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs.h"

namespace weft::tp {
namespace {

using namespace weft::tp::test;
namespace tpt = weft::tp::testing;

constexpr GemmRsStrategy kAllStrategies[] = {
    GemmRsStrategy::kFusedCopyEngine, GemmRsStrategy::kFusedPush,
    GemmRsStrategy::kDecomposed,      GemmRsStrategy::kPushReduce,
    GemmRsStrategy::kGatherInputs,    GemmRsStrategy::kDecomposedCols};
constexpr size_t kNumStrategies = std::size(kAllStrategies);

struct RsCase {
  int64_t m_per_rank = 200, n = 392, k = 256;  // m = W * 200: not a multiple of any tile height
  DType dtype = DType::kBF16;
  GemmRsStrategy strategy = GemmRsStrategy::kAuto;
  int64_t lda_pad = 0, ldb_pad = 0, ldo_pad = 0;  // ldb_pad: a multiple of 8
  bool b_kn = false;  // B passed as [k, n] (BLayout::kKN; ldb = n + ldb_pad)
};

std::string describe(const RsCase& c) {
  return fmt::format("{} {} m=W*{} n={} k={} lda=k+{} ldb={}+{} ldo=n+{}", to_string(c.strategy),
                     dtype_name(c.dtype), c.m_per_rank, c.n, c.k, c.lda_pad, c.b_kn ? "n" : "k",
                     c.ldb_pad, c.ldo_pad);
}

struct RsData {
  RsData(const RsCase& c, int world)
      : m(c.m_per_rank * world),
        lda(c.k + c.lda_pad),
        ldb((c.b_kn ? c.n : c.k) + c.ldb_pad),
        ldo(c.n + c.ldo_pad),
        a(size_t(m * c.k * 2)),
        a_op(size_t(m * lda * 2)),
        b(size_t(c.n * c.k * 2)),
        b_op(size_t((c.b_kn ? c.k : c.n) * ldb * 2)),
        out(size_t(c.m_per_rank * ldo * 2)),
        out2(size_t(c.m_per_rank * ldo * 2)),
        partial(size_t(m * c.n * 4)),
        ref(size_t(c.m_per_rank * c.n * 4)) {}
  int64_t m, lda, ldb, ldo;
  DeviceMemory a, a_op, b, b_op, out, out2, partial, ref;
};

class GemmRsGpu : public ::testing::Test {
 protected:
  cudaStream_t stream() { return world().stream(); }
  uint64_t seed(uint64_t tag, uint64_t round = 0) {
    return tpt::matrix_seed(::weft::testing::shared_seed(), tag, world().rank(), round);
  }

  // A as the operator sees it (strided when lda_pad > 0); B's strided copy is filled too.
  const void* fill_inputs(const RsCase& c, RsData& d, uint64_t round) {
    tpt::fill_matrix(d.a.data(), d.m, c.k, c.k, c.dtype, seed(11, round), stream());
    tpt::fill_matrix(d.b.data(), c.n, c.k, c.k, c.dtype, seed(12), stream());
    if (c.b_kn) {  // B as [k, n]: the transpose of the reference's [n, k] B, padding poisoned
      write_transpose(d.b.data(), c.n, c.k, d.b_op.data(), d.ldb);
    } else if (c.ldb_pad > 0) {
      WEFT_CUDA_CHECK(cudaMemsetAsync(d.b_op.data(), 0xFF, d.b_op.bytes(), stream()));
      tpt::fill_matrix(d.b_op.data(), c.n, c.k, d.ldb, c.dtype, seed(12), stream());
    }
    if (c.lda_pad == 0) return d.a.data();
    WEFT_CUDA_CHECK(cudaMemsetAsync(d.a_op.data(), 0xFF, d.a_op.bytes(), stream()));
    tpt::fill_matrix(d.a_op.data(), d.m, c.k, d.lda, c.dtype, seed(11, round), stream());
    return d.a_op.data();
  }

  GemmRsArgs args_for(const RsCase& c, RsData& d, const void* a, void* out) {
    GemmRsArgs args;
    args.a = a;
    args.lda = d.lda;
    args.b = c.ldb_pad > 0 || c.b_kn ? d.b_op.data() : d.b.data();
    args.ldb = d.ldb;
    args.b_layout = c.b_kn ? BLayout::kKN : BLayout::kNK;
    args.out = out;
    args.ldo = d.ldo;
    args.m = d.m;
    args.n = c.n;
    args.k = c.k;
    args.dtype = c.dtype;
    args.strategy = c.strategy;
    return args;
  }

  // One eager call against the reference, then a second call into another buffer that must be
  // bit-identical (the fixed summation order). "" when right.
  std::string run_case(GemmRs& op, tpt::Reference& ref, const RsCase& c) {
    std::string err = capture_error([&] {
      RsData d(c, world().size());
      const void* a = fill_inputs(c, d, 0);
      WEFT_CUDA_CHECK(cudaMemsetAsync(d.out.data(), 0xFF, d.out.bytes(), stream()));
      WEFT_CUDA_CHECK(cudaMemsetAsync(d.out2.data(), 0xFF, d.out2.bytes(), stream()));
      const GemmRsPlan plan = op.run(args_for(c, d, a, d.out.data()), stream());
      check_ran(plan.strategy, c.strategy);
      op.run(args_for(c, d, a, d.out2.data()), stream());
      ref.gemm_rs(d.a.data(), d.m, c.k, d.b.data(), c.n, c.dtype, d.partial.as<float>(),
                  d.ref.as<float>(), stream());
      tpt::Comparator cmp;
      cmp.reset(stream());
      cmp.compare(d.out.data(), d.ldo, c.dtype, d.ref.as<float>(), c.n, c.m_per_rank, c.n,
                  tpt::reduced_gemm_tolerance(c.dtype, c.k, world().size()), 0, stream());
      sync_or_throw();
      const auto r = cmp.read(stream());
      std::string problems;
      if (!r.ok()) problems += "out: " + r.describe() + "; ";
      problems += repeat_problem(d.out.data(), d.out2.data(), d.ldo, c.m_per_rank, c.n);
      problems += padding_problem(d.out.data(), c.m_per_rank, c.n, c.ldo_pad, d.ldo, "out");
      if (!problems.empty()) throw Error("check", problems + "plan: " + plan.reason);
    });
    return err.empty() ? "" : describe(c) + ": " + err;
  }
};

GemmRsOptions small_options() {
  GemmRsOptions o;
  o.max_m = 4096;
  o.max_n = 2048;
  return o;
}

TEST_F(GemmRsGpu, EveryStrategyAndDtypeMatchesCublasPlusNccl) {
  GemmRs op(world(), small_options());
  tpt::Reference ref(world());
  for (DType t : {DType::kBF16, DType::kFP16}) {
    RsCase c;
    c.dtype = t;
    expect_each_strategy(c, kAllStrategies,
                         [&](const RsCase& each) { return run_case(op, ref, each); });
  }
}

TEST_F(GemmRsGpu, AutomaticChoiceIsCorrect) {
  for (double min_waves : {1.5, 0.0}) {
    GemmRsOptions o = small_options();
    o.fused_min_waves = min_waves;
    GemmRs op(world(), o);
    tpt::Reference ref(world());
    for (int64_t m_per_rank : {8, 700}) {
      RsCase c;
      c.m_per_rank = m_per_rank;
      c.n = 520;
      const std::string err = run_case(op, ref, c);
      WEFT_EXPECT_ALL_RANKS(err.empty(), fmt::format("fused_min_waves {}: {}", min_waves, err));
    }
  }
}

TEST_F(GemmRsGpu, OneRowPerRank) {
  GemmRs op(world(), small_options());
  tpt::Reference ref(world());
  RsCase c;
  c.m_per_rank = 1;
  c.n = 72;
  c.k = 64;
  expect_each_strategy(c, kAllStrategies,
                       [&](const RsCase& each) { return run_case(op, ref, each); });
}

// n not a multiple of 8 (scalar reduction, direct-store epilogue), strided A and B (pitched
// copies in gather_inputs and decomposed_cols), padded output.
RsCase odd_strided_padded_case() {
  RsCase c;
  c.n = 100;
  c.lda_pad = 40;
  c.ldb_pad = 24;
  c.ldo_pad = 6;
  return c;
}

TEST_F(GemmRsGpu, OddColumnsStridedAndPadded) {
  GemmRs op(world(), small_options());
  tpt::Reference ref(world());
  expect_each_strategy(odd_strided_padded_case(), kAllStrategies,
                       [&](const RsCase& each) { return run_case(op, ref, each); });
}

// decomposed_cols with three uneven column blocks (n = 100: 40 + 40 + 20 columns, the last not
// a whole 16-byte vector), strided operands and a padded output.
TEST_F(GemmRsGpu, ColumnBlocksUneven) {
  GemmRsOptions o = small_options();
  o.col_chunks = 3;
  GemmRs op(world(), o);
  tpt::Reference ref(world());
  RsCase c = odd_strided_padded_case();
  c.strategy = GemmRsStrategy::kDecomposedCols;
  const std::string err = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
  GemmRsArgs shape;
  shape.m = c.m_per_rank * world().size();
  shape.n = c.n;
  shape.k = c.k;
  shape.strategy = c.strategy;
  const GemmRsPlan plan = op.plan(shape);
  WEFT_EXPECT_ALL_RANKS(plan.col_chunks == 3 && plan.col_width == 40, plan.reason);
}

// B as [k, n] (a transposed weight read in place, BLayout::kKN): every strategy that takes it and
// the automatic choice, both dtypes, contiguous and with a padded ldb, strided A, odd n. The
// automatic choice runs on a second operator with push_reduce off (it would take these sizes) and
// fused_min_waves = 0, so that the model's fused choice meets the planner's fall-back.
TEST_F(GemmRsGpu, TransposedBForEveryStrategyThatTakesIt) {
  GemmRs op(world(), small_options());
  GemmRsOptions o = small_options();
  o.fused_min_waves = 0.0;
  o.push_reduce_max_bytes = 0;
  GemmRs auto_op(world(), o);
  tpt::Reference ref(world());
  constexpr GemmRsStrategy kTakeKn[] = {GemmRsStrategy::kAuto, GemmRsStrategy::kDecomposed,
                                        GemmRsStrategy::kDecomposedCols,
                                        GemmRsStrategy::kPushReduce};
  for (DType t : {DType::kBF16, DType::kFP16})
    for (int64_t pad : {0, 28}) {  // (odd_strided_padded_case's n = 100: ldb = 128)
      RsCase c = pad > 0 ? odd_strided_padded_case() : RsCase{};
      c.dtype = t;
      c.b_kn = true;
      c.ldb_pad = pad;
      expect_each_strategy(c, kTakeKn, [&](const RsCase& each) {
        return run_case(each.strategy == GemmRsStrategy::kAuto ? auto_op : op, ref, each);
      });
    }
  GemmRsArgs shape;  // what the automatic choice ran above (m = W x 200, n = 392, k = 256)
  shape.m = 200 * world().size();
  shape.n = 392;
  shape.k = 256;
  shape.b_layout = BLayout::kKN;
  const GemmRsPlan plan = auto_op.plan(shape);
  WEFT_EXPECT_ALL_RANKS(plan.strategy == GemmRsStrategy::kDecomposed ||
                            plan.strategy == GemmRsStrategy::kDecomposedCols,
                        plan.reason);
  // A strategy that cannot take it is an argument error on every rank.
  RsCase c;
  c.b_kn = true;
  c.strategy = GemmRsStrategy::kFusedCopyEngine;
  RsData d(c, world().size());
  expect_invalid([&] { op.run(args_for(c, d, d.a.data(), d.out.data()), stream()); },
                 "[n, k] only");
}

TEST_F(GemmRsGpu, BackToBackCallsWithChangingShapes) {
  GemmRs op(world(), small_options());
  tpt::Reference ref(world());
  std::vector<RsCase> cases;
  const int64_t shapes[][3] = {{200, 392, 256}, {64, 128, 512}, {333, 256, 128}, {1, 64, 64}};
  for (int rep = 0; rep < 3; ++rep)
    for (const auto& s : shapes) {
      RsCase c;
      c.m_per_rank = s[0];
      c.n = s[1];
      c.k = s[2];
      c.strategy = kAllStrategies[(cases.size() + rep) % kNumStrategies];
      cases.push_back(c);
    }
  std::string err = capture_error([&] {
    std::vector<std::unique_ptr<RsData>> data;
    check_back_to_back(
        cases.size(),
        [&](tpt::Comparator& cmp, size_t i) {
          const RsCase& c = cases[i];
          data.push_back(std::make_unique<RsData>(c, world().size()));
          RsData& d = *data.back();
          const void* a = fill_inputs(c, d, i + 1);
          op.run(args_for(c, d, a, d.out.data()), stream());
          ref.gemm_rs(d.a.data(), d.m, c.k, d.b.data(), c.n, c.dtype, d.partial.as<float>(),
                      d.ref.as<float>(), stream());
          cmp.compare(d.out.data(), d.ldo, c.dtype, d.ref.as<float>(), c.n, c.m_per_rank, c.n,
                      tpt::reduced_gemm_tolerance(c.dtype, c.k, world().size()), uint32_t(i),
                      stream());
        },
        [&](uint32_t tag) { return "that call: " + describe(cases[tag]); });
  });
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

TEST_F(GemmRsGpu, GraphReplayWithChangingInputs) {
  constexpr int kReplays = 1000;
  for (GemmRsStrategy s : kAllStrategies) {
    GemmRs op(world(), small_options());
    tpt::Reference ref(world());
    RsCase c;
    c.m_per_rank = 136;
    c.n = 264;
    c.k = 128;
    c.strategy = s;
    std::string err = capture_error([&] {
      RsData d(c, world().size());
      const void* a = fill_inputs(c, d, 0);
      const GemmRsArgs args = args_for(c, d, a, d.out.data());
      check_graph_replays(
          kReplays, uint64_t(c.m_per_rank * c.n), [&] { op.run(args, stream()); },
          [&](int i) { fill_inputs(c, d, uint64_t(i)); },
          [&](tpt::Comparator& cmp, int i) {
            ref.gemm_rs(d.a.data(), d.m, c.k, d.b.data(), c.n, c.dtype, d.partial.as<float>(),
                        d.ref.as<float>(), stream());
            cmp.compare(d.out.data(), d.ldo, c.dtype, d.ref.as<float>(), c.n, c.m_per_rank, c.n,
                        tpt::reduced_gemm_tolerance(c.dtype, c.k, world().size()), uint32_t(i),
                        stream());
          });
    });
    WEFT_EXPECT_ALL_RANKS(err.empty(), describe(c) + ": " + err);
  }
}

// Options that steer the plan must agree: ranks with different plans would wait on each other.
TEST_F(GemmRsGpu, SettingsThatDifferAcrossRanksAreRejectedOnEveryRank) {
  GemmRsOptions o = small_options();
  o.col_chunks = world().rank() % 2 + 1;
  test::expect_invalid([&] { GemmRs op(world(), o); }, "same plan settings");
  // The device barrier too (an automatic index comes from a per-process counter).
  GemmRsOptions b = small_options();
  b.barrier_index = world().rank() % 2 ? 5 : 6;
  test::expect_invalid([&] { GemmRs op(world(), b); }, "same plan settings");
  GemmRs op(world(), small_options());  // and the world is still usable
  tpt::Reference ref(world());
  const std::string err = run_case(op, ref, RsCase{});
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

// Ranks asked for different calls must all fail with the mismatch report instead of completing:
// rank 1 with twice the rows (WEFT_TEST_VARIANT <strategy>) or with fp16 (<strategy>:fp16),
// caught by the prologue's signature check (decomposed) or the push kernel's (push_reduce). In
// children, since the trap ends the CUDA context.
WEFT_CHILD_BODY(gemm_rs_mismatch) {
  GemmRs op(world, small_options());
  const MismatchVariant v = mismatch_variant(world);
  const int64_t W = world.size(), m = W * 64 * v.size_factor, n = 256, k = 128;
  MismatchOperands o = mismatch_operands(world, m, n, k, m / W * n, v.dtype);
  GemmRsArgs args;
  args.a = o.a.data();
  args.b = o.b.data();
  args.out = o.out(v);
  if (v.bad_ld) args.ldo = n - 8;
  args.m = m;
  args.n = n;
  args.k = k;
  args.dtype = v.dtype;
  args.strategy = parse_gemm_rs_strategy(v.strategy);
  return run_mismatched_call(world, [&] { op.run(args, world.stream()); });
}

TEST_F(GemmRsGpu, CallsThatDifferAcrossRanksTrapOnEveryRank) {
  if (world().size() < 2) GTEST_SKIP() << "needs two ranks";
  expect_mismatch_trap("gemm_rs_mismatch", {{"decomposed", "m"},
                                            {"push_reduce", "m"},
                                            {"decomposed:fp16", "dtype"},
                                            {"push_reduce:fp16", "dtype"}});
  // A rank whose own check fails abandons the call; its peers fail at once instead of timing out.
  expect_abandon_fails_peers("gemm_rs_mismatch", {"decomposed", "push_reduce"});
  // ... also when it is the shape check that fails, before the rank has a plan.
  expect_abandon_fails_peers("gemm_rs_mismatch", {"decomposed", "push_reduce"}, "abandon_ld");
}

// Ranks whose own K slices differ, so that their planners may differ, and that run strategies
// exchanging the same rows the same way (decomposed / decomposed_cols: each destination's rows
// into its slot by copy engine, one flag) agree: no mismatch, and every rank's result is right.
TEST_F(GemmRsGpu, UnevenSlicesAndEquivalentStrategiesAgree) {
  GemmRs op(world(), small_options());
  tpt::Reference ref(world());
  RsCase c;
  c.k = 128 * (1 + world().rank() % 2);
  c.strategy = world().rank() % 2 ? GemmRsStrategy::kDecomposedCols : GemmRsStrategy::kDecomposed;
  const std::string err = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

TEST_F(GemmRsGpu, RejectsBadArgumentsOnEveryRank) {
  GemmRs op(world(), small_options());
  tpt::Reference ref(world());
  RsCase c;
  // A real exchange before the rejected calls (each of which abandons the call on every rank), so
  // that the first abandoned call follows one: the call after an abandoned one starts with a
  // barrier (AbandonFence), or it could run ahead of a peer still in the call before.
  const std::string before = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(before.empty(), before);
  RsData d(c, world().size());
  const void* a = fill_inputs(c, d, 0);
  auto expect_invalid = [&](GemmRsArgs args, const char* needle) {
    test::expect_invalid([&] { op.run(args, stream()); }, needle);
  };
  GemmRsArgs bad = args_for(c, d, a, d.out.data());
  bad.m = d.m + 1;
  expect_invalid(bad, "multiple of the world size");
  bad = args_for(c, d, a, d.out.data());
  bad.n = 4096;
  expect_invalid(bad, "max_n");
  bad = args_for(c, d, a, d.out.data());
  bad.ldb = c.k + 4;
  expect_invalid(bad, "ldb");
  // plan() checks the shape as run() does, but not the operands (a dry run passes none).
  bad = args_for(c, d, a, d.out.data());
  bad.m = d.m + 1;
  test::expect_invalid([&] { op.plan(bad); }, "GemmRs::plan");
  bad = GemmRsArgs{};
  bad.m = d.m;
  bad.n = c.n;
  bad.k = c.k;
  test::expect_no_throw([&] { op.plan(bad); });
  const std::string err = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

// Ranks that fail one call at different checks (even ranks a shape check, before they have a
// plan; odd ranks a pointer check, after it) all abandon it and step both exchanges on alike, so
// the operator stays usable: afterwards every strategy runs right, push_reduce on the push
// kernel's exchange and the others on the prologue's. The odd ranks' plans: push_reduce (the push
// kernel's exchange), then at once (two abandoned calls in a row) decomposed (the prologue's);
// then, after the checks, decomposed alone.
TEST_F(GemmRsGpu, RanksThatFailAtDifferentChecksStayInStep) {
  if (world().size() < 2) GTEST_SKIP() << "needs two ranks";
  GemmRs op(world(), small_options());
  tpt::Reference ref(world());
  RsCase c;
  const std::string before = run_case(op, ref, c);  // a real call first (see AbandonFence)
  WEFT_EXPECT_ALL_RANKS(before.empty(), before);
  const bool odd = world().rank() % 2 == 1;
  RsData d(c, world().size());
  const void* a = fill_inputs(c, d, 0);
  std::vector<uint16_t> host(size_t(d.m * c.k));
  for (int round = 0; round < 2; ++round) {
    for (GemmRsStrategy plan : {GemmRsStrategy::kPushReduce, GemmRsStrategy::kDecomposed}) {
      if (round == 1 && plan == GemmRsStrategy::kPushReduce) continue;
      GemmRsArgs bad = args_for(c, d, a, d.out.data());
      bad.strategy = plan;
      if (odd)
        bad.a = host.data();
      else
        bad.m = d.m + 1;
      test::expect_invalid([&] { op.run(bad, stream()); },
                           odd ? "host memory" : "multiple of the world size");
    }
    expect_each_strategy(c, kAllStrategies,
                         [&](const RsCase& each) { return run_case(op, ref, each); });
  }
}

}  // namespace
}  // namespace weft::tp
