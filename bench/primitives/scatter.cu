// (f) Row scatter: the MoE dispatch's send pattern with nothing else in the kernel. Every rank
// owns T rows; row t goes to a subset of the peers (each with probability 7/8, about what 8 experts
// among 4 ranks give; or, one variant, exactly one peer in turn), into slot t of the sender's
// region there. One warp per row at a time, its lane 0 moving the row as the throughput dispatch
// does: bulk load into the warp's shared-memory slot, one bulk store per destination (in the order
// me + 1, me + 2, ...), then a wait for the previous row's stores.
//
// The variants add the dispatch's traits one at a time: rows by an atomic ticket, a bf16 row
// loaded per fp8 row, a copy to the own rank, 13 sending warps a block, the warp's quantization,
// metadata and scales as two more bulk stores per destination, and slots that are only 16-byte
// aligned. They found what capped the dispatch at ~265 GB/s (docs/perf.md, twentieth pass): bulk
// stores from 16-byte aligned shared memory, or of sizes that are not a multiple of 32, run 20-30%
// below the links' rate; the pattern itself reaches ~340 GB/s.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "bench/common/cuda_resources.h"
#include "bench/primitives/suite.h"
#include "weft/device/tma.cuh"
#include "weft/runtime/cuda_check.h"

namespace weft::bench::primitives {
namespace {

constexpr int kScatterWarps = 16;  // warps per block at most, as the throughput dispatch's blocks
// A row's small pieces, as the dispatch sends them beside an fp8 row at H = 7168, k = 8: 112 bytes
// of metadata and 224 of scales, in a 128-byte aligned area of the slot after the row.
constexpr uint32_t kMetaBytes = 112;
constexpr uint32_t kScaleBytes = 224;
constexpr uint32_t kSideBytes = 384;  // in the slot: metadata at 0, scales at 128
constexpr uint32_t kSideStride = kMetaBytes + kScaleBytes;  // at the destination: back to back

struct ScatterParams {
  char* dst;        // symmetric: [W][T] rows of R bytes, the sender's region at sender * T * R
  char* side;       // symmetric: [W][T] x kSideStride bytes of metadata and scales, or null
  const char* src;  // [T] rows of load_bytes (R, or 2R: a bf16 row sent as fp8)
  const uint32_t* masks;  // [W][T]: the peers each sender's row t goes to
  uint32_t* ticket;       // rows by an atomic ticket (as the dispatch), or null: by stride
  uint32_t ticket_base;   // the ticket's value when this launch starts (it is never reset)
  int T;
  uint32_t R;
  uint32_t load_bytes;
  uint32_t
      slot_bytes;  // bytes between the warps' slots (a multiple of 128, or 16 more: misaligned)
  int warps;       // sending warps per block (<= kScatterWarps)
  bool to_self;    // also store the row into this rank's own region (the dispatch does)
  bool quantize;   // the warp quantizes the loaded bf16 row to the fp8 row it sends
};

// In place, by the warp: the 2R bytes of bf16 at `slot` become R bytes of fp8 e4m3 with a scale per
// 128 channels into `scales`, the dispatch's arithmetic (unit u = 16 channels, by lane u % 32).
__device__ __forceinline__ void quantize_slot(char* slot, float* scales, uint32_t R, int lane) {
  const int units = static_cast<int>(R / 16);
  for (int base = 0; base < units; base += 32) {
    const int u = base + lane;
    uint4 v[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
    if (u < units) {
      v[0] = *reinterpret_cast<const uint4*>(slot + static_cast<size_t>(u) * 32);
      v[1] = *reinterpret_cast<const uint4*>(slot + static_cast<size_t>(u) * 32 + 16);
    }
    __syncwarp();  // every lane has read its bf16 units before any fp8 unit overwrites them
    const auto* h = reinterpret_cast<const __nv_bfloat162*>(v);
    float amax = 0.f;
    for (int i = 0; i < 8; ++i) {
      const float2 f = __bfloat1622float2(h[i]);
      amax = fmaxf(amax, fmaxf(fabsf(f.x), fabsf(f.y)));
    }
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
    const float inv = amax > 0.f ? 448.f / amax : 1.f;
    if (u < units) {
      uint32_t out[4];
      for (int i = 0; i < 4; ++i) {
        const float2 a = __bfloat1622float2(h[2 * i]), b = __bfloat1622float2(h[2 * i + 1]);
        const uint32_t lo =
            __nv_cvt_float2_to_fp8x2(make_float2(a.x * inv, a.y * inv), __NV_SATFINITE, __NV_E4M3);
        const uint32_t hi =
            __nv_cvt_float2_to_fp8x2(make_float2(b.x * inv, b.y * inv), __NV_SATFINITE, __NV_E4M3);
        out[i] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(slot + static_cast<size_t>(u) * 16) =
          make_uint4(out[0], out[1], out[2], out[3]);
      if ((lane & 7) == 0) scales[u >> 3] = amax / 448.f;
    }
  }
}

__global__ void __launch_bounds__(kScatterWarps * 32, 1)
    scatter_kernel(const __grid_constant__ dev::Context ctx, const ScatterParams p) {
#if __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char scatter_smem[];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  if (warp >= p.warps) return;
  auto* bar = reinterpret_cast<uint64_t*>(scatter_smem) + warp;
  char* slot =
      reinterpret_cast<char*>(scatter_smem) + 1024 + static_cast<size_t>(warp) * p.slot_bytes;
  char* side = slot + p.load_bytes;  // metadata, then scales at +128 (whatever bytes: not checked)
  const int W = ctx.world_size, me = ctx.rank;
  if (lane == 0) dev::mbarrier_init(bar, 1);
  __syncwarp();
  uint32_t phase = 0;
  const uint32_t* masks = p.masks + static_cast<size_t>(me) * p.T;
  const int stride = static_cast<int>(gridDim.x) * p.warps;
  for (int t = static_cast<int>(blockIdx.x) * p.warps + warp;; t += stride) {
    if (p.ticket != nullptr) {
      uint32_t v = 0;
      if (lane == 0) v = atomicAdd(p.ticket, 1u) - p.ticket_base;
      t = static_cast<int>(__shfl_sync(0xffffffffu, v, 0));
    }
    if (t >= p.T) break;
    const uint32_t mask = masks[t] | (p.to_self ? 1u << me : 0u);
    if (mask == 0) continue;
    if (lane == 0) {
      dev::bulk_wait_read<0>();  // the previous row's stores have read the slot
      dev::mbarrier_arrive_expect_tx(bar, p.load_bytes);
      dev::bulk_load(slot, p.src + static_cast<size_t>(t) * p.load_bytes, p.load_bytes, bar);
    }
    __syncwarp();
    dev::mbarrier_wait(ctx, bar, phase);
    phase ^= 1u;
    if (p.quantize) {
      quantize_slot(slot, reinterpret_cast<float*>(side + 128), p.R, lane);
      dev::fence_proxy_async_shared();  // the generic writes, before the bulk stores read them
    }
    __syncwarp();
    if (lane == 0) {
      for (int i = 1; i <= W; ++i) {
        const int d = (me + i) % W;
        if (((mask >> d) & 1u) == 0) continue;
        const size_t r = static_cast<size_t>(me) * p.T + t;
        dev::bulk_store(dev::symm_at(ctx, p.dst + r * p.R, d), slot, p.R);
        if (p.side != nullptr) {
          dev::bulk_store(dev::symm_at(ctx, p.side + r * kSideStride, d), side, kMetaBytes);
          dev::bulk_store(dev::symm_at(ctx, p.side + r * kSideStride + kMetaBytes, d), side + 128,
                          kScaleBytes);
        }
      }
      dev::bulk_commit();
      dev::bulk_wait<1>();  // the previous row's stores are complete
    }
    __syncwarp();
  }
  if (lane == 0) dev::bulk_wait<0>();
#endif
}

// Every sender's masks, the same on every rank (a seed all ranks share).
std::vector<uint32_t> make_masks(int W, int T, bool one_peer, uint64_t seed) {
  std::vector<uint32_t> m(static_cast<size_t>(W) * T, 0);
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution take(7.0 / 8.0);
  for (int s = 0; s < W; ++s)
    for (int t = 0; t < T; ++t) {
      uint32_t v = 0;
      if (one_peer) {
        v = 1u << ((s + 1 + t % (W - 1)) % W);
      } else {
        for (int d = 0; d < W; ++d)
          if (d != s && take(rng)) v |= 1u << d;
      }
      m[static_cast<size_t>(s) * T + t] = v;
    }
  return m;
}

// Mismatches between sender s's region here and what it sent: row t equals the first R bytes of
// the sender's source row t (rows `src_stride` bytes apart) where its mask holds this rank, and
// stays zero elsewhere.
__global__ void check_scatter_kernel(const char* region, const char* expected,
                                     const uint32_t* masks, int me, int T, uint32_t R,
                                     uint32_t src_stride, unsigned long long* bad) {
  const size_t words = static_cast<size_t>(T) * R / 4;
  unsigned long long n = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int t = static_cast<int>(i * 4 / R);
    const size_t e =
        (static_cast<size_t>(t) * src_stride + (i * 4 - static_cast<size_t>(t) * R)) / 4;
    const uint32_t want =
        (masks[t] >> me) & 1u ? reinterpret_cast<const uint32_t*>(expected)[e] : 0u;
    n += reinterpret_cast<const uint32_t*>(region)[i] != want;
  }
  if (n) atomicAdd(bad, n);
}

// Words of every peer's region on this rank (T rows of R bytes per sender) that differ from what
// that sender sent in test `test` (check_scatter_kernel: the first R bytes of its source rows,
// src_stride apart, where its mask names this rank, zero elsewhere). Synchronizes the stream.
unsigned long long scatter_mismatches(Suite& s, int test, const char* dst, const uint32_t* masks,
                                      int T, uint32_t R, uint32_t src_stride,
                                      DeviceMemory& expected, DeviceMemory& bad) {
  const int W = s.world.size(), me = s.world.rank();
  WEFT_CUDA_CHECK(cudaMemsetAsync(bad.data(), 0, 8, s.stream));
  for (int snd = 0; snd < W; ++snd) {
    if (snd == me) continue;
    fill_pattern(expected.data(), static_cast<size_t>(T) * src_stride, s.seed(test, snd), s.stream);
    check_scatter_kernel<<<264, 256, 0, s.stream>>>(
        dst + static_cast<size_t>(snd) * T * R, expected.as<char>(),
        masks + static_cast<size_t>(snd) * T, me, T, R, src_stride, bad.as<unsigned long long>());
    WEFT_CHECK_LAUNCH();
  }
  unsigned long long n = 0;
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&n, bad.data(), 8, cudaMemcpyDeviceToHost, s.stream));
  WEFT_CUDA_CHECK(cudaStreamSynchronize(s.stream));
  return n;
}

struct ScatterVariant {
  uint32_t R = 7168;
  int sms = 12;  // 0: every SM
  bool one_peer = false;
  // The dispatch's traits.
  bool ticket = false;
  bool load_twice = false;  // a bf16 row of 2R loaded for each row of R (fp8)
  bool to_self = false;
  int warps = kScatterWarps;
  bool quantize = false;    // (with load_twice) the bytes sent are the quantized row: not checked
  bool side = false;        // metadata and scales, two more stores per destination
  bool misaligned = false;  // slots 16 bytes apart from 128-byte boundaries (the dispatch's were)

