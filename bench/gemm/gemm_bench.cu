// weft_gemm_bench: weft's GEMM beside cuBLASLt in the same process (bf16 in, bf16 out, fp32
// accumulate), CUDA-event timing, median over iterations, inputs rotated to defeat L2.
//
//   weft_gemm_bench [--out FILE] [--commit SHA] [--check] [--iters N] [--warmup N]
//                   [--shapes M,N,K[;M,N,K...]] [--config CFG] [--sweep] [--cublas-algos N]
//                   [--grouped] [--no-dense] [--variants CFG[;CFG...]] [--no-hooks]
//
// --out appends one JSON line per shape (DESIGN.md's benchmark row format); --check validates
// each shape against cuBLASLt before timing; --sweep also times every shipped kernel config and
// a few raster groups per shape (to tune the heuristic); --config forces weft's config;
// --cublas-algos N times cuBLASLt's top-N heuristic algorithms and keeps the fastest;
// --grouped adds the MoE grouped-GEMM shapes; --no-dense skips the dense shapes; --profile wraps
// one weft and one cuBLASLt launch per dense shape in cudaProfilerStart/Stop (for
// `ncu --profile-from-start off`); --variants times the given configs per dense shape, all
// interleaved with one cuBLASLt launcher (ratios against the same cuBLASLt samples);
// --no-hooks skips the hook-cost timing.
//
// Timing: weft and cuBLASLt launches are interleaved one by one (each launch between its own
// pair of events), so clock and power drift during the run hits both equally; the ratio of the
// two medians is what the row reports. (Timing them one after the other, as before, moved the
// ratio of identical runs by up to 10% on an H100 that throttles under GEMM load.)
#include <cuda_profiler_api.h>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/gemm/gemm_bench.h"
#include "tests/gemm/gemm_testing.cuh"
#include "weft/gemm/gemm.h"

using namespace weft::gemm;
using namespace weft::gemm::testing;

