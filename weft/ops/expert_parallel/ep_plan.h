// Host-only planning for the expert-parallel operator: validates a configuration for a world size
// (weft::InvalidArgument with a message that names the field, the value and the rule) and derives
// every size the operator allocates and launches with. No CUDA calls: CPU tests cover it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "weft/ops/expert_parallel/ep_config.h"
#include "weft/ops/expert_parallel/ep_params.h"

namespace weft::ops {

struct EpPlan {
  EpConfig config;  // as given, with defaults resolved (num_sms, max_recv_pairs; send_sms stays
                    // 0 = per-kernel defaults, see send_blocks)
  int world = 0;
  int experts_local = 0;  // E / W
  int grid = 0;           // blocks of the data kernels (low latency: also of the combine)
  // Throughput mode: data-kernel blocks that send (the rest receive), per kernel: config.send_sms
  // when given, else a fraction of num_sms measured best for that kernel. 0 in low-latency mode.
  struct SendBlocks {
    int dispatch = 0;      // bf16 dispatch
    int dispatch_fp8 = 0;  // fp8 dispatch: its senders also quantize, so more of them pay
    int combine = 0;
    int for_dispatch(bool fp8) const { return fp8 ? dispatch_fp8 : dispatch; }
  } send_blocks;
  int warps_per_group = 0;  // dispatch: warps that move one row (LL 4, throughput 1)
  int combine_warps_per_group = 0;  // combine: warps that sum and send one row (LL 8, throughput 1)
  int nbuf = 0;           // staging halves: 2 (low latency, by epoch parity) or 1 (throughput)
  int64_t capacity = 0;   // rows of the expert-grouped output
  int64_t worst_case_pairs = 0;  // W * max_tokens * k (a slot is a row, duplicates too)
  int max_chunks = 0;     // throughput layout: ceil(max_tokens / 256)
  int units = 0;          // H / 16
  int scale_groups = 0;   // H / 128
  uint64_t row_stride = 0;     // bytes of a bf16 row (2 * hidden): output rows
  uint64_t st_row_stride = 0;  // bytes between staged rows (ep::staged_row)
  uint32_t tma_bytes = 0;      // throughput data kernel: shared memory of the warps' TMA slots;
                               // low latency: the receiving groups' row buffers (0 = none)

  // Symmetric allocations (bytes / elements), in allocation order.
  size_t st_rows_bytes = 0, st_scales_floats = 0, st_meta_ints = 0, st_count_words = 0;
  size_t cb_rows_bytes = 0;
  size_t signal_count = 0;  // st_flags + cb_flags + cb_hello
  // Local allocations.
  size_t recv_x_bytes = 0, recv_scales_floats = 0, handle_ints_total = 0;

  // Symmetric heap bytes the operator takes (allocation alignment included).
  size_t symmetric_bytes() const;
  // Device memory outside the heap (receive buffers, bookkeeping, layout scratch).
  size_t local_bytes() const;

  // Dynamic shared memory of each kernel.
  ep::EpSmemLayout smem(ep::EpKernel kernel) const;
};

// Validates `config` for `world_size` ranks on GPUs with `sm_count` SMs and resolves defaults.
// Throws weft::InvalidArgument naming the offending field. `ll_smem_limit`: the shared memory a
// low-latency dispatch block may take for its row buffers and tables (the GPU's opt-in limit per
// block; 0 where the GPU has no bulk copies, below sm_90): the plan sizes the row buffers (bf16,
// fp8 or none) to fit under it and under kTpDispatchSmemBytes.
EpPlan plan_expert_parallel(const EpConfig& config, int world_size, int sm_count,
                            uint32_t ll_smem_limit = ep::kTpDispatchSmemBytes);

// Symmetric heap bytes (per rank) an ExpertParallel with this configuration needs, for sizing
// WorldOptions::heap_bytes / WEFT_HEAP_BYTES before the World is created. (They do not depend on
// the GPU's SMs; sm_count only stands in for them where num_sms is 0.)
size_t ep_required_heap_bytes(const EpConfig& config, int world_size, int sm_count = 132);

// The text of a device-side error report (what ExpertParallel::check_errors throws).
std::string describe_ep_error(const ep::EpError& e, const EpPlan& plan);

}  // namespace weft::ops
