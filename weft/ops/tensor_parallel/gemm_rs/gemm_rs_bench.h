// `weft bench gemm-rs`: GEMM-RS (bf16) beside cuBLAS then NCCL reduce-scatter ("nccl_then_cublas",
// the name every operator's row uses for "the NCCL collective and cuBLAS, one after the other"),
// cuBLAS alone and NCCL reduce-scatter alone, from the same run, on every rank of `world`.
//
// Shapes (M, N, K = all ranks' input features; each rank holds K/W): 8192^3 and LLaMA-70B's
// M in {1024, 4096, 8192}, N = 8192, K = 28672; OpBenchOptions::shapes overrides ("M,N,K;...").
// Rows, checks, table and return value as run_ag_gemm_bench (ag_gemm_bench.h).
#pragma once

#include <cstddef>

#include "bench/common/options.h"
#include "weft/runtime/world.h"

namespace weft::bench {

int run_gemm_rs_bench(World& world, const OpBenchOptions& opt);

// Symmetric-heap bytes per rank for the largest shape (the default 1 GiB covers the defaults).
size_t gemm_rs_bench_heap_bytes(int world_size, const OpBenchOptions& opt);

}  // namespace weft::bench
