// Probe (not part of the build): why do GEMM-RS's chunk GEMMs run slower beside the copy engines'
// sends than alone? Two GPUs run GEMM-RS's chunk GEMM (2048 x 8192 x 2048 bf16, cuBLASLt's
// first heuristic answer) back to back, each iteration beside one 32 MiB copy-engine transfer:
// none, a peer copy both ways (what decomposed does), one way only (GPU 0 sends, GPU 1 receives),
// or a copy inside each GPU. A host thread samples NVML every millisecond meanwhile (SM clock,
// power, clock-event reasons), so each configuration's GEMM time can be set beside its SM clock: if
// the GEMM's slowdown follows the clock, the power cap is the cause; if not, the memory system is.
// NVML is opened with dlopen (no headers needed to build).
//
// With the argument `policies` it runs GEMM alone and GEMM + peer copies both ways, alternating,
// under three L2 policies for the GEMM's stream: none; the GEMM's output C marked streaming (evict
// first; an access-policy window needs no carve-out for that); B (read by every tile) persisting in
// a 16 MiB carve-out, half of B's lines (hitRatio 0.5), the rest streaming.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -o insitu_clock_probe insitu_clock_probe.cu -lcublasLt -ldl
//   ./insitu_clock_probe [policies]          (needs two GPUs with peer access)
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "probe_lt.cuh"
#include "probe_util.cuh"

// ---- NVML by dlopen
// ------------------------------------------------------------------------------

struct Nvml {
  using Dev = void*;
  int (*init)() = nullptr;
  int (*by_bus)(const char*, Dev*) = nullptr;
  int (*clock)(Dev, int, unsigned*) = nullptr;  // type 1 = SM
  int (*power)(Dev, unsigned*) = nullptr;       // milliwatts
  int (*reasons)(Dev, unsigned long long*) = nullptr;
  bool ok = false;
  Nvml() {
    void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!h) return;
    init = reinterpret_cast<int (*)()>(dlsym(h, "nvmlInit_v2"));
    by_bus =
        reinterpret_cast<int (*)(const char*, Dev*)>(dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2"));
    clock = reinterpret_cast<int (*)(Dev, int, unsigned*)>(dlsym(h, "nvmlDeviceGetClockInfo"));
    power = reinterpret_cast<int (*)(Dev, unsigned*)>(dlsym(h, "nvmlDeviceGetPowerUsage"));
    reasons = reinterpret_cast<int (*)(Dev, unsigned long long*)>(
        dlsym(h, "nvmlDeviceGetCurrentClocksThrottleReasons"));
    ok = init && by_bus && clock && power && reasons && init() == 0;
  }
};

constexpr int64_t kM = 2048, kN = 8192, kK = 2048;
constexpr size_t kChunk = size_t(kM) * kN * 2;  // 32 MiB
constexpr int kIters = 800;

struct Gpu {
  int dev;
  LtChunkGemm* gemm;
  __nv_bfloat16 *A, *B, *C, *src, *dst;
  cudaStream_t gemm_st, send_st;
  std::vector<cudaEvent_t> g0, g1, it, sd;
  Nvml::Dev nv = nullptr;
};

enum class Send { none, peer_both, peer_from0, local, peer_both_no_gemm };
const char* name(Send s) {
  switch (s) {
    case Send::none:
      return "GEMM alone";
    case Send::peer_both:
      return "GEMM + peer copy both ways";
    case Send::peer_from0:
      return "GEMM + peer copy 0 -> 1 only";
    case Send::local:
      return "GEMM + copy inside each GPU";
    case Send::peer_both_no_gemm:
      return "peer copy both ways, no GEMM";
  }
  return "?";
}

struct Sample {
  double mhz = 0, watts = 0;
  unsigned min_mhz = 1u << 30, max_mhz = 0;
  long n = 0, power_capped = 0, other_reason = 0;
};