namespace {

struct Options {
  std::string out;
  std::string commit = "unknown";
  bool check = false;
  bool sweep = false;
  int iters = 100;
  int warmup = 20;
  int cublas_algos = 1;
  bool grouped = false;
  bool dense = true;
  bool profile = false;
  bool hooks = true;
  std::string config;
  std::vector<std::string> variants;
  std::vector<std::array<int64_t, 3>> shapes;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "error: %s\nusage: weft_gemm_bench [--out FILE] [--commit SHA] [--check] "
               "[--iters N] [--warmup N] [--shapes M,N,K;...] [--config CFG] [--sweep] "
               "[--cublas-algos N]\n",
               msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--out") o.out = val();
    else if (a == "--commit") o.commit = val();
    else if (a == "--check") o.check = true;
    else if (a == "--sweep") o.sweep = true;
    else if (a == "--iters") o.iters = std::stoi(val());
    else if (a == "--warmup") o.warmup = std::stoi(val());
    else if (a == "--cublas-algos") o.cublas_algos = std::stoi(val());
    else if (a == "--config") o.config = val();
    else if (a == "--grouped") o.grouped = true;
    else if (a == "--no-dense") o.dense = false;
    else if (a == "--profile") o.profile = true;
    else if (a == "--no-hooks") o.hooks = false;
    else if (a == "--variants") {
      std::string v = val();
      size_t pos = 0;
      while (pos < v.size()) {
        size_t end = v.find(';', pos);
        if (end == std::string::npos) end = v.size();
        if (end > pos) o.variants.push_back(v.substr(pos, end - pos));
        pos = end + 1;
      }
    }
    else if (a == "--shapes") {
      std::string s = val();
      size_t pos = 0;
      while (pos < s.size()) {
        size_t end = s.find(';', pos);
        if (end == std::string::npos) end = s.size();
        long long m, n, k;
        if (std::sscanf(s.substr(pos, end - pos).c_str(), "%lld,%lld,%lld", &m, &n, &k) != 3)
          usage("bad --shapes entry (want M,N,K)");
        o.shapes.push_back({m, n, k});
        pos = end + 1;
      }
    } else if (a == "-h" || a == "--help") {
      usage("help");
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  if (o.iters < 50) usage("--iters must be >= 50");
  if (o.shapes.empty() && o.dense) {
    o.shapes = {{8192, 8192, 8192}, {4096, 8192, 8192}};
    for (int64_t m : {1024, 4096, 8192}) o.shapes.push_back({m, 7168, 8192});
    for (int64_t m : {1024, 4096, 8192}) o.shapes.push_back({m, 8192, 7168});
    for (int64_t m : {128, 256, 512}) o.shapes.push_back({m, 8192, 8192});
  }
  return o;
}

// One set of operands; several sets are rotated so each launch reads inputs that are not in L2.
struct OperandSet {
  DeviceBuffer a, b, c_weft, c_lt;
};

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (double(v[n / 2 - 1]) + double(v[n / 2]));
}

// Times several launchers interleaved: iteration i launches launcher 0, 1, ... each between
// its own pair of events (i picks the operand set). Returns each launcher's median in
// microseconds.
using Launch = std::function<void(int)>;
std::vector<double> time_interleaved(const std::vector<Launch>& launches, int warmup, int iters,
                                     cudaStream_t s) {
  const size_t nl = launches.size();
  for (int i = 0; i < warmup; ++i)
    for (const auto& l : launches) l(i);
  std::vector<cudaEvent_t> ev(2 * nl * size_t(iters));
  for (auto& e : ev) WT_CUDA(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    for (size_t j = 0; j < nl; ++j) {
      // Alternate which launcher goes first, so neither always follows the other.
      const size_t jj = (i % 2) ? nl - 1 - j : j;
      const size_t e = 2 * (size_t(i) * nl + jj);
      WT_CUDA(cudaEventRecord(ev[e], s));
      launches[jj](warmup + i);
      WT_CUDA(cudaEventRecord(ev[e + 1], s));
    }
  }
  WT_CUDA(cudaStreamSynchronize(s));
  std::vector<double> out(nl);
  for (size_t j = 0; j < nl; ++j) {
    std::vector<float> ms(static_cast<size_t>(iters));
    for (int i = 0; i < iters; ++i) {
      const size_t e = 2 * (size_t(i) * nl + j);
      WT_CUDA(cudaEventElapsedTime(&ms[size_t(i)], ev[e], ev[e + 1]));
    }
    out[j] = median(ms) * 1000.0;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return out;
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d", std::gmtime(&t));  // UTC, as every row
  return buf;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') o += '\\';
    o += ch;
  }
  return o;
}

void append_row(const std::string& path, const std::string& line) {
  if (path.empty()) return;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;  // (a failure shows when the file cannot be opened)
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  std::ofstream f(path, std::ios::app);
  if (!f) throw std::runtime_error("cannot open " + path);
  f << line << "\n";
}

struct Ctx {
  const Options& opt;
  cudaStream_t s;
  int sms;
  size_t l2;
  std::string device;
  LtGemm lt;
};

// Enough operand sets that consecutive launches never find their operands in L2 (>= 2x L2).
int operand_sets(size_t set_bytes, size_t l2) {
  const int n = int(std::max<size_t>(2, (2 * std::max<size_t>(l2, 50u << 20) + set_bytes - 1) /
                                            set_bytes));
  return std::min(n, 32);
}

// Picks cuBLASLt's fastest of its top-N heuristic algorithms (N = --cublas-algos).
int best_lt_algo(Ctx& cx, const std::function<void(int, int)>& run_algo) {
  if (cx.lt.num_algos() <= 1) {
    std::printf("    cublaslt algo 0 (only): %s\n", cx.lt.describe(0).c_str());
    return 0;
  }
  std::vector<Launch> ls;
  for (int a = 0; a < cx.lt.num_algos(); ++a) ls.push_back([&, a](int i) { run_algo(i, a); });
  const auto t = time_interleaved(ls, cx.opt.warmup / 2 + 1, 50, cx.s);
  const int best = int(std::min_element(t.begin(), t.end()) - t.begin());
  for (int a = 0; a < cx.lt.num_algos(); ++a)
    std::printf("    cublaslt algo %d%s %8.1f us (%.3f of algo 0): %s\n", a,
                a == best ? "*" : " ", t[size_t(a)], t[0] / t[size_t(a)],
                cx.lt.describe(a).c_str());
  return best;
}

int bench_dense(Ctx& cx, int64_t m, int64_t n, int64_t k) {
  const Options& opt = cx.opt;
  const DType dt = DType::kBF16;
  const size_t bytes_a = size_t(m * k) * 2, bytes_b = size_t(n * k) * 2, bytes_c = size_t(m * n) * 2;
  const int nsets = operand_sets(bytes_a + bytes_b + bytes_c, cx.l2);
  std::vector<OperandSet> sets(static_cast<size_t>(nsets));
  for (auto& st : sets) {
    st.a = DeviceBuffer(bytes_a);
    st.b = DeviceBuffer(bytes_b);
    st.c_weft = DeviceBuffer(bytes_c);
    st.c_lt = DeviceBuffer(bytes_c);
    fill_uniform(st.a.get(), dt, size_t(m * k), uint64_t(std::rand()) + 1);
    fill_uniform(st.b.get(), dt, size_t(n * k), uint64_t(std::rand()) + 2);
  }
  WT_CUDA(cudaDeviceSynchronize());
  const Config cfg = opt.config.empty() ? choose_config(m, n, k, dt, dt, cx.sms)
                                        : parse_config(opt.config);
  auto args_for = [&](const OperandSet& st) {
    GemmArgs g;
    g.a = st.a.get();
    g.b = st.b.get();
    g.c = st.c_weft.get();
    g.m = m;
    g.n = n;
    g.k = k;
    g.ab_type = dt;
    g.c_type = dt;
    return g;
  };
  char shape[64];
  std::snprintf(shape, sizeof(shape), "%lldx%lldx%lld", static_cast<long long>(m),
                static_cast<long long>(n), static_cast<long long>(k));

  if (opt.check) {
    DeviceBuffer ref(size_t(m * n) * 4);
    cx.lt.setup(m, n, k, dt, DType::kFP32);
    cx.lt.run(sets[0].a.get(), sets[0].b.get(), ref.get(), cx.s);
    WT_CUDA(cudaMemsetAsync(sets[0].c_weft.get(), 0xFF, bytes_c, cx.s));
    gemm(args_for(sets[0]), cx.s, &cfg);
    WT_CUDA(cudaStreamSynchronize(cx.s));
    const auto got = to_host_float(sets[0].c_weft.get(), dt, size_t(m * n));
    const auto want = to_host_float(ref.get(), DType::kFP32, size_t(m * n));
    const Compare c = compare(got, want, m, n, n, n, 1.0 / 128, 4e-6 * double(k) + 1e-6);
    const bool ok = c.bad == 0 && c.nan == 0 && c.rel_fro <= 1.0 / 256;
    std::printf("check %s: %s %s\n", shape, ok ? "OK" : "FAILED", c.summary().c_str());
    if (!ok) return 1;
  }

  cx.lt.setup(m, n, k, dt, dt, 0, 0, 0, std::max(1, opt.cublas_algos));
  auto lt_run = [&](int i, int algo) {
    const auto& st = sets[size_t(i % nsets)];
    cx.lt.run(st.a.get(), st.b.get(), st.c_lt.get(), cx.s, algo);
  };
  const int algo = best_lt_algo(cx, lt_run);
  const Launch lt_launch = [&](int i) { lt_run(i, algo); };
  auto weft_launch = [&](const Config& c) {
    return Launch([&, c](int i) { gemm(args_for(sets[size_t(i % nsets)]), cx.s, &c); });
  };
  const auto t = time_interleaved({weft_launch(cfg), lt_launch}, opt.warmup, opt.iters, cx.s);
  const double weft_us = t[0], lt_us = t[1];
  if (opt.profile) {
    WT_CUDA(cudaStreamSynchronize(cx.s));
    WT_CUDA(cudaProfilerStart());
    weft_launch(cfg)(0);
    lt_launch(0);
    WT_CUDA(cudaStreamSynchronize(cx.s));
    WT_CUDA(cudaProfilerStop());
  }
  const double flops = 2.0 * double(m) * double(n) * double(k);
  std::printf("%-22s %-24s %10.1f %10.1f %9.1f %9.1f %7.3f\n", shape, cfg.to_string().c_str(),
              weft_us, lt_us, flops / weft_us * 1e-6, flops / lt_us * 1e-6, lt_us / weft_us);
  std::fflush(stdout);

  if (opt.sweep) {
    double best = 0;
    std::string best_cfg;
    const int sweep_iters = std::max(50, opt.iters / 2);
    for (Config c : shipped_configs(dt, dt, false)) {
      for (int g : {2, 4, 8, 16}) {
        c.raster_group = g;
        const auto tt = time_interleaved({weft_launch(c), lt_launch}, opt.warmup / 2 + 1,
                                         sweep_iters, cx.s);
        const double ratio = tt[1] / tt[0];
        std::printf("    sweep %-24s %10.1f us %9.1f TF/s  cublas %8.1f us  ratio %6.3f\n",
                    c.to_string().c_str(), tt[0], flops / tt[0] * 1e-6, tt[1], ratio);
        std::fflush(stdout);
        if (ratio > best) {
          best = ratio;
          best_cfg = c.to_string();
        }
      }
    }
    std::printf("    best: %s (ratio %.3f)\n", best_cfg.c_str(), best);
  }

  if (!opt.variants.empty()) {
    std::vector<Launch> ls;
    std::vector<Config> vc;
    for (const std::string& v : opt.variants) vc.push_back(parse_config(v));
    for (const Config& c : vc) ls.push_back(weft_launch(c));
    ls.push_back(lt_launch);
    const auto tv = time_interleaved(ls, opt.warmup, opt.iters, cx.s);
    const double lt_v = tv.back();
    for (size_t i = 0; i < vc.size(); ++i)
      std::printf("    variant %-30s %10.1f us %9.1f TF/s  cublas %8.1f us  ratio %6.3f\n",
                  vc[i].to_string().c_str(), tv[i], flops / tv[i] * 1e-6, lt_v, lt_v / tv[i]);
    std::fflush(stdout);
  }

  if (opt.hooks) {
    // Hook cost with the waits already satisfied (issue: <= 3%): the plain kernel, the hook
    // kernel with the A-chunk wait, and with the wait plus a tile order equal to the default
    // schedule (so only the cost of reading the order is measured, not another order's L2
    // behaviour), interleaved.
    Config hc = opt.config.empty() ? choose_config(m, n, k, dt, dt, cx.sms, true)
                                   : parse_config(opt.config);
    const std::vector<int32_t> order = default_tile_order(hc, m, n);
    DeviceBuffer d_order(order.size() * 4), flags(size_t(m / 128 + 1) * 8);
    WT_CUDA(cudaMemcpy(d_order.get(), order.data(), order.size() * 4, cudaMemcpyHostToDevice));
    std::vector<uint64_t> ones(size_t(m / 128 + 1), 1);
    WT_CUDA(cudaMemcpy(flags.get(), ones.data(), ones.size() * 8, cudaMemcpyHostToDevice));
    Hooks hw;
    hw.wait_flags = flags.as<uint64_t>();
    hw.wait_chunk_rows = 128;
    hw.wait_expected = 1;
    Hooks ho = hw;
    ho.tile_order = d_order.as<int32_t>();
    Hooks hoo;
    hoo.tile_order = d_order.as<int32_t>();
    auto hook_launch = [&](const Hooks* h) {
      return Launch([&, h](int i) { gemm(args_for(sets[size_t(i % nsets)]), cx.s, &hc, h); });
    };
    const auto th = time_interleaved({weft_launch(hc), hook_launch(&hw), hook_launch(&ho),
                                      hook_launch(&hoo)},
                                     opt.warmup, opt.iters, cx.s);
    std::printf(
        "    hooks %-24s plain %8.1f us, wait %8.1f us (%+.1f%%), wait + order %8.1f us "
        "(%+.1f%%), order %8.1f us (%+.1f%%)\n",
        hc.to_string().c_str(), th[0], th[1], (th[1] / th[0] - 1) * 100, th[2],
        (th[2] / th[0] - 1) * 100, th[3], (th[3] / th[0] - 1) * 100);
    std::fflush(stdout);
  }

  char line[1024];
  std::snprintf(line, sizeof(line),
                "{\"op\": \"gemm\", \"shape\": {\"M\": %lld, \"N\": %lld, \"K\": %lld}, "
                "\"dtype\": \"bf16\", \"world\": 1, \"device\": \"%s\", \"weft_us\": %.2f, "
                "\"baselines\": {\"cublaslt\": %.2f}, \"ratio\": %.4f, \"config\": \"%s\", "
                "\"iters\": %d, \"timing\": \"interleaved\", \"cublas_algos\": %d, "
                "\"check\": \"%s\", \"commit\": \"%s\", \"date\": \"%s\"}",
                static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k),
                json_escape(cx.device).c_str(), weft_us, lt_us, lt_us / weft_us,
                cfg.to_string().c_str(), opt.iters, std::max(1, opt.cublas_algos),
                opt.check ? "ok" : "not run", json_escape(opt.commit).c_str(), today().c_str());
  append_row(opt.out, line);
  return 0;
}