  std::string label() const {
    std::string l = fmt::format("{} B rows, {}", R, one_peer ? "1 peer each" : "7/8 of peers");
    if (ticket) l += ", ticket";
    if (load_twice) l += ", 2R loaded";
    if (to_self) l += ", +self";
    if (warps != kScatterWarps) l += fmt::format(", {} warps/SM", warps);
    if (quantize) l += ", quantized";
    if (side) l += ", +meta/scales";
    if (misaligned) l += ", slots 16-B aligned";
    return l + (sms ? fmt::format(", {} SMs", sms) : ", all SMs");
  }
  std::string key() const {
    return fmt::format("r{}_sm{}{}{}{}{}_w{}{}{}{}", R, sms, one_peer ? "_one" : "",
                       ticket ? "_ticket" : "", load_twice ? "_load2" : "", to_self ? "_self" : "",
                       warps, quantize ? "_q" : "", side ? "_side" : "",
                       misaligned ? "_misaligned" : "");
  }
};

// The plain pattern, then the dispatch's traits one at a time, then together (aligned and not).
std::vector<ScatterVariant> scatter_variants(bool quick) {
  std::vector<ScatterVariant> v;
  auto add = [&](auto&& change) {
    ScatterVariant x;
    change(x);
    v.push_back(x);
  };
  add([](ScatterVariant&) {});
  add([](ScatterVariant& x) { x.sms = 0; });
  if (quick) return v;
  add([](ScatterVariant& x) { x.one_peer = true; });
  add([](ScatterVariant& x) { x.ticket = true; });
  add([](ScatterVariant& x) {
    x.R = 7184;
    x.ticket = true;
  });  // a size not a multiple of 32
  auto fp8 = [](ScatterVariant& x) {
    x.ticket = x.load_twice = x.to_self = true;
    x.warps = 13;
  };
  add(fp8);
  for (bool misaligned : {false, true}) {
    add([&](ScatterVariant& x) {
      fp8(x);
      x.side = true;
      x.misaligned = misaligned;
    });
    add([&](ScatterVariant& x) {
      fp8(x);
      x.quantize = true;
      x.misaligned = misaligned;
    });
    add([&](ScatterVariant& x) {
      fp8(x);
      x.quantize = x.side = true;
      x.misaligned = misaligned;
    });
    add([&](ScatterVariant& x) {
      fp8(x);
      x.quantize = x.side = true;
      x.misaligned = misaligned;
      x.sms = 36;
    });
    add([&](ScatterVariant& x) {
      x.R = 14336;
      x.ticket = x.to_self = x.side = true;
      x.warps = 13;
      x.misaligned = misaligned;
    });
  }
  return v;
}

// ---- (g) the low-latency dispatch's send pattern --------------------------------------------
//
// T = 128 rows of 7168 bytes (an fp8 row at H = 7168), token t by a group of `warps` warps in block
// t % send_blocks (blocks first, as the low-latency dispatch places its sending groups): every
// thread loads its units (16 bytes each, or 32 when a bf16 row is read per fp8 row) before it
// stores them, by SM stores, to each destination in the order me + 1, me + 2, .... The variants add
// the dispatch's small pieces per destination: 56 scales (224 bytes; stored as the dispatch does, 4
// bytes by every 8th thread, or as 14 stores of 16 bytes after the row) and 25 tagged 8-byte
// metadata words; fewer sending SMs (several rows a block); receivers: the other warps wait for
// the rows coming to their rank (each row's first metadata word, as the dispatch's receivers do),
// beside the senders or on SMs of their own; and the row, its scales and metadata as one bulk
// store from shared memory (there the metadata word travels in the row's own store, so seeing it
// does not order the row's other bytes as a last SM store does). The questions they answer: does
// moving ~2.4 MB this way reach the rate of the all-peer put (part b, run with --bytes 868352
// beside it), which trait costs what, how long after the last store the last row is seen, and would
// SMs that only send keep the rate.

constexpr int kLlRows = 128;
constexpr int kLlMaxUnits = 4;           // per thread: a 128-thread group covers 448 units
constexpr uint32_t kLlSideStride = 512;  // per row at the destination: scales at 0, metadata at 256
constexpr int kLlMetaWords = 25;         // 1 + 3k at k = 8
constexpr uint32_t kLlTmaSlot = 7680;    // row (7168) + scales (224) + metadata (200), to 128 B

enum class LlScales : int { none, every_8th_thread, after_row };

struct LlScatterParams {
  char* dst;        // symmetric: [W][T] rows of R bytes, the sender's region at sender * T * R
  char* side;       // symmetric: [W][T] x kLlSideStride bytes
  const char* src;  // [T] rows of load_bytes (R, or 2R: a bf16 row read per fp8 row)
  const uint32_t* masks;
  int T;
  uint32_t R;
  uint32_t load_bytes;
  int warps;  // per token: 4 is the dispatch's sending group
  LlScales scales;
  bool meta;
  bool strong;   // st.relaxed.sys (the fp8 dispatch's) or plain stores
  bool to_self;  // the row also to this rank's own region
  int send_blocks;  // token t by group t / send_blocks of block t % send_blocks
  // Receivers: the warps without a row wait for the rows sent to this rank, each row's first
  // metadata word (relaxed, system scope) until it carries this launch's tag, as the dispatch's
  // receivers wait for theirs; the kernel then ends when the last row has landed. Rows go to
  // blocks round robin (to the blocks without a sending group when split), and within a block to
  // its warps without a row.
  bool receivers;
  bool split;
  const int32_t* expect;  // [n_expect]: staging slots (sender * T + token) of the rows coming here
  int n_expect;
  uint32_t tag;                    // this launch's: the metadata words carry it
  unsigned long long* poll_stats;  // [2]: the receivers' polls, and their ns in all
  // The group writes the row, its scales and metadata into a 128-byte aligned slot of shared
  // memory (kLlTmaSlot bytes) and one thread bulk-stores the slot to each destination (rows at
  // kLlTmaSlot strides there), instead of SM stores.
  bool tma;
};

__device__ __forceinline__ uint64_t ll_now_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ void ll_store16(void* p, const uint4& v, bool strong) {
  if (strong) {
    asm volatile("st.relaxed.sys.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x),
                 "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
  } else {
    *reinterpret_cast<uint4*>(p) = v;
  }
}

__device__ __forceinline__ void ll_send_row(const dev::Context& ctx, const LlScatterParams& p,
                                            int t, int tid, int n, uint32_t mask, int W, int me);
__device__ __forceinline__ void ll_send_row_tma(const dev::Context& ctx, const LlScatterParams& p,
                                                int t, int tid, int n, int group, uint32_t mask,
                                                int W, int me);
__device__ __forceinline__ void ll_receive(const dev::Context& ctx, const LlScatterParams& p,
                                           int block, int r, int nr);

__global__ void __launch_bounds__(kScatterWarps * 32, 1)
    ll_scatter_kernel(const __grid_constant__ dev::Context ctx, const LlScatterParams p) {
  const int n = 32 * p.warps;
  const int group = static_cast<int>(threadIdx.x) / n, tid = static_cast<int>(threadIdx.x) % n;
  const int block = static_cast<int>(blockIdx.x), warp = static_cast<int>(threadIdx.x) / 32;
  const int t = group * p.send_blocks + block;
  // Sending groups of this block: those with a token.
  const int groups = block < p.send_blocks ? min(kScatterWarps / p.warps,
                                                 (p.T - block + p.send_blocks - 1) / p.send_blocks)
                                           : 0;
  if (warp >= groups * p.warps) {
    if (p.receivers)
      ll_receive(ctx, p, block, warp - groups * p.warps, kScatterWarps - groups * p.warps);
    return;
  }
  const int W = ctx.world_size, me = ctx.rank;
  const uint32_t mask = p.masks[static_cast<size_t>(me) * p.T + t] | (p.to_self ? 1u << me : 0u);
  if (p.tma) {
#if __CUDA_ARCH__ >= 900
    ll_send_row_tma(ctx, p, t, tid, n, group, mask, W, me);
#else
    __trap();  // the host runs TMA variants on sm_90 only
#endif
  } else {
    ll_send_row(ctx, p, t, tid, n, mask, W, me);
  }
}

// The first metadata word of staging slot `slot` on this rank.
__device__ __forceinline__ const uint64_t* ll_meta_word(const LlScatterParams& p, size_t slot) {
  return p.tma ? reinterpret_cast<const uint64_t*>(p.dst + slot * kLlTmaSlot + p.R + 224)
               : reinterpret_cast<const uint64_t*>(p.side + slot * kLlSideStride + 256);
}

// Warp `r` of the `nr` receiving warps of `block` waits for its share of the rows (the host runs
// receivers only where every receiving block has receiving warps), at most ctx.wait_timeout_ns
// per row before it traps with a report.
__device__ __forceinline__ void ll_receive(const dev::Context& ctx, const LlScatterParams& p,
                                           int block, int r, int nr) {
  if ((threadIdx.x & 31) != 0 || nr <= 0) return;
  const int first = p.split ? p.send_blocks : 0;
  const int nblocks = static_cast<int>(gridDim.x) - first;
  if (block < first) return;
  const uint64_t start = ll_now_ns();
  unsigned long long loads = 0;
  int k = 0;  // this block's rows: i = (block - first) + k * nblocks; its warp r takes k % nr == r
  for (int i = block - first; i < p.n_expect; i += nblocks, ++k) {
    if (k % nr != r) continue;
    const uint64_t* word = ll_meta_word(p, static_cast<size_t>(p.expect[i]));
    const uint64_t since = ll_now_ns();
    do {
      if ((++loads & 1023) == 0 && ctx.wait_timeout_ns != 0 &&
          ll_now_ns() - since > ctx.wait_timeout_ns) {
        printf("weft scatter-ll: rank %d: the row in staging slot %d never arrived (tag %u)\n",
               ctx.rank, p.expect[i], p.tag);
        __trap();
      }
    } while (static_cast<uint32_t>(dev::ld<dev::Sem::relaxed, dev::Scope::sys>(word) >> 32) !=
             p.tag);
  }
  if (loads) {
    atomicAdd(p.poll_stats, loads);
    atomicAdd(p.poll_stats + 1, static_cast<unsigned long long>(ll_now_ns() - start));
  }
}

#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ void ll_send_row_tma(const dev::Context& ctx, const LlScatterParams& p,
                                                int t, int tid, int n, int group, uint32_t mask,
                                                int W, int me) {
  extern __shared__ __align__(16) unsigned char ll_smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(ll_smem));
  char* slot = reinterpret_cast<char*>(ll_smem) + ((128u - base % 128u) % 128u) +
               static_cast<size_t>(group) * kLlTmaSlot;
  const int U = static_cast<int>(p.R / 16);
  const char* src = p.src + static_cast<size_t>(t) * p.load_bytes;
  for (int u = tid; u < U; u += n) {
    uint4 v;
    if (p.load_bytes == 2 * p.R) {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(src + static_cast<size_t>(u) * 32));
      const uint4 c = __ldg(reinterpret_cast<const uint4*>(src + static_cast<size_t>(u) * 32 + 16));
      v = make_uint4(a.x ^ c.x, a.y ^ c.y, a.z ^ c.z, a.w ^ c.w);
    } else {
      v = __ldg(reinterpret_cast<const uint4*>(src + static_cast<size_t>(u) * 16));
    }
    *reinterpret_cast<uint4*>(slot + static_cast<size_t>(u) * 16) = v;
    if ((tid & 7) == 0) reinterpret_cast<uint32_t*>(slot + p.R)[u >> 3] = v.x;
  }
  if (tid < kLlMetaWords)
    reinterpret_cast<uint64_t*>(slot + p.R + 224)[tid] =
        dev::tagged_word(p.tag, static_cast<uint32_t>(t));
  dev::fence_proxy_async_shared();  // the generic writes, before the bulk stores read them
  asm volatile("bar.sync %0, %1;" ::"r"(1 + group), "r"(n) : "memory");
  if (tid == 0 && mask != 0) {
    const size_t r = static_cast<size_t>(me) * p.T + t;
    for (int i = 1; i <= W; ++i) {
      const int d = (me + i) % W;
      if ((mask >> d) & 1u)
        dev::bulk_store(dev::symm_at(ctx, p.dst + r * kLlTmaSlot, d), slot, kLlTmaSlot);
    }
    dev::bulk_commit();
    dev::bulk_wait<0>();
  }
}
#endif

