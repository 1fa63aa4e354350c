// Multi-rank tests of GEMM-AR against cuBLASLt (fp32) + NCCL all-reduce (fp32).
//   build/tools/weft/weft run -n 4 -- build/weft/ops/tensor_parallel/weft_gemm_ar_test
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "weft/ops/tensor_parallel/common/test_support.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"

namespace weft::tp {
namespace {

using namespace weft::tp::test;
namespace tpt = weft::tp::testing;

constexpr GemmArStrategy kAllStrategies[] = {GemmArStrategy::kOneShot, GemmArStrategy::kTwoShot,
                                             GemmArStrategy::kOneShotWeft,
                                             GemmArStrategy::kTwoShotWeft};

struct ArCase {
  int64_t m = 16, n = 1024, k = 256;
  DType dtype = DType::kBF16;
  GemmArStrategy strategy = GemmArStrategy::kAuto;
  int64_t ldo_pad = 0;
};

std::string describe(const ArCase& c) {
  return fmt::format("{} {} m={} n={} k={} ldo=n+{}", to_string(c.strategy), dtype_name(c.dtype),
                     c.m, c.n, c.k, c.ldo_pad);
}

struct ArData {
  ArData(const ArCase& c)
      : ldo(c.n + c.ldo_pad),
        a(size_t(c.m * c.k * 2)),
        b(size_t(c.n * c.k * 2)),
        out(size_t(c.m * ldo * 2)),
        out2(size_t(c.m * ldo * 2)),
        ref(size_t(c.m * c.n * 4)) {}
  int64_t ldo;
  DeviceMemory a, b, out, out2, ref;
};

class GemmArGpu : public ::testing::Test {
 protected:
  cudaStream_t stream() { return world().stream(); }
  uint64_t seed(uint64_t tag, uint64_t round = 0) {
    return tpt::matrix_seed(::weft::testing::shared_seed(), tag, world().rank(), round);
  }
  void fill_inputs(const ArCase& c, ArData& d, uint64_t round) {
    tpt::fill_matrix(d.a.data(), c.m, c.k, c.k, c.dtype, seed(21, round), stream());
    tpt::fill_matrix(d.b.data(), c.n, c.k, c.k, c.dtype, seed(22), stream());
  }
  GemmArArgs args_for(const ArCase& c, ArData& d, void* out) {
    GemmArArgs args;
    args.a = d.a.data();
    args.b = d.b.data();
    args.out = out;
    args.ldo = d.ldo;
    args.m = c.m;
    args.n = c.n;
    args.k = c.k;
    args.dtype = c.dtype;
    args.strategy = c.strategy;
    return args;
  }