// MoE grouped GEMM: `groups` experts sharing `rows` routed rows unevenly (a fixed-seed
// log-normal split, so the rows of one shape are the same every run), N and K per expert.
// Baselines: cuBLASLt once per expert back to back (what a framework without a grouped kernel
// does), and one dense cuBLASLt GEMM over all rows with one expert's weights (same FLOPs, no
// per-expert tails: a bound no grouped kernel beats by much).
int bench_grouped(Ctx& cx, int64_t groups, int64_t rows, int64_t n, int64_t k) {
  const Options& opt = cx.opt;
  const DType dt = DType::kBF16;
  std::mt19937 rng(uint32_t(groups * 1000003 + rows));
  std::lognormal_distribution<double> dist(0.0, 0.5);
  std::vector<double> w(static_cast<size_t>(groups));
  double sum = 0;
  for (auto& x : w) sum += (x = dist(rng));
  std::vector<int32_t> counts(static_cast<size_t>(groups));
  int64_t assigned = 0;
  for (int64_t g = 0; g < groups; ++g) {
    counts[size_t(g)] = int32_t(std::floor(double(rows) * w[size_t(g)] / sum));
    assigned += counts[size_t(g)];
  }
  counts[0] += int32_t(rows - assigned);
  const size_t bytes_a = size_t(rows * k) * 2, bytes_b = size_t(groups * n * k) * 2,
               bytes_c = size_t(rows * n) * 2;
  const int nsets = operand_sets(bytes_a + bytes_b + bytes_c, cx.l2);
  std::vector<OperandSet> sets(static_cast<size_t>(nsets));
  for (auto& st : sets) {
    st.a = DeviceBuffer(bytes_a);
    st.b = DeviceBuffer(bytes_b);
    st.c_weft = DeviceBuffer(bytes_c);
    st.c_lt = DeviceBuffer(bytes_c);
    fill_uniform(st.a.get(), dt, size_t(rows * k), uint64_t(std::rand()) + 1);
    fill_uniform(st.b.get(), dt, size_t(groups * n * k), uint64_t(std::rand()) + 2);
  }
  DeviceBuffer d_counts(counts.size() * 4);
  WT_CUDA(cudaMemcpy(d_counts.get(), counts.data(), counts.size() * 4, cudaMemcpyHostToDevice));
  WT_CUDA(cudaDeviceSynchronize());
  const Config cfg = choose_grouped_config(rows, groups, n, k, dt, dt, cx.sms);
  auto args_for = [&](const OperandSet& st) {
    GroupedGemmArgs g;
    g.a = st.a.get();
    g.b = st.b.get();
    g.c = st.c_weft.get();
    g.group_rows = d_counts.as<int32_t>();
    g.groups = groups;
    g.m_capacity = rows;
    g.n = n;
    g.k = k;
    return g;
  };
  char shape[96];
  std::snprintf(shape, sizeof(shape), "G%lld:%lldx%lldx%lld", static_cast<long long>(groups),
                static_cast<long long>(rows), static_cast<long long>(n),
                static_cast<long long>(k));

  // One cuBLASLt plan per distinct row count (setup outside the timed region).
  std::vector<std::unique_ptr<LtGemm>> per_group(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g) {
    if (counts[size_t(g)] == 0) continue;
    per_group[size_t(g)] = std::make_unique<LtGemm>();
    per_group[size_t(g)]->setup(counts[size_t(g)], n, k, dt, dt);
  }
  auto lt_groups = [&](const OperandSet& st, void* c) {
    int64_t r0 = 0;
    for (int64_t g = 0; g < groups; ++g) {
      if (!per_group[size_t(g)]) continue;
      per_group[size_t(g)]->run(static_cast<const uint16_t*>(st.a.get()) + r0 * k,
                                static_cast<const uint16_t*>(st.b.get()) + g * n * k,
                                static_cast<uint16_t*>(c) + r0 * n, cx.s);
      r0 += counts[size_t(g)];
    }
  };

  if (opt.check) {
    WT_CUDA(cudaMemsetAsync(sets[0].c_weft.get(), 0xFF, bytes_c, cx.s));
    grouped_gemm(args_for(sets[0]), cx.s, &cfg);
    lt_groups(sets[0], sets[0].c_lt.get());
    WT_CUDA(cudaStreamSynchronize(cx.s));
    const auto got = to_host_float(sets[0].c_weft.get(), dt, size_t(rows * n));
    const auto want = to_host_float(sets[0].c_lt.get(), dt, size_t(rows * n));
    // Both bf16-rounded: allow two roundings.
    const Compare c = compare(got, want, rows, n, n, n, 2.0 / 128, 4e-6 * double(k) + 1e-6);
    const bool ok = c.bad == 0 && c.nan == 0 && c.rel_fro <= 1.0 / 128;
    std::printf("check %s: %s %s\n", shape, ok ? "OK" : "FAILED", c.summary().c_str());
    if (!ok) return 1;
  }

  cx.lt.setup(rows, n, k, dt, dt);
  const auto t = time_interleaved(
      {[&](int i) { grouped_gemm(args_for(sets[size_t(i % nsets)]), cx.s, &cfg); },
       [&](int i) {
         const auto& st = sets[size_t(i % nsets)];
         lt_groups(st, st.c_lt.get());
       },
       [&](int i) {
         const auto& st = sets[size_t(i % nsets)];
         cx.lt.run(st.a.get(), st.b.get(), st.c_lt.get(), cx.s);
       }},
      opt.warmup, opt.iters, cx.s);
  const double flops = 2.0 * double(rows) * double(n) * double(k);
  std::printf("%-22s %-24s %10.1f %10.1f %9.1f %9.1f %7.3f   (dense same rows %.1f us, %.3f)\n",
              shape, cfg.to_string().c_str(), t[0], t[1], flops / t[0] * 1e-6,
              flops / t[1] * 1e-6, t[1] / t[0], t[2], t[2] / t[0]);
  std::string cs;
  for (int32_t c : counts) cs += (cs.empty() ? "" : ", ") + std::to_string(c);
  std::printf("    rows per group: %s\n", cs.c_str());
  if (opt.sweep) {
    for (Config c : shipped_configs(dt, dt, false, true)) {
      for (int g : {4, 8}) {
        c.raster_group = g;
        const auto tt = time_interleaved(
            {[&](int i) { grouped_gemm(args_for(sets[size_t(i % nsets)]), cx.s, &c); },
             [&](int i) {
               const auto& st = sets[size_t(i % nsets)];
               lt_groups(st, st.c_lt.get());
             }},
            opt.warmup / 2 + 1, std::max(50, opt.iters / 2), cx.s);
        std::printf("    sweep %-24s %10.1f us  per-group cublas %8.1f us  ratio %6.3f\n",
                    c.to_string().c_str(), tt[0], tt[1], tt[1] / tt[0]);
      }
    }
  }
  std::fflush(stdout);
  char line[1400];
  std::snprintf(line, sizeof(line),
                "{\"op\": \"grouped_gemm\", \"shape\": {\"groups\": %lld, \"rows\": %lld, "
                "\"N\": %lld, \"K\": %lld, \"rows_per_group\": [%s]}, \"dtype\": \"bf16\", "
                "\"world\": 1, \"device\": \"%s\", \"weft_us\": %.2f, \"baselines\": "
                "{\"cublaslt_per_group\": %.2f, \"cublaslt_dense_same_rows\": %.2f}, "
                "\"ratio\": %.4f, \"config\": \"%s\", \"iters\": %d, \"timing\": "
                "\"interleaved\", \"check\": \"%s\", \"commit\": \"%s\", \"date\": \"%s\"}",
                static_cast<long long>(groups), static_cast<long long>(rows),
                static_cast<long long>(n), static_cast<long long>(k), cs.c_str(),
                json_escape(cx.device).c_str(), t[0], t[1], t[2], t[1] / t[0],
                cfg.to_string().c_str(), opt.iters, opt.check ? "ok" : "not run",
                json_escape(opt.commit).c_str(), today().c_str());
  append_row(opt.out, line);
  return 0;
}

}  // namespace

