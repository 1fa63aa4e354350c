// Host-only tests of the GEMM wrapper: argument validation and the configuration heuristic.
// No GPU needed: every check happens before the first CUDA call. (A .cc file: fmt, pulled in
// by weft/runtime/error.h, does not compile under nvcc in C++20 mode.)
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <string>
#include <vector>

#include "weft/gemm/gemm.h"
#include "weft/runtime/error.h"

using namespace weft::gemm;

namespace {

GemmArgs fake_args() {
  GemmArgs g;
  g.a = reinterpret_cast<const void*>(0x10000);
  g.b = reinterpret_cast<const void*>(0x20000);
  g.c = reinterpret_cast<void*>(0x30000);
  g.m = 128;
  g.n = 128;
  g.k = 64;
  return g;
}

TEST(GemmValidation, RejectsBadArguments) {
  Config cfg;  // explicit, so no device query happens
  auto expect_invalid = [&](GemmArgs g, const char* needle, const Hooks* h = nullptr) {
    try {
      gemm(g, nullptr, &cfg, h);
      ADD_FAILURE() << "expected InvalidArgument containing '" << needle << "'";
    } catch (const weft::InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "expected InvalidArgument containing '" << needle << "', got: " << e.what();
    }
  };
  GemmArgs g = fake_args();
  g.k = 60;
  expect_invalid(g, "multiple of 8");
  g = fake_args();
  g.k = 0;
  expect_invalid(g, ">= 1");
  g = fake_args();
  g.ab_type = DType::kFP32;
  expect_invalid(g, "bf16 or fp16");
  g = fake_args();
  g.c_type = DType::kFP16;
  expect_invalid(g, "C dtype");
  g = fake_args();
  g.a = reinterpret_cast<const void*>(0x10008);
  expect_invalid(g, "16-byte aligned");
  g = fake_args();
  g.c = reinterpret_cast<void*>(0x30004);
  expect_invalid(g, "16-byte aligned");
  g = fake_args();
  g.lda = 32;
  expect_invalid(g, "lda");
  g = fake_args();
  g.ldb = 68;
  expect_invalid(g, "ldb");
  g = fake_args();
  g.ldc = 100;
  expect_invalid(g, "ldc");
  g = fake_args();
  g.b = nullptr;
  expect_invalid(g, "non-null");
  g = fake_args();
  g.m = int64_t(1) << 32;
  expect_invalid(g, "int32");

  {
    Config bad;
    bad.stages = 3;
    try {
      gemm(fake_args(), nullptr, &bad);
      ADD_FAILURE() << "expected InvalidArgument for an unshipped config";
    } catch (const weft::InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("not a shipped"), std::string::npos) << e.what();
    }
  }
  Hooks h;
  uint64_t dummy_flags[2];
  h.wait_flags = dummy_flags;
  expect_invalid(fake_args(), "wait_chunk_rows", &h);
  Hooks h2;
  h2.signal_mode = SignalMode::kPerTile;
  expect_invalid(fake_args(), "signals is null", &h2);
  Hooks h3;
  h3.signals = reinterpret_cast<uint64_t*>(0x40000);
  h3.signal_mode = SignalMode::kPerRowChunk;
  h3.signal_rows = 100;
  expect_invalid(fake_args(), "signal_rows", &h3);

  // Stream-K only in the plain 1x1 kernels; ping-pong kernels have no hook variants.
  Hooks order;
  order.tile_order = reinterpret_cast<const int32_t*>(0x50000);
  cfg.stream_k = true;
  expect_invalid(fake_args(), "stream-K runs in the plain kernels only", &order);
  cfg.cluster_m = 2;
  expect_invalid(fake_args(), "stream-K needs a 1x1 cluster");
  cfg = Config{};
  cfg.block_n = 128;
  cfg.stages = 6;
  cfg.pingpong = true;
  expect_invalid(fake_args(), "not a shipped", &order);
  Hooks h4;
  h4.wait_flags = dummy_flags;
  h4.wait_chunk_rows = 128;
  h4.wait_expected_ptr = reinterpret_cast<const uint64_t*>(0x50004);
  cfg = Config{};
  expect_invalid(fake_args(), "wait_expected_ptr", &h4);

  // Found by the session's review (each passed validation before).
  g = fake_args();
  g.ldc = int64_t(1) << 40;  // ldc * element size overflowed, TMA strides must stay < 2^40 B
  expect_invalid(g, "leading dimensions must fit in int32");
  Hooks op;
  op.signals = reinterpret_cast<uint64_t*>(0x40000);
  op.signal_mode = SignalMode::kPerTile;
  op.signal_op = static_cast<SignalOp>(99);  // was taken as add
  expect_invalid(fake_args(), "invalid signal_op", &op);
  // Hooks laid out for one tile grid, given without a config (the heuristic could pick another).
  auto expect_needs_config = [](const GemmArgs& args, const Hooks& h, const char* what) {
    try {
      gemm(args, nullptr, nullptr, &h);
      ADD_FAILURE() << "expected InvalidArgument for " << what << " without their config";
    } catch (const weft::InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("pass the Config"), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      // (No GPU here: the heuristic's device query may fail first; the GPU tests reach the check.)
      EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
    }
  };
  expect_needs_config(fake_args(), order, "a tile order");

