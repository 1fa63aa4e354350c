// `weft bench ag-gemm`: AG-GEMM (bf16) beside NCCL all-gather then cuBLAS, cuBLAS alone and the
// NCCL all-gather alone, from the same run, on every rank of `world` (one node).
//
// Shapes (M = gathered rows, N = all ranks' output columns, K): 8192^3 and LLaMA-70B's
// M in {1024, 4096, 8192}, N = 28672, K = 8192; OpBenchOptions::shapes overrides ("M,N,K;...").
// Every rank computes [M, N/W]. For each shape: the planner's choice (weft_us) and the baselines
// timed head to head in interleaved rounds (benchutil::time_head_to_head; the one-at-a-time
// figures in extra "sequential_us"), every strategy forced (extra "strategies"), the same under
// CUDA graphs (extra "graph_us"), and a check of every strategy's output against an fp32 cuBLAS
// reference. One JSON row per shape (rank 0 appends to opt.out_path); a table on rank 0.
// Returns 0 when every check passed, 1 otherwise.
#pragma once

#include <cstddef>

#include "bench/common/options.h"
#include "weft/runtime/world.h"

namespace weft::bench {

int run_ag_gemm_bench(World& world, const OpBenchOptions& opt);

// Symmetric-heap bytes per rank the benchmark needs for its largest shape (size the World's heap
// with at least this; the default 1 GiB is enough for the default shapes).
size_t ag_gemm_bench_heap_bytes(int world_size, const OpBenchOptions& opt);

}  // namespace weft::bench
