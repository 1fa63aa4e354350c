#include "weft/ops/expert_parallel/ep_plan.h"

#include <algorithm>
#include <climits>

#include <fmt/format.h>

#include "weft/runtime/error.h"

namespace weft::ops {

const char* to_string(EpMode mode) {
  switch (mode) {
    case EpMode::low_latency: return "low_latency";
    case EpMode::throughput: return "throughput";
  }
  return "?";
}

const char* to_string(EpDType dtype) {
  switch (dtype) {
    case EpDType::bf16: return "bf16";
    case EpDType::f16: return "f16";
    case EpDType::f32: return "f32";
    case EpDType::fp8_e4m3: return "fp8_e4m3";
    case EpDType::i32: return "i32";
    case EpDType::i64: return "i64";
  }
  return "?";
}

namespace {

constexpr const char* kWhere = "ExpertParallel";

#define EP_CHECK(cond, ...) WEFT_CHECK_ARG_AT(kWhere, cond, __VA_ARGS__)

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace

EpPlan plan_expert_parallel(const EpConfig& config, int world_size, int sm_count,
                            uint32_t ll_smem_limit) {
  EpPlan p;
  p.config = config;
  EpConfig& c = p.config;
  const bool ll = c.mode == EpMode::low_latency;
  EP_CHECK(c.mode == EpMode::low_latency || c.mode == EpMode::throughput,
           "mode must be low_latency or throughput, got {}", static_cast<int>(c.mode));
  EP_CHECK(world_size >= 1 && world_size <= kEpMaxRanks,
           "world size {} is not supported: expert parallelism reaches peers by load/store, so "
           "1 to {} ranks of one node",
           world_size, kEpMaxRanks);
  EP_CHECK(sm_count >= 1, "the GPU reports {} SMs", sm_count);
  EP_CHECK(c.num_experts >= 1 && c.num_experts <= kEpMaxExperts,
           "num_experts must be in [1, {}], got {}", kEpMaxExperts, c.num_experts);
  EP_CHECK(c.num_experts % world_size == 0,
           "num_experts ({}) must be divisible by the world size ({}): every rank holds E/W "
           "experts",
           c.num_experts, world_size);
  EP_CHECK(c.hidden >= kEpScaleGroup && c.hidden % kEpScaleGroup == 0 && c.hidden <= 65536,
           "hidden must be a multiple of {} in [{}, 65536] (fp8 scales cover 128 channels), got "
           "{}",
           kEpScaleGroup, kEpScaleGroup, c.hidden);
  EP_CHECK(c.topk >= 1 && c.topk <= kEpMaxTopk, "topk must be in [1, {}], got {}", kEpMaxTopk,
           c.topk);
  if (ll)
    EP_CHECK(c.max_tokens >= 1 && c.max_tokens <= kEpLowLatencyMaxTokens,
             "low-latency mode takes max_tokens in [1, {}] per rank, got {} (use throughput mode "
             "for more)",
             kEpLowLatencyMaxTokens, c.max_tokens);
  else
    EP_CHECK(c.max_tokens >= 1 && c.max_tokens <= ep::kEpMaxTokensPerRank,
             "max_tokens must be in [1, 2^20], got {}", c.max_tokens);

  p.world = world_size;
  p.experts_local = c.num_experts / world_size;
  p.units = c.hidden / 16;
  p.scale_groups = c.hidden / kEpScaleGroup;
  p.row_stride = static_cast<uint64_t>(c.hidden) * 2;
  // A token may name one expert in several slots, and each slot is a row of its own, so a rank
  // can receive k rows of every token of every rank (also where k > E/W).
  p.worst_case_pairs = static_cast<int64_t>(world_size) * c.max_tokens * c.topk;
  p.max_chunks = (c.max_tokens + ep::kScanChunk - 1) / ep::kScanChunk;

  if (ll) {
    EP_CHECK(c.send_sms == 0,
             "send_sms applies to throughput mode only (low-latency blocks send, then receive); "
             "got {}",
             c.send_sms);
    EP_CHECK(c.max_recv_pairs == 0,
             "max_recv_pairs applies to throughput mode only (low-latency mode allocates the "
             "worst case, {} rows); got {}",
             p.worst_case_pairs, c.max_recv_pairs);
    if (c.num_sms == 0) c.num_sms = sm_count;
    EP_CHECK(c.num_sms >= world_size && c.num_sms <= sm_count,
             "low-latency num_sms must be in [world size = {}, SMs = {}], got {}", world_size,
             sm_count, c.num_sms);
    p.grid = c.num_sms;
    // Dispatch: four rows in flight per block (one row per group on 132 SMs at T = 128 and
    // W = 4); combine: two, each summing a partial with twice the threads (4x H200: dispatch
    // fp8 33.4 -> 30.0 us going from 8 to 4 warps, combine 30.5 -> 32.7 us; docs/perf.md).
    p.warps_per_group = 4;
    p.combine_warps_per_group = 8;
    p.nbuf = 2;
    p.capacity = p.worst_case_pairs;
    // Rows are received through shared memory by TMA (one bulk load, one bulk store per expert)
    // where a row buffer per group fits beside the scan's tables (bf16 rows; else fp8 rows only;
    // else none: rows through registers).
    const int groups = ep::ll_dispatch_groups(p.warps_per_group);
    const uint32_t base =
        ep::ep_smem_layout(ep::EpKernel::ll_dispatch, c.num_experts, world_size, c.topk, groups)
            .bytes;
    const uint32_t rx = static_cast<uint32_t>(groups) * static_cast<uint32_t>(c.hidden);
    const uint32_t room = std::min(ll_smem_limit, ep::kTpDispatchSmemBytes);
    p.tma_bytes = base + 2 * rx <= room ? 2 * rx : base + rx <= room ? rx : 0;
  } else {
    if (c.num_sms == 0) c.num_sms = std::min(kEpThroughputDefaultSms, sm_count);
    EP_CHECK(c.num_sms >= 2 && c.num_sms <= sm_count,
             "throughput num_sms must be in [2, SMs = {}] (at least one sender and one receiver), "
             "got {}",
             sm_count, c.num_sms);
    EP_CHECK(c.send_sms == 0 || (c.send_sms >= 1 && c.send_sms < c.num_sms),
             "send_sms must be 0 (per-kernel defaults) or in [1, num_sms - 1 = {}], got {}",
             c.num_sms - 1, c.send_sms);
    // Who limits (4x H200, WEFT_EP_TRACE, docs/perf.md): dispatch receivers (each row is copied
    // once per local expert of its token: ~45 KB of HBM traffic per 14 KB bf16 row), combine
    // senders (the weighted sum of ~2.2 rows per row).
    auto split = [&](int num, int den) {
      return c.send_sms != 0 ? c.send_sms : std::clamp(c.num_sms * num / den, 1, c.num_sms - 1);
    };
    // After the TMA buffers moved to 128 bytes (twentieth pass, 48 SMs on 4x H200): bf16 12
    // senders 507 us, 16: 524; fp8 12: 310, 16: 295, 24: 324 (its senders quantize: more of them).
    p.send_blocks.dispatch = split(1, 4);
    p.send_blocks.dispatch_fp8 = split(1, 3);
    p.send_blocks.combine = split(1, 2);
    EP_CHECK(c.max_recv_pairs >= 0, "max_recv_pairs must be >= 0 (0 = default), got {}",
             c.max_recv_pairs);
    if (c.max_recv_pairs == 0)
      c.max_recv_pairs =
          std::min<int64_t>(p.worst_case_pairs, 2 * static_cast<int64_t>(c.max_tokens) * c.topk);
    p.grid = c.num_sms;
    p.warps_per_group = 1;
    p.combine_warps_per_group = 1;
    p.nbuf = 1;
    p.capacity = std::min<int64_t>(c.max_recv_pairs, p.worst_case_pairs);
    // The data kernel's warps move rows by TMA through shared-memory slots: what the block's
    // shared memory leaves after the layout must hold at least one sender slot (fp8: bf16 row,
    // fp8 row, metadata).
    const uint32_t base =
        ep::ep_smem_layout(ep::EpKernel::tp_dispatch, c.num_experts, world_size, c.topk,
                           ep::kWarps)
            .bytes;
    p.tma_bytes = ep::kTpDispatchSmemBytes > base ? ep::kTpDispatchSmemBytes - base : 0;
    EP_CHECK(p.tma_bytes >= ep::tma_send_slot_bytes(c.hidden, c.topk, true),
             "throughput mode stages a token's row in shared memory ({} bytes with fp8 at hidden "
             "= {}), but only {} bytes are left; lower hidden",
             ep::tma_send_slot_bytes(c.hidden, c.topk, true), c.hidden, p.tma_bytes);
  }
  EP_CHECK(p.capacity <= INT_MAX, "the receive capacity ({} rows) must fit in int32",
           p.capacity);

  const size_t W = static_cast<size_t>(world_size);
  const size_t slots = static_cast<size_t>(p.nbuf) * W * c.max_tokens;
  // Low latency stages an fp8 row apart from the bf16 one (ep::staged_row).
  p.st_row_stride = p.row_stride + (c.mode == EpMode::low_latency ? c.hidden : 0);
  p.st_rows_bytes = slots * p.st_row_stride;
  p.st_scales_floats = slots * p.scale_groups;
  // Low latency: one tagged 8-byte word per metadata int (ll_meta_words).
  p.st_meta_ints = slots * ep::meta_ints(c.topk) * (c.mode == EpMode::low_latency ? 2 : 1);
  p.st_count_words =
      2 * W *
      ep::count_words(p.experts_local, c.mode == EpMode::low_latency ? ep::kLlTokenBitmapWords : 0);
  p.cb_rows_bytes = slots * static_cast<size_t>(c.hidden) * 2;
  p.signal_count = slots /*st_flags*/ + slots /*cb_flags*/ + W /*hello*/;
  p.recv_x_bytes = static_cast<size_t>(p.capacity) * p.row_stride;
  p.recv_scales_floats = static_cast<size_t>(p.capacity) * p.scale_groups;
  p.handle_ints_total = W * c.max_tokens * ep::handle_ints(c.topk);
  return p;
}

size_t EpPlan::symmetric_bytes() const {
  // Each allocation is rounded up to the heap's 256-byte granularity; keep a 64 KiB margin for
  // alignment padding between them.
  const size_t a = 256;
  return round_up(st_rows_bytes, a) + round_up(st_scales_floats * 4, a) +
         round_up(st_meta_ints * 4, a) + round_up(st_count_words * 8, a) +
         round_up(cb_rows_bytes, a) + round_up(signal_count * 8, a) + (size_t(64) << 10);
}

size_t EpPlan::local_bytes() const {
  const size_t el = static_cast<size_t>(experts_local);
  size_t b = recv_x_bytes + recv_scales_floats * 4 + static_cast<size_t>(capacity) * 16 +
             handle_ints_total * 4 + static_cast<size_t>(config.max_tokens) * 4 +
             el * 12 + ep::counts_block_ints(experts_local, world) * 4 + sizeof(ep::EpState);
  if (config.mode == EpMode::throughput) {
    const size_t cols = static_cast<size_t>(config.num_experts + world);
    b += static_cast<size_t>(config.max_tokens) * (world + config.topk) * 4 +
         2 * static_cast<size_t>(max_chunks) * cols * 4 + static_cast<size_t>(world) * el * 4;
  }
  return b;
}

ep::EpSmemLayout EpPlan::smem(ep::EpKernel kernel) const {
  int groups = 0;
  switch (kernel) {
    case ep::EpKernel::ll_dispatch: groups = ep::ll_dispatch_groups(warps_per_group); break;
    case ep::EpKernel::layout: groups = 0; break;
    case ep::EpKernel::tp_dispatch: groups = ep::kWarps / warps_per_group; break;
    case ep::EpKernel::combine: groups = ep::kWarps / combine_warps_per_group; break;
  }
  return ep::ep_smem_layout(
      kernel, config.num_experts, world, config.topk, groups,
      kernel == ep::EpKernel::tp_dispatch || kernel == ep::EpKernel::ll_dispatch ? tma_bytes : 0);
}

size_t ep_required_heap_bytes(const EpConfig& config, int world_size, int sm_count) {
  // The symmetric sizes do not depend on the SMs: plan with at least as many as num_sms asks
  // for, so that a GPU with more than sm_count SMs is not rejected here (the operator checks
  // num_sms against the GPU it runs on).
  return plan_expert_parallel(config, world_size, std::max(sm_count, config.num_sms))
      .symmetric_bytes();
}

std::string describe_ep_error(const ep::EpError& e, const EpPlan& plan) {
  switch (e.kind) {
    case ep::EpError::bad_expert_id:
      return fmt::format(
          "dispatch {} on rank {}: topk_idx[{}][{}] = {} is not an expert id; ids must be in "
          "[0, num_experts = {}) or -1 for no expert. The entry was treated as -1 (that pair was "
          "not dispatched)",
          e.epoch, e.rank, e.token, e.slot, e.value, e.limit);
    case ep::EpError::capacity_exceeded:
      return fmt::format(
          "dispatch {} on rank {}: this rank received {} (token, expert) rows, more than the "
          "receive capacity of {} rows; rows past the capacity were dropped. Raise "
          "EpConfig::max_recv_pairs (at most {} rows can arrive: W * max_tokens * k)",
          e.epoch, e.rank, e.value, e.limit, plan.worst_case_pairs);
    case ep::EpError::fp8_mismatch:
      return fmt::format(
          "dispatch {} on rank {}: rank {} called it with fp8 = {}, this rank with fp8 = {}; every "
          "rank must pass the same EpDispatchArgs::fp8 to a dispatch. No rows were exchanged "
          "between ranks that disagree, so this dispatch's and its combine's results are wrong, "
          "and the staging of the fp8 rows may hold stale bytes: destroy this operator and "
          "create a new one",
          e.epoch, e.rank, e.slot, e.value != 0, e.limit != 0);
    case ep::EpError::dispatch_abandoned:
      return fmt::format(
          "dispatch {} on rank {}: rank {} abandoned it (its dispatch() arguments failed a check "
          "there, and it took part with no tokens so that this rank would not wait for it). The "
          "dispatch is void: its results are incomplete, and its combine() does nothing on any "
          "rank. Dispatch again",
          e.epoch, e.rank, e.slot);
    case ep::EpError::combine_abandoned:
      return fmt::format(
          "combine {} on rank {}: rank {} abandoned it (its combine() arguments failed a check "
          "there): it sent no partial sums, so out is wrong for every token dispatched to it. The "
          "dispatch stays valid: combine again",
          e.epoch, e.rank, e.slot);
    case ep::EpError::out_too_small:
      return fmt::format(
          "combine {} on rank {}: the dispatch it combined (the last to run on the device: a CUDA "
          "graph's replay) had {} tokens, but out was sized for the last dispatch() called here, "
          "{} tokens; the rows past out's were not written. Keep each rank's T the same across a "
          "graph's replays and the eager dispatches around them",
          e.epoch, e.rank, e.value, e.limit);
    default:
      return fmt::format("unknown device error kind {} on rank {}", e.kind, e.rank);
  }
}

}  // namespace weft::ops
