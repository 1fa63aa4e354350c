// Tests of the weft GEMM engine against cuBLASLt: shapes, dtypes, bias, every shipped config,
// leading dimensions, argument validation, and the overlap hooks (tile order, late A chunks,
// SM cap, direct-store epilogue with signals, wait timeout).
//
// Inputs are random and fresh each run (seed printed; WEFT_TEST_SEED=<n> reproduces a run);
// outputs are poisoned with 0xFF bytes (NaN in bf16/fp16/fp32) before every launch, and the bytes
// around C (row padding, a guard after the last row) must still hold the poison afterwards.
#include <cudaTypedefs.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "tests/gemm/gemm_testing.cuh"
#include "weft/gemm/gemm.h"
#include "weft/runtime/error.h"

using namespace weft::gemm;
using namespace weft::gemm::testing;

namespace {

template <class... Ts>
std::string cat(const Ts&... xs) {
  std::ostringstream o;
  (o << ... << xs);
  return o.str();
}

bool have_sm90() {
  static const bool ok = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return false;
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return false;
    return p.major == 9 && p.minor == 0;
  }();
  return ok;
}
// This binary only runs on GPU machines (tests/gpu/run_gpu_tests.sh): without a Hopper GPU the
// tests fail rather than skip, so a missing GPU never reads as a pass.
#define REQUIRE_SM90() \
  if (!have_sm90()) GTEST_FAIL() << "needs an sm_90 (Hopper) GPU"

uint64_t base_seed() {
  static const uint64_t s = [] {
    uint64_t v;
    if (const char* e = std::getenv("WEFT_TEST_SEED")) {
      v = std::strtoull(e, nullptr, 10);
    } else {
      std::random_device rd;
      v = (uint64_t(rd()) << 32) ^ rd();
    }
    std::printf("[weft gemm tests] seed %llu (WEFT_TEST_SEED to reproduce)\n",
                static_cast<unsigned long long>(v));
    return v;
  }();
  return s;
}
uint64_t next_seed() {
  static std::atomic<uint64_t> counter{0};
  return base_seed() + 1000003ull * (++counter);
}

struct Tol {
  double rtol, atol, fro;
};
Tol tolerance(DType c, int64_t k) {
  const double atol = 4e-6 * double(k) + 1e-6;  // fp32 summation-order differences
  switch (c) {
    case DType::kBF16: return {1.0 / 128, atol, 1.0 / 256};
    case DType::kFP16: return {1.0 / 1024, atol, 1.0 / 2048};
    default: return {1e-4, atol, 1e-5};
  }
}

struct Problem {
  int64_t m, n, k;
  DType ab = DType::kBF16;
  DType c = DType::kBF16;
  int64_t lda = 0, ldb = 0, ldc = 0;
};

std::string describe(const Problem& p, bool bias) {
  return cat("M=", p.m, " N=", p.n, " K=", p.k, " ", to_string(p.ab), "->", to_string(p.c),
             " lda=", p.lda, " ldb=", p.ldb, " ldc=", p.ldc, " bias=", bias);
}

// Inputs of one problem plus the cuBLASLt fp32 reference (without bias) on the host.
class Case {
 public:
  explicit Case(Problem p) : p_(p) {
    lda_ = p.lda ? p.lda : p.k;
    ldb_ = p.ldb ? p.ldb : p.k;
    ldc_ = p.ldc ? p.ldc : p.n;
    const int es = dtype_size(p.ab);
    a_ = DeviceBuffer(size_t(p.m * lda_) * es);
    b_ = DeviceBuffer(size_t(p.n * ldb_) * es);
    bias_ = DeviceBuffer(size_t(p.n) * es);
    fill_uniform(a_.get(), p.ab, size_t(p.m * lda_), next_seed());
    fill_uniform(b_.get(), p.ab, size_t(p.n * ldb_), next_seed());
    fill_uniform(bias_.get(), p.ab, size_t(p.n), next_seed(), 4.0f);
    bias_host_ = to_host_float(bias_.get(), p.ab, size_t(p.n));

    DeviceBuffer ref(size_t(p.m * p.n) * 4);
    LtGemm lt;
    lt.setup(p.m, p.n, p.k, p.ab, DType::kFP32, lda_, ldb_, p.n);
    lt.run(a_.get(), b_.get(), ref.get(), nullptr);
    WT_CUDA(cudaDeviceSynchronize());
    ref_ = to_host_float(ref.get(), DType::kFP32, size_t(p.m * p.n));

    // The output buffer: M rows of ldc plus a guard row after the end.
    c_bytes_ = size_t((p.m + 1) * ldc_) * dtype_size(p.c);
    c_ = DeviceBuffer(c_bytes_);
  }

  const Problem& problem() const { return p_; }
  GemmArgs args(bool bias) const {
    GemmArgs g;
    g.a = a_.get();
    g.lda = p_.lda;
    g.b = b_.get();
    g.ldb = p_.ldb;
    g.c = c_.get();
    g.ldc = p_.ldc;
    g.bias = bias ? bias_.get() : nullptr;
    g.m = p_.m;
    g.n = p_.n;
    g.k = p_.k;
    g.ab_type = p_.ab;
    g.c_type = p_.c;
    return g;
  }
  void* a() const { return a_.get(); }
  void* b() const { return b_.get(); }
  const std::vector<float>& reference() const { return ref_; }
  void* c() const { return c_.get(); }

  void poison(cudaStream_t s = nullptr) const {
    WT_CUDA(cudaMemsetAsync(c_.get(), 0xFF, c_bytes_, s));
  }

  // Checks C (or `other`, a buffer with the same layout) against the reference and checks the
  // poison around C. Returns "" when everything is fine.
  std::string check(bool bias, const void* other = nullptr) const {
    const void* cbuf = other ? other : c_.get();
    const int es = dtype_size(p_.c);
    std::vector<uint8_t> raw(c_bytes_);
    WT_CUDA(cudaMemcpy(raw.data(), cbuf, c_bytes_, cudaMemcpyDeviceToHost));
    // Untouched bytes: columns [n, ldc) of every row and the guard row.
    int64_t clobbered = 0;
    for (int64_t i = 0; i <= p_.m; ++i) {
      const int64_t j0 = i < p_.m ? p_.n : 0;
      for (int64_t b = (i * ldc_ + j0) * es; b < (i + 1) * ldc_ * es; ++b)
        clobbered += raw[size_t(b)] != 0xFF;
    }
    std::vector<float> got = to_host_float(cbuf, p_.c, size_t((p_.m + 1) * ldc_));
    std::vector<float> ref = ref_;
    if (bias) {
      for (int64_t i = 0; i < p_.m; ++i)
        for (int64_t j = 0; j < p_.n; ++j) ref[size_t(i * p_.n + j)] += bias_host_[size_t(j)];
    }
    const Tol t = tolerance(p_.c, p_.k);
    const Compare cmp = compare(got, ref, p_.m, p_.n, ldc_, p_.n, t.rtol, t.atol);
    std::string err;
    if (clobbered) err += cat(clobbered, " bytes outside C were written; ");
    if (cmp.bad || cmp.nan || !(cmp.rel_fro <= t.fro))
      err += cat("mismatch vs cuBLASLt: ", cmp.summary(), " (tolerance rtol=", t.rtol,
                 " atol=", t.atol, " fro=", t.fro, "); ");
    return err;
  }

  // Poison, run, sync, check.
  std::string run(bool bias, const Config* cfg = nullptr, const Hooks* hooks = nullptr) const {
    poison();
    gemm(args(bias), nullptr, cfg, hooks);
    WT_CUDA(cudaDeviceSynchronize());
    return check(bias);
  }