namespace weft::bench {

int run_gemm_bench(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  try {
    int dev = 0;
    WT_CUDA(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    WT_CUDA(cudaGetDeviceProperties(&prop, dev));
    if (prop.major != 9 || prop.minor != 0) {
      std::fprintf(stderr, "weft_gemm_bench needs an sm_90 GPU (found %s, sm_%d%d)\n", prop.name,
                   prop.major, prop.minor);
      return 1;
    }
    cudaStream_t s;
    WT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    Ctx cx{opt, s, sm_count(), size_t(prop.l2CacheSize), prop.name, LtGemm()};
    std::printf("device: %s, %d SMs, L2 %zu MB, commit %s\n", prop.name, cx.sms, cx.l2 >> 20,
                opt.commit.c_str());
    std::printf("%-22s %-24s %10s %10s %9s %9s %7s\n", "shape (MxNxK)", "weft config", "weft us",
                "cublas us", "weft TF/s", "cubl TF/s", "ratio");
    load_kernels();
    for (const auto& shp : opt.shapes)
      if (bench_dense(cx, shp[0], shp[1], shp[2]) != 0) return 1;
    if (opt.grouped) {
      // DeepSeek-V3-like experts (hidden 7168, expert FFN 2048) on one GPU of an EP group:
      // 8 local experts, up (N = 4096, K = 7168) and down (N = 7168, K = 2048) projections, for
      // a prefill-sized and a decode-sized batch of routed rows; and Mixtral-like 8 experts.
      const int64_t shapes[][4] = {{8, 8192, 4096, 7168}, {8, 8192, 7168, 2048},
                                   {8, 1024, 4096, 7168}, {8, 1024, 7168, 2048},
                                   {32, 4096, 4096, 7168}, {8, 16384, 14336, 4096}};
      for (const auto& g : shapes)
        if (bench_grouped(cx, g[0], g[1], g[2], g[3]) != 0) return 1;
    }
    cudaStreamDestroy(s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "weft_gemm_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace weft::bench
