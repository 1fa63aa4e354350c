// `weft bench gemm-ar`: GEMM-AR for decode (bf16) beside cuBLAS then NCCL all-reduce
// ("nccl_then_cublas"), cuBLAS alone and NCCL all-reduce alone, from the same run, on every rank.
//
// Shapes (M, N, K = all ranks' input features; each rank holds K/W): M in {16, 64, 256},
// N = K = 8192; OpBenchOptions::shapes overrides ("M,N,K;..."). Decode latencies are small, so
// the row also carries the CUDA-graph timings (extra "graph_us"), where launch overhead is gone.
// Rows, checks, table and return value as run_ag_gemm_bench (ag_gemm_bench.h).
#pragma once

#include <cstddef>

#include "bench/common/options.h"
#include "weft/runtime/world.h"

namespace weft::bench {

int run_gemm_ar_bench(World& world, const OpBenchOptions& opt);

// Symmetric-heap bytes per rank for the largest shape.
size_t gemm_ar_bench_heap_bytes(int world_size, const OpBenchOptions& opt);

}  // namespace weft::bench