 private:
  Problem p_;
  int64_t lda_, ldb_, ldc_;
  DeviceBuffer a_, b_, bias_, c_;
  size_t c_bytes_ = 0;
  std::vector<float> bias_host_, ref_;
};

#define EXPECT_GEMM_OK(expr, what)     \
  do {                                 \
    const std::string e_ = (expr);     \
    EXPECT_TRUE(e_.empty()) << (what) << ": " << e_; \
  } while (0)

// ------------------------------------------------------------------------------ CPU anchor
// The cuBLASLt reference itself (and its row-major mapping) against a float64 CPU GEMM, then weft
// against the same, on shapes small enough for the CPU.

TEST(Gemm, SmallShapesMatchCpu) {
  REQUIRE_SM90();
  const Problem problems[] = {{33, 17, 24}, {130, 72, 136, DType::kFP16, DType::kFP32},
                              {1, 300, 520, DType::kBF16, DType::kFP32}};
  for (const Problem& p : problems) {
    Case c(p);
    const auto a = to_host_float(c.a(), p.ab, size_t(p.m * p.k));
    const auto b = to_host_float(c.b(), p.ab, size_t(p.n * p.k));
    std::vector<float> cpu(size_t(p.m * p.n));
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.n; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < p.k; ++k)
          acc += double(a[size_t(i * p.k + k)]) * double(b[size_t(j * p.k + k)]);
        cpu[size_t(i * p.n + j)] = float(acc);
      }
    const Compare lt = compare(c.reference(), cpu, p.m, p.n, p.n, p.n, 1e-5, 1e-4);
    EXPECT_TRUE(lt.bad == 0 && lt.rel_fro < 1e-5) << "cuBLASLt vs CPU: " << lt.summary();
    for (bool bias : {false, true}) EXPECT_GEMM_OK(c.run(bias), describe(p, bias));
  }
}

// ------------------------------------------------------------------------------ shapes (bf16)

using Shape = std::tuple<int64_t, int64_t, int64_t>;
class ShapeTest : public ::testing::TestWithParam<Shape> {};

TEST_P(ShapeTest, Bf16MatchesCublasLt) {
  REQUIRE_SM90();
  const auto [m, n, k] = GetParam();
  Case c(Problem{m, n, k});
  for (bool bias : {false, true}) {
    const Config cfg = choose_config(m, n, k, DType::kBF16, DType::kBF16, sm_count());
    EXPECT_GEMM_OK(c.run(bias), describe(c.problem(), bias) + " config " + cfg.to_string());
  }
}

INSTANTIATE_TEST_SUITE_P(IssueShapes, ShapeTest,
                         ::testing::Combine(::testing::Values(1, 127, 1000, 4096),
                                            ::testing::Values(8, 4104, 8192),
                                            ::testing::Values(8, 64, 4096)),
                         [](const auto& info) {
                           return cat("M", std::get<0>(info.param), "_N",
                                      std::get<1>(info.param), "_K", std::get<2>(info.param));
                         });

// ------------------------------------------------------------------------------ dtypes

using DTypePair = std::tuple<DType, DType>;
class DTypeTest : public ::testing::TestWithParam<DTypePair> {};

TEST_P(DTypeTest, MatchesCublasLt) {
  REQUIRE_SM90();
  const auto [ab, cd] = GetParam();
  const Shape shapes[] = {{127, 4104, 64}, {1000, 8, 4096}, {1, 8192, 4096}, {4096, 8192, 4096},
                          {333, 1000, 8}};
  for (const auto& [m, n, k] : shapes) {
    Case c(Problem{m, n, k, ab, cd});
    for (bool bias : {false, true}) EXPECT_GEMM_OK(c.run(bias), describe(c.problem(), bias));
  }
}

INSTANTIATE_TEST_SUITE_P(All, DTypeTest,
                         ::testing::Values(DTypePair{DType::kBF16, DType::kBF16},
                                           DTypePair{DType::kBF16, DType::kFP32},
                                           DTypePair{DType::kFP16, DType::kFP16},
                                           DTypePair{DType::kFP16, DType::kFP32}),
                         [](const auto& info) {
                           return cat(to_string(std::get<0>(info.param)), "_",
                                      to_string(std::get<1>(info.param)));
                         });

// ------------------------------------------------------------------------------ every config

class ConfigTest : public ::testing::TestWithParam<DTypePair> {};