__device__ __forceinline__ void ll_send_row(const dev::Context& ctx, const LlScatterParams& p,
                                            int t, int tid, int n, uint32_t mask, int W, int me) {
  if (mask == 0) return;
  const int U = static_cast<int>(p.R / 16);
  const bool bf16 = p.load_bytes == 2 * p.R;
  const char* src = p.src + static_cast<size_t>(t) * p.load_bytes;
  uint4 v[kLlMaxUnits];
#pragma unroll
  for (int b = 0; b < kLlMaxUnits; ++b) {
    const int u = tid + b * n;
    v[b] = make_uint4(0, 0, 0, 0);
    if (u < U) {
      if (bf16) {  // two halves read, one 16-byte unit kept (the quantization's load, not its math)
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(src + static_cast<size_t>(u) * 32));
        const uint4 c =
            __ldg(reinterpret_cast<const uint4*>(src + static_cast<size_t>(u) * 32 + 16));
        v[b] = make_uint4(a.x ^ c.x, a.y ^ c.y, a.z ^ c.z, a.w ^ c.w);
      } else {
        v[b] = __ldg(reinterpret_cast<const uint4*>(src + static_cast<size_t>(u) * 16));
      }
    }
  }
  const size_t slot = static_cast<size_t>(me) * p.T + t;
