// Benchmarks of the MoE expert-parallel dispatch and combine (weft::ops::ExpertParallel), each
// beside NCCL moving the same bytes in the same run:
//
//   ep_dispatch: fp8 and bf16 dispatch (low-latency mode for T <= 256 tokens per rank, throughput
//                mode - layout included - above), random routing.
//   ep_combine:  bf16 combine of the rows the dispatch delivered.
//
// Baselines (same process, same GPUs, same routing):
//   nccl_all_to_all_single     ncclAlltoAll of T * topk * hidden * element bytes per rank, split
//                              evenly - DESIGN.md's "NCCL all_to_all_single of the bytes an EP
//                              dispatch moves" (what torch's all_to_all_single does); the row's
//                              ratio = this / weft_us.
//   nccl_all_to_allv_same_rows grouped ncclSend/ncclRecv of exactly the rows weft moves (each token
//                              once per destination rank, scales included for fp8).
//
// Shapes: OpBenchOptions::shapes as "T,H,topk[,E];..." (default "128,7168,8,256;4096,7168,8,256").
// Every timed result is verified afterwards on the device (exact bookkeeping, exact bf16 rows, fp8
// rows equal to the reference quantization, exact combine output); a failed check is printed as
// FAILED, not written, and makes the function return 1. Rows go to opt.out_path (rank 0 appends).
// Without --quick, throughput shapes also sweep the SM count (extra field "sms_sweep_us").
//
// Collective: every rank calls with the same options; all ranks on one node.
#pragma once

#include <cstddef>

#include "bench/common/options.h"
#include "weft/runtime/world.h"

namespace weft::bench {

int run_ep_dispatch_bench(World& world, const OpBenchOptions& opt);
int run_ep_combine_bench(World& world, const OpBenchOptions& opt);

// Symmetric heap bytes per rank opt.shapes (or the default shapes) need (create the World with at
// least this).
size_t ep_bench_heap_bytes(int world_size, const OpBenchOptions& opt);

}  // namespace weft::bench