  // One call against the reference; a second call must give the same bits; every rank must hold
  // the same bits. "" when right.
  std::string run_case(GemmAr& op, tpt::Reference& ref, const ArCase& c) {
    uint64_t sum = 0;
    std::string err = capture_error([&] {
      ArData d(c);
      fill_inputs(c, d, 0);
      WEFT_CUDA_CHECK(cudaMemsetAsync(d.out.data(), 0xFF, d.out.bytes(), stream()));
      const GemmArPlan plan = op.run(args_for(c, d, d.out.data()), stream());
      check_ran(plan.strategy, c.strategy);
      op.run(args_for(c, d, d.out2.data()), stream());
      ref.gemm_ar(d.a.data(), c.m, c.k, d.b.data(), c.n, c.dtype, d.ref.as<float>(), stream());
      tpt::Comparator cmp;
      cmp.reset(stream());
      cmp.compare(d.out.data(), d.ldo, c.dtype, d.ref.as<float>(), c.n, c.m, c.n,
                  tpt::reduced_gemm_tolerance(c.dtype, c.k, world().size()), 0, stream());
      sync_or_throw();
      const auto r = cmp.read(stream());
      std::string problems;
      if (!r.ok()) problems += "out: " + r.describe() + "; ";
      problems += repeat_problem(d.out.data(), d.out2.data(), d.ldo, c.m, c.n);
      problems += padding_problem(d.out.data(), c.m, c.n, c.ldo_pad, d.ldo, "out");
      sum = tpt::checksum(d.out.data(), c.m, c.n, d.ldo, stream());
      if (!problems.empty()) throw Error("check", problems + "plan: " + plan.reason);
    });
    // Every rank must hold the same bits (collective: every rank gets here).
    const auto sums = all_gather_u64(sum);
    if (err.empty())
      for (size_t q = 1; q < sums.size(); ++q)
        if (sums[q] != sums[0]) err = fmt::format("rank {}'s result differs from rank 0's bits", q);
    return err.empty() ? "" : describe(c) + ": " + err;
  }
};

GemmArOptions small_options() {
  GemmArOptions o;
  o.max_m = 256;
  o.max_n = 2048;
  return o;
}

// Ranks asked for different calls must all fail with the mismatch report instead of completing:
// rank 1 with twice the columns (WEFT_TEST_VARIANT <strategy>) or with fp16 (<strategy>:fp16),
// caught by the all-reduce kernel's signature check. In children, since the trap ends the CUDA
// context.
WEFT_CHILD_BODY(gemm_ar_mismatch) {
  GemmAr op(world, small_options());
  const MismatchVariant v = mismatch_variant(world);
  const int64_t m = 16, n = 256 * v.size_factor, k = 128;
  MismatchOperands o = mismatch_operands(world, m, n, k, m * n, v.dtype);
  GemmArArgs args;
  args.a = o.a.data();
  args.b = o.b.data();
  args.out = o.out(v);
  if (v.bad_ld) args.ldo = n - 8;
  args.m = m;
  args.n = n;
  args.k = k;
  args.dtype = v.dtype;
  args.strategy = parse_gemm_ar_strategy(v.strategy);
  return run_mismatched_call(world, [&] { op.run(args, world.stream()); });
}

TEST_F(GemmArGpu, CallsThatDifferAcrossRanksTrapOnEveryRank) {
  if (world().size() < 2) GTEST_SKIP() << "needs two ranks";
  expect_mismatch_trap("gemm_ar_mismatch",
                       {{"oneshot", "n"}, {"twoshot", "n"}, {"oneshot:fp16", "dtype"}});
  // A rank whose own check fails abandons the call; its peers fail at once instead of timing out.
  expect_abandon_fails_peers("gemm_ar_mismatch", {"oneshot"});
  // ... also when it is the shape check that fails.
  expect_abandon_fails_peers("gemm_ar_mismatch", {"oneshot"}, "abandon_ld");
}

TEST_F(GemmArGpu, EveryStrategyDtypeAndDecodeSize) {
  GemmAr op(world(), small_options());
  tpt::Reference ref(world());
  for (DType t : {DType::kBF16, DType::kFP16}) {
    for (GemmArStrategy s : kAllStrategies) {
      for (int64_t m : {1, 16, 100, 256}) {
        ArCase c;
        c.dtype = t;
        c.strategy = s;
        c.m = m;
        const std::string err = run_case(op, ref, c);
        WEFT_EXPECT_ALL_RANKS(err.empty(), err);
      }
    }
  }
}

TEST_F(GemmArGpu, AutomaticChoiceIsCorrect) {
  GemmAr op(world(), small_options());
  tpt::Reference ref(world());
  for (int64_t m : {4, 256}) {
    ArCase c;
    c.m = m;
    c.n = 2048;
    const std::string err = run_case(op, ref, c);
    WEFT_EXPECT_ALL_RANKS(err.empty(), err);
  }
}

// n not a multiple of 8 (element-wise output path, slices crossing rows) and a padded output.
TEST_F(GemmArGpu, OddColumnsAndPaddedOutput) {
  GemmAr op(world(), small_options());
  tpt::Reference ref(world());
  for (GemmArStrategy s : kAllStrategies) {
    for (int64_t n : {100, 1000}) {
      ArCase c;
      c.m = 37;
      c.n = n;
      c.ldo_pad = 6;
      c.strategy = s;
      const std::string err = run_case(op, ref, c);
      WEFT_EXPECT_ALL_RANKS(err.empty(), err);
    }
  }
}

// A small grid (more work items than blocks) exercises the work queue.
TEST_F(GemmArGpu, FewBlocks) {
  GemmArOptions o = small_options();
  o.max_blocks = 3;
  GemmAr op(world(), o);
  tpt::Reference ref(world());
  constexpr GemmArStrategy kCublas[] = {GemmArStrategy::kOneShot, GemmArStrategy::kTwoShot};
  ArCase c;
  c.m = 256;
  c.n = 2048;
  expect_each_strategy(c, kCublas, [&](const ArCase& each) { return run_case(op, ref, each); });
}

// 300 eager calls back to back without host synchronization, inputs and strategies changing:
// the epochs and the parity of the receive buffers must keep every call separate.
TEST_F(GemmArGpu, BackToBackCallsWithChangingInputs) {
  constexpr int kCalls = 300;
  GemmAr op(world(), small_options());
  tpt::Reference ref(world());
  std::string err = capture_error([&] {
    std::vector<std::unique_ptr<ArData>> data;
    std::vector<ArCase> cases;
    for (int i = 0; i < 4; ++i) {
      ArCase c;
      c.m = i % 2 ? 64 : 7;
      c.n = 1024;
      c.strategy = kAllStrategies[i];
      cases.push_back(c);
      data.push_back(std::make_unique<ArData>(c));
    }
    check_back_to_back(
        kCalls,
        [&](tpt::Comparator& cmp, size_t i) {
          const ArCase& c = cases[i % 4];
          ArData& d = *data[i % 4];
          fill_inputs(c, d, uint64_t(i + 1));
          op.run(args_for(c, d, d.out.data()), stream());
          ref.gemm_ar(d.a.data(), c.m, c.k, d.b.data(), c.n, c.dtype, d.ref.as<float>(), stream());
          cmp.compare(d.out.data(), d.ldo, c.dtype, d.ref.as<float>(), c.n, c.m, c.n,
                      tpt::reduced_gemm_tolerance(c.dtype, c.k, world().size()), uint32_t(i),
                      stream());
        },
        [&](uint32_t tag) {
          return std::string("strategy of that call: ") + to_string(cases[tag % 4].strategy);
        });
  });
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

TEST_F(GemmArGpu, GraphReplayWithChangingInputs) {
  constexpr int kReplays = 1000;
  for (GemmArStrategy s : kAllStrategies) {
    GemmAr op(world(), small_options());
    tpt::Reference ref(world());
    ArCase c;
    c.m = 64;
    c.n = 1024;
    c.strategy = s;
    std::string err = capture_error([&] {
      ArData d(c);
      fill_inputs(c, d, 0);
      const GemmArArgs args = args_for(c, d, d.out.data());
      check_graph_replays(
          kReplays, uint64_t(c.m * c.n), [&] { op.run(args, stream()); },
          [&](int i) { fill_inputs(c, d, uint64_t(i)); },
          [&](tpt::Comparator& cmp, int i) {
            ref.gemm_ar(d.a.data(), c.m, c.k, d.b.data(), c.n, c.dtype, d.ref.as<float>(),
                        stream());
            cmp.compare(d.out.data(), d.ldo, c.dtype, d.ref.as<float>(), c.n, c.m, c.n,
                        tpt::reduced_gemm_tolerance(c.dtype, c.k, world().size()), uint32_t(i),
                        stream());
          });
    });
    WEFT_EXPECT_ALL_RANKS(err.empty(), describe(c) + ": " + err);
  }
}

// An abandoned call waits for no peer, so the call after it could push into the half of a peer's
// receive slots that the peer is still reading for the call before the abandoned one. A CUDA graph
// replay runs no host code (no AbandonFence barrier): the kernel keeps that order itself. Rank 1
// is made slow (all but eight SMs held by a kernel on another stream) so that the other ranks
// finish call e first and run on through the abandoned call e + 1 into replay e + 2, whose inputs
// differ: a push that came too early shows as a wrong call e on rank 1.
TEST_F(GemmArGpu, AReplayAfterAnAbandonedCallWaitsForSlowPeers) {
  if (world().size() < 2) GTEST_SKIP() << "needs two ranks";
  constexpr int kRounds = 12;
  for (GemmArStrategy s : kAllStrategies) {
    GemmArOptions o;
    o.max_m = 256;
    o.max_n = 8192;
    GemmAr op(world(), o);
    tpt::Reference ref(world());
    ArCase c;
    c.m = 256;  // 4 MiB per rank, read on rank 1's few SMs
    c.n = 8192;
    c.strategy = s;
    std::string err = capture_error([&] {
      ArData eager(c), replayed(c);
      const GemmArArgs args = args_for(c, eager, eager.out.data());
      const GemmArArgs graph_args = args_for(c, replayed, replayed.out.data());
      GemmArArgs bad = args;
      bad.m = 1000;  // over the workspace: every rank abandons the call
      fill_inputs(c, replayed, 0);
      op.run(graph_args, stream());  // the first call tunes; a capture must not
      sync_or_throw("device (eager call)");
      GraphExec graph = ::weft::bench::capture_on_all_ranks(world(), stream(),
                                                            [&] { op.run(graph_args, stream()); });
      ::weft::bench::Stream hog;
      tpt::Comparator cmp;
      cmp.reset(stream());
      for (int round = 0; round < kRounds; ++round) {
        fill_inputs(c, eager, 2 * round + 1);
        fill_inputs(c, replayed, 2 * round + 2);
        WEFT_CUDA_CHECK(cudaMemsetAsync(eager.out.data(), 0xFF, eager.out.bytes(), stream()));
        WEFT_CUDA_CHECK(cudaMemsetAsync(replayed.out.data(), 0xFF, replayed.out.bytes(), stream()));
        sync_or_throw("device (inputs)");
        // (Eight SMs left: with one, cuBLAS's cluster kernels wait for the whole hold to end, and
        // rank 1 is then not slow but late.)
        if (world().rank() == 1) tpt::occupy_sms(8, 2'000'000, hog);
        op.run(args, stream());                                             // call e
        test::expect_invalid([&] { op.run(bad, stream()); }, "workspace");  // e + 1, abandoned
        graph.launch(stream());                                             // e + 2
        for (ArData* d : {&eager, &replayed}) {
          ref.gemm_ar(d->a.data(), c.m, c.k, d->b.data(), c.n, c.dtype, d->ref.as<float>(),
                      stream());
          cmp.compare(d->out.data(), d->ldo, c.dtype, d->ref.as<float>(), c.n, c.m, c.n,
                      tpt::reduced_gemm_tolerance(c.dtype, c.k, world().size()),
                      uint32_t(2 * round + (d == &eager ? 0 : 1)), stream());
        }
      }
      sync_or_throw();
      WEFT_CUDA_CHECK(cudaStreamSynchronize(hog));
      const auto r = cmp.read(stream());
      if (!r.ok() || r.checked != uint64_t(2 * kRounds * c.m * c.n))
        throw Error("check", r.describe() + " (tag = 2 x round, + 1 for the replay)");
    });
    WEFT_EXPECT_ALL_RANKS(err.empty(), describe(c) + ": " + err);
  }
}

TEST_F(GemmArGpu, RejectsBadArgumentsOnEveryRank) {
  GemmAr op(world(), small_options());
  tpt::Reference ref(world());
  ArCase c;
  // A real exchange before the rejected calls (each of which abandons the call on every rank), so
  // that the first abandoned call follows one: the call after an abandoned one starts with a
  // barrier (AbandonFence), or it could run ahead of a peer still in the call before.
  const std::string before = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(before.empty(), before);
  ArData d(c);
  fill_inputs(c, d, 0);
  auto expect_invalid = [&](GemmArArgs args, const char* needle) {
    test::expect_invalid([&] { op.run(args, stream()); }, needle);
  };
  GemmArArgs bad = args_for(c, d, d.out.data());
  bad.m = 1000;
  expect_invalid(bad, "workspace");
  bad = args_for(c, d, d.out.data());
  bad.dtype = DType::kFP32;
  expect_invalid(bad, "bf16 or fp16");
  bad = args_for(c, d, d.out.data());
  bad.out = nullptr;
  expect_invalid(bad, "non-null");
  // plan() checks the shape as run() does, but not the operands (a dry run passes none).
  bad = args_for(c, d, d.out.data());
  bad.m = 1000;
  test::expect_invalid([&] { op.plan(bad); }, "GemmAr::plan");
  bad = GemmArArgs{};
  bad.m = c.m;
  bad.n = c.n;
  bad.k = c.k;
  test::expect_no_throw([&] { op.plan(bad); });
  const std::string err = run_case(op, ref, c);
  WEFT_EXPECT_ALL_RANKS(err.empty(), err);
}

}  // namespace
}  // namespace weft::tp