#pragma unroll
  for (int b = 0; b < kLlMaxUnits; ++b) {
    const int u = tid + b * n;
    if (u >= U) continue;
    for (int i = 1; i <= W; ++i) {
      const int d = (me + i) % W;
      if (((mask >> d) & 1u) == 0) continue;
      ll_store16(dev::symm_at(ctx, p.dst + slot * p.R, d) + static_cast<size_t>(u) * 16, v[b],
                 p.strong);
      if (p.scales == LlScales::every_8th_thread && (tid & 7) == 0)
        dev::st<dev::Sem::relaxed, dev::Scope::sys>(
            reinterpret_cast<uint32_t*>(dev::symm_at(ctx, p.side + slot * kLlSideStride, d)) +
                (u >> 3),
            v[b].x);
    }
  }
  for (int i = 1; i <= W; ++i) {
    const int d = (me + i) % W;
    if (((mask >> d) & 1u) == 0) continue;
    char* side = dev::symm_at(ctx, p.side + slot * kLlSideStride, d);
    if (p.scales == LlScales::after_row && tid < U / 32)  // 4 scales (16 bytes) a thread
      ll_store16(side + static_cast<size_t>(tid) * 16, v[0], true);
    if (p.meta && tid < kLlMetaWords)
      dev::st<dev::Sem::relaxed, dev::Scope::sys>(
          reinterpret_cast<uint64_t*>(side + 256) + tid,
          dev::tagged_word(p.tag, static_cast<uint32_t>(t)));
  }
}