  // Found by the twenty-eighth pass's review: hooks that passed validation and could not work.
  cfg = Config{};  // 128 x 256 tiles: at n = 1024, four tiles per row of tiles
  Hooks nothing;   // wait_expected 0 and no pointer: a flag >= 0 is always there
  nothing.wait_flags = dummy_flags;
  nothing.wait_chunk_rows = 128;
  expect_invalid(fake_args(), "waits for nothing", &nothing);
  Hooks zero;
  zero.signals = reinterpret_cast<uint64_t*>(0x40000);
  zero.signal_mode = SignalMode::kPerTile;
  zero.signal_value = 0;
  expect_invalid(fake_args(), "signal_value must be >= 1", &zero);
  Hooks store;
  store.signals = reinterpret_cast<uint64_t*>(0x40000);
  store.signal_mode = SignalMode::kPerRowChunk;
  store.signal_rows = 128;
  store.signal_op = SignalOp::kStore;
  g = fake_args();
  g.n = 1024;
  expect_invalid(g, "use kAdd", &store);
  Hooks chunks = store;  // a row chunk's count depends on the tiles per row
  chunks.signal_op = SignalOp::kAdd;
  expect_needs_config(g, chunks, "per-row-chunk signals");
}

// A raster group of at least the m-units is the whole grid: huge values give the same order (the
// kernel's int32 group arithmetic wrapped on them and skipped tiles).
TEST(GemmConfig, HugeRasterGroupIsOneGroup) {
  Config c;
  c.block_n = 128;
  c.stages = 6;
  const TileGrid g = tile_grid(c, 1024, 8192);
  c.raster_group = g.units_m;
  const std::vector<int32_t> whole = default_tile_order(c, 1024, 8192);
  c.raster_group = INT_MAX;
  EXPECT_EQ(default_tile_order(c, 1024, 8192), whole);
  std::vector<int32_t> sorted = whole;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) ASSERT_EQ(sorted[i], int32_t(i));
}

TEST(GemmValidation, GroupedRejectsBadArguments) {
  Config cfg;  // explicit, so no device query happens
  auto fake = [] {
    GroupedGemmArgs g;
    g.a = reinterpret_cast<const void*>(0x10000);
    g.b = reinterpret_cast<const void*>(0x20000);
    g.c = reinterpret_cast<void*>(0x30000);
    g.group_rows = reinterpret_cast<const int32_t*>(0x40000);
    g.groups = 8;
    g.m_capacity = 1024;
    g.n = 256;
    g.k = 64;
    return g;
  };
  auto expect_invalid = [&](GroupedGemmArgs g, const char* needle, const Config* c) {
    try {
      grouped_gemm(g, nullptr, c);
      ADD_FAILURE() << "expected InvalidArgument containing '" << needle << "'";
    } catch (const weft::InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "expected InvalidArgument containing '" << needle << "', got: " << e.what();
    }
  };
  GroupedGemmArgs g = fake();
  g.groups = 0;
  expect_invalid(g, "groups must be in [1, 256]", &cfg);
  g.groups = max_groups() + 1;
  expect_invalid(g, "groups must be in [1, 256]", &cfg);
  g = fake();
  g.groups = 4;
  g.n = int64_t(1) << 62;  // groups * n wrapped to 0 and passed
  expect_invalid(g, "groups * N must fit in int32", &cfg);
  g = fake();
  g.group_rows = nullptr;
  expect_invalid(g, "non-null", &cfg);
  g = fake();
  g.group_rows = reinterpret_cast<const int32_t*>(0x40002);
  expect_invalid(g, "4-byte aligned", &cfg);
  g = fake();
  g.k = 12;
  expect_invalid(g, "multiple of 8", &cfg);
  g = fake();
  g.m_capacity = 0;
  expect_invalid(g, ">= 1", &cfg);
  g = fake();
  g.m_capacity = int64_t(1) << 24;
  expect_invalid(g, "too large", &cfg);
  Config plain_only;
  plain_only.cluster_m = 2;  // 128x256 2x1 exists, but not as a grouped kernel
  expect_invalid(fake(), "not a shipped grouped", &plain_only);
  Config sk;
  sk.stream_k = true;
  expect_invalid(fake(), "no stream-K", &sk);

  // The grouped heuristic returns a shipped grouped kernel.
  for (int64_t rows : {64, 1024, 8192, 65536}) {
    const Config c = choose_grouped_config(rows, 8, 4096, 7168, DType::kBF16, DType::kBF16, 132);
    bool found = false;
    for (const Config& x : shipped_configs(DType::kBF16, DType::kBF16, false, true))
      found |= x.same_kernel(c);
    EXPECT_TRUE(found) << c.to_string();
    std::printf("choose_grouped_config(%lld rows, 8 groups, 4096, 7168) = %s\n",
                static_cast<long long>(rows), c.to_string().c_str());
  }
}