TEST_P(ConfigTest, EveryShippedConfig) {
  REQUIRE_SM90();
  const auto [ab, cd] = GetParam();
  // 1100 rows: an odd number of 128-row tiles (the second CTA of the last 2x1 cluster is idle);
  // N = 4104: an odd number of 64- and 128-column tiles (likewise for 1x2 clusters);
  // K = 1000: a partial last k-block; N = 4104: a partial last n-tile.
  const Shape shapes[] = {{1100, 4104, 1000}, {1, 8, 8}, {300, 200, 72}};
  for (const auto& [m, n, k] : shapes) {
    Case c(Problem{m, n, k, ab, cd});
    for (bool hooks : {false, true}) {
      for (Config cfg : shipped_configs(ab, cd, hooks)) {
        cfg.raster_group = 3;
        // Hook variants run with every hook enabled but already satisfied.
        const TileGrid g = tile_grid(cfg, m, n);
        std::vector<int32_t> order(size_t(g.num_units));
        std::iota(order.begin(), order.end(), 0);
        DeviceBuffer d_order(order.size() * 4), d_flags(size_t(m) * 8);
        WT_CUDA(cudaMemcpy(d_order.get(), order.data(), order.size() * 4, cudaMemcpyHostToDevice));
        std::vector<uint64_t> ones(size_t(m), 1);
        WT_CUDA(cudaMemcpy(d_flags.get(), ones.data(), ones.size() * 8, cudaMemcpyHostToDevice));
        Hooks h;
        h.tile_order = d_order.as<int32_t>();
        h.wait_flags = d_flags.as<uint64_t>();
        h.wait_chunk_rows = 1;
        h.wait_expected = 1;
        for (bool bias : {false, true}) {
          EXPECT_GEMM_OK(c.run(bias, &cfg, hooks ? &h : nullptr),
                         describe(c.problem(), bias) + " config " + cfg.to_string() +
                             (hooks ? " (hook kernel)" : ""));
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, ConfigTest,
                         ::testing::Values(DTypePair{DType::kBF16, DType::kBF16},
                                           DTypePair{DType::kBF16, DType::kFP32},
                                           DTypePair{DType::kFP16, DType::kFP16},
                                           DTypePair{DType::kFP16, DType::kFP32}),
                         [](const auto& info) {
                           return cat(to_string(std::get<0>(info.param)), "_",
                                      to_string(std::get<1>(info.param)));
                         });

// 128x224 tiles (the heuristic's pick for M = 1024, N = 7168): 224 is not a multiple of the
// 64-column bf16 epilogue slab, so the last slab of each tile row goes out through SM stores
// clipped at the tile's edge, next to TMA-stored slabs. Ragged N and a ldc with padding too.
TEST(Gemm, Tile224) {
  REQUIRE_SM90();
  const Config picked = choose_config(1024, 7168, 8192, DType::kBF16, DType::kBF16, 132);
  EXPECT_EQ(picked.block_n, 224) << picked.to_string();
  Config cfg;
  cfg.block_m = 128;
  cfg.block_n = 224;
  cfg.stages = 4;
  for (DType cd : {DType::kBF16, DType::kFP32}) {
    for (const Problem& p : {Problem{1024, 7168, 512, DType::kBF16, cd},
                             Problem{1000, 4100, 136, DType::kFP16,
                                     cd == DType::kFP32 ? cd : DType::kFP16, 0, 0, 4100 + 60}}) {
      Case c(p);
      for (bool bias : {false, true}) {
        EXPECT_GEMM_OK(c.run(bias, &cfg), describe(p, bias) + " config " + cfg.to_string());
        Hooks h;
        h.direct_store = true;
        EXPECT_GEMM_OK(c.run(bias, &cfg, &h), describe(p, bias) + " direct " + cfg.to_string());
      }
    }
  }
}

TEST(Gemm, RasterGroups) {
  REQUIRE_SM90();
  Case c(Problem{2000, 3000, 256});
  for (int g : {1, 2, 5, 16, 1000}) {
    for (Config cfg : shipped_configs(DType::kBF16, DType::kBF16, false)) {
      cfg.raster_group = g;
      EXPECT_GEMM_OK(c.run(true, &cfg), "raster group " + cfg.to_string());
    }
  }
}

// ------------------------------------------------------------------------------ leading dims

TEST(Gemm, LeadingDimensionsAndOddN) {
  REQUIRE_SM90();
  const Problem problems[] = {
      {515, 1000, 264, DType::kBF16, DType::kBF16, 264 + 8, 264 + 24, 1000 + 8},  // TMA store
      {515, 1001, 64, DType::kBF16, DType::kBF16, 0, 0, 0},        // 2002-byte rows: direct
      {515, 1001, 64, DType::kFP16, DType::kFP16, 0, 0, 1003},     // direct, scalar tail
      {515, 1001, 64, DType::kBF16, DType::kFP32, 0, 0, 1004},     // 16-byte rows: TMA store
      {77, 13, 128, DType::kFP16, DType::kFP32, 136, 128, 13},     // direct, scalar
  };
  for (const Problem& p : problems) {
    Case c(p);
    for (bool bias : {false, true}) EXPECT_GEMM_OK(c.run(bias), describe(p, bias));
  }
}

TEST(Gemm, DirectStoreEpilogue) {
  REQUIRE_SM90();
  for (DType cd : {DType::kBF16, DType::kFP32}) {
    Case c(Problem{1000, 4104, 512, DType::kBF16, cd, 0, 0, 4104 + 64});
    Hooks h;
    h.direct_store = true;
    for (const Config& cfg : shipped_configs(DType::kBF16, cd, false))
      EXPECT_GEMM_OK(c.run(true, &cfg, &h), "direct store " + cfg.to_string());
  }
}

// ------------------------------------------------------------------------------ stream-K

// Whether a launch of `cfg` with stream_k splits its last wave (mirrors launch_sm90's rule).
bool stream_k_applies(const Config& cfg, int64_t m, int64_t n, int64_t k) {
  const TileGrid g = tile_grid(cfg, m, n);
  const int64_t grid = std::min<int64_t>(cfg.max_sms > 0 ? cfg.max_sms : sm_count(), g.num_units);
  return cfg.stream_k && g.num_units > grid && g.num_units % grid != 0 && (k + 63) / 64 >= 4;
}

// Stream-K: the last partial wave split by k-blocks over all CTAs, partial tiles meeting in the
// workspace gemm() keeps for the stream. SM caps pick grids whose remainders take both splits
// (R >= G / 2: the R tail units; R < G / 2: R + G units), with tiles cut into 2-4 pieces after
// several whole tiles per CTA (small caps) or none (no cap); every plain 1x1 config, ping-pong
// included; ragged M / N / K (partial k-block), bias, fp32 output, direct stores. Every case
// runs twice on the same stream: the flags the first launch consumed must be back at zero.
TEST(Gemm, StreamK) {
  REQUIRE_SM90();
  const Problem problems[] = {
      {1000, 4104, 1000},                                  // TMA store, partial k-block
      {777, 4104, 776, DType::kBF16, DType::kFP32},        // fp32 output
      {515, 1001, 520, DType::kFP16, DType::kFP16, 0, 0, 1003},  // direct stores, scalar tail
  };
  int applied = 0;
  for (const Problem& p : problems) {
    Case c(p);
    for (Config cfg : shipped_configs(p.ab, p.c, false)) {
      if (cfg.cluster_m != 1 || cfg.cluster_n != 1) continue;
      cfg.stream_k = true;
      cfg.raster_group = 3;
      for (int cap : {0, 5, 13, 33}) {
        cfg.max_sms = cap;
        applied += stream_k_applies(cfg, p.m, p.n, p.k);
        for (int rep = 0; rep < 2; ++rep) {
          const bool bias = rep == 1;
          EXPECT_GEMM_OK(c.run(bias, &cfg), describe(p, bias) + " config " + cfg.to_string());
        }
      }
    }
  }
  EXPECT_GE(applied, 30) << "too few launches actually split their last wave";
  // The direct-store epilogue (hook c without signals) in the same kernels.
  Case c(problems[0]);
  Hooks h;
  h.direct_store = true;
  for (Config cfg : shipped_configs(DType::kBF16, DType::kBF16, false)) {
    if (cfg.cluster_m != 1 || cfg.cluster_n != 1) continue;
    cfg.stream_k = true;
    cfg.max_sms = 14;
    ASSERT_TRUE(stream_k_applies(cfg, 1000, 4104, 1000)) << cfg.to_string();
    EXPECT_GEMM_OK(c.run(true, &cfg, &h), "direct store " + cfg.to_string());
  }
}

// A stream-K GEMM captured in a CUDA graph with a caller-given workspace, replayed several
// times: every replay right, and the workspace flags back at zero afterwards. The same launch
// captured without a workspace on a stream that has none runs without stream-K (and is right).
// The launch both workspace tests make: kSkM x kSkN x kSkK on 31 SMs, whose last wave splits.
constexpr int64_t kSkM = 1000, kSkN = 4104, kSkK = 1000;
Config split_stream_k_config() {
  Config cfg = choose_config(4096, 8192, 8192, DType::kBF16, DType::kBF16, sm_count());
  cfg.stream_k = true;
  cfg.max_sms = 31;
  return cfg;
}

TEST(Gemm, StreamKGraphReplay) {
  REQUIRE_SM90();
  load_kernels();
  Case c(Problem{kSkM, kSkN, kSkK});
  const Config cfg = split_stream_k_config();
  ASSERT_TRUE(stream_k_applies(cfg, kSkM, kSkN, kSkK)) << cfg.to_string();
  DeviceBuffer ws(stream_k_workspace_bytes());
  WT_CUDA(cudaMemset(ws.get(), 0, ws.bytes()));
  GemmArgs g = c.args(true);
  g.workspace = ws.get();
  g.workspace_bytes = ws.bytes();
  cudaStream_t s;
  WT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  c.poison(s);
  gemm(g, s, &cfg);
  WT_CUDA(cudaStreamSynchronize(s));
  EXPECT_GEMM_OK(c.check(true), "eager, caller's workspace " + cfg.to_string());
  for (bool own_ws : {true, false}) {
    cudaStream_t cs;
    WT_CUDA(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
    GemmArgs ga = g;
    if (!own_ws) ga.workspace = nullptr, ga.workspace_bytes = 0;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    WT_CUDA(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal));
    c.poison(cs);
    gemm(ga, cs, &cfg);
    WT_CUDA(cudaStreamEndCapture(cs, &graph));
    WT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 4; ++rep) {
      WT_CUDA(cudaGraphLaunch(exec, cs));
      WT_CUDA(cudaStreamSynchronize(cs));
      EXPECT_GEMM_OK(c.check(true), cat("graph replay ", rep, own_ws ? " (caller's workspace) "
                                                                     : " (no workspace) ",
                                        cfg.to_string()));
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(cs);
  }
  // Flags: after the partial tiles of the 31 CTAs.
  const size_t flags_at = size_t(31) * cfg.block_m * cfg.block_n * 4;
  std::vector<uint32_t> rest((ws.bytes() - flags_at) / 4);
  WT_CUDA(cudaMemcpy(rest.data(), static_cast<char*>(ws.get()) + flags_at, rest.size() * 4,
                     cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < rest.size(); ++i) ASSERT_EQ(rest[i], 0u) << "flag word " << i;
  cudaStreamDestroy(s);
}

// gemm()'s own stream-K workspace: released per stream (after the stream's work), allocated
// again by the next stream-K launch there, and every launch right.
TEST(Gemm, StreamKWorkspaceRelease) {
  REQUIRE_SM90();
  load_kernels();
  Case c(Problem{kSkM, kSkN, kSkK});
  const Config cfg = split_stream_k_config();
  ASSERT_TRUE(stream_k_applies(cfg, kSkM, kSkN, kSkK)) << cfg.to_string();
  cudaStream_t s;
  WT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (int round = 0; round < 2; ++round) {
    c.poison(s);
    gemm(c.args(true), s, &cfg);
    WT_CUDA(cudaStreamSynchronize(s));
    EXPECT_GEMM_OK(c.check(true), cat("round ", round, " ", cfg.to_string()));
    EXPECT_TRUE(release_stream_workspace(s)) << "round " << round;
    EXPECT_FALSE(release_stream_workspace(s)) << "round " << round << ": released twice";
  }
  c.poison(s);
  gemm(c.args(true), s, &cfg);
  EXPECT_GE(release_stream_workspaces(), 1);  // waits for the launch first
  EXPECT_GEMM_OK(c.check(true), "before release_stream_workspaces " + cfg.to_string());
  WT_CUDA(cudaStreamDestroy(s));
}

// ------------------------------------------------------------------------------ hooks

// (a) Caller-given tile order.
TEST(GemmHooks, TileOrder) {
  REQUIRE_SM90();
  Case c(Problem{1500, 4104, 512});
  for (const Config& base : shipped_configs(DType::kBF16, DType::kBF16, true)) {
    const TileGrid g = tile_grid(base, 1500, 4104);
    std::vector<int32_t> order(size_t(g.num_units));
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(next_seed());
    for (int variant = 0; variant < 2; ++variant) {
      if (variant == 0) std::reverse(order.begin(), order.end());
      else std::shuffle(order.begin(), order.end(), rng);
      DeviceBuffer d_order(order.size() * 4);
      WT_CUDA(cudaMemcpy(d_order.get(), order.data(), order.size() * 4, cudaMemcpyHostToDevice));
      Hooks h;
      h.tile_order = d_order.as<int32_t>();
      EXPECT_GEMM_OK(c.run(true, &base, &h),
                     cat("tile order (", variant ? "shuffled" : "reversed", ") ",
                         base.to_string()));
    }
  }
}

// (d) SM cap: correct with a handful of CTAs (each CTA walks many tiles).
TEST(GemmHooks, SmCap) {
  REQUIRE_SM90();
  Case c(Problem{1000, 4104, 256});
  for (int cap : {1, 2, 7, 33}) {
    for (bool hooks : {false, true}) {
      for (Config cfg : shipped_configs(DType::kBF16, DType::kBF16, hooks)) {
        cfg.max_sms = cap;
        EXPECT_GEMM_OK(c.run(false, &cfg), "SM cap " + cfg.to_string());
      }
    }
  }
}

PFN_cuStreamWriteValue64_v11070 stream_write_value64() {
  static PFN_cuStreamWriteValue64_v11070 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    WT_CUDA(cudaGetDriverEntryPointByVersion("cuStreamWriteValue64", &p, 11070,
                                             cudaEnableDefault, &q));
    return reinterpret_cast<PFN_cuStreamWriteValue64_v11070>(p);
  }();
  return fn;
}

void CUDART_CB sleep_host(void* ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(reinterpret_cast<intptr_t>(ms)));
}

// Waits for both streams and fails with every error and the hang report: whichever stream
// reports the trap first, the report naming the flag is printed.
::testing::AssertionResult sync_both(cudaStream_t a, cudaStream_t b) {
  const cudaError_t ea = cudaStreamSynchronize(a);
  const cudaError_t eb = cudaStreamSynchronize(b);
  if (ea == cudaSuccess && eb == cudaSuccess) return ::testing::AssertionSuccess();
  const std::string report = take_hang_report();
  return ::testing::AssertionFailure()
         << "stream sync: " << cudaGetErrorString(ea) << " / " << cudaGetErrorString(eb)
         << "; hang report: " << (report.empty() ? "(none)" : report);
}

// (b) A arrives late, chunk by chunk (last chunk first), through the copy engine; each chunk's
// flag is raised by cuStreamWriteValue64 (a memory fence precedes the write). A starts out
// poisoned with NaN, so a TMA load issued before its chunk's flag shows up in the result. The
// flags are never reset: every GEMM call waits for a new epoch (1, 2, 3, ...), across configs
// and repetitions, as DESIGN.md's monotonic signals require.
TEST(GemmHooks, ChunkWaitLateCopyEngine) {
  REQUIRE_SM90();
  load_kernels();
  const int64_t m = 1500, n = 4104, k = 512, chunk = 200;  // chunks straddle 128-row tiles
  const int64_t chunks = (m + chunk - 1) / chunk;
  Case c(Problem{m, n, k});
  // A is staged in pinned host memory: host-to-device copies run on a copy engine. (A copy within
  // one GPU runs as a kernel, which could never start while the persistent GEMM holds every SM.)
  DeviceBuffer flags(size_t(chunks) * 8);
  const size_t a_bytes = size_t(m * k) * 2;
  uint16_t* staged = nullptr;
  WT_CUDA(cudaMallocHost(&staged, a_bytes));
  WT_CUDA(cudaMemcpy(staged, c.a(), a_bytes, cudaMemcpyDeviceToHost));
  WT_CUDA(cudaMemset(flags.get(), 0, flags.bytes()));
  cudaStream_t s_gemm, s_copy;
  WT_CUDA(cudaStreamCreateWithFlags(&s_gemm, cudaStreamNonBlocking));
  WT_CUDA(cudaStreamCreateWithFlags(&s_copy, cudaStreamNonBlocking));
  uint64_t epoch = 0;
  for (int rep = 0; rep < 2; ++rep) {
    for (const Config& cfg : shipped_configs(DType::kBF16, DType::kBF16, true)) {
      ++epoch;
      WT_CUDA(cudaMemset(c.a(), 0xFF, a_bytes));  // A = NaN until it "arrives"
      c.poison();
      WT_CUDA(cudaDeviceSynchronize());
      Hooks h;
      h.wait_flags = flags.as<uint64_t>();
      h.wait_chunk_rows = chunk;
      h.wait_expected = epoch;
      h.timeout_ns = 20'000'000'000ull;
      gemm(c.args(true), s_gemm, &cfg, &h);
      WT_CUDA(cudaLaunchHostFunc(s_copy, sleep_host, reinterpret_cast<void*>(intptr_t(50))));
      for (int64_t ch = chunks - 1; ch >= 0; --ch) {
        const int64_t r0 = ch * chunk, rows = std::min(chunk, m - r0);
        WT_CUDA(cudaMemcpyAsync(static_cast<uint16_t*>(c.a()) + r0 * k, staged + r0 * k,
                                size_t(rows * k) * 2, cudaMemcpyHostToDevice, s_copy));
        ASSERT_EQ(stream_write_value64()(s_copy,
                                         reinterpret_cast<CUdeviceptr>(flags.as<uint64_t>() + ch),
                                         epoch, CU_STREAM_WRITE_VALUE_DEFAULT),
                  CUDA_SUCCESS);
      }
      ASSERT_TRUE(sync_both(s_copy, s_gemm)) << cfg.to_string() << " epoch " << epoch;
      EXPECT_GEMM_OK(c.check(true), cat("late chunks epoch ", epoch, " ", cfg.to_string()));
    }
  }
  cudaStreamDestroy(s_gemm);
  cudaStreamDestroy(s_copy);
  cudaFreeHost(staged);
}

__global__ void sleep_kernel(uint64_t ns) {
  uint64_t start;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  while (true) {
    uint64_t now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start > ns) break;
    __nanosleep(1000);
  }
}

__global__ void copy_rows_and_flag(const uint4* src, uint4* dst, size_t n16, uint64_t* flag,
                                   uint64_t value) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n16;
       i += size_t(gridDim.x) * blockDim.x)
    dst[i] = src[i];
  __syncthreads();
  if (threadIdx.x == 0) {
    // Every block raises the flag by one after its part; the GEMM waits for the full count.
    asm volatile("fence.acq_rel.sys;" ::: "memory");
    asm volatile("red.release.sys.global.add.u64 [%0], %1;" ::"l"(flag), "l"(value) : "memory");
  }
}