struct LlScatterVariant {
  int warps = 4;
  int send_blocks = kLlRows;  // one row per block
  bool receivers = false;     // the other warps wait for the rows coming here (needs meta)
  bool split = false;         // receivers only in the blocks without a sending group
  bool strong = true;
  bool bf16_load = false;
  LlScales scales = LlScales::none;
  bool meta = false;
  bool to_self = false;
  bool tma = false;

  std::string label() const {
    std::string l = fmt::format("{} rows x 7168 B on {} SMs, {} warps/row, {} stores", kLlRows,
                                send_blocks, warps, strong ? "strong" : "weak");
    if (receivers) l += split ? ", receivers on the other SMs" : ", receivers beside";
    if (tma) l += ", TMA (row, scales, meta: one bulk store)";
    if (bf16_load) l += ", bf16 read";
    if (scales == LlScales::every_8th_thread) l += ", +scales (4 B by 1 thread in 8)";
    if (scales == LlScales::after_row) l += ", +scales (16 B stores after the row)";
    if (meta) l += ", +meta words";
    if (to_self) l += ", +self";
    return l;
  }
  std::string key() const {
    return fmt::format("ll_b{}_w{}{}{}{}{}_s{}{}{}", send_blocks, warps,
                       receivers ? (split ? "_recv_split" : "_recv") : "", tma ? "_tma" : "",
                       strong ? "_strong" : "_weak", bf16_load ? "_bf16" : "",
                       static_cast<int>(scales), meta ? "_meta" : "", to_self ? "_self" : "");
  }
};

