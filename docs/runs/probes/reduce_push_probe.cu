// Probe (not part of the build): can GEMM-RS's sources be added at their destination as they
// arrive, so that the tail reads two chunks (the sum so far and the own partial) instead of four?
// A few SMs beside the chunk GEMMs would move each finished chunk to its destination with TMA:
// bulk loads of the local partial into shared memory, then `cp.reduce.async.bulk ...
// add.noftz.bf16` into the destination's running sum over NVLink (the first source a plain bulk
// store). This measures, on two GPUs sending to each other at once:
//   1. the rate of bulk stores and bulk bf16 reductions into the peer from S SMs, beside the copy
//      engine's peer copy of the same 32 MiB (GEMM-RS's chunk at 8192^3 on 4 ranks);
//   2. the chunk GEMM (2048 x 8192 x 2048, cuBLASLt, the fastest of its first 8 answers) on the
//      whole GPU and told to leave S SMs (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET);
//   3. both at once: the GEMM on 132 - S SMs while S SMs reduce into the peer, against the GEMM
//      beside a copy-engine send (what decomposed does now);
//   4. that a bulk reduction is the bf16 sum rounded to nearest (checked on the host).
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -o reduce_push_probe reduce_push_probe.cu -lcublasLt
//   ./reduce_push_probe          (needs two GPUs with peer access)
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "probe_lt.cuh"
#include "probe_util.cuh"

// ---- bulk send kernel ---------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

enum SendMode { kStore = 0, kReduce = 1 };