// (b) + (d): the data producer needs SMs. The GEMM is launched first and capped so SMs stay
// free; without the cap this would deadlock (and the 20 s timeout would trap).
//
// The helper kernels are launched once before any GEMM: CUDA loads kernels lazily, and loading
// one may wait for the device to go idle -- which never happens while the GEMM waits for that
// very kernel (seen on H100: the first config hung for 20 s and trapped).
TEST(GemmHooks, ChunkWaitLateSmProducerWithSmCap) {
  REQUIRE_SM90();
  load_kernels();
  const int64_t m = 1024, n = 8192, k = 1024, chunk = 256;
  const int64_t chunks = m / chunk;
  const int blocks = 4;
  Case c(Problem{m, n, k});
  DeviceBuffer staged(size_t(m * k) * 2), flags(size_t(chunks) * 8), scratch(64);
  WT_CUDA(cudaMemcpy(staged.get(), c.a(), staged.bytes(), cudaMemcpyDeviceToDevice));
  WT_CUDA(cudaMemset(flags.get(), 0, flags.bytes()));
  sleep_kernel<<<1, 32>>>(0);
  copy_rows_and_flag<<<1, 32>>>(nullptr, nullptr, 0, scratch.as<uint64_t>(), 1);
  WT_CUDA(cudaGetLastError());
  WT_CUDA(cudaDeviceSynchronize());
  cudaStream_t s_gemm, s_copy;
  WT_CUDA(cudaStreamCreateWithFlags(&s_gemm, cudaStreamNonBlocking));
  WT_CUDA(cudaStreamCreateWithFlags(&s_copy, cudaStreamNonBlocking));
  uint64_t epoch = 0;
  for (const Config& base : shipped_configs(DType::kBF16, DType::kBF16, true)) {
    ++epoch;
    Config cfg = base;
    cfg.max_sms = sm_count() - 8;
    WT_CUDA(cudaMemset(c.a(), 0xFF, staged.bytes()));
    c.poison();
    WT_CUDA(cudaDeviceSynchronize());
    Hooks h;
    h.wait_flags = flags.as<uint64_t>();
    h.wait_chunk_rows = chunk;
    h.wait_expected = epoch * blocks;
    h.timeout_ns = 20'000'000'000ull;
    gemm(c.args(false), s_gemm, &cfg, &h);
    sleep_kernel<<<1, 32, 0, s_copy>>>(20'000'000);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      copy_rows_and_flag<<<blocks, 256, 0, s_copy>>>(
          reinterpret_cast<const uint4*>(staged.as<uint16_t>() + ch * chunk * k),
          reinterpret_cast<uint4*>(static_cast<uint16_t*>(c.a()) + ch * chunk * k),
          size_t(chunk * k) * 2 / 16, flags.as<uint64_t>() + ch, 1);
    }
    WT_CUDA(cudaGetLastError());
    ASSERT_TRUE(sync_both(s_copy, s_gemm)) << cfg.to_string();
    EXPECT_GEMM_OK(c.check(false), "late chunks from SM kernels, " + cfg.to_string());
  }
  cudaStreamDestroy(s_gemm);
  cudaStreamDestroy(s_copy);
}

