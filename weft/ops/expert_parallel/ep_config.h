// Public, plain-C++ types of the MoE expert-parallel dispatch/combine operator (no CUDA code, so
// host compilers and the bindings can include it). The operator itself is
// weft::ops::ExpertParallel (expert_parallel.h); the semantics are spelled out in README.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_runtime.h>

namespace weft::ops {

// Low latency (decode): one kernel per call, fixed-size double-buffered buffers, no host
// synchronization, CUDA-graph capturable, every SM. Throughput (prefill): a layout kernel (counts
// and offsets on the device, copied to the host) then a data kernel on `num_sms` SMs that split
// into senders and receivers; single-buffered buffers sized for max_tokens.
enum class EpMode { low_latency, throughput };

// Element types the operator names in its validation messages. The bindings map tensor dtypes
// onto these; C++ callers pass them with the pointers.
enum class EpDType { bf16, f16, f32, fp8_e4m3, i32, i64 };

const char* to_string(EpMode mode);
const char* to_string(EpDType dtype);

// Hard limits (validated with clear errors).
inline constexpr int kEpMaxRanks = 32;        // ranks of one node (a token's destination set is a 32-bit mask)
inline constexpr int kEpMaxTopk = 32;         // experts per token
inline constexpr int kEpMaxExperts = 1024;    // experts in total
inline constexpr int kEpScaleGroup = 128;     // channels per fp8 scale (and the unit of `hidden`)
inline constexpr int kEpLowLatencyMaxTokens = 256;  // most tokens per rank in low-latency mode
inline constexpr int kEpThroughputDefaultSms = 48;  // throughput num_sms default (docs/perf.md)

struct EpConfig {
  EpMode mode = EpMode::low_latency;
  int num_experts = 256;  // E, divisible by the world size; rank r owns [r*E/W, (r+1)*E/W)
  int hidden = 7168;      // H, a multiple of 128
  int topk = 8;           // k: expert ids per token (-1 = no expert)
  int max_tokens = 128;   // most tokens a rank passes to one dispatch (low latency: <= 256)
  // Blocks (one per SM) of the data kernels. 0: low latency = every SM, throughput =
  // kEpThroughputDefaultSms. Validated against the job's smallest GPU (World::min_sm_count), so
  // every rank derives the same plan.
  int num_sms = 0;
  // Throughput mode: how many of the num_sms blocks send (the rest receive). 0 = per kernel:
  // num_sms / 4 for a bf16 dispatch, num_sms / 3 for an fp8 one, num_sms / 2 for combine
  // (EpPlan::send_blocks).
  int send_sms = 0;
  // Throughput mode: rows of the expert-grouped receive buffer (the (token, expert) pairs one rank
  // may receive per call). 0 = min(W * max_tokens * k, 2 * max_tokens * k). Low-latency mode
  // always allocates the worst case, W * max_tokens * k.
  int64_t max_recv_pairs = 0;
};

// Where a received (token, expert) row came from. `weight` is the token's top-k weight for it.
struct EpPairSource {
  int32_t rank;   // the token's home rank
  int32_t token;  // its index on the home rank
  int32_t slot;   // the top-k slot (0..k-1) that named this expert
  float weight;
};
static_assert(sizeof(EpPairSource) == 16);

struct EpDispatchArgs {
  const void* x = nullptr;             // [num_tokens, hidden], contiguous, 16-byte aligned
  EpDType x_dtype = EpDType::bf16;     // must be bf16
  const void* topk_idx = nullptr;      // [num_tokens, topk] expert ids in [-1, E)
  EpDType topk_idx_dtype = EpDType::i32;  // i32 or i64
  const float* topk_weights = nullptr; // [num_tokens, topk]
  EpDType topk_weights_dtype = EpDType::f32;  // must be f32
  int num_tokens = 0;                  // T in [0, max_tokens]; may differ between ranks
  bool fp8 = false;                    // quantize to fp8 e4m3 on the fly (one fp32 scale per 128 channels)
  // Optional hook (low-latency mode only) for consumers that start on experts whose rows have
  // arrived while the dispatch still runs (see EpHook): recorded on the stream after the dispatch
  // published its epoch and before its kernel; fork the consumer's stream from it.
  cudaEvent_t hook_event = nullptr;
  // Copy the receive counts to pinned host memory after the layout step (host_counts()). Always
  // done in throughput mode; off by default in low-latency mode (it adds a copy after the kernel).
  bool copy_counts_to_host = false;
};

// Device-side arrival flags: expert_ready[e] (e local) is set to the dispatch's epoch, with
// release semantics (for readers on this GPU), once every row of expert e is in place (by hooked
// low-latency dispatches, and by throughput dispatches when their data kernel ends). A consumer
// forked from EpDispatchArgs::hook_event reads the epoch at *epoch and waits for
// expert_ready[e] >= it (ep_wait_expert() in ep_hook.cuh does both, with a timeout).
struct EpHook {
  const uint64_t* expert_ready = nullptr;  // [E/W], device
  const uint64_t* epoch = nullptr;         // device; valid from hook_event until the next dispatch
                                           // (only a hooked dispatch publishes it)
};

// What one dispatch returns on this rank. The pointers are the same on every call (fixed buffers
// owned by the operator); the contents stay valid until the next dispatch on this operator.
//
// Rows are the (token, local expert) pairs this rank received, grouped by expert: expert e's rows
// are [expert_offsets[e], expert_offsets[e] + expert_counts[e]), ordered by (source rank, source
// token, top-k slot). A token is sent once to each rank holding >= 1 of its experts and copied
// into one row per (token, expert) pair on arrival. When more rows arrive than the capacity
// (throughput mode, max_recv_pairs), the rows past it are dropped and the layout published stops
// at it (offsets and counts within [0, capacity]); the next call, or check_errors(), throws.
struct EpDispatchResult {
  void* x = nullptr;                        // [capacity, hidden] bf16, or fp8 e4m3 when fp8
  float* scales = nullptr;                  // [capacity, hidden/128] fp32 (fp8 only; else null); x ~= q * scale
  const EpPairSource* sources = nullptr;    // [capacity]
  const int32_t* expert_counts = nullptr;   // [E/W], device
  const int32_t* expert_offsets = nullptr;  // [E/W + 1], device; [E/W] = total rows
  const int32_t* source_rows = nullptr;     // [W], device: tokens received from each rank
  int64_t capacity = 0;
  bool fp8 = false;
  // The dispatch's epoch, or 0 where the host cannot know it: in a captured call, and in every
  // call after one (graph replays advance the device's epoch without the host).
  uint64_t epoch = 0;
  EpHook hook;  // set when the call was given a hook_event (null pointers otherwise)
};

// The receive buffers whole, the same on every call whatever the dispatch's format (for
// bindings that hand them out once, e.g. as the mutated arguments of a torch custom op).
struct EpReceiveBuffers {
  void* rows = nullptr;     // capacity x row_bytes: bf16 rows fill it, fp8 rows are packed hidden
                            // bytes apart from its start
  size_t row_bytes = 0;     // 2 x hidden
  float* scales = nullptr;  // [capacity, hidden/128]
  EpPairSource* sources = nullptr;  // [capacity]
  int32_t* counts_block = nullptr;  // expert counts [E/W], offsets [E/W + 1], source rows [W], ...
  int counts_block_ints = 0;        // (ep::counts_block_ints; the layout is in ep_params.h)
  int64_t capacity = 0;
};

// Receive counts of the last dispatch, on the host (host_counts()).
struct EpHostCounts {
  std::vector<int32_t> expert_counts;   // [E/W]
  std::vector<int32_t> expert_offsets;  // [E/W + 1]
  std::vector<int32_t> source_rows;     // [W]
  int64_t total_rows = 0;               // sum of expert_counts
  // Bit s: rank s abandoned this dispatch (its own arguments failed a check), which is then void
  // on every rank: its counts are incomplete and its combine does nothing. 0 for a valid dispatch.
  uint32_t abandoned_by = 0;
};

struct EpCombineArgs {
  // Expert outputs, one row per dispatched (token, expert) pair at the row the dispatch put it:
  // [capacity (or at least total rows), hidden], contiguous, 16-byte aligned, this GPU.
  const void* expert_out = nullptr;
  EpDType expert_out_dtype = EpDType::bf16;  // must be bf16
  void* out = nullptr;                       // [T of the last dispatch, hidden]
  EpDType out_dtype = EpDType::bf16;         // must be bf16
};

}  // namespace weft::ops