TEST(GemmConfig, DefaultTileOrderIsAPermutation) {
  for (const Config& base : shipped_configs(DType::kBF16, DType::kBF16, false)) {
    for (int g : {1, 3, 8, 1000}) {
      Config c = base;
      c.raster_group = g;
      const TileGrid grid = tile_grid(c, 1500, 4104);
      std::vector<int32_t> order = default_tile_order(c, 1500, 4104);
      ASSERT_EQ(int64_t(order.size()), grid.num_units);
      std::sort(order.begin(), order.end());
      for (size_t i = 0; i < order.size(); ++i) ASSERT_EQ(order[i], int32_t(i)) << c.to_string();
    }
  }
}

// WEFT_GEMM_CONFIG overrides the heuristic where it names a kernel of the kind asked for: a plain
// kernel without a hook variant (ping-pong, clusters, stream-K) leaves a hook choice to the
// heuristic, so fused operators keep working; a config that is not shipped at all is an error.
TEST(GemmConfig, EnvironmentOverrideAppliesWhereItNamesAKernel) {
  const DType t = DType::kBF16;
  Config plain_only;
  bool found = false;
  for (const Config& c : shipped_configs(t, t, false))
    if (!is_shipped(c, t, t, true)) {
      plain_only = c;
      found = true;
      break;
    }
  ASSERT_TRUE(found) << "every plain kernel has a hook variant: pick another case";
  const Config hook = shipped_configs(t, t, true).at(0);
  EXPECT_TRUE(is_shipped(hook, t, t, true));
  Config hook_sk = hook;
  hook_sk.stream_k = true;
  EXPECT_FALSE(is_shipped(hook_sk, t, t, true));  // stream-K runs in plain kernels only
  EXPECT_TRUE(is_shipped(hook_sk, t, t, false));

  const Config heuristic = choose_config(8192, 8192, 8192, t, t, 132, true);
  ::setenv("WEFT_GEMM_CONFIG", plain_only.to_string().c_str(), 1);
  EXPECT_TRUE(choose_config(8192, 8192, 8192, t, t, 132, false).same_kernel(plain_only));
  EXPECT_TRUE(choose_config(8192, 8192, 8192, t, t, 132, true).same_kernel(heuristic));
  ::setenv("WEFT_GEMM_CONFIG", hook.to_string().c_str(), 1);
  EXPECT_TRUE(choose_config(8192, 8192, 8192, t, t, 132, true).same_kernel(hook));
  ::setenv("WEFT_GEMM_CONFIG", "64x64x64_s3_c1x1", 1);
  EXPECT_THROW(choose_config(8192, 8192, 8192, t, t, 132, false), weft::InvalidArgument);
  EXPECT_THROW(choose_config(8192, 8192, 8192, t, t, 132, true), weft::InvalidArgument);
  ::unsetenv("WEFT_GEMM_CONFIG");
}

TEST(GemmConfig, ParseRoundTripAndHeuristic) {
  Config c;
  c.block_m = 256;
  c.block_n = 128;
  c.stages = 4;
  c.cluster_m = 1;
  c.cluster_n = 2;
  c.raster_group = 5;
  c.max_sms = 100;
  const Config d = parse_config(c.to_string());
  EXPECT_EQ(d.to_string(), c.to_string());
  EXPECT_THROW(parse_config("banana"), weft::InvalidArgument);
  c = Config{};
  c.block_n = 128;
  c.stages = 6;
  c.pingpong = true;
  c.stream_k = true;
  c.max_sms = 7;
  EXPECT_EQ(c.to_string(), "128x128x64_s6_c1x1_pp_g8_sk_sm7");
  const Config e = parse_config(c.to_string());
  EXPECT_TRUE(e.pingpong && e.stream_k && e.max_sms == 7 && e.same_kernel(c)) << e.to_string();
  EXPECT_FALSE(parse_config("128x128x64_s6_c1x1_g8").same_kernel(c));

  const int64_t shapes[][3] = {{8192, 8192, 8192}, {4096, 8192, 8192}, {1024, 7168, 8192},
                               {4096, 7168, 8192}, {8192, 7168, 8192}, {1024, 8192, 7168},
                               {4096, 8192, 7168}, {8192, 8192, 7168}, {128, 8192, 8192},
                               {256, 8192, 8192},  {512, 8192, 8192},  {1, 8, 8}};
  for (DType ab : {DType::kBF16, DType::kFP16}) {
    for (DType cd : {ab, DType::kFP32}) {
      for (bool hooks : {false, true}) {
        for (const auto& s : shapes) {
          const Config cfg = choose_config(s[0], s[1], s[2], ab, cd, 132, hooks);
          bool found = false;
          for (const Config& x : shipped_configs(ab, cd, hooks)) found |= x.same_kernel(cfg);
          EXPECT_TRUE(found) << cfg.to_string();
          if (!hooks)
            std::printf("choose_config(%lld, %lld, %lld, %s->%s, 132 SMs) = %s\n",
                        static_cast<long long>(s[0]), static_cast<long long>(s[1]),
                        static_cast<long long>(s[2]), to_string(ab), to_string(cd),
                        cfg.to_string().c_str());
        }
      }
    }
  }
}

}  // namespace