std::vector<LlScatterVariant> ll_scatter_variants(bool quick) {
  std::vector<LlScatterVariant> v;
  auto add = [&](auto&& change) {
    LlScatterVariant x;
    change(x);
    v.push_back(x);
  };
  auto dispatch = [](LlScatterVariant& x) {  // every trait of the fp8 dispatch's sends
    x.bf16_load = x.meta = x.to_self = true;
    x.scales = LlScales::every_8th_thread;
  };
  add([](LlScatterVariant&) {});
  add(dispatch);
  if (quick) return v;
  add([](LlScatterVariant& x) { x.strong = false; });
  add([](LlScatterVariant& x) { x.warps = 8; });
  add([](LlScatterVariant& x) { x.warps = 16; });
  add([](LlScatterVariant& x) { x.scales = LlScales::every_8th_thread; });
  add([](LlScatterVariant& x) { x.scales = LlScales::after_row; });
  add([](LlScatterVariant& x) { x.meta = true; });
  add([](LlScatterVariant& x) { x.bf16_load = true; });
  add([](LlScatterVariant& x) { x.to_self = true; });
  add([&](LlScatterVariant& x) {
    dispatch(x);
    x.scales = LlScales::after_row;
  });
  add([&](LlScatterVariant& x) {
    dispatch(x);
    x.warps = 16;
  });
  // Fewer sending SMs (rows per block = 128 / SMs): would a split into sending and receiving SMs
  // keep the send rate?
  for (int blocks : {96, 64, 43, 32}) {
    add([&](LlScatterVariant& x) {
      dispatch(x);
      x.send_blocks = blocks;
      x.warps = blocks == 96 || blocks == 64 ? 8 : blocks == 43 ? 5 : 4;
    });
  }
  add([&](LlScatterVariant& x) {
    dispatch(x);
    x.send_blocks = 64;
    x.warps = 4;
  });
  // The same with the rows waited for at the other end (kernel time = the last row landed).
  add([&](LlScatterVariant& x) {
    dispatch(x);
    x.receivers = true;
  });
  for (int blocks : {96, 64, 43}) {
    add([&](LlScatterVariant& x) {
      dispatch(x);
      x.receivers = x.split = true;
      x.send_blocks = blocks;
      x.warps = blocks == 43 ? 5 : 8;
    });
  }
  add([&](LlScatterVariant& x) {
    dispatch(x);
    x.tma = true;
  });
  add([&](LlScatterVariant& x) {
    dispatch(x);
    x.tma = x.receivers = true;
  });
  add([](LlScatterVariant&) {});  // the first again: drift across the run
  return v;
}

}  // namespace