// One thread per block streams its share of `bytes` from src (local) to dst (a peer's buffer):
// bulk loads into a ring of `nstage` pieces, each piece then stored or reduce-added to dst.
template <int kMode>
__global__ void __launch_bounds__(32, 1)
    bulk_send(const char* src, char* dst, size_t bytes, uint32_t piece, int nstage) {
  extern __shared__ __align__(1024) char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  char* buf = smem + 1024;
  if (threadIdx.x != 0) return;
  const size_t per = (bytes / gridDim.x + piece - 1) / piece * piece;
  const size_t begin = per * blockIdx.x < bytes ? per * blockIdx.x : bytes;
  const size_t end = begin + per < bytes ? begin + per : bytes;
  const int n = static_cast<int>((end - begin + piece - 1) / piece);
  for (int s = 0; s < nstage; ++s)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&full[s])));
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  auto load = [&](int i) {
    const int s = i % nstage;
    const size_t off = begin + size_t(i) * piece;
    const uint32_t sz = static_cast<uint32_t>((piece < end - off ? size_t(piece) : end - off));
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(&full[s])),
                 "r"(sz)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
            "r"(smem_u32(buf + size_t(s) * piece)),
        "l"(src + off), "r"(sz), "r"(smem_u32(&full[s]))
        : "memory");
  };
  for (int i = 0; i < n && i < nstage; ++i) load(i);
  for (int i = 0; i < n; ++i) {
    const int s = i % nstage;
    const uint32_t parity = (i / nstage) & 1;
    uint32_t done = 0;
    while (!done) {
      asm volatile(
          "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, "
          "0, "
          "p; }"
          : "=r"(done)
          : "r"(smem_u32(&full[s])), "r"(parity)
          : "memory");
    }
    const size_t off = begin + size_t(i) * piece;
    const uint32_t sz = static_cast<uint32_t>((piece < end - off ? size_t(piece) : end - off));
    if constexpr (kMode == kStore)
      asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst + off),
                   "r"(smem_u32(buf + size_t(s) * piece)), "r"(sz)
                   : "memory");
    else
      asm volatile(
          "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.noftz.bf16 [%0], [%1], %2;" ::"l"(
              dst + off),
          "r"(smem_u32(buf + size_t(s) * piece)), "r"(sz)
          : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    // Piece i - 1's stage is free once its store has read shared memory: refill it.
    if (i >= 1 && i - 1 + nstage < n) {
      asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
      load(i - 1 + nstage);
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

// ---- two GPUs -----------------------------------------------------------------------------------

constexpr int64_t kM = 2048, kN = 8192, kK = 2048;
constexpr size_t kChunkBytes = size_t(kM) * kN * 2;  // 32 MiB
constexpr uint32_t kPiece = 16384;
constexpr int kStages = 12;
constexpr size_t kSmem = 1024 + size_t(kPiece) * kStages;

struct Gpu {
  int dev;
  __nv_bfloat16 *A, *B, *C, *src, *acc, *flush;
  cudaStream_t gemm_st, send_st;
  cudaEvent_t e0, e1, e2, e3;
};

void use(const Gpu& g) { CK(cudaSetDevice(g.dev)); }

// Runs `body(g, i)` on both GPUs at once `iters` times after 3 warm-ups; before each run both
// GPUs evict L2 and meet (host sync). Returns per-GPU medians of the two timed spans:
// [e0, e1] on gemm_st and [e0, e3] on send_st (a body records e1 / e3 where it wants).
struct Spans {
  float gemm[2], send[2];
};
template <class F>
Spans run_both(Gpu (&g)[2], int iters, F&& body) {
  std::vector<float> t[2][2];
  for (int it = -3; it < iters; ++it) {
    for (auto& x : g) {
      use(x);
      CK(cudaMemsetAsync(x.flush, it & 0xff, size_t(128) << 20, x.gemm_st));
      CK(cudaStreamSynchronize(x.gemm_st));
    }
    for (auto& x : g) {
      use(x);
      CK(cudaEventRecord(x.e0, x.gemm_st));
      CK(cudaStreamWaitEvent(x.send_st, x.e0, 0));
    }
    for (int d = 0; d < 2; ++d) {
      use(g[d]);
      body(g[d], d);
    }
    for (int d = 0; d < 2; ++d) {
      use(g[d]);
      CK(cudaStreamSynchronize(g[d].gemm_st));
      CK(cudaStreamSynchronize(g[d].send_st));
      CK(cudaGetLastError());
      if (it < 0) continue;
      float ms;
      CK(cudaEventElapsedTime(&ms, g[d].e0, g[d].e1));
      t[d][0].push_back(ms * 1000.f);
      CK(cudaEventElapsedTime(&ms, g[d].e0, g[d].e3));
      t[d][1].push_back(ms * 1000.f);
    }
  }
  Spans s;
  for (int d = 0; d < 2; ++d)
    for (int k = 0; k < 2; ++k) {
      std::sort(t[d][k].begin(), t[d][k].end());
      (k == 0 ? s.gemm : s.send)[d] = t[d][k][t[d][k].size() / 2];
    }
  return s;
}

void launch_send(const Gpu& g, const Gpu& peer, int mode, int sms) {
  if (mode == 2) {
    CK(cudaMemcpyPeerAsync(peer.acc, peer.dev, g.src, g.dev, kChunkBytes, g.send_st));
  } else if (mode == kStore) {
    bulk_send<kStore><<<sms, 32, kSmem, g.send_st>>>(reinterpret_cast<const char*>(g.src),
                                                     reinterpret_cast<char*>(peer.acc), kChunkBytes,
                                                     kPiece, kStages);
  } else {
    bulk_send<kReduce><<<sms, 32, kSmem, g.send_st>>>(reinterpret_cast<const char*>(g.src),
                                                      reinterpret_cast<char*>(peer.acc),
                                                      kChunkBytes, kPiece, kStages);
  }
  CK(cudaGetLastError());
}

uint16_t bf16_bits(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float bf16_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

int main() {
  int ndev = 0;
  CK(cudaGetDeviceCount(&ndev));
  if (ndev < 2) {
    std::fprintf(stderr, "needs two GPUs\n");
    return 1;
  }
  Gpu g[2];
  for (int d = 0; d < 2; ++d) {
    Gpu& x = g[d];
    x.dev = d;
    use(x);
    CK(cudaDeviceEnablePeerAccess(1 - d, 0));
    CK(cudaMalloc(&x.A, kM * kK * 2));
    CK(cudaMalloc(&x.B, kN * kK * 2));
    CK(cudaMalloc(&x.C, kChunkBytes));
    CK(cudaMalloc(&x.src, kChunkBytes));
    CK(cudaMalloc(&x.acc, kChunkBytes));
    CK(cudaMalloc(&x.flush, size_t(128) << 20));
    fill_bf16<<<1024, 256>>>(x.A, kM * kK, 11 + d, true);
    fill_bf16<<<1024, 256>>>(x.B, kN * kK, 21 + d, true);
    fill_bf16<<<1024, 256>>>(x.src, kChunkBytes / 2, 31 + d, true);
    fill_bf16<<<1024, 256>>>(x.acc, kChunkBytes / 2, 41 + d, true);
    int lo, hi;
    CK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    CK(cudaStreamCreateWithPriority(&x.gemm_st, cudaStreamNonBlocking, lo));
    CK(cudaStreamCreateWithPriority(&x.send_st, cudaStreamNonBlocking, hi));
    for (cudaEvent_t* ev : {&x.e0, &x.e1, &x.e2, &x.e3}) CK(cudaEventCreate(ev));
    CK(cudaFuncSetAttribute(bulk_send<kStore>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            int(kSmem)));
    CK(cudaFuncSetAttribute(bulk_send<kReduce>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            int(kSmem)));
    CK(cudaDeviceSynchronize());
  }
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs; chunk %zu MiB; piece %u B x %d stages\n", prop.name, sms,
              kChunkBytes >> 20, kPiece, kStages);

  // 4. Correctness: GPU 0 reduce-adds its src into GPU 1's acc once; compare with the host sum.
  {
    std::vector<uint16_t> src(kChunkBytes / 2), acc(kChunkBytes / 2), got(kChunkBytes / 2);
    use(g[0]);
    CK(cudaMemcpy(src.data(), g[0].src, kChunkBytes, cudaMemcpyDeviceToHost));
    use(g[1]);
    CK(cudaMemcpy(acc.data(), g[1].acc, kChunkBytes, cudaMemcpyDeviceToHost));
    use(g[0]);
    launch_send(g[0], g[1], kReduce, 4);
    CK(cudaStreamSynchronize(g[0].send_st));
    use(g[1]);
    CK(cudaMemcpy(got.data(), g[1].acc, kChunkBytes, cudaMemcpyDeviceToHost));
    size_t bad = 0, first = SIZE_MAX;
    for (size_t i = 0; i < got.size(); ++i) {
      const uint16_t want = bf16_bits(bf16_float(acc[i]) + bf16_float(src[i]));
      if (got[i] != want) {
        ++bad;
        if (first == SIZE_MAX) first = i;
      }
    }
    std::printf(
        "bulk bf16 reduction into the peer: %zu of %zu elements differ from the host's "
        "round-to-nearest sum",
        bad, got.size());
    if (bad)
      std::printf(" (first %zu: %04x + %04x -> %04x, want %04x)", first, acc[first], src[first],
                  got[first], bf16_bits(bf16_float(acc[first]) + bf16_float(src[first])));
    std::printf("\n");
  }

  const int iters = 30;
  const char* mode_name[] = {"bulk store", "bulk reduce", "copy engine"};
  // 1. Sends alone, both directions at once.
  for (int mode : {2, 0, 1}) {
    for (int s : mode == 2 ? std::vector<int>{0} : std::vector<int>{2, 4, 6, 8, 16}) {
      Spans r = run_both(g, iters, [&](Gpu& x, int d) {
        launch_send(x, g[1 - d], mode, s);
        CK(cudaEventRecord(x.e3, x.send_st));
        CK(cudaEventRecord(x.e1, x.gemm_st));
      });
      std::printf("send alone  %-12s %2d SMs: %6.1f / %6.1f us  %5.0f / %5.0f GB/s\n",
                  mode_name[mode], s, r.send[0], r.send[1], kChunkBytes / r.send[0] / 1e3,
                  kChunkBytes / r.send[1] / 1e3);
    }
  }

  // 2. The chunk GEMM alone, whole GPU and with SMs left over.
  std::vector<int> targets = {0, sms - 4, sms - 6, sms - 8};
  std::vector<LtChunkGemm*> calls[2];
  for (int d = 0; d < 2; ++d) {
    use(g[d]);
    for (int t : targets)
      calls[d].push_back(new LtChunkGemm(kM, kN, kK, t, g[d].gemm_st, g[d].A, g[d].B, g[d].C));
  }
  for (size_t ti = 0; ti < targets.size(); ++ti) {
    Spans r = run_both(g, iters, [&](Gpu& x, int d) {
      calls[d][ti]->run(x.A, x.B, x.C, x.gemm_st);
      CK(cudaEventRecord(x.e1, x.gemm_st));
      CK(cudaEventRecord(x.e3, x.send_st));
    });
    std::printf("GEMM alone  SM target %3d (algo %d): %6.1f / %6.1f us\n", targets[ti],
                calls[0][ti]->chosen(), r.gemm[0], r.gemm[1]);
  }

  // 3. GEMM and send at once; the send starts first (its blocks take their SMs), then the GEMM.
  struct Combo {
    int mode, send_sms, target_index;
  };
  const Combo combos[] = {{2, 0, 0}, {1, 4, 1}, {1, 6, 2}, {1, 8, 3},
                          {0, 4, 1}, {1, 4, 0}, {2, 0, 0}, {1, 4, 1}};
  for (const Combo& c : combos) {
    Spans r = run_both(g, iters, [&](Gpu& x, int d) {
      launch_send(x, g[1 - d], c.mode, c.send_sms);
      CK(cudaEventRecord(x.e3, x.send_st));
      calls[d][c.target_index]->run(x.A, x.B, x.C, x.gemm_st);
      CK(cudaEventRecord(x.e1, x.gemm_st));
    });
    std::printf(
        "GEMM (SM target %3d) + %-12s %2d SMs: GEMM %6.1f / %6.1f us, send %6.1f / %6.1f "
        "us\n",
        targets[c.target_index], mode_name[c.mode], c.send_sms, r.gemm[0], r.gemm[1], r.send[0],
        r.send[1]);
  }
  return 0;
}
