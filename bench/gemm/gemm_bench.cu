// weft_gemm_bench: weft's GEMM beside cuBLASLt in the same process (bf16 in, bf16 out, fp32
// accumulate), CUDA-event timing, median over iterations, inputs rotated to defeat L2.
//
//   weft_gemm_bench [--out FILE] [--commit SHA] [--check] [--iters N] [--warmup N]
//                   [--shapes M,N,K[;M,N,K...]] [--config CFG] [--sweep] [--cublas-algos N]
//
// --out appends one JSON line per shape (DESIGN.md's benchmark row format); --check validates
// each shape against cuBLASLt before timing; --sweep also times every shipped kernel config and
// a few raster groups per shape (to tune the heuristic); --config forces weft's config;
// --cublas-algos N times cuBLASLt's top-N heuristic algorithms and keeps the fastest.
#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>
#include <vector>

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
  std::string config;
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
  if (o.shapes.empty()) {
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

// Times `launch(i)` (i = iteration, used to pick the operand set): warm-up, then one event pair
// per iteration, all queued back to back; returns the median in microseconds.
template <class F>
double time_us(F&& launch, int warmup, int iters, cudaStream_t s) {
  for (int i = 0; i < warmup; ++i) launch(i);
  std::vector<cudaEvent_t> ev(size_t(2 * iters));
  for (auto& e : ev) WT_CUDA(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    WT_CUDA(cudaEventRecord(ev[size_t(2 * i)], s));
    launch(warmup + i);
    WT_CUDA(cudaEventRecord(ev[size_t(2 * i + 1)], s));
  }
  WT_CUDA(cudaStreamSynchronize(s));
  std::vector<float> ms(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i)
    WT_CUDA(cudaEventElapsedTime(&ms[size_t(i)], ev[size_t(2 * i)], ev[size_t(2 * i + 1)]));
  for (auto& e : ev) cudaEventDestroy(e);
  return median(ms) * 1000.0;
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d", std::localtime(&t));
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

}  // namespace

int main(int argc, char** argv) {
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
    const int sms = sm_count();
    const size_t l2 = size_t(prop.l2CacheSize);
    std::printf("device: %s, %d SMs, L2 %zu MB, commit %s\n", prop.name, sms, l2 >> 20,
                opt.commit.c_str());
    std::printf("%-22s %-24s %10s %10s %9s %9s %7s\n", "shape (MxNxK)", "weft config", "weft us",
                "cublas us", "weft TF/s", "cubl TF/s", "ratio");

    cudaStream_t s;
    WT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    LtGemm lt;
    const DType dt = DType::kBF16;

    for (const auto& shp : opt.shapes) {
      const int64_t m = shp[0], n = shp[1], k = shp[2];
      const size_t bytes_a = size_t(m * k) * 2, bytes_b = size_t(n * k) * 2,
                   bytes_c = size_t(m * n) * 2;
      const size_t set_bytes = bytes_a + bytes_b + bytes_c;
      // Enough sets that consecutive launches never find their operands in L2 (>= 2x L2).
      int nsets = int(std::max<size_t>(2, (2 * std::max<size_t>(l2, 50u << 20) + set_bytes - 1) /
                                              set_bytes));
      nsets = std::min(nsets, 32);
      std::vector<OperandSet> sets(static_cast<size_t>(nsets));
      for (auto& st : sets) {
        st.a = DeviceBuffer(bytes_a);
        st.b = DeviceBuffer(bytes_b);
        st.c_weft = DeviceBuffer(bytes_c);
        fill_uniform(st.a.get(), dt, size_t(m * k), uint64_t(std::rand()) + 1);
        fill_uniform(st.b.get(), dt, size_t(n * k), uint64_t(std::rand()) + 2);
      }
      sets[0].c_lt = DeviceBuffer(bytes_c);
      WT_CUDA(cudaDeviceSynchronize());

      const Config cfg = opt.config.empty() ? choose_config(m, n, k, dt, dt, sms)
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

      if (opt.check) {
        // weft vs cuBLASLt fp32 output on set 0.
        DeviceBuffer ref(size_t(m * n) * 4);
        lt.setup(m, n, k, dt, DType::kFP32);
        lt.run(sets[0].a.get(), sets[0].b.get(), ref.get(), s);
        WT_CUDA(cudaMemsetAsync(sets[0].c_weft.get(), 0xFF, bytes_c, s));
        gemm(args_for(sets[0]), s, &cfg);
        WT_CUDA(cudaStreamSynchronize(s));
        const auto got = to_host_float(sets[0].c_weft.get(), dt, size_t(m * n));
        const auto want = to_host_float(ref.get(), DType::kFP32, size_t(m * n));
        const Compare c = compare(got, want, m, n, n, n, 1.0 / 128, 4e-6 * double(k) + 1e-6);
        const bool ok = c.bad == 0 && c.nan == 0 && c.rel_fro <= 1.0 / 256;
        std::printf("check %lldx%lldx%lld: %s %s\n", static_cast<long long>(m),
                    static_cast<long long>(n), static_cast<long long>(k), ok ? "OK" : "FAILED",
                    c.summary().c_str());
        if (!ok) return 1;
      }

      lt.setup(m, n, k, dt, dt, 0, 0, 0, std::max(1, opt.cublas_algos));
      double lt_us = 1e30;
      int lt_best = 0;
      for (int algo = 0; algo < lt.num_algos(); ++algo) {
        const double t = time_us(
            [&](int i) {
              const auto& st = sets[size_t(i % nsets)];
              lt.run(st.a.get(), st.b.get(), st.c_weft.get(), s, algo);
            },
            opt.warmup, opt.iters, s);
        if (t < lt_us) {
          lt_us = t;
          lt_best = algo;
        }
      }
      auto time_weft = [&](const Config& c) {
        return time_us([&](int i) { gemm(args_for(sets[size_t(i % nsets)]), s, &c); },
                       opt.warmup, opt.iters, s);
      };
      const double weft_us = time_weft(cfg);
      // Second round of cuBLASLt after weft, to even out clocks/thermals; keep the better.
      lt_us = std::min(lt_us, time_us(
                                  [&](int i) {
                                    const auto& st = sets[size_t(i % nsets)];
                                    lt.run(st.a.get(), st.b.get(), st.c_weft.get(), s, lt_best);
                                  },
                                  opt.warmup, opt.iters, s));

      const double flops = 2.0 * double(m) * double(n) * double(k);
      char shape[64];
      std::snprintf(shape, sizeof(shape), "%lldx%lldx%lld", static_cast<long long>(m),
                    static_cast<long long>(n), static_cast<long long>(k));
      std::printf("%-22s %-24s %10.1f %10.1f %9.1f %9.1f %7.3f\n", shape, cfg.to_string().c_str(),
                  weft_us, lt_us, flops / weft_us * 1e-6, flops / lt_us * 1e-6, lt_us / weft_us);
      std::fflush(stdout);

      if (opt.sweep) {
        const std::vector<Config> cands = shipped_configs(dt, dt, false);
        double best = 1e30;
        std::string best_cfg;
        for (Config c : cands) {
          for (int g : {4, 8, 16}) {
            c.raster_group = g;
            const double t = time_weft(c);
            std::printf("    sweep %-24s %10.1f us %9.1f TF/s %7.3f\n", c.to_string().c_str(), t,
                        flops / t * 1e-6, lt_us / t);
            if (t < best) {
              best = t;
              best_cfg = c.to_string();
            }
          }
        }
        // The hook kernel with hooks present but satisfied (issue: <= 3% cost).
        {
          Config hc = choose_config(m, n, k, dt, dt, sms, true);
          const TileGrid g = tile_grid(hc, m, n);
          std::vector<int32_t> order(size_t(g.num_units));
          for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
          DeviceBuffer d_order(order.size() * 4), flags(size_t(m / 128 + 1) * 8);
          WT_CUDA(cudaMemcpy(d_order.get(), order.data(), order.size() * 4,
                             cudaMemcpyHostToDevice));
          std::vector<uint64_t> ones(size_t(m / 128 + 1), 1);
          WT_CUDA(cudaMemcpy(flags.get(), ones.data(), ones.size() * 8, cudaMemcpyHostToDevice));
          Hooks h;
          h.wait_flags = flags.as<uint64_t>();
          h.wait_chunk_rows = 128;
          h.wait_expected = 1;
          const double t_plain = time_weft(hc);
          const double t_hook = time_us(
              [&](int i) { gemm(args_for(sets[size_t(i % nsets)]), s, &hc, &h); }, opt.warmup,
              opt.iters, s);
          h.tile_order = d_order.as<int32_t>();
          const double t_hook_order = time_us(
              [&](int i) { gemm(args_for(sets[size_t(i % nsets)]), s, &hc, &h); }, opt.warmup,
              opt.iters, s);
          std::printf(
              "    hooks %-24s plain %8.1f us, wait hook %8.1f us (%+.1f%%), + identity tile "
              "order %8.1f us (%+.1f%%)\n",
              hc.to_string().c_str(), t_plain, t_hook, (t_hook / t_plain - 1) * 100, t_hook_order,
              (t_hook_order / t_plain - 1) * 100);
        }
        std::printf("    best: %s %.1f us (ratio %.3f)\n", best_cfg.c_str(), best, lt_us / best);
      }

      if (!opt.out.empty()) {
        std::ofstream f(opt.out, std::ios::app);
        if (!f) throw std::runtime_error("cannot open " + opt.out);
        char line[1024];
        std::snprintf(line, sizeof(line),
                      "{\"op\": \"gemm\", \"shape\": {\"M\": %lld, \"N\": %lld, \"K\": %lld}, "
                      "\"dtype\": \"bf16\", \"world\": 1, \"device\": \"%s\", \"weft_us\": %.2f, "
                      "\"baselines\": {\"cublaslt\": %.2f}, \"ratio\": %.4f, \"config\": \"%s\", "
                      "\"commit\": \"%s\", \"date\": \"%s\"}",
                      static_cast<long long>(m), static_cast<long long>(n),
                      static_cast<long long>(k), json_escape(prop.name).c_str(), weft_us, lt_us,
                      lt_us / weft_us, cfg.to_string().c_str(), json_escape(opt.commit).c_str(),
                      today().c_str());
        f << line << "\n";
      }
    }
    cudaStreamDestroy(s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "weft_gemm_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