enum Policy { kNoPolicy = 0, kStreamC = 1, kPersistB = 2 };
const char* policy_name(int p) {
  return p == kStreamC ? " [C streaming]" : p == kPersistB ? " [B persisting]" : "";
}

void apply_policy(const Gpu& x, int policy) {
  cudaStreamAttrValue v{};
  if (policy == kStreamC) {
    v.accessPolicyWindow.base_ptr = x.C;
    v.accessPolicyWindow.num_bytes = kChunk;
    v.accessPolicyWindow.hitRatio = 1.f;
    v.accessPolicyWindow.hitProp = cudaAccessPropertyStreaming;
    v.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
  } else if (policy == kPersistB) {
    CK(cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, size_t(16) << 20));
    v.accessPolicyWindow.base_ptr = x.B;
    v.accessPolicyWindow.num_bytes = size_t(kN) * kK * 2;
    v.accessPolicyWindow.hitRatio = 0.5f;
    v.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
    v.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
  }
  if (policy != kPersistB) {
    CK(cudaCtxResetPersistingL2Cache());
    CK(cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, 0));
  }
  CK(cudaStreamSetAttribute(x.gemm_st, cudaStreamAttributeAccessPolicyWindow, &v));
}

int main(int argc, char** argv) {
  const bool policies = argc > 1 && std::string(argv[1]) == "policies";
  Gpu g[2];
  Nvml nvml;
  for (int d = 0; d < 2; ++d) {
    Gpu& x = g[d];
    x.dev = d;
    CK(cudaSetDevice(d));
    CK(cudaDeviceEnablePeerAccess(1 - d, 0));
    x.gemm = new LtChunkGemm(kM, kN, kK);
    CK(cudaMalloc(&x.A, kM * kK * 2));
    CK(cudaMalloc(&x.B, kN * kK * 2));
    CK(cudaMalloc(&x.C, kChunk));
    CK(cudaMalloc(&x.src, kChunk));
    CK(cudaMalloc(&x.dst, kChunk));
    fill_bf16<<<1024, 256>>>(x.A, kM * kK, 11 + d, true);
    fill_bf16<<<1024, 256>>>(x.B, kN * kK, 21 + d, true);
    fill_bf16<<<1024, 256>>>(x.src, kChunk / 2, 31 + d, true);
    CK(cudaStreamCreateWithFlags(&x.gemm_st, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&x.send_st, cudaStreamNonBlocking));
    for (auto* v : {&x.g0, &x.g1, &x.it, &x.sd}) {
      v->resize(kIters);
      for (auto& e : *v) CK(cudaEventCreate(&e));
    }
    if (nvml.ok) {
      char bus[64];
      CK(cudaDeviceGetPCIBusId(bus, sizeof bus, d));
      if (nvml.by_bus(bus, &x.nv) != 0) x.nv = nullptr;
    }
    CK(cudaDeviceSynchronize());
  }
  std::printf("NVML %s\n", nvml.ok && g[0].nv && g[1].nv ? "sampling every 1 ms" : "unavailable");

  std::atomic<int> phase{-1};  // index into `stats` while a configuration runs, -1 otherwise
  std::atomic<bool> stop{false};
  struct Config {
    Send send;
    int policy;
  };
  std::vector<Config> order;
  if (policies) {
    for (int round = 0; round < 2; ++round)
      for (int p : {kNoPolicy, kStreamC, kPersistB})
        for (Send s : {Send::none, Send::peer_both}) order.push_back({s, p});
  } else {
    for (Send s : {Send::none, Send::peer_both, Send::peer_from0, Send::local,
                   Send::peer_both_no_gemm, Send::none, Send::peer_both})
      order.push_back({s, kNoPolicy});
  }
  const int kConfigs = static_cast<int>(order.size());
  std::vector<Sample> stats(kConfigs * 2);
  std::thread sampler([&] {
    while (!stop.load()) {
      const int p = phase.load();
      if (p >= 0 && nvml.ok) {
        for (int d = 0; d < 2; ++d) {
          if (!g[d].nv) continue;
          unsigned mhz = 0, mw = 0;
          unsigned long long why = 0;
          nvml.clock(g[d].nv, 1, &mhz);
          nvml.power(g[d].nv, &mw);
          nvml.reasons(g[d].nv, &why);
          Sample& s = stats[p * 2 + d];
          s.mhz += mhz;
          s.watts += mw / 1000.0;
          s.min_mhz = std::min(s.min_mhz, mhz);
          s.max_mhz = std::max(s.max_mhz, mhz);
          ++s.n;
          if (why & 0x4ull) ++s.power_capped;   // software power cap
          if (why & ~0x5ull) ++s.other_reason;  // anything but idle / power cap
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });

  for (int c = 0; c < kConfigs; ++c) {
    const Send s = order[c].send;
    for (int d = 0; d < 2; ++d) {
      CK(cudaSetDevice(d));
      CK(cudaDeviceSynchronize());
      apply_policy(g[d], order[c].policy);
    }
    // Warm-up, then the timed loop with the sampler on.
    for (int pass = 0; pass < 2; ++pass) {
      const int iters = pass == 0 ? 50 : kIters;
      if (pass == 1) phase.store(c);
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) {
        for (int d = 0; d < 2; ++d) {
          Gpu& x = g[d];
          CK(cudaSetDevice(d));
          CK(cudaEventRecord(x.it[i], x.gemm_st));
          CK(cudaStreamWaitEvent(x.send_st, x.it[i], 0));
          if (s == Send::peer_both || s == Send::peer_both_no_gemm ||
              (s == Send::peer_from0 && d == 0))
            CK(cudaMemcpyPeerAsync(g[1 - d].dst, 1 - d, x.src, d, kChunk, x.send_st));
          else if (s == Send::local)
            CK(cudaMemcpyAsync(x.dst, x.src, kChunk, cudaMemcpyDeviceToDevice, x.send_st));
          CK(cudaEventRecord(x.g0[i], x.gemm_st));
          if (s != Send::peer_both_no_gemm) x.gemm->run(x.A, x.B, x.C, x.gemm_st);
          CK(cudaEventRecord(x.g1[i], x.gemm_st));
          // The next iteration starts when both this GEMM and this send are done.
          CK(cudaEventRecord(x.sd[i], x.send_st));
          CK(cudaStreamWaitEvent(x.gemm_st, x.sd[i], 0));
        }
      }
      for (int d = 0; d < 2; ++d) {
        CK(cudaSetDevice(d));
        CK(cudaDeviceSynchronize());
        CK(cudaGetLastError());
      }
      const double wall_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (pass == 0) continue;
      phase.store(-1);
      for (int d = 0; d < 2; ++d) {
        std::vector<float> t;
        for (int i = 0; i < iters; ++i) {
          float ms;
          CK(cudaEventElapsedTime(&ms, g[d].g0[i], g[d].g1[i]));
          t.push_back(ms * 1000.f);
        }
        std::sort(t.begin(), t.end());
        const Sample& st = stats[c * 2 + d];
        const double n = std::max(1L, st.n);
        std::printf(
            "%-32s%s GPU %d: GEMM median %6.1f us (p10 %6.1f, p90 %6.1f); SM clock %6.0f MHz "
            "(%u-%u), power %5.0f W, power-capped %3.0f%% of %ld samples, other reasons "
            "%3.0f%%; loop %.0f ms\n",
            name(s), policy_name(order[c].policy), d, t[t.size() / 2], t[t.size() / 10],
            t[t.size() * 9 / 10], st.mhz / n, st.n ? st.min_mhz : 0, st.max_mhz, st.watts / n,
            100.0 * st.power_capped / n, st.n, 100.0 * st.other_reason / n, wall_ms);
      }
    }
  }
  stop.store(true);
  sampler.join();
  return 0;
}
