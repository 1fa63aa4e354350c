// Internal to weft_bench_primitives: the state one run of the primitive benchmarks shares between
// its parts (bandwidth.cu, latency.cu), and how results are reported (table lines and JSON rows).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "bench/common/pattern.h"
#include "bench/common/results.h"
#include "bench/common/timing.h"
#include "bench/primitives/primitive_bench.h"
#include "weft/runtime/world.h"

namespace weft::bench::primitives {

// One line of the final table.
struct TableLine {
  std::string bench;   // e.g. "put r->r+1"
  std::string method;  // e.g. "SM stores (dev::copy, 132x1024)"
  std::string size;    // e.g. "1 GiB"
  double us = NAN;     // slowest rank's median
  double gbps = NAN;   // NaN: not a bandwidth
  std::string note;    // comparison / verification
  bool baseline = false;  // an NCCL / CUDA reference figure
};

// Ids that make every measurement's data seed distinct.
enum TestId : int {
  kPutSmCopy = 1,
  kPutSmVec,
  kPutTma,
  kPutCe,
  kPutNccl,
  kAllSmCopy = 20,
  kAllSmVec,
  kAllTma,
  kAllCe,
  kAllNccl,
  kAllGet,
  kPingNccl = 40,
  kPingCe,
};

struct Suite {
  Suite(World& w, const PrimitiveBenchOptions& o);

  World& world;
  PrimitiveBenchOptions opt;  // after quick-mode limits and rounding
  cudaStream_t stream;        // world.stream()
  std::string device;         // cudaDeviceProp::name
  int sms = 0;                // multiprocessors on this GPU
  uint64_t nonce = 0;         // shared by all ranks
  std::vector<TableLine> table;
  int failures = 0;

  TimingOptions timing() const { return TimingOptions{opt.warmup, opt.iters, true}; }
  // Seed of the data rank `rank` sends in test `test` (equal on every rank).
  uint64_t seed(int test, int rank) const { return mix_seed(nonce, uint64_t(test), uint64_t(rank)); }

  // Collective: true when `local_ok` holds on every rank. When not, each failing rank prints
  // `what` and its `detail` to stderr, rank 0 counts a failure and the table notes it.
  bool all_ok(bool local_ok, const std::string& what, const std::string& detail);

  // A row with world, device, commit, date and "iters"/"quick" filled in; append with emit().
  ResultRow row(const std::string& op, const std::string& dtype) const;
  void emit(const ResultRow& r) const { append_row(world, opt.out_path, r); }

  void add(TableLine line) { table.push_back(std::move(line)); }
  void print_table() const;  // rank 0
};

// "1 GiB", "64 MiB", "4 KiB", "123 B".
std::string human_bytes(size_t bytes);

// Parts of the suite (collective).
void run_put_one_peer(Suite& s);
void run_put_all_peers(Suite& s);
void run_signal_roundtrip(Suite& s);
void run_barrier_latency(Suite& s);
void run_stream_gates(Suite& s);
void run_scatter(Suite& s);
void run_scatter_ll(Suite& s);

}  // namespace weft::bench::primitives