void run_scatter(Suite& s) {
  World& w = s.world;
  const int W = w.size(), me = w.rank();
  const int T = 4096;
  const dev::Context ctx = w.context();
  const std::vector<ScatterVariant> vs = scatter_variants(s.opt.quick);
  uint32_t max_load = 0, max_r = 0;
  for (const auto& v : vs) {
    max_r = std::max(max_r, v.R);
    max_load = std::max(max_load, v.R * (v.load_twice ? 2u : 1u));
  }
  auto dst = w.alloc<char>(static_cast<size_t>(W) * T * max_r);
  auto side = w.alloc<char>(static_cast<size_t>(W) * T * kSideStride);
  DeviceMemory src(static_cast<size_t>(T) * max_load);
  DeviceMemory expected(static_cast<size_t>(T) * max_load);
  DeviceMemory masks_dev(static_cast<size_t>(W) * T * 4);
  DeviceMemory bad(8);
  DeviceMemory ticket(4);
  const std::string bench = "row scatter (MoE send pattern)";
  for (size_t i = 0; i < vs.size(); ++i) {
    const ScatterVariant& v = vs[i];
    const int test = 60 + static_cast<int>(i);
    const std::vector<uint32_t> masks = make_masks(W, T, v.one_peer, s.seed(test, 0));
    WEFT_CUDA_CHECK(cudaMemcpyAsync(masks_dev.data(), masks.data(), masks.size() * 4,
                                    cudaMemcpyHostToDevice, s.stream));
    double remote = 0;  // bytes leaving this GPU
    for (int t = 0; t < T; ++t)
      remote += __builtin_popcount(masks[static_cast<size_t>(me) * T + t]);
    remote *= v.R;
    const uint32_t load_bytes = v.R * (v.load_twice ? 2u : 1u);
    const uint32_t side_bytes = v.quantize || v.side ? kSideBytes : 0u;
    const uint32_t slot_bytes =
        (load_bytes + side_bytes + 127u) / 128u * 128u + (v.misaligned ? 16u : 0u);
    const int smem = 1024 + v.warps * static_cast<int>(slot_bytes);
    WEFT_CHECK(smem <= 227 * 1024, "scatter variant {}: {} bytes of shared memory", v.key(), smem);
    WEFT_CUDA_CHECK(
        cudaFuncSetAttribute(scatter_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const size_t region = static_cast<size_t>(T) * v.R;
    fill_pattern(src.data(), static_cast<size_t>(T) * load_bytes, s.seed(test, me), s.stream);
    WEFT_CUDA_CHECK(cudaMemsetAsync(dst.data(), 0, static_cast<size_t>(W) * region, s.stream));
    WEFT_CUDA_CHECK(cudaMemsetAsync(ticket.data(), 0, 4, s.stream));
    ScatterParams p{dst.data(),
                    v.side ? side.data() : nullptr,
                    src.as<char>(),
                    masks_dev.as<uint32_t>(),
                    v.ticket ? ticket.as<uint32_t>() : nullptr,
                    0,
                    T,
                    v.R,
                    load_bytes,
                    slot_bytes,
                    v.warps,
                    v.to_self,
                    v.quantize};
    const int grid = v.sms ? std::min(v.sms, s.sms) : s.sms;
    // Each launch draws T tickets for rows and one more per warp (the one past the end).
    const uint32_t draws = static_cast<uint32_t>(T + grid * v.warps);
    const std::vector<double> samples = time_iterations(w, s.stream, s.timing(), [&] {
      scatter_kernel<<<grid, kScatterWarps * 32, smem, s.stream>>>(ctx, p);
      WEFT_CHECK_LAUNCH();
      p.ticket_base += draws;
    });
    w.barrier(s.stream);
    w.synchronize(s.stream);
    // Every sender's rows where they are the source's bytes (quantized rows are not).
    const unsigned long long n_bad =
        v.quantize ? 0
                   : scatter_mismatches(s, test, dst.data(), masks_dev.as<uint32_t>(), T, v.R,
                                        load_bytes, expected, bad);
    const bool ok =
        s.all_ok(n_bad == 0, bench + ": " + v.label(), fmt::format("{} mismatched words", n_bad));
    const double us = slowest_rank_median(w, samples);
    const double gb = remote / (us * 1e3);
    s.add({bench, v.label(), fmt::format("{} x {} B", T, v.R), us, gb,
           !ok          ? "FAILED verification"
           : v.quantize ? "bytes not checked (quantized)"
                        : ""});
    if (ok && !v.quantize) {
      ResultRow row = s.row("row_scatter", "u8");
      row.shape.set("rows", T).set("row_bytes", v.R).set("variant", v.key());
      row.weft_us = us;
      row.extra.set("remote_GBps", round_to(gb, 2)).set("remote_bytes_rank", remote);
      row.extra.set(
          "pattern",
          "every rank bulk-stores its rows to a subset of its peers (bench/primitives/scatter.cu)");
      s.emit(row);
    }
  }
}

}  // namespace weft::bench::primitives

namespace weft::bench::primitives {

void run_scatter_ll(Suite& s) {
  World& w = s.world;
  const int W = w.size(), me = w.rank();
  const int T = kLlRows;
  const uint32_t R = 7168;
  const dev::Context ctx = w.context();
  auto dst = w.alloc<char>(static_cast<size_t>(W) * T * kLlTmaSlot);  // (TMA rows: slot strides)
  auto side = w.alloc<char>(static_cast<size_t>(W) * T * kLlSideStride);
  DeviceMemory poll_stats(16);
  DeviceMemory src(static_cast<size_t>(T) * 2 * R);
  DeviceMemory expected(static_cast<size_t>(T) * R);
  DeviceMemory masks_dev(static_cast<size_t>(W) * T * 4);
  DeviceMemory bad(8);
  DeviceMemory expect(static_cast<size_t>(W) * T * 4);
  WEFT_CUDA_CHECK(
      cudaMemsetAsync(side.data(), 0, static_cast<size_t>(W) * T * kLlSideStride, s.stream));
  WEFT_CUDA_CHECK(
      cudaMemsetAsync(dst.data(), 0, static_cast<size_t>(W) * T * kLlTmaSlot, s.stream));
  uint32_t tag = 0;  // of the launches so far: the metadata words never see a tag twice
  const std::string bench = "row scatter, low latency (fp8 dispatch's sends)";
  const std::vector<LlScatterVariant> vs = ll_scatter_variants(s.opt.quick);
  int cc_major = 0;
  WEFT_CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, w.device()));
  for (size_t i = 0; i < vs.size(); ++i) {
    const LlScatterVariant& v = vs[i];
    const int test = 90 + static_cast<int>(i);
    // What this GPU cannot run (the same on every rank: one node of one kind).
    const int rows_per_block = (T + v.send_blocks - 1) / v.send_blocks;
    std::string skip;
    if (v.tma && cc_major < 9)
      skip = "needs sm_90 (bulk copies)";
    else if (v.send_blocks > s.sms || rows_per_block * v.warps > kScatterWarps)
      skip = fmt::format("{} rows on {} of {} SMs do not fit", T, v.send_blocks, s.sms);
    else if (32 * v.warps * kLlMaxUnits < static_cast<int>(R / 16))
      skip = "too few warps for a row";
    else if (v.receivers &&
             (v.split ? v.send_blocks >= s.sms : rows_per_block * v.warps >= kScatterWarps))
      skip = "no warps left to receive";
    if (!skip.empty()) {
      s.add({bench, v.label(), fmt::format("{} x {} B", T, R), NAN, NAN, "skipped: " + skip});
      continue;
    }
    const std::vector<uint32_t> masks = make_masks(W, T, false, s.seed(test, 0));
    WEFT_CUDA_CHECK(cudaMemcpyAsync(masks_dev.data(), masks.data(), masks.size() * 4,
                                    cudaMemcpyHostToDevice, s.stream));
    std::vector<int32_t> rows_here;  // the staging slots the rows coming here land in
    for (int snd = 0; snd < W; ++snd)
      for (int t = 0; t < T; ++t)
        if ((masks[static_cast<size_t>(snd) * T + t] >> me) & 1u || (snd == me && v.to_self))
          rows_here.push_back(snd * T + t);
    WEFT_CUDA_CHECK(cudaMemcpyAsync(expect.data(), rows_here.data(), rows_here.size() * 4,
                                    cudaMemcpyHostToDevice, s.stream));
    WEFT_CHECK(!v.receivers || v.meta || v.tma, "scatter-ll variant {}: receivers need metadata",
               v.key());
    double remote = 0;  // bytes leaving this GPU (rows only)
    for (int t = 0; t < T; ++t)
      remote += __builtin_popcount(masks[static_cast<size_t>(me) * T + t]);
    remote *= R;
    const uint32_t load_bytes = v.bf16_load ? 2 * R : R;
    fill_pattern(src.data(), static_cast<size_t>(T) * load_bytes, s.seed(test, me), s.stream);
    if (!v.tma)
      WEFT_CUDA_CHECK(cudaMemsetAsync(dst.data(), 0, static_cast<size_t>(W) * T * R, s.stream));
    LlScatterParams p{dst.data(),
                      side.data(),
                      src.as<char>(),
                      masks_dev.as<uint32_t>(),
                      T,
                      R,
                      load_bytes,
                      v.warps,
                      v.scales,
                      v.meta,
                      v.strong,
                      v.to_self,
                      v.send_blocks,
                      v.receivers,
                      v.split,
                      expect.as<int32_t>(),
                      static_cast<int>(rows_here.size()),
                      tag,
                      poll_stats.as<unsigned long long>(),
                      v.tma};
    WEFT_CUDA_CHECK(cudaMemsetAsync(poll_stats.data(), 0, 16, s.stream));
    // TMA: a slot per group, the first rounded up to 128 bytes.
    const int smem = v.tma ? 128 + (kScatterWarps / v.warps) * static_cast<int>(kLlTmaSlot) : 0;
    WEFT_CUDA_CHECK(
        cudaFuncSetAttribute(ll_scatter_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const std::vector<double> samples = time_iterations(w, s.stream, s.timing(), [&] {
      p.tag = ++tag;
      ll_scatter_kernel<<<s.sms, kScatterWarps * 32, smem, s.stream>>>(ctx, p);
      WEFT_CHECK_LAUNCH();
    });
    w.barrier(s.stream);
    w.synchronize(s.stream);
    unsigned long long stats[2] = {0, 0};
    WEFT_CUDA_CHECK(
        cudaMemcpyAsync(stats, poll_stats.data(), 16, cudaMemcpyDeviceToHost, s.stream));
    const bool checked = !v.bf16_load && !v.tma;
    const unsigned long long n_bad =
        checked ? scatter_mismatches(s, test, dst.data(), masks_dev.as<uint32_t>(), T, R, R,
                                     expected, bad)
                : 0;
    const bool ok =
        s.all_ok(n_bad == 0, bench + ": " + v.label(), fmt::format("{} mismatched words", n_bad));
    const double us = slowest_rank_median(w, samples);
    const double gb = remote / (us * 1e3);
    WEFT_CUDA_CHECK(cudaStreamSynchronize(s.stream));
    // The receivers' mean time per poll (a load each) on every rank.
    const double poll_ns = stats[0] ? static_cast<double>(stats[1]) / stats[0] : 0.0;
    const auto polls = w.rendezvous().all_gather(fmt::format("{:.0f}", poll_ns));
    std::string note = !ok ? "FAILED verification" : checked ? "" : "bytes not checked";
    if (v.receivers) {
      note += fmt::format("{}ns per poll:", note.empty() ? "" : "; ");
      for (const auto& x : polls) note += " " + x;
    }
    s.add({bench, v.label(), fmt::format("{} x {} B", T, R), us, gb, note});
    if (ok) {
      ResultRow row = s.row("row_scatter_ll", "u8");
      row.shape.set("rows", T).set("row_bytes", R).set("variant", v.key());
      row.weft_us = us;
      row.extra.set("remote_GBps", round_to(gb, 2)).set("remote_bytes_rank", remote);
      row.extra.set("pattern",
                    "the low-latency fp8 dispatch's sends alone: one group of warps per row, SM "
                    "stores to a subset of peers (bench/primitives/scatter.cu)");
      // (The bf16-load and TMA variants move bytes the check does not model: timed, not checked.)
      row.extra.set("check", checked ? "ok" : "bytes not checked");
      s.emit(row);
    }
  }
}

}  // namespace weft::bench::primitives
