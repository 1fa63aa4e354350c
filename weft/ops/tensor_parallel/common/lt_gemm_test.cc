// GPU tests of LtGemm's algorithm choice (kTuned), linked into weft_gemm_rs_test (decomposed
// GEMM-RS is its main user): every rank tests its own GPU, no collectives.
//   build/tools/weft/weft run -n 2 -- build/weft/ops/tensor_parallel/weft_gemm_rs_test
//   (add --gtest_filter='LtGemm*' for these alone)
#include "weft/ops/tensor_parallel/common/lt_gemm.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "weft/ops/tensor_parallel/common/test_support.h"

namespace weft::tp {
namespace {

using namespace weft::tp::test;
namespace tpt = weft::tp::testing;

// A shape with several cuBLASLt candidates, none a multiple of the usual tile sizes.
constexpr int64_t kM = 1000, kN = 1032, kK = 520;

struct LtData {
  DeviceMemory a{size_t(kM * kK * 2)}, b{size_t(kN * kK * 2)}, c{size_t(kM * kN * 2)},
      c2{size_t(kM * kN * 2)}, ref{size_t(kM * kN * 4)};
};

class LtGemmGpu : public ::testing::Test {
 protected:
  cudaStream_t stream() { return world().stream(); }
  void fill(LtData& d, uint64_t round) {
    const uint64_t base = ::weft::testing::shared_seed();
    tpt::fill_matrix(d.a.data(), kM, kK, kK, DType::kBF16,
                     tpt::matrix_seed(base, 31, world().rank(), round), stream());
    tpt::fill_matrix(d.b.data(), kN, kK, kK, DType::kBF16,
                     tpt::matrix_seed(base, 32, world().rank(), round), stream());
    // The fp32 reference by cuBLAS's first answer, from a separate object.
    reference_.gemm(d.a.data(), 0, d.b.data(), 0, d.ref.data(), 0, kM, kN, kK, DType::kBF16,
                    DType::kFP32, stream());
  }
  void gemm(LtGemm& lt, LtData& d, void* c) {
    lt.gemm(d.a.data(), 0, d.b.data(), 0, c, 0, kM, kN, kK, DType::kBF16, DType::kBF16, stream());
  }
  std::string compare(LtData& d, const void* c) {
    tpt::Comparator cmp;
    cmp.reset(stream());
    cmp.compare(c, kN, DType::kBF16, d.ref.as<float>(), kN, kM, kN,
                tpt::gemm_tolerance(DType::kBF16, kK), 0, stream());
    const auto r = cmp.read(stream());
    return r.ok() && r.checked == uint64_t(kM * kN) ? "" : r.describe();
  }
  LtGemm reference_{LtAlgoChoice::kHeuristic};
};

TEST_F(LtGemmGpu, TunedIsCorrectAndRepeatsBitForBit) {
  LtData d;
  LtGemm lt(LtAlgoChoice::kTuned);
  EXPECT_EQ(lt.describe(kM, kN, kK, DType::kBF16, DType::kBF16), "");  // nothing chosen yet
  fill(d, 0);
  WEFT_CUDA_CHECK(cudaMemsetAsync(d.c.data(), 0xFF, d.c.bytes(), stream()));
  gemm(lt, d, d.c.data());
  EXPECT_EQ(compare(d, d.c.data()), "");
  const std::string how = lt.describe(kM, kN, kK, DType::kBF16, DType::kBF16);
  if (how.find("heuristic #0") != std::string::npos)
    GTEST_SKIP() << "cuBLASLt offers one algorithm for this shape: nothing to tune (" << how << ")";
  EXPECT_NE(how.find("tuned:"), std::string::npos) << how;
  // The second call launches the kept algorithm: the same bits.
  WEFT_CUDA_CHECK(cudaMemsetAsync(d.c2.data(), 0xFF, d.c2.bytes(), stream()));
  gemm(lt, d, d.c2.data());
  EXPECT_EQ(tpt::count_bit_differences(d.c.data(), kN, d.c2.data(), kN, kM, kN, stream()), 0u);
  EXPECT_EQ(lt.describe(kM, kN, kK, DType::kBF16, DType::kBF16), how);
}

// Operands that move to other 16-byte aligned addresses keep the key, so the algorithm and the
// bits: a 256-byte aligned call, then A and C at offsets of 16 and 48 bytes.
TEST_F(LtGemmGpu, EverySixteenByteAlignmentSharesTheChoice) {
  LtData d;
  LtGemm lt(LtAlgoChoice::kTuned);
  fill(d, 2);
  WEFT_CUDA_CHECK(cudaMemsetAsync(d.c.data(), 0xFF, d.c.bytes(), stream()));
  gemm(lt, d, d.c.data());
  const std::string how = lt.describe(kM, kN, kK, DType::kBF16, DType::kBF16);
  DeviceMemory a16{size_t(kM * kK * 2 + 16)}, c48{size_t(kM * kN * 2 + 48)};
  char* a_at16 = a16.as<char>() + 16;
  char* c_at48 = c48.as<char>() + 48;
  WEFT_CUDA_CHECK(
      cudaMemcpyAsync(a_at16, d.a.data(), kM * kK * 2, cudaMemcpyDeviceToDevice, stream()));
  WEFT_CUDA_CHECK(cudaMemsetAsync(c_at48, 0xFF, kM * kN * 2, stream()));
  lt.gemm(a_at16, 0, d.b.data(), 0, c_at48, 0, kM, kN, kK, DType::kBF16, DType::kBF16, stream());
  EXPECT_EQ(lt.cached_choices(), 1u);
  EXPECT_EQ(lt.describe(kM, kN, kK, DType::kBF16, DType::kBF16), how);
  EXPECT_EQ(tpt::count_bit_differences(d.c.data(), kN, c_at48, kN, kM, kN, stream()), 0u);
}

TEST_F(LtGemmGpu, FirstCallUnderCaptureKeepsTheFirstAnswer) {
  LtData d;
  LtGemm lt(LtAlgoChoice::kTuned);
  fill(d, 1);
  sync_or_throw();
  GraphExec graph = GraphExec::capture(stream(), [&] { gemm(lt, d, d.c.data()); });
  const std::string how = lt.describe(kM, kN, kK, DType::kBF16, DType::kBF16);
  EXPECT_NE(how.find("first call captured"), std::string::npos) << how;
  WEFT_CUDA_CHECK(cudaMemsetAsync(d.c.data(), 0xFF, d.c.bytes(), stream()));
  graph.launch(stream());
  EXPECT_EQ(compare(d, d.c.data()), "");
  // An eager call afterwards keeps the graph's algorithm (no tuning behind the graph's back).
  WEFT_CUDA_CHECK(cudaMemsetAsync(d.c2.data(), 0xFF, d.c2.bytes(), stream()));
  gemm(lt, d, d.c2.data());
  EXPECT_EQ(tpt::count_bit_differences(d.c.data(), kN, d.c2.data(), kN, kM, kN, stream()), 0u);
  EXPECT_EQ(lt.describe(kM, kN, kK, DType::kBF16, DType::kBF16), how);
}

// C = A * B^T + S: the K = 2 kK product as two halves, the first half's bf16 result the second's
// addend; with a separate addend (tuned) and in place (its own key, never tuned), and repeatable.
TEST_F(LtGemmGpu, AddendSumsTwoHalvesOfK) {
  constexpr int64_t k2 = 2 * kK;
  DeviceMemory a{size_t(kM * k2 * 2)}, b{size_t(kN * k2 * 2)}, s{size_t(kM * kN * 2)},
      c{size_t(kM * kN * 2)}, c2{size_t(kM * kN * 2)}, ref{size_t(kM * kN * 4)};
  const uint64_t base = ::weft::testing::shared_seed();
  tpt::fill_matrix(a.data(), kM, k2, k2, DType::kBF16,
                   tpt::matrix_seed(base, 33, world().rank(), 0), stream());
  tpt::fill_matrix(b.data(), kN, k2, k2, DType::kBF16,
                   tpt::matrix_seed(base, 34, world().rank(), 0), stream());
  reference_.gemm(a.data(), 0, b.data(), 0, ref.data(), 0, kM, kN, k2, DType::kBF16, DType::kFP32,
                  stream());
  const char* a_hi = a.as<char>() + kK * 2;
  const char* b_hi = b.as<char>() + kK * 2;
  auto check = [&](const void* out) {
    tpt::Comparator cmp;
    cmp.reset(stream());
    cmp.compare(out, kN, DType::kBF16, ref.as<float>(), kN, kM, kN,
                tpt::reduced_gemm_tolerance(DType::kBF16, kK, 2), 0, stream());
    const auto r = cmp.read(stream());
    return r.ok() && r.checked == uint64_t(kM * kN) ? "" : r.describe();
  };
  LtGemm lt(LtAlgoChoice::kTuned);
  lt.gemm(a.data(), k2, b.data(), k2, s.data(), 0, kM, kN, kK, DType::kBF16, DType::kBF16,
          stream());
  WEFT_CUDA_CHECK(cudaMemsetAsync(c.data(), 0xFF, c.bytes(), stream()));
  lt.gemm(a_hi, k2, b_hi, k2, c.data(), 0, kM, kN, kK, DType::kBF16, DType::kBF16, stream(),
          s.data());
  EXPECT_EQ(check(c.data()), "");
  // Repeats bit for bit; so does the same sum added in place (C = S on entry).
  WEFT_CUDA_CHECK(cudaMemsetAsync(c2.data(), 0xFF, c2.bytes(), stream()));
  lt.gemm(a_hi, k2, b_hi, k2, c2.data(), 0, kM, kN, kK, DType::kBF16, DType::kBF16, stream(),
          s.data());
  EXPECT_EQ(tpt::count_bit_differences(c.data(), kN, c2.data(), kN, kM, kN, stream()), 0u);
  lt.gemm(a_hi, k2, b_hi, k2, s.data(), 0, kM, kN, kK, DType::kBF16, DType::kBF16, stream(),
          s.data());
  EXPECT_EQ(check(s.data()), "");
  // describe() reports the plain GEMM of the shape, not the addend ones.
  EXPECT_EQ(lt.describe(kM, kN, kK, DType::kBF16, DType::kBF16).find("in place"),
            std::string::npos);
  // In place needs C's leading dimension.
  EXPECT_THROW(lt.gemm(a_hi, k2, b_hi, k2, s.data(), 0, kM, kN - 8, kK, DType::kBF16, DType::kBF16,
                       stream(), s.data(), kN + 8),
               InvalidArgument);
}

// Small M x N and long K, where cuBLASLt's heuristic likes splitting K: an operator's object
// (LtSplitK::kFp32, tuned over every candidate) sums split slices in fp32 only, so its result is
// within the one-rounding tolerance every TP test uses. A default object's choice is printed
// beside it (kAny: what a plain cuBLASLt call does at the shape).
TEST_F(LtGemmGpu, OperatorsSplitKOnlyWithFp32Sums) {
  struct Shape {
    int64_t m, n, k;
  };
  for (const Shape sh : {Shape{200, 100, 512}, Shape{64, 64, 16384}, Shape{128, 96, 8192}}) {
    for (DType t : {DType::kFP16, DType::kBF16}) {
      DeviceMemory a(size_t(sh.m * sh.k * 2)), b(size_t(sh.n * sh.k * 2)),
          c(size_t(sh.m * sh.n * 2)), ref(size_t(sh.m * sh.n * 4));
      const uint64_t base = ::weft::testing::shared_seed();
      tpt::fill_matrix(a.data(), sh.m, sh.k, sh.k, t, tpt::matrix_seed(base, 41, world().rank(), 0),
                       stream());
      tpt::fill_matrix(b.data(), sh.n, sh.k, sh.k, t, tpt::matrix_seed(base, 42, world().rank(), 0),
                       stream());
      reference_.gemm(a.data(), 0, b.data(), 0, ref.data(), 0, sh.m, sh.n, sh.k, t, DType::kFP32,
                      stream());
      LtGemm plain(LtAlgoChoice::kHeuristic);
      LtGemm op(LtAlgoChoice::kTuned, {}, LtSplitK::kFp32);
      plain.gemm(a.data(), 0, b.data(), 0, c.data(), 0, sh.m, sh.n, sh.k, t, t, stream());
      WEFT_CUDA_CHECK(cudaMemsetAsync(c.data(), 0xFF, c.bytes(), stream()));
      op.gemm(a.data(), 0, b.data(), 0, c.data(), 0, sh.m, sh.n, sh.k, t, t, stream());
      tpt::Comparator cmp;
      cmp.reset(stream());
      cmp.compare(c.data(), sh.n, t, ref.as<float>(), sh.n, sh.m, sh.n,
                  tpt::gemm_tolerance(t, sh.k), 0, stream());
      const auto r = cmp.read(stream());
      const std::string what = fmt::format(
          "{} x {} x {} {}: operator's {}; a plain call's {}", sh.m, sh.n, sh.k, to_string(t),
          op.describe(sh.m, sh.n, sh.k, t, t), plain.describe(sh.m, sh.n, sh.k, t, t));
      if (world().rank() == 0) std::printf("  %s\n", what.c_str());
      EXPECT_TRUE(r.ok() && r.checked == uint64_t(sh.m * sh.n)) << r.describe() << "; " << what;
      const std::string chosen = op.describe(sh.m, sh.n, sh.k, t, t);
      EXPECT_EQ(chosen.find("reduction scheme 1)"), std::string::npos) << what;
      EXPECT_EQ(chosen.find("reduction scheme 4)"), std::string::npos) << what;
    }
  }
}

TEST(LtGemmChoice, EnvironmentTurnsTuningOff) {
  const char* old = std::getenv("WEFT_LT_TUNE");
  const std::string saved = old != nullptr ? old : "";
  ::setenv("WEFT_LT_TUNE", "0", 1);
  EXPECT_EQ(lt_algo_choice_from_env(), LtAlgoChoice::kHeuristic);
  ::setenv("WEFT_LT_TUNE", "1", 1);
  EXPECT_EQ(lt_algo_choice_from_env(), LtAlgoChoice::kTuned);
  ::unsetenv("WEFT_LT_TUNE");
  EXPECT_EQ(lt_algo_choice_from_env(), LtAlgoChoice::kTuned);
  if (old != nullptr) ::setenv("WEFT_LT_TUNE", saved.c_str(), 1);
}

}  // namespace
}  // namespace weft::tp