__global__ void bump_epoch(uint64_t* epoch) { *epoch += 1; }

__global__ void flags_from_epoch(const uint64_t* epoch, uint64_t* flags, int n) {
  const uint64_t e = *epoch;
  asm volatile("fence.acq_rel.sys;" ::: "memory");
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(flags + i), "l"(e) : "memory");
}

// (b) with a device-side epoch (Hooks::wait_expected_ptr) in a CUDA graph: the graph bumps an
// epoch counter, poisons A, and on a side branch (after a delay) copies A in and raises every
// chunk flag to the new epoch, while the GEMM (capped so the side branch finds SMs) waits for
// flags >= the counter it reads at start. Replayed several times: a GEMM that kept the epoch
// of the capture (or of an earlier replay) would read the poisoned A.
TEST(GemmHooks, WaitExpectedPtrGraphReplay) {
  REQUIRE_SM90();
  load_kernels();
  const int64_t m = 1024, n = 4104, k = 512, chunk = 256;
  const int chunks = int(m / chunk);
  Case c(Problem{m, n, k});
  DeviceBuffer staged(size_t(m * k) * 2), flags(size_t(chunks) * 8), epoch(8);
  WT_CUDA(cudaMemcpy(staged.get(), c.a(), staged.bytes(), cudaMemcpyDeviceToDevice));
  WT_CUDA(cudaMemset(flags.get(), 0, flags.bytes()));
  WT_CUDA(cudaMemset(epoch.get(), 0, epoch.bytes()));
  // Helper kernels loaded before any GEMM waits for them (see ChunkWaitLateSmProducerWithSmCap).
  DeviceBuffer scratch(64);
  WT_CUDA(cudaMemset(scratch.get(), 0, scratch.bytes()));
  sleep_kernel<<<1, 32>>>(0);
  bump_epoch<<<1, 1>>>(scratch.as<uint64_t>());
  flags_from_epoch<<<1, 32>>>(scratch.as<uint64_t>(), scratch.as<uint64_t>() + 1, 1);
  WT_CUDA(cudaGetLastError());
  WT_CUDA(cudaDeviceSynchronize());

  Config cfg = choose_config(m, n, k, DType::kBF16, DType::kBF16, sm_count(), true);
  cfg.max_sms = sm_count() - 8;
  Hooks h;
  h.wait_flags = flags.as<uint64_t>();
  h.wait_chunk_rows = chunk;
  h.wait_expected = ~uint64_t(0);  // ignored: the pointer wins
  h.wait_expected_ptr = epoch.as<uint64_t>();
  h.timeout_ns = 20'000'000'000ull;
  // Eager first (epoch 0, flags 0: satisfied), which also sets the GEMM up outside the capture.
  EXPECT_GEMM_OK(c.run(false, &cfg, &h), "eager, epoch 0 " + cfg.to_string());

  cudaStream_t s_main, s_side;
  WT_CUDA(cudaStreamCreateWithFlags(&s_main, cudaStreamNonBlocking));
  WT_CUDA(cudaStreamCreateWithFlags(&s_side, cudaStreamNonBlocking));
  cudaEvent_t fork, join;
  WT_CUDA(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  WT_CUDA(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  WT_CUDA(cudaStreamBeginCapture(s_main, cudaStreamCaptureModeThreadLocal));
  bump_epoch<<<1, 1, 0, s_main>>>(epoch.as<uint64_t>());
  WT_CUDA(cudaMemsetAsync(c.a(), 0xFF, staged.bytes(), s_main));  // A = NaN until it arrives
  c.poison(s_main);
  WT_CUDA(cudaEventRecord(fork, s_main));
  WT_CUDA(cudaStreamWaitEvent(s_side, fork, 0));
  sleep_kernel<<<1, 32, 0, s_side>>>(5'000'000);
  WT_CUDA(cudaMemcpyAsync(c.a(), staged.get(), staged.bytes(), cudaMemcpyDeviceToDevice, s_side));
  flags_from_epoch<<<1, 32, 0, s_side>>>(epoch.as<uint64_t>(), flags.as<uint64_t>(), chunks);
  gemm(c.args(false), s_main, &cfg, &h);
  WT_CUDA(cudaEventRecord(join, s_side));
  WT_CUDA(cudaStreamWaitEvent(s_main, join, 0));
  WT_CUDA(cudaStreamEndCapture(s_main, &graph));
  WT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (uint64_t rep = 1; rep <= 4; ++rep) {
    WT_CUDA(cudaGraphLaunch(exec, s_main));
    ASSERT_TRUE(sync_both(s_main, s_side)) << "replay " << rep;
    EXPECT_GEMM_OK(c.check(false), cat("graph replay ", rep, " ", cfg.to_string()));
    uint64_t e = 0;
    WT_CUDA(cudaMemcpy(&e, epoch.get(), 8, cudaMemcpyDeviceToHost));
    EXPECT_EQ(e, rep);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaEventDestroy(fork);
  cudaEventDestroy(join);
  cudaStreamDestroy(s_main);
  cudaStreamDestroy(s_side);
}

// Consumer of per-tile signals: for each tile (row-major), wait for its signal, then copy the
// tile from C to D through L2. If a signal were raised before its tile's data were visible, D
// would hold poison.
__global__ void tile_consumer(const uint16_t* c, uint16_t* d, int64_t ldc, int64_t m, int64_t n,
                              int bm, int bn, int tiles_m, int tiles_n, const uint64_t* signals,
                              uint64_t expected) {
  __shared__ int dead;
  for (int t = 0; t < tiles_m * tiles_n; ++t) {
    if (threadIdx.x == 0) {
      uint64_t start, now, v;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
      dead = 0;
      while (true) {
        asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(signals + t) : "memory");
        if (v >= expected) break;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        if (now - start > 20'000'000'000ull) {
          printf("tile_consumer: tile %d signal %llu < %llu\n", t, (unsigned long long)v,
                 (unsigned long long)expected);
          dead = 1;
          break;
        }
      }
    }
    __syncthreads();
    if (dead) __trap();
    const int64_t r0 = int64_t(t / tiles_n) * bm, c0 = int64_t(t % tiles_n) * bn;
    for (int64_t i = threadIdx.x; i < int64_t(bm) * bn; i += blockDim.x) {
      const int64_t r = r0 + i / bn, col = c0 + i % bn;
      if (r < m && col < n) d[r * ldc + col] = __ldcg(c + r * ldc + col);
    }
    __syncthreads();
  }
}

// (c) Direct-store epilogue to a pointer with a leading dimension, per-tile signals consumed
// concurrently by another kernel (SMs left free by the cap), then per-row-chunk signal counts.
TEST(GemmHooks, DirectStoreWithSignals) {
  REQUIRE_SM90();
  load_kernels();  // the GEMM is launched while tile_consumer already waits for it
  const int64_t m = 1000, n = 4104, k = 1024, ldc = n + 72;
  Case c(Problem{m, n, k, DType::kBF16, DType::kBF16, 0, 0, ldc});
  cudaStream_t s_gemm, s_cons;
  WT_CUDA(cudaStreamCreateWithFlags(&s_gemm, cudaStreamNonBlocking));
  WT_CUDA(cudaStreamCreateWithFlags(&s_cons, cudaStreamNonBlocking));
  for (const Config& base : shipped_configs(DType::kBF16, DType::kBF16, true)) {
    Config cfg = base;
    cfg.max_sms = sm_count() - 4;
    const TileGrid g = tile_grid(cfg, m, n);
    DeviceBuffer signals(size_t(g.num_tiles) * 8);
    WT_CUDA(cudaMemset(signals.get(), 0, signals.bytes()));
    DeviceBuffer d(size_t((m + 1) * ldc) * 2);
    for (uint64_t epoch = 1; epoch <= 2; ++epoch) {
      c.poison();
      WT_CUDA(cudaMemset(d.get(), 0xFF, d.bytes()));
      WT_CUDA(cudaDeviceSynchronize());
      tile_consumer<<<1, 512, 0, s_cons>>>(static_cast<const uint16_t*>(c.c()), d.as<uint16_t>(),
                                           ldc, m, n, g.block_m, g.block_n, g.tiles_m, g.tiles_n,
                                           signals.as<uint64_t>(), epoch);
      WT_CUDA(cudaGetLastError());
      Hooks h;
      h.direct_store = true;
      h.signals = signals.as<uint64_t>();
      h.signal_mode = SignalMode::kPerTile;
      h.signal_op = epoch == 1 ? SignalOp::kAdd : SignalOp::kStore;
      h.signal_value = 1;
      if (epoch == 2) h.signal_value = 2;
      gemm(c.args(true), s_gemm, &cfg, &h);
      ASSERT_TRUE(sync_both(s_gemm, s_cons)) << cfg.to_string();
      EXPECT_GEMM_OK(c.check(true), "direct store + signals " + cfg.to_string());
      EXPECT_GEMM_OK(c.check(true, d.get()), "data seen after the signal, " + cfg.to_string());
      std::vector<uint64_t> sig(size_t(g.num_tiles));
      WT_CUDA(cudaMemcpy(sig.data(), signals.get(), signals.bytes(), cudaMemcpyDeviceToHost));
      for (size_t t = 0; t < sig.size(); ++t)
        ASSERT_EQ(sig[t], epoch) << "tile " << t << " " << cfg.to_string();
    }

    // Per-row-chunk counting: each chunk of 2 * block_m rows gets one add per tile.
    const int64_t rows = 2 * g.block_m;
    const int64_t nchunks = (m + rows - 1) / rows;
    DeviceBuffer csig(size_t(nchunks) * 8);
    WT_CUDA(cudaMemset(csig.get(), 0, csig.bytes()));
    Hooks h;
    h.signals = csig.as<uint64_t>();
    h.signal_mode = SignalMode::kPerRowChunk;
    h.signal_rows = rows;
    h.signal_value = 1;
    EXPECT_GEMM_OK(c.run(false, &cfg, &h), "per-row-chunk signals (TMA store) " + cfg.to_string());
    std::vector<uint64_t> cs(static_cast<size_t>(nchunks));
    WT_CUDA(cudaMemcpy(cs.data(), csig.get(), csig.bytes(), cudaMemcpyDeviceToHost));
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const int64_t tiles_in_chunk =
          std::min<int64_t>(2, g.tiles_m - ch * 2) * int64_t(g.tiles_n);
      EXPECT_EQ(cs[size_t(ch)], uint64_t(tiles_in_chunk)) << "chunk " << ch;
    }
  }
  cudaStreamDestroy(s_gemm);
  cudaStreamDestroy(s_cons);
}

// ------------------------------------------------------------------------------ grouped GEMM

// Grouped (MoE) problem: packed A [capacity, K], B [groups, N, K], C [capacity, N]; the row
// counts go to the device and the reference is one cuBLASLt GEMM per non-empty group.
class GroupedCase {
 public:
  // reference = false: counts only (e.g. counts that overflow the capacity on purpose).
  GroupedCase(std::vector<int32_t> rows, int64_t capacity, int64_t n, int64_t k, DType ab,
              DType cd, bool reference = true)
      : rows_(std::move(rows)), cap_(capacity), n_(n), k_(k), ab_(ab), cd_(cd) {
    const int es = dtype_size(ab);
    const int64_t g = int64_t(rows_.size());
    a_ = DeviceBuffer(size_t(cap_ * k_) * es);
    b_ = DeviceBuffer(size_t(g * n_ * k_) * es);
    bias_ = DeviceBuffer(size_t(g * n_) * es);
    counts_ = DeviceBuffer(size_t(g) * 4);
    fill_uniform(a_.get(), ab, size_t(cap_ * k_), next_seed());
    fill_uniform(b_.get(), ab, size_t(g * n_ * k_), next_seed());
    fill_uniform(bias_.get(), ab, size_t(g * n_), next_seed(), 4.0f);
    bias_host_ = to_host_float(bias_.get(), ab, size_t(g * n_));
    c_bytes_ = size_t(cap_ * n_) * dtype_size(cd);
    c_ = DeviceBuffer(c_bytes_);
    set_rows(rows_, nullptr, reference);
  }

  // New row counts (same capacity): uploaded with an async copy on `s`, never read by gemm().
  void set_rows(const std::vector<int32_t>& rows, cudaStream_t s = nullptr,
                bool reference = true) {
    rows_ = rows;
    total_ = 0;
    for (int32_t r : rows_) total_ += std::max(0, r);
    WT_CUDA(cudaMemcpyAsync(counts_.get(), rows_.data(), rows_.size() * 4, cudaMemcpyHostToDevice,
                            s));
    WT_CUDA(cudaStreamSynchronize(s));
    if (!reference) return;
    // Reference: fp32 C rows of every group.
    DeviceBuffer ref(size_t(std::max<int64_t>(total_, 1) * n_) * 4);
    LtGemm lt;
    const int es = dtype_size(ab_);
    int64_t r0 = 0;
    for (size_t g = 0; g < rows_.size(); ++g) {
      const int64_t mg = std::max(0, rows_[g]);
      if (mg == 0) continue;
      lt.setup(mg, n_, k_, ab_, DType::kFP32);
      lt.run(static_cast<const uint8_t*>(a_.get()) + size_t(r0 * k_) * es,
             static_cast<const uint8_t*>(b_.get()) + size_t(int64_t(g) * n_ * k_) * es,
             ref.as<float>() + r0 * n_, nullptr);
      WT_CUDA(cudaDeviceSynchronize());
      r0 += mg;
    }
    ref_ = to_host_float(ref.get(), DType::kFP32, size_t(std::max<int64_t>(total_, 1) * n_));
  }

  GroupedGemmArgs args(bool bias) const {
    GroupedGemmArgs g;
    g.a = a_.get();
    g.b = b_.get();
    g.c = c_.get();
    g.bias = bias ? bias_.get() : nullptr;
    g.group_rows = counts_.as<int32_t>();
    g.groups = int64_t(rows_.size());
    g.m_capacity = cap_;
    g.n = n_;
    g.k = k_;
    g.ab_type = ab_;
    g.c_type = cd_;
    return g;
  }
  void poison(cudaStream_t s = nullptr) const {
    WT_CUDA(cudaMemsetAsync(c_.get(), 0xFF, c_bytes_, s));
  }

  std::string check(bool bias) const {
    std::vector<uint8_t> raw(c_bytes_);
    WT_CUDA(cudaMemcpy(raw.data(), c_.get(), c_bytes_, cudaMemcpyDeviceToHost));
    const int es = dtype_size(cd_);
    int64_t clobbered = 0;  // rows past the groups' total must keep the poison
    for (size_t b = size_t(total_ * n_) * es; b < c_bytes_; ++b) clobbered += raw[b] != 0xFF;
    std::string err;
    if (clobbered) err += cat(clobbered, " bytes past the groups' rows were written; ");
    if (total_ == 0) return err;
    std::vector<float> got = to_host_float(c_.get(), cd_, size_t(total_ * n_));
    std::vector<float> ref = ref_;
    if (bias) {
      int64_t r0 = 0;
      for (size_t g = 0; g < rows_.size(); ++g) {
        const int64_t mg = std::max(0, rows_[g]);
        for (int64_t i = r0; i < r0 + mg; ++i)
          for (int64_t j = 0; j < n_; ++j)
            ref[size_t(i * n_ + j)] += bias_host_[size_t(int64_t(g) * n_ + j)];
        r0 += mg;
      }
    }
    const Tol t = tolerance(cd_, k_);
    const Compare cmp = compare(got, ref, total_, n_, n_, n_, t.rtol, t.atol);
    if (cmp.bad || cmp.nan || !(cmp.rel_fro <= t.fro)) {
      // Name the group of the first bad element.
      int64_t row = cmp.first_bad / n_, g = 0, r0 = 0;
      while (g + 1 < int64_t(rows_.size()) && row >= r0 + std::max(0, rows_[size_t(g)]))
        r0 += std::max(0, rows_[size_t(g++)]);
      err += cat("mismatch vs cuBLASLt per group: ", cmp.summary(), " (first bad in group ", g,
                 ", its row ", row - r0, "; tolerance rtol=", t.rtol, " atol=", t.atol,
                 " fro=", t.fro, "); ");
    }
    return err;
  }

  std::string run(bool bias, const Config* cfg = nullptr) const {
    poison();
    grouped_gemm(args(bias), nullptr, cfg);
    WT_CUDA(cudaDeviceSynchronize());
    return check(bias);
  }

  std::string describe(bool bias) const {
    return cat(rows_.size(), " groups, total ", total_, " of ", cap_, " rows, N=", n_, " K=", k_,
               " ", to_string(ab_), "->", to_string(cd_), " bias=", bias);
  }

 private:
  std::vector<int32_t> rows_;
  int64_t cap_, n_, k_, total_ = 0;
  DType ab_, cd_;
  DeviceBuffer a_, b_, bias_, counts_, c_;
  size_t c_bytes_ = 0;
  std::vector<float> bias_host_, ref_;
};

// Empty groups, 1-row groups, groups ending inside a 64-row slab and on a tile boundary, a
// ragged N (partial n-tiles read the next expert's B rows), a partial last k-block; every
// grouped config, every dtype pair, with and without bias.
TEST_P(DTypeTest, GroupedMatchesCublasLtPerGroup) {
  REQUIRE_SM90();
  const auto [ab, cd] = GetParam();
  const std::vector<int32_t> rows = {0, 1, 127, 128, 129, 300, 0, 1000, 64, 255, 0};
  int64_t total = 0;
  for (int32_t r : rows) total += r;
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{4104, 1000}, {1000, 72}}) {
    GroupedCase gc(rows, total + 77, n, k, ab, cd);
    for (Config cfg : shipped_configs(ab, cd, false, true)) {
      cfg.raster_group = 3;
      for (bool bias : {false, true})
        EXPECT_GEMM_OK(gc.run(bias, &cfg), gc.describe(bias) + " config " + cfg.to_string());
    }
    EXPECT_GEMM_OK(gc.run(true), gc.describe(true) + " heuristic config");
  }
}

