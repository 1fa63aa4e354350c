// Benchmarks of weft's communication primitives against the NCCL / CUDA figure for the same thing,
// measured in the same run on the same GPUs:
//
//   a. put bandwidth, every rank r -> rank (r+1) % W at once: SM stores (dev::copy), TMA
//      (dev::putmem_tma_nbi), copy engine (weft::copy_to_peer) vs NCCL send/recv in a ring;
//   b. all-peer aggregate, every rank -> every other rank at once: SM stores, TMA, copy engines
//      (one stream per peer), and pulls (SM loads, TMA gets: every rank reads from every other
//      rank) vs NCCL all-gather of the same bytes (algorithm and bus bandwidth);
//   c. signal round trip between rank pairs (0<->1, 2<->3, ...): dev::notify + dev::wait ping-pong
//      inside one kernel, copy-engine ping-pong (copy + stream signals) vs NCCL 8-byte send/recv;
//   d. device barrier: barrier_all in a kernel loop, World::barrier launched per call and inside a
//      CUDA graph vs ncclAllReduce of one float (eager and graph-captured);
//   e. an open stream gate between two kernels: stream_wait_signal on a set signal vs
//      cudaStreamWaitEvent on a completed event, extra time per gate (no data to check);
//   f. row scatter: the MoE dispatch's send pattern alone (rows bulk-stored to a subset of peers),
//      in variants of row size, destinations per row, completion depth, loads and SMs;
//   g. the low-latency dispatch's sends alone (128 rows, a group of warps each, SM stores), with
//      and without its scales and metadata words.
//
// Every benchmark fills its source with fresh random data and checks every received byte (or the
// final signal values) after the timed loop — but the row scatters' variants that send computed
// bytes (quantized, read as bf16, or packed with metadata by TMA), whose rows are reported as not
// checked; a result that fails its check is reported as FAILED and not written. Times are medians
// over iterations on each rank, and the slowest rank's is reported.
//
//   weft::WorldOptions wo = weft::world_options_from_env();
//   wo.heap_bytes = std::max(wo.heap_bytes, weft::bench::primitive_bench_heap_bytes(W, bytes));
//   auto world = weft::World::create(wo);
//   return weft::bench::run_primitive_benchmarks(
//       *world, {.out_path = "bench/results/primitives.jsonl", .commit = "abc1234"});
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "weft/runtime/world.h"

namespace weft::bench {

struct PrimitiveBenchOptions {
  std::string out_path;  // JSON-lines file that rank 0 appends rows to; empty = don't write
  std::string commit;    // recorded in every row ("unknown" when empty)
  size_t bytes = size_t(1) << 30;  // bytes per peer for the bandwidth benchmarks (rounded down to
                                   // a multiple of 4 KiB)
  int iters = 20;   // timed iterations per measurement
  int warmup = 3;   // untimed iterations first
  bool quick = false;  // smoke run: at most 64 MiB, 5 iterations, fewer ping-pongs, no variants
  // Parts to run, by name (kPrimitiveParts); empty = all.
  std::vector<std::string> parts;
};

// The parts of the suite, in the order they run: put-one (a), put-all (b), signal (c), barrier
// (d), gates (e), scatter (f: the MoE dispatch's send pattern, see scatter.cu), scatter-ll (g:
// the low-latency dispatch's).
inline constexpr const char* kPrimitiveParts[] = {"put-one", "put-all", "signal",    "barrier",
                                                  "gates",   "scatter", "scatter-ll"};

// Collective: every rank of `world` calls it with the same options. All ranks must be on one node
// (load/store-accessible peers) and the world needs at least 2 ranks (with 1 it prints why and
// returns 0). Prints a table on rank 0 at the end and appends one JSON row per (benchmark, weft
// method) to opt.out_path. Returns 0 when every result verified, 1 otherwise; CUDA/NCCL failures
// throw weft::Error.
//
// Symmetric-heap use: the all-peer benchmark receives `bytes` from each of W-1 peers and keeps a
// symmetric source for its pulls, so it wants W * bytes of heap; when the heap is smaller it runs
// with fewer bytes per peer (printed and recorded in the row's shape). primitive_bench_heap_bytes()
// says what to ask for.
int run_primitive_benchmarks(World& world, const PrimitiveBenchOptions& opt);

// Symmetric-heap bytes per rank that run_primitive_benchmarks needs to run every benchmark at full
// size (a multiple of 4 KiB, NCCL's window alignment).
size_t primitive_bench_heap_bytes(int world_size, size_t bytes = size_t(1) << 30);

}  // namespace weft::bench
