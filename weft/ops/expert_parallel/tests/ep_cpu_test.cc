// CPU tests of the expert-parallel operator's host-only parts: configuration validation and sizing
// (ep_plan), the number formats (ep_numerics.h), the test input generator and the host reference
// model the GPU tests compare against.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "tests/support/expect_error.h"
#include "weft/ops/expert_parallel/ep_numerics.h"
#include "weft/ops/expert_parallel/ep_plan.h"
#include "weft/ops/expert_parallel/testing/ep_reference.h"
#include "weft/runtime/error.h"

namespace weft::ops {
namespace {

using namespace ep_testing;

EpConfig ll() { return EpConfig{}; }  // low latency, E 256, H 7168, k 8, 128 tokens

EpConfig tp() {
  EpConfig c;
  c.mode = EpMode::throughput;
  c.max_tokens = 4096;
  return c;
}

// Expects plan_expert_parallel to throw InvalidArgument whose text contains `needle`.
void expect_rejected(const EpConfig& c, int world, const std::string& needle, int sms = 132) {
  testing::expect_error([&] { plan_expert_parallel(c, world, sms); }, {needle},
                        testing::ErrorText::detail);
}

// Tagged words (count messages, low-latency metadata) carry epoch_tag(epoch): never the 0 that
// consumed metadata words are cleared to, and never equal for epochs two apart (a count slot's
// previous use), also where the 32-bit value wraps.
TEST(EpParams, EpochTagsAreNeverZeroAndDifferAcrossTheWrap) {
  for (const uint64_t e : {uint64_t{1}, uint64_t{2}, uint64_t{0xfffffffe}, uint64_t{0xffffffff},
                           uint64_t{0x100000000}, uint64_t{0x100000001}, uint64_t{0x1fffffffd},
                           uint64_t{0x1fffffffe}, uint64_t{0x1ffffffff}, ~uint64_t{0}}) {
    EXPECT_NE(ep::epoch_tag(e), 0u) << e;
    EXPECT_NE(ep::epoch_tag(e), ep::epoch_tag(e - 2)) << e;
    EXPECT_NE(ep::epoch_tag(e), ep::epoch_tag(e - 1)) << e;
  }
}

// The low-latency dispatch's roles (LlSenders), for every shape the kernel's split path takes
// (fewer sending groups than groups per block): each token has exactly one sending group, and the
// receiving groups' places in the row order are exactly 0 .. receiving_groups - 1 (a place
// nobody held would leave its rows unreceived: a hang). Rows go first to blocks that send
// nothing; packed, the last W blocks (the count blocks) never send.
TEST(EpParams, LowLatencySendersAndRowOrderCoverEverything) {
  constexpr int kGpb = 4, kPerSend = 2, kRpbFree = 8;  // 16 warps: 4-warp senders, 2-warp receivers
  int checked = 0;
  for (const int grid : {2, 4, 9, 33, 132})
    for (const int W : {1, 2, 4, 8})
      for (const int pack : {0, 1, 2, 3})
        for (const int T : {0, 1, 5, 31, 64, 128, 200, 256}) {
          if (W > grid) continue;
          const ep::LlSenders s(T, grid, W, kGpb, pack);
          if (s.groups(0) >= kGpb) continue;  // every group sends: the kernel's other path
          const std::string where = fmt::format("grid {} W {} pack {} T {}", grid, W, pack, T);
          std::vector<int> senders_of(static_cast<size_t>(T), 0);
          std::vector<int> holders(static_cast<size_t>(s.receiving_groups(kRpbFree, kPerSend)), 0);
          int first_sending_place = INT32_MAX, last_free_place = -1;
          for (int b = 0; b < grid; ++b) {
            const int sg = s.groups(b);
            ASSERT_GE(sg, 0) << where;
            if (s.pack > 0 && b >= grid - W) EXPECT_EQ(sg, 0) << where << ": count block " << b;
            bool sends = false;
            for (int i = 0; i < sg; ++i) {
              const int t = s.token(b, i);
              ASSERT_LT(t, T) << where;
              if (t >= 0) {
                ++senders_of[static_cast<size_t>(t)];
                sends = true;
              }
            }
            for (int i = 0; i < kRpbFree - sg * kPerSend; ++i) {
              const int r = s.row_order(b, i, kRpbFree);
              ASSERT_GE(r, 0) << where;
              ASSERT_LT(r, static_cast<int>(holders.size())) << where << ": block " << b;
              ++holders[static_cast<size_t>(r)];
              if (i == 0 && sends) first_sending_place = std::min(first_sending_place, r);
              if (i == 0 && !sends) last_free_place = std::max(last_free_place, r);
            }
          }
          for (int t = 0; t < T; ++t) EXPECT_EQ(senders_of[static_cast<size_t>(t)], 1) << where;
          for (size_t r = 0; r < holders.size(); ++r) EXPECT_EQ(holders[r], 1) << where << " " << r;
          EXPECT_LT(last_free_place, first_sending_place) << where;
          ++checked;
        }
  EXPECT_GT(checked, 300);
}

TEST(EpPlan, LowLatencyDefaults) {
  const EpPlan p = plan_expert_parallel(ll(), 4, 132);
  EXPECT_EQ(p.experts_local, 64);
  EXPECT_EQ(p.grid, 132);
  EXPECT_EQ(p.send_blocks.dispatch, 0);
  EXPECT_EQ(p.warps_per_group, 4);
  EXPECT_EQ(p.combine_warps_per_group, 8);
  EXPECT_EQ(p.nbuf, 2);
  EXPECT_EQ(p.capacity, 4 * 128 * 8);  // worst case
  EXPECT_EQ(p.units, 448);
  EXPECT_EQ(p.scale_groups, 56);
  // A bf16 row and, apart from it, an fp8 row per slot (ep::staged_row).
  EXPECT_EQ(p.st_row_stride, size_t(7168) * 3);
  EXPECT_EQ(p.st_rows_bytes, size_t(2) * 4 * 128 * 7168 * 3);
  EXPECT_EQ(p.st_meta_ints, size_t(2) * 4 * 128 * 28 * 2);  // a tagged word per metadata int
  EXPECT_EQ(p.signal_count, size_t(2) * 4 * 128 * 2 + 4);   // st_flags, cb_flags, hello
  // Tagged count words: pair counts, the token count and the token bitmap (256 bits).
  EXPECT_EQ(p.st_count_words, size_t(2) * 4 * (64 + 1 + 8));
  // Fits the default 1 GiB heap with room to spare.
  EXPECT_LT(p.symmetric_bytes(), size_t(64) << 20);
  // One block per SM either way; the opt-in limit (checked by the operator) is ~227 KiB. The
  // scan's tables and eight scratch entries take ~47 KiB at these defaults, the TMA receive's
  // eight bf16 row buffers 112 KiB.
  EXPECT_EQ(p.tma_bytes, 8u * 7168 * 2);
  const uint32_t smem = p.smem(ep::EpKernel::ll_dispatch).bytes;
  EXPECT_EQ(smem, ep::ep_smem_layout(ep::EpKernel::ll_dispatch, 256, 4, 8, 8).bytes + p.tma_bytes);
  EXPECT_LE(smem, 160u * 1024);
}

// Bulk copies read and fill shared memory at the links' rate only from 128-byte aligned buffers
// (docs/perf.md, twentieth pass). The dynamic shared memory is only promised 16-byte alignment, so
// the kernels round the TMA region's start up at run time (tma_region): wherever the block's
// shared memory starts, the rounded region must stay clear of the pieces before it and inside the
// launch size; every warp's slot and each piece of a sending slot are multiples of 128 bytes.
TEST(EpPlan, TmaBuffersStartOn128Bytes) {
  for (EpMode mode : {EpMode::low_latency, EpMode::throughput}) {
    for (int hidden : {128, 1024, 2176, 4096, 7168, 8192}) {
      for (int topk : {1, 6, 8, 9}) {
        EpConfig c = mode == EpMode::low_latency ? ll() : tp();
        c.hidden = hidden;
        c.topk = topk;
        const EpPlan p = plan_expert_parallel(c, 4, 132);
        const auto k =
            mode == EpMode::low_latency ? ep::EpKernel::ll_dispatch : ep::EpKernel::tp_dispatch;
        const ep::EpSmemLayout s = p.smem(k);
        SCOPED_TRACE(
            fmt::format("mode {} hidden {} topk {}", static_cast<int>(mode), hidden, topk));
        EXPECT_LE(s.bytes, ep::kTpDispatchSmemBytes);
        if (p.tma_bytes == 0) continue;
        ASSERT_GE(s.tma, ep::kTmaSlack);
        for (uint32_t base = 0; base < ep::kTmaAlign; base += 16) {  // the shared memory's start
          const uint32_t free_from = base + s.tma - ep::kTmaSlack;   // end of the pieces before
          const uint32_t start = ep::ep_align_tma(free_from);
          EXPECT_GE(start, free_from);
          EXPECT_LE(start + p.tma_bytes, base + s.bytes);
        }
        for (bool fp8 : {false, true}) {
          EXPECT_EQ(ep::tma_recv_slot_bytes(hidden, fp8) % ep::kTmaAlign, 0u);
          const ep::TmaSendSlotLayout l = ep::tma_send_slot_layout(hidden, topk, fp8);
          EXPECT_EQ(l.scales % ep::kTmaAlign, 0u);
          EXPECT_EQ(l.meta % ep::kTmaAlign, 0u);
          EXPECT_EQ(l.bytes % ep::kTmaAlign, 0u);
          EXPECT_GE(l.scales, 2u * hidden);                               // after the bf16 row
          EXPECT_GE(l.meta, l.scales + (fp8 ? hidden / 128u * 4u : 0u));  // after the scales
          EXPECT_GE(l.bytes, l.meta + static_cast<uint32_t>(ep::meta_ints(topk)) * 4u);
        }
      }
    }
  }
}

// Where two bf16 row buffers per receiving group do not fit beside the scan's tables, the plan
// keeps fp8-sized ones, and without room for those none (rows through registers).
TEST(EpPlan, LowLatencyRowBuffersShrinkToWhatFits) {
  EpConfig c = ll();
  c.hidden = 8192;
  EXPECT_EQ(plan_expert_parallel(c, 4, 132).tma_bytes, 8u * 8192 * 2);
  c.hidden = 12288;
  EXPECT_EQ(plan_expert_parallel(c, 4, 132).tma_bytes, 8u * 12288);
  c.hidden = 16384;  // the GPU test's widths (EpLowLatency.WideRowsWithoutRowBuffers)
  EXPECT_EQ(plan_expert_parallel(c, 4, 132).tma_bytes, 8u * 16384);
  c.hidden = 24576;
  EXPECT_EQ(plan_expert_parallel(c, 4, 132).tma_bytes, 0u);
  c.hidden = 65536;
  EXPECT_EQ(plan_expert_parallel(c, 4, 132).tma_bytes, 0u);
  EXPECT_LE(plan_expert_parallel(c, 4, 132).smem(ep::EpKernel::ll_dispatch).bytes,
            ep::kTpDispatchSmemBytes);
  // Under a GPU's smaller opt-in limit (99 KiB per block on sm_120) the fp8 buffers stay where
  // they fit; a GPU without bulk copies (limit 0) gets none.
  c.hidden = 4096;
  EXPECT_EQ(plan_expert_parallel(c, 4, 132).tma_bytes, 8u * 4096 * 2);
  const EpPlan small = plan_expert_parallel(c, 4, 132, 99 * 1024);
  EXPECT_EQ(small.tma_bytes, 8u * 4096);
  EXPECT_LE(small.smem(ep::EpKernel::ll_dispatch).bytes, 99u * 1024);
  EXPECT_EQ(plan_expert_parallel(c, 4, 132, 0).tma_bytes, 0u);
}

// A token may name one expert in several slots, and each slot is a row: with k > E/W a rank can
// receive k rows of every token of every rank, and the capacity must hold them (it held
// W * T * min(k, E/W) before, which dropped rows here).
TEST(EpPlan, WorstCaseCountsRepeatedIds) {
  EpConfig c = ll();
  c.num_experts = 8;
  c.topk = 2;
  c.hidden = 128;
  const int W = 8;
  const EpPlan p = plan_expert_parallel(c, W, 132);
  EXPECT_EQ(p.worst_case_pairs, int64_t(W) * 128 * 2);
  EXPECT_EQ(p.capacity, p.worst_case_pairs);

  // The reference model agrees: every token of every rank names expert 0 in both slots.
  Problem P;
  P.world = W;
  P.experts = c.num_experts;
  P.topk = c.topk;
  P.hidden = c.hidden;
  RefRouting R;
  for (int r = 0; r < W; ++r) {
    R.T.push_back(c.max_tokens);
    R.topk.emplace_back(static_cast<size_t>(c.max_tokens) * c.topk, 0);
    R.weights.emplace_back(static_cast<size_t>(c.max_tokens) * c.topk, 1.0f);
  }
  EXPECT_EQ(static_cast<int64_t>(ref_dispatch(P, R, 0).pairs.size()), p.capacity);
  c.mode = EpMode::throughput;
  c.max_recv_pairs = int64_t(1) << 40;  // clamped to the worst case
  EXPECT_EQ(plan_expert_parallel(c, W, 132).capacity, p.worst_case_pairs);
}

TEST(EpPlan, ThroughputDefaults) {
  const EpPlan p = plan_expert_parallel(tp(), 4, 132);
  EXPECT_EQ(p.grid, kEpThroughputDefaultSms);
  EXPECT_EQ(p.send_blocks.dispatch, kEpThroughputDefaultSms / 4);
  EXPECT_EQ(p.send_blocks.dispatch_fp8, kEpThroughputDefaultSms / 3);
  EXPECT_EQ(p.send_blocks.combine, kEpThroughputDefaultSms / 2);
  EXPECT_EQ(p.warps_per_group, 1);
  EXPECT_EQ(p.nbuf, 1);
  EXPECT_EQ(p.worst_case_pairs, int64_t(4) * 4096 * 8);
  EXPECT_EQ(p.capacity, int64_t(2) * 4096 * 8);
  EXPECT_EQ(p.max_chunks, 16);
  EXPECT_EQ(p.st_row_stride, size_t(7168) * 2);  // fp8 rows share the bf16 row's bytes here
  EXPECT_EQ(p.st_meta_ints, size_t(4) * 4096 * 28);
  EXPECT_EQ(p.st_count_words, size_t(2) * 4 * (64 + 1));  // no token bitmap
  // Staging: one bf16 row per (source, token) for dispatch and for combine: 2 * 4 * 4096 * 14 KiB.
  EXPECT_GT(p.symmetric_bytes(), size_t(2) * 4 * 4096 * 14336);
  EXPECT_LT(p.symmetric_bytes(), size_t(512) << 20);
  EXPECT_EQ(ep_required_heap_bytes(tp(), 4), p.symmetric_bytes());
  // The heap does not depend on the SMs: num_sms for a GPU with more than 132 of them (a B200's
  // 148) is not rejected while sizing it.
  EpConfig more = tp();
  more.num_sms = 148;
  EXPECT_EQ(ep_required_heap_bytes(more, 4), p.symmetric_bytes());
  // Two ranks: the worst case is the default's bound.
  EXPECT_EQ(plan_expert_parallel(tp(), 2, 132).capacity, int64_t(2) * 4096 * 8);
  // An explicit capacity above the worst case is clamped.
  EpConfig c = tp();
  c.max_recv_pairs = int64_t(1) << 40;
  EXPECT_EQ(plan_expert_parallel(c, 4, 132).capacity, int64_t(4) * 4096 * 8);
  c.num_sms = 40;
  c.send_sms = 30;
  const EpPlan q = plan_expert_parallel(c, 4, 132);
  EXPECT_EQ(q.grid, 40);
  EXPECT_EQ(q.send_blocks.dispatch, 30);
  EXPECT_EQ(q.send_blocks.dispatch_fp8, 30);
  EXPECT_EQ(q.send_blocks.combine, 30);
}

TEST(EpPlan, SharedMemoryFitsAtTheLimits) {
  EpConfig c = ll();
  c.num_experts = kEpMaxExperts;
  c.topk = kEpMaxTopk;
  c.max_tokens = kEpLowLatencyMaxTokens;
  for (int world : {1, 2, 8, 32}) {
    const EpPlan p = plan_expert_parallel(c, world, 132);
    for (auto k : {ep::EpKernel::ll_dispatch, ep::EpKernel::combine})
      EXPECT_LE(p.smem(k).bytes, 227u * 1024) << "world " << world;
  }
  c.mode = EpMode::throughput;
  c.max_tokens = 8192;
  for (int world : {1, 8, 32}) {
    const EpPlan p = plan_expert_parallel(c, world, 132);
    for (auto k : {ep::EpKernel::layout, ep::EpKernel::tp_dispatch, ep::EpKernel::combine})
      EXPECT_LE(p.smem(k).bytes, 227u * 1024) << "world " << world;
  }
}

TEST(EpPlan, RejectsBadConfigurations) {
  EpConfig c = ll();
  c.num_experts = 250;
  expect_rejected(c, 4, "divisible by the world size");
  c = ll();
  c.num_experts = 2048;
  expect_rejected(c, 4, "num_experts must be in [1, 1024]");
  c = ll();
  c.hidden = 7000;
  expect_rejected(c, 4, "multiple of 128");
  c.hidden = 0;
  expect_rejected(c, 4, "multiple of 128");
  c = ll();
  c.topk = 0;
  expect_rejected(c, 4, "topk must be in [1, 32]");
  c.topk = 33;
  expect_rejected(c, 4, "topk must be in [1, 32]");
  c = ll();
  c.max_tokens = 257;
  expect_rejected(c, 4, "low-latency mode takes max_tokens in [1, 256]");
  c.max_tokens = 0;
  expect_rejected(c, 4, "max_tokens");
  c = ll();
  c.num_sms = 200;
  expect_rejected(c, 4, "low-latency num_sms must be in [world size = 4, SMs = 132]");
  c.num_sms = 3;
  expect_rejected(c, 4, "low-latency num_sms");
  c = ll();
  c.send_sms = 4;
  expect_rejected(c, 4, "send_sms applies to throughput mode only");
  c = ll();
  c.max_recv_pairs = 10;
  expect_rejected(c, 4, "max_recv_pairs applies to throughput mode only");
  c = tp();
  c.num_sms = 1;
  expect_rejected(c, 4, "throughput num_sms must be in [2, SMs = 132]");
  c = tp();
  c.num_sms = 8;
  c.send_sms = 8;
  expect_rejected(c, 4, "send_sms must be 0 (per-kernel defaults) or in [1, num_sms - 1 = 7]");
  c = tp();
  c.max_recv_pairs = -1;
  expect_rejected(c, 4, "max_recv_pairs must be >= 0");
  c = tp();
  c.max_tokens = (1 << 20) + 1;
  expect_rejected(c, 4, "max_tokens must be in [1, 2^20]");
  expect_rejected(ll(), 33, "world size 33 is not supported");
  expect_rejected(ll(), 0, "world size 0 is not supported");
}

TEST(EpPlan, DescribesDeviceErrors) {
  const EpPlan p = plan_expert_parallel(tp(), 4, 132);
  ep::EpError e{};
  e.kind = ep::EpError::bad_expert_id;
  e.rank = 2;
  e.token = 17;
  e.slot = 3;
  e.value = 256;
  e.limit = 256;
  e.epoch = 5;
  const std::string bad = describe_ep_error(e, p);
  EXPECT_NE(bad.find("topk_idx[17][3] = 256"), std::string::npos) << bad;
  EXPECT_NE(bad.find("rank 2"), std::string::npos) << bad;
  EXPECT_NE(bad.find("[0, num_experts = 256)"), std::string::npos) << bad;
  e.kind = ep::EpError::capacity_exceeded;
  e.value = 70000;
  e.limit = 65536;
  const std::string cap = describe_ep_error(e, p);
  EXPECT_NE(cap.find("70000"), std::string::npos) << cap;
  EXPECT_NE(cap.find("max_recv_pairs"), std::string::npos) << cap;
  e.kind = ep::EpError::dispatch_abandoned;
  e.slot = 3;
  const std::string dispatch = describe_ep_error(e, p);
  EXPECT_NE(dispatch.find("dispatch 5 on rank 2: rank 3 abandoned it"), std::string::npos)
      << dispatch;
  EXPECT_NE(dispatch.find("void"), std::string::npos) << dispatch;
  e.kind = ep::EpError::combine_abandoned;
  const std::string combine = describe_ep_error(e, p);
  EXPECT_NE(combine.find("combine 5 on rank 2: rank 3 abandoned it"), std::string::npos) << combine;
  EXPECT_NE(combine.find("combine again"), std::string::npos) << combine;
  e.kind = ep::EpError::out_too_small;
  e.value = 32;
  e.limit = 4;
  const std::string short_out = describe_ep_error(e, p);
  EXPECT_NE(short_out.find("combine 5 on rank 2: the dispatch it combined"), std::string::npos)
      << short_out;
  EXPECT_NE(short_out.find("had 32 tokens, but out was sized for the last dispatch() called here, "
                           "4 tokens"),
            std::string::npos)
      << short_out;
}

// ---- number formats -----------------------------------------------------------------------

TEST(EpNumerics, Bf16RoundsToNearestEven) {
  EXPECT_EQ(ep::float_to_bf16_rne(1.0f), 0x3f80);
  EXPECT_EQ(ep::float_to_bf16_rne(ep::bits_to_float(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(ep::float_to_bf16_rne(ep::bits_to_float(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(ep::float_to_bf16_rne(ep::bits_to_float(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_EQ(ep::float_to_bf16_rne(-2.5f), 0xc020);
  EXPECT_EQ(ep::float_to_bf16_rne(0.f), 0x0000);
  EXPECT_TRUE(std::isnan(ep::bf16_to_float(ep::float_to_bf16_rne(NAN))));
  for (uint32_t b = 0; b < 0x7f80; b += 7)  // every finite positive bf16 survives a round trip
    EXPECT_EQ(ep::float_to_bf16_rne(ep::bf16_to_float(static_cast<uint16_t>(b))), b);
}

TEST(EpNumerics, E4m3EncodeDecode) {
  EXPECT_EQ(ep::host_float_to_e4m3(1.0f), 0x38);
  EXPECT_EQ(ep::host_float_to_e4m3(-1.0f), 0xb8);
  EXPECT_EQ(ep::host_float_to_e4m3(448.0f), 0x7e);
  EXPECT_EQ(ep::host_float_to_e4m3(1000.0f), 0x7e);   // saturates
  EXPECT_EQ(ep::host_float_to_e4m3(-1e30f), 0xfe);
  EXPECT_EQ(ep::host_float_to_e4m3(INFINITY), 0x7e);
  EXPECT_EQ(ep::host_float_to_e4m3(1.0625f), 0x38);   // tie between 1.0 and 1.125: even
  EXPECT_EQ(ep::host_float_to_e4m3(1.1875f), 0x3a);   // tie between 1.125 and 1.25: even
  EXPECT_EQ(ep::host_float_to_e4m3(0.001953125f), 0x01);  // 2^-9, smallest subnormal
  EXPECT_EQ(ep::host_float_to_e4m3(0.0009765625f), 0x00);  // 2^-10: tie to even (zero)
  EXPECT_EQ(ep::host_float_to_e4m3(0.0029296875f), 0x02);  // 1.5 * 2^-9: tie to even (2)
  EXPECT_EQ(ep::host_float_to_e4m3(0.015625f), 0x08);  // 2^-6, smallest normal
  EXPECT_EQ(ep::host_float_to_e4m3(0.0f), 0x00);
  EXPECT_EQ(ep::host_float_to_e4m3(NAN), 0xff);  // never 0x7f, the staging's poison
  // Every finite code decodes and re-encodes to itself; the decoded values are increasing.
  float prev = -1.f;
  for (int c = 0; c < 0x7f; ++c) {
    const float v = ep::e4m3_to_float(static_cast<uint8_t>(c));
    EXPECT_EQ(ep::host_float_to_e4m3(v), c) << c;
    EXPECT_EQ(ep::host_float_to_e4m3(-v), c == 0 ? 0x80 : (c | 0x80)) << c;
    EXPECT_GT(v, prev) << c;
    prev = v;
  }
  EXPECT_EQ(ep::e4m3_to_float(0x7e), 448.f);
  EXPECT_TRUE(std::isnan(ep::e4m3_to_float(0x7f)));
}

TEST(EpNumerics, QuantizedRowsStayWithinHalfAStep) {
  Problem P;
  P.seed = 12345;
  P.hidden = 1024;
  for (int token = 0; token < 50; ++token) {
    const std::vector<uint16_t> x = ref_x_row(P, 0, token);
    std::vector<uint8_t> q(P.hidden);
    std::vector<float> scales(P.hidden / 128);
    ep::host_quantize_row(x.data(), P.hidden, q.data(), scales.data());
    for (int g = 0; g < P.hidden / 128; ++g) {
      float amax = 0.f;
      for (int c = 0; c < 128; ++c) amax = std::max(amax, std::fabs(ep::bf16_to_float(x[g * 128 + c])));
      EXPECT_EQ(scales[g], std::max(amax, 1e-4f) / 448.f);
      for (int c = 0; c < 128; ++c) {
        const float v = ep::bf16_to_float(x[g * 128 + c]);
        const float d = ep::e4m3_to_float(q[g * 128 + c]) * scales[g];
        EXPECT_LE(std::fabs(d - v), std::max(std::fabs(v) * 0.0625f, 0.0009765625f * scales[g]) * 1.001f)
            << "token " << token << " channel " << g * 128 + c;
      }
    }
  }
}

// ---- the test generator and the reference model ---------------------------------------------

TEST(EpReference, RoutingPatterns) {
  Problem P;
  P.seed = 7;
  P.world = 4;
  P.experts = 64;
  P.topk = 8;
  P.hidden = 128;
  long long ids[kEpMaxTopk];
  for (int t = 0; t < 200; ++t) {
    P.routing = Routing::random;
    experts_of(P, 1, t, ids);
    std::set<long long> distinct(ids, ids + 8);
    EXPECT_EQ(distinct.size(), 8u);
    for (int s = 0; s < 8; ++s) EXPECT_TRUE(ids[s] >= 0 && ids[s] < 64);
    P.routing = Routing::skip_rank;
    P.param = 2;
    experts_of(P, 3, t, ids);
    distinct = std::set<long long>(ids, ids + 8);
    EXPECT_EQ(distinct.size(), 8u);
    for (int s = 0; s < 8; ++s) EXPECT_TRUE(ids[s] / 16 != 2) << ids[s];
    P.routing = Routing::one_rank;
    P.param = 1;
    experts_of(P, 0, t, ids);
    for (int s = 0; s < 8; ++s) EXPECT_EQ(ids[s] / 16, 1);
    P.routing = Routing::one_expert;
    P.param = 70;
    experts_of(P, 0, t, ids);
    EXPECT_EQ(ids[0], 6);
    for (int s = 1; s < 8; ++s) EXPECT_EQ(ids[s], -1);
  }
  // vary_routing cycles through the patterns by tag.
  P.vary_routing = true;
  for (uint64_t tag = 0; tag < 10; ++tag) {
    P.tag = tag;
    EXPECT_EQ(static_cast<int>(resolved(P).routing), static_cast<int>(tag % 5));
  }
}

// A hand-made example: 2 ranks, 4 experts (rank 0: experts 0, 1; rank 1: experts 2, 3), k = 2.
TEST(EpReference, HandExample) {
  Problem P;
  P.world = 2;
  P.experts = 4;
  P.topk = 2;
  P.hidden = 128;
  RefRouting R;
  R.T = {2, 2};
  R.topk = {{1, 2, 3, -1}, {0, 0, 2, 1}};  // rank 1 token 0 names expert 0 twice
  R.weights = {{0.5f, 0.25f, 1.0f, 0.75f}, {0.125f, 0.375f, 0.625f, 0.875f}};
  const RefDispatch d0 = ref_dispatch(P, R, 0);
  EXPECT_EQ(d0.expert_counts, (std::vector<int>{2, 2}));
  EXPECT_EQ(d0.expert_offsets, (std::vector<int>{0, 2, 4}));
  EXPECT_EQ(d0.source_rows, (std::vector<int>{1, 2}));
  ASSERT_EQ(d0.pairs.size(), 4u);
  // Expert 0: rank 1 token 0 slots 0 and 1; expert 1: rank 0 token 0 slot 0, rank 1 token 1 slot 1.
  const int want0[4][3] = {{1, 0, 0}, {1, 0, 1}, {0, 0, 0}, {1, 1, 1}};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(d0.pairs[i].rank, want0[i][0]) << i;
    EXPECT_EQ(d0.pairs[i].token, want0[i][1]) << i;
    EXPECT_EQ(d0.pairs[i].slot, want0[i][2]) << i;
  }
  EXPECT_EQ(d0.pairs[3].weight, 0.875f);
  const RefDispatch d1 = ref_dispatch(P, R, 1);
  EXPECT_EQ(d1.expert_counts, (std::vector<int>{2, 1}));
  EXPECT_EQ(d1.source_rows, (std::vector<int>{2, 1}));
  // Expert 2: rank 0 token 0 slot 1, rank 1 token 1 slot 0; expert 3: rank 0 token 1 slot 0.
  const int want1[3][3] = {{0, 0, 1}, {1, 1, 0}, {0, 1, 0}};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(d1.pairs[i].rank, want1[i][0]) << i;
    EXPECT_EQ(d1.pairs[i].token, want1[i][1]) << i;
    EXPECT_EQ(d1.pairs[i].slot, want1[i][2]) << i;
  }
  EXPECT_EQ(ref_dest_mask(P, R, 0, 0), 3u);
  EXPECT_EQ(ref_dest_mask(P, R, 0, 1), 2u);
  EXPECT_EQ(ref_dest_mask(P, R, 1, 0), 1u);

  // Combine of rank 0, token 1: only expert 3 (rank 1), weight 1.0 -> bf16(bf16(y)) = y.
  const std::vector<uint16_t> out = ref_combine(P, R, 0);
  for (int c = 0; c < 128; ++c) EXPECT_EQ(out[128 + c], y_bits(P, 3, 0, 1, 0, c)) << c;
  // Token 0: rank 0's partial (expert 1, w 0.5) plus rank 1's (expert 2, w 0.25), each rounded.
  for (int c = 0; c < 128; ++c) {
    const float p0 = ep::bf16_to_float(
        ep::float_to_bf16_rne(0.5f * ep::bf16_to_float(y_bits(P, 1, 0, 0, 0, c))));
    const float p1 = ep::bf16_to_float(
        ep::float_to_bf16_rne(0.25f * ep::bf16_to_float(y_bits(P, 2, 0, 0, 1, c))));
    EXPECT_EQ(out[c], ep::float_to_bf16_rne(p0 + p1)) << c;
  }
}

TEST(EpReference, InvalidIdsCountAsNoExpert) {
  Problem P;
  P.world = 2;
  P.experts = 4;
  P.topk = 2;
  RefRouting R;
  R.T = {1, 0};
  R.topk = {{4, -7}, {}};
  R.weights = {{1.f, 1.f}, {}};
  for (int me = 0; me < 2; ++me) {
    const RefDispatch d = ref_dispatch(P, R, me);
    EXPECT_TRUE(d.pairs.empty());
    EXPECT_EQ(d.source_rows, (std::vector<int>{0, 0}));
  }
  P.hidden = 128;
  const std::vector<uint16_t> out = ref_combine(P, R, 0);
  for (uint16_t v : out) EXPECT_EQ(v, 0);
}

}  // namespace
}  // namespace weft::ops