// The full 256 groups with small random counts, and the counts exactly filling the capacity.
TEST(GroupedGemm, ManyGroupsAndFullCapacity) {
  REQUIRE_SM90();
  std::mt19937 rng{uint32_t(next_seed())};
  std::vector<int32_t> rows(static_cast<size_t>(max_groups()));
  int64_t total = 0;
  for (auto& r : rows) total += (r = int32_t(rng() % 41));
  GroupedCase gc(rows, total, 520, 256, DType::kBF16, DType::kBF16);
  for (const Config& cfg : shipped_configs(DType::kBF16, DType::kBF16, false, true))
    EXPECT_GEMM_OK(gc.run(true, &cfg), gc.describe(true) + " config " + cfg.to_string());
}

// Counts change on the device between launches (written by an async copy on the GEMM's stream,
// as a routing kernel would): the same launch arguments, a CUDA graph replayed with new counts.
TEST(GroupedGemm, CountsChangeOnDeviceGraphReplay) {
  REQUIRE_SM90();
  load_kernels();
  const std::vector<int32_t> first = {500, 0, 37, 900, 128};
  GroupedCase gc(first, 2048, 2048, 512, DType::kBF16, DType::kBF16);
  cudaStream_t s;
  WT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  // Warm-up outside the capture (kernel attributes, hang record).
  gc.poison(s);
  grouped_gemm(gc.args(true), s);
  WT_CUDA(cudaStreamSynchronize(s));
  EXPECT_GEMM_OK(gc.check(true), "before capture");
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  WT_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  grouped_gemm(gc.args(true), s);
  WT_CUDA(cudaStreamEndCapture(s, &graph));
  WT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (const std::vector<int32_t>& rows :
       {std::vector<int32_t>{0, 0, 0, 0, 2048}, std::vector<int32_t>{1, 1, 1, 1, 1},
        std::vector<int32_t>{700, 300, 129, 0, 511}, std::vector<int32_t>{0, 0, 0, 0, 0}}) {
    gc.set_rows(rows, s);
    gc.poison(s);
    WT_CUDA(cudaGraphLaunch(exec, s));
    WT_CUDA(cudaStreamSynchronize(s));
    EXPECT_GEMM_OK(gc.check(true), gc.describe(true) + " (graph replay)");
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

// More rows than the capacity: the kernel must trap with a report rather than write past C.
TEST(GroupedGemmDeathTest, RowOverflowTraps) {
  REQUIRE_SM90();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        GroupedCase gc({100, 200}, 256, 256, 64, DType::kBF16, DType::kBF16, false);
        grouped_gemm(gc.args(false), nullptr);
        const cudaError_t e = cudaDeviceSynchronize();
        const std::string report = take_hang_report();
        std::fprintf(stderr, "sync: %s\nreport: %s\n", cudaGetErrorString(e), report.c_str());
        std::exit(e != cudaSuccess && !report.empty() ? 3 : 4);
      },
      ::testing::ExitedWithCode(3), "add up to 300 rows, but A and C hold m_capacity = 256");
}

