// Pieces shared by the three tensor-parallel benchmarks (ag_gemm, gemm_rs, gemm_ar): shape lists,
// timing of eager and graph-captured work as the slowest rank's median, and the printed table.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench/common/cuda_resources.h"
#include "bench/common/options.h"
#include "bench/common/pattern.h"
#include "bench/common/results.h"
#include "bench/common/timing.h"
#include "weft/runtime/error.h"
#include "weft/runtime/world.h"

namespace weft::tp::benchutil {

struct Shape {
  int64_t m = 0, n = 0, k = 0;
};

// "M,N,K;M,N,K" -> shapes; empty text -> `defaults`.
inline std::vector<Shape> parse_shapes(const std::string& text, std::vector<Shape> defaults) {
  if (text.empty()) return defaults;
  std::vector<Shape> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(';', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    Shape s;
    long long m = 0, n = 0, k = 0;
    WEFT_CHECK_ARG(std::sscanf(item.c_str(), "%lld,%lld,%lld", &m, &n, &k) == 3 && m > 0 &&
                       n > 0 && k > 0,
                   "bad shape '{}' in '{}' (want M,N,K with positive integers)", item, text);
    s.m = m;
    s.n = n;
    s.k = k;
    out.push_back(s);
    pos = end + 1;
  }
  return out;
}

// Median over iterations of `body` (enqueues work on `stream`), slowest rank; collective.
template <class Body>
double time_us(World& world, cudaStream_t stream, const bench::OpBenchOptions& opt, Body&& body) {
  bench::TimingOptions t;
  t.warmup = opt.quick ? 2 : opt.warmup;
  t.iters = opt.quick ? 5 : opt.iters;
  const auto samples = bench::time_iterations(world, stream, t, body);
  return bench::slowest_rank_median(world, samples);
}

// The same, with `body` captured once into a CUDA graph and the graph launched per iteration.
template <class Body>
double time_graph_us(World& world, cudaStream_t stream, const bench::OpBenchOptions& opt,
                     Body&& body) {
  bench::GraphExec g = bench::GraphExec::capture(stream, body);
  return time_us(world, stream, opt, [&] { g.launch(stream); });
}

inline std::string us_text(double us) { return fmt::format("{:.1f}", us); }

}  // namespace weft::tp::benchutil