// Hooks whose A-chunk waits (128-row chunks) want 7 from flags that stay 0 (`flags`: 2 words,
// zeroed here).
Hooks waits_for_a_flag_never_raised(DeviceBuffer& flags) {
  WT_CUDA(cudaMemset(flags.get(), 0, flags.bytes()));
  Hooks h;
  h.wait_flags = flags.as<uint64_t>();
  h.wait_chunk_rows = 128;
  h.wait_expected = 7;
  return h;
}

// A flag that never comes: the kernel must trap after the timeout and leave a report naming
// the flag, instead of hanging. Runs in a child process (the trap kills the CUDA context).
TEST(GemmHooksDeathTest, MissingFlagTimesOut) {
  REQUIRE_SM90();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Case c(Problem{256, 256, 64});
        DeviceBuffer flags(8 * 2);
        Hooks h = waits_for_a_flag_never_raised(flags);
        h.timeout_ns = 200'000'000ull;
        gemm(c.args(false), nullptr, nullptr, &h);
        const cudaError_t e = cudaDeviceSynchronize();
        const std::string report = take_hang_report();
        std::fprintf(stderr, "sync: %s\nreport: %s\n", cudaGetErrorString(e), report.c_str());
        std::exit(e != cudaSuccess && !report.empty() ? 3 : 4);
      },
      ::testing::ExitedWithCode(3), "A-chunk flag wait timed out.*expected >= 7 seen 0");
}

// The give-up word (weft's abort board, in the operators) ends a flag wait long before its
// timeout, and the record says why; the CUDA error that follows quotes the record (the GEMM
// engine is a fault source). In a child process, as above.
TEST(GemmHooksDeathTest, GiveUpWordEndsTheWait) {
  REQUIRE_SM90();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Case c(Problem{256, 256, 64});
        DeviceBuffer flags(8 * 2);
        Hooks h = waits_for_a_flag_never_raised(flags);
        uint32_t* word = nullptr;
        WT_CUDA(
            cudaHostAlloc(reinterpret_cast<void**>(&word), sizeof(uint32_t), cudaHostAllocMapped));
        *word = 0;
        uint32_t* word_dev = nullptr;
        WT_CUDA(cudaHostGetDevicePointer(reinterpret_cast<void**>(&word_dev), word, 0));
        h.timeout_ns = 60'000'000'000ull;  // far beyond the 10 s this test allows
        h.give_up = word_dev;
        const auto start = std::chrono::steady_clock::now();
        gemm(c.args(false), nullptr, nullptr, &h);
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        const bool still_waiting = cudaStreamQuery(nullptr) == cudaErrorNotReady;
        reinterpret_cast<volatile uint32_t*>(word)[0] = 1u;
        const cudaError_t e = cudaDeviceSynchronize();
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const std::string quoted = weft::detail::current_device_fault().value_or("");
        const std::string report = take_hang_report();
        std::fprintf(
            stderr, "waiting at 300 ms: %d, sync after %.2f s: %s\nquoted: %s\nreport: %s\n",
            int(still_waiting), seconds, cudaGetErrorString(e), quoted.c_str(), report.c_str());
        const bool ok = still_waiting && e != cudaSuccess && seconds < 10 &&
                        quoted.find("GEMM engine: GEMM A-chunk flag wait gave up") == 0 &&
                        report.find("gave up") != std::string::npos;
        std::exit(ok ? 3 : 4);
      },
      ::testing::ExitedWithCode(3),
      "A-chunk flag wait gave up \\(a rank on this host gave up\\).*expected >= 7 seen 0");
}

// A tile order entry that is not a unit id: the kernel must trap with a report naming the entry
// rather than compute (or signal) a tile outside the output. In a child process, as above.
TEST(GemmHooksDeathTest, BadTileOrderEntryTraps) {
  REQUIRE_SM90();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Case c(Problem{256, 512, 64});
        Config cfg = shipped_configs(DType::kBF16, DType::kBF16, true).front();
        const TileGrid g = tile_grid(cfg, 256, 512);
        std::vector<int32_t> order(size_t(g.num_units));
        std::iota(order.begin(), order.end(), 0);
        order.back() = -3;
        DeviceBuffer d_order(order.size() * 4);
        WT_CUDA(cudaMemcpy(d_order.get(), order.data(), order.size() * 4, cudaMemcpyHostToDevice));
        Hooks h;
        h.tile_order = d_order.as<int32_t>();
        gemm(c.args(false), nullptr, &cfg, &h);
        const cudaError_t e = cudaDeviceSynchronize();
        const std::string report = take_hang_report();
        std::fprintf(stderr, "sync: %s\nreport: %s\n", cudaGetErrorString(e), report.c_str());
        std::exit(e != cudaSuccess && !report.empty() ? 3 : 4);
      },
      ::testing::ExitedWithCode(3), "tile_order\\[[0-9]+\\] = -3 .*not a unit id");
}

}  // namespace
