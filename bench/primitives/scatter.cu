// (f) Row scatter: the MoE dispatch's send pattern with nothing else in the kernel. Every rank
// owns T rows of R bytes; row t goes to a subset of the peers (pattern "ep": each peer with
// probability 7/8, about what 8 experts among 4 ranks give; pattern "one": exactly one peer, in
// turn), into slot t of the sender's region there. One warp per row at a time (rows by stride over
// the grid's warps), lane 0 moving it as the throughput dispatch does: bulk load into the warp's
// shared-memory slot (or, "no load", the slot's stale bytes: the link alone), one bulk store per
// destination (in the order me + 1, me + 2, ...), then a wait until at most `depth` of its rows'
// stores are incomplete.
//
// Question it answers: the throughput dispatch's rows alone leave a GPU at ~265 GB/s whatever the
// number of sending SMs, where the all-peer put (b) reaches ~348. Which of the pattern's traits
// (row size, destinations per row, the wait for completion, the loads) sets that rate?
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

constexpr int kScatterWarps = 16;  // warps per block, as the throughput dispatch's blocks
// A row's small pieces, as the dispatch sends them beside an fp8 row at H = 7168, k = 8: 112 bytes
// of metadata and 224 of scales (two more bulk stores per destination).
constexpr uint32_t kMetaBytes = 112;
constexpr uint32_t kSideBytes = kMetaBytes + 224;

__device__ __forceinline__ uint64_t globaltimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

struct ScatterParams {
  char* dst;              // symmetric: [W][T][R], the sender's region at dst + sender * T * R
  const char* src;        // [T][R]
  const uint32_t* masks;  // [W][T]: the peers each sender's row t goes to
  int T;
  uint32_t R;
  bool load_each;        // false: one load per warp, then the same bytes again (the link alone)
  uint32_t load_bytes;   // bytes loaded per row (2R: a bf16 row that the dispatch sends as fp8)
  uint32_t spin_ns;      // per row, between its load and its stores (the dispatch's quantization)
  bool to_self;          // also bulk-store the row into this rank's own region (the dispatch does)
  uint32_t* ticket;      // rows by an atomic ticket (the dispatch's), or null: by stride
  int warps;             // sending warps per block (<= kScatterWarps; the dispatch fits 13)
  bool quantize;         // the warp quantizes the loaded bf16 row to the fp8 row it sends
  const int* slots;      // [W][T][W]: row t's slot on each destination (dense), or null: slot t
  char* side;            // symmetric [W][T][kSideBytes]: metadata and scales sent too, or null
  bool packed;           // metadata and scales follow the row in its slot: one store of R + 336
  uint32_t row_stride;   // bytes between rows at the destination (R, or R + 336 packed, or more)
  uint32_t side_stride;  // bytes between rows' side pieces (336: unaligned; 512: meta at 0, scales
                         // at 256)
  bool fence;            // fence.proxy.async.shared before the stores (needed after generic writes)
  bool pad_side;         // side pieces of 128 and 256 bytes (packed: 512), multiples of 128
  bool quantize_aside;   // quantize into the slot's spare half, not in place: the raw row is sent
};

// In place, by the warp: the 2R bytes of bf16 at `slot` become R bytes of fp8 e4m3 (one scale
// per 128 channels into `scales`), as the dispatch quantizes (unit u = 16 channels by lane u % 32).
__device__ __forceinline__ void quantize_slot(char* slot, float* scales, uint32_t R, int lane,
                                              bool aside) {
  char* out_base = aside ? slot + R : slot;
  const int units = static_cast<int>(R / 16);
  for (int base = 0; base < units; base += 32) {
    const int u = base + lane;
    uint4 v[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
    if (u < units) {
      v[0] = *reinterpret_cast<const uint4*>(slot + static_cast<size_t>(u) * 32);
      v[1] = *reinterpret_cast<const uint4*>(slot + static_cast<size_t>(u) * 32 + 16);
    }
    __syncwarp();
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
      *reinterpret_cast<uint4*>(out_base + static_cast<size_t>(u) * 16) =
          make_uint4(out[0], out[1], out[2], out[3]);
      if ((lane & 7) == 0) scales[u >> 3] = amax / 448.f;
    }
  }
}

template <int kDepth>
__global__ void __launch_bounds__(kScatterWarps * 32, 1)
    scatter_kernel(const __grid_constant__ dev::Context ctx, const ScatterParams p) {
#if __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char scatter_smem[];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  if (warp >= p.warps) return;
  auto* bar = reinterpret_cast<uint64_t*>(scatter_smem) + warp;
  const uint32_t side_bytes = p.quantize || p.side != nullptr || p.packed ? 512u : 0u;
  char* slot = reinterpret_cast<char*>(scatter_smem) + 1024 +
               static_cast<size_t>(warp) * (p.load_bytes + side_bytes);
  char* side = slot + p.load_bytes;  // the row's small pieces: metadata, then scales
  const int W = ctx.world_size, me = ctx.rank;
  if (lane == 0) dev::mbarrier_init(bar, 1);
  __syncwarp();
  uint32_t phase = 0;
  bool loaded = false;
  const uint32_t* masks = p.masks + static_cast<size_t>(me) * p.T;
  const int stride = static_cast<int>(gridDim.x) * p.warps;
  int t = static_cast<int>(blockIdx.x) * p.warps + warp;
  for (;; t += stride) {
    if (p.ticket != nullptr) {
      uint32_t v = 0;
      if (lane == 0) v = atomicAdd(p.ticket, 1u);
      t = static_cast<int>(__shfl_sync(0xffffffffu, v, 0));
    }
    if (t >= p.T) break;
    const uint32_t mask = masks[t] | (p.to_self ? 1u << me : 0u);
    if (mask == 0) continue;
    if (p.load_each || !loaded) {
      if (lane == 0) {
        dev::bulk_wait_read<0>();  // the previous row's stores have read the slot
        dev::mbarrier_arrive_expect_tx(bar, p.load_bytes);
        dev::bulk_load(slot, p.src + static_cast<size_t>(t) * p.load_bytes, p.load_bytes, bar);
      }
      __syncwarp();
      dev::mbarrier_wait(bar, phase);
      phase ^= 1u;
      loaded = true;
    }
    if (p.spin_ns && lane == 0) {
      const uint64_t until = globaltimer() + p.spin_ns;
      while (globaltimer() < until) {
      }
    }
    if (p.quantize)
      quantize_slot(slot, reinterpret_cast<float*>(side + kMetaBytes), p.R, lane, p.quantize_aside);
    if (p.fence) dev::fence_proxy_async_shared();
    __syncwarp();
    if (lane == 0) {
      for (int i = 1; i <= W; ++i) {
        const int d = (me + i) % W;
        if (((mask >> d) & 1u) == 0) continue;
        const int row =
            p.slots != nullptr ? p.slots[(static_cast<size_t>(me) * p.T + t) * W + d] : t;
        const size_t r = static_cast<size_t>(me) * p.T + row;
        if (p.packed) {
          dev::bulk_store(dev::symm_at(ctx, p.dst + r * p.row_stride, d), slot,
                          p.R + (p.pad_side ? 512u : kSideBytes));
          continue;
        }
        dev::bulk_store(dev::symm_at(ctx, p.dst + r * p.row_stride, d), slot, p.R);
        if (p.side != nullptr) {
          const uint32_t scales_at = p.side_stride == kSideBytes ? kMetaBytes : 256u;
          dev::bulk_store(dev::symm_at(ctx, p.side + r * p.side_stride, d), side,
                          p.pad_side ? 128u : kMetaBytes);
          dev::bulk_store(dev::symm_at(ctx, p.side + r * p.side_stride + scales_at, d),
                          side + kMetaBytes, p.pad_side ? 256u : kSideBytes - kMetaBytes);
        }
      }
      dev::bulk_commit();
      dev::bulk_wait<kDepth>();
    }
    __syncwarp();
  }
  if (lane == 0) dev::bulk_wait<0>();
#endif
}

// Resets the ticket for the next launch (stream order keeps it apart from the kernel's use).
__global__ void reset_ticket_kernel(uint32_t* ticket) { *ticket = 0; }

using ScatterLaunch = void (*)(const dev::Context&, const ScatterParams&, int grid, cudaStream_t);

template <int kDepth>
void launch_scatter(const dev::Context& ctx, const ScatterParams& p, int grid,
                    cudaStream_t stream) {
  const uint32_t side_bytes = p.quantize || p.side != nullptr || p.packed ? 512u : 0u;
  const int smem = 1024 + p.warps * static_cast<int>(p.load_bytes + side_bytes);
  static int configured = 0;  // the attribute is per function: raise it once per size
  if (smem > configured) {
    WEFT_CUDA_CHECK(cudaFuncSetAttribute(scatter_kernel<kDepth>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = smem;
  }
  if (p.ticket != nullptr) reset_ticket_kernel<<<1, 1, 0, stream>>>(p.ticket);
  scatter_kernel<kDepth><<<grid, kScatterWarps * 32, smem, stream>>>(ctx, p);
  WEFT_CHECK_LAUNCH();
}

ScatterLaunch scatter_launch(int depth) {
  switch (depth) {
    case 0:
      return launch_scatter<0>;
    case 1:
      return launch_scatter<1>;
    case 2:
      return launch_scatter<2>;
    default:
      return launch_scatter<4>;
  }
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

struct ScatterVariant {
  uint32_t R;
  bool one_peer;
  int depth;
  bool load_each;
  int sms;  // 0: every SM
  // The dispatch's traits, off by default: a bf16 row loaded for an fp8 row, time per row between
  // load and stores, a copy to this rank too, rows by ticket.
  bool load_twice = false;
  uint32_t spin_ns = 0;
  bool to_self = false;
  bool ticket = false;
  int warps = kScatterWarps;
  bool quantize = false;  // with load_twice: the warp quantizes (bytes sent differ from the source)
  bool dense = false;     // slots packed per destination, as the dispatch's layout gives them
  bool side = false;      // metadata and scales stored beside each row
  bool packed = false;    // metadata and scales sent with the row, in one store
  uint32_t align = 16;    // the destination rows' stride is a multiple of this
  bool side_aligned = false;  // side pieces 256-byte aligned (else packed at 336-byte strides)
  bool fence = true;
  bool pad_side = false;
  bool quantize_aside = false;
  std::string label() const {
    std::string l = fmt::format("{} B, {}, depth {}, {}", R, one_peer ? "1 peer" : "ep mask", depth,
                                load_each ? (load_twice ? "load 2R" : "load") : "no loads");
    if (spin_ns) l += fmt::format(", spin {} ns", spin_ns);
    if (to_self) l += ", +self";
    if (ticket) l += ", ticket";
    if (warps != kScatterWarps) l += fmt::format(", {} warps/SM", warps);
    if (quantize) l += ", quantize";
    if (dense) l += ", dense";
    if (side) l += ", +meta/scales";
    if (packed) l += ", +meta/scales packed";
    if (align != 16) l += fmt::format(", rows {}-aligned", align);
    if (side_aligned) l += ", side 256-aligned";
    if (!fence) l += ", NO proxy fence";
    if (pad_side) l += ", side padded to 128-B multiples";
    if (quantize_aside) l += " (aside: raw bytes sent)";
    return l + (sms ? fmt::format(", {} SMs", sms) : ", all SMs");
  }
  std::string key() const {
    return fmt::format("r{}_{}_d{}_{}{}_sm{}{}{}{}", R, one_peer ? "one" : "ep", depth,
                       load_each ? "load" : "noload", load_twice ? "2" : "", sms,
                       spin_ns ? fmt::format("_spin{}", spin_ns) : "", to_self ? "_self" : "",
                       ticket ? "_ticket" : "") +
           (warps != kScatterWarps ? fmt::format("_w{}", warps) : "") + (quantize ? "_q" : "") +
           (dense ? "_dense" : "") + (side ? "_side" : "") + (packed ? "_packed" : "") +
           (align != 16 ? fmt::format("_a{}", align) : "") + (side_aligned ? "_sidea" : "") +
           (fence ? "" : "_nofence") + (pad_side ? "_padside" : "") +
           (quantize_aside ? "_qaside" : "");
  }
};

}  // namespace

void run_scatter(Suite& s) {
  World& w = s.world;
  const int W = w.size(), me = w.rank();
  const int T = 4096;
  const dev::Context ctx = w.context();
  // The first rows vary one trait at a time from the plain pattern; the last ones add the
  // dispatch's traits together (fp8: 7168-byte rows from 14336-byte loads; bf16: 14336 / 14336).
  // The dispatch's traits one at a time, then together: a bf16 row loaded for an fp8 row, a copy
  // to this rank too, rows by ticket, 13 sending warps a block, then quantization, packed slots,
  // metadata and scales.
  auto dispatch_like = [](uint32_t R, bool fp8, int sms) {
    ScatterVariant v{R, false, 1, true, sms};
    v.load_twice = fp8;
    v.to_self = true;
    v.ticket = true;
    v.warps = 13;
    return v;
  };
  std::vector<ScatterVariant> vs = {{7168, false, 1, true, 12}, {7168, false, 1, true, 0}};
  auto with = [&](ScatterVariant v, auto&& change) {
    change(v);
    vs.push_back(v);
  };
  for (int sms : {12, 36}) {
    const ScatterVariant fp8 = dispatch_like(7168, true, sms);
    vs.push_back(fp8);
    with(fp8, [](ScatterVariant& v) { v.R = 7168 + 16; });
    with(fp8, [](ScatterVariant& v) { v.R = 7168 + 128; });
    with(fp8, [](ScatterVariant& v) { v.quantize = true; });
    with(fp8, [](ScatterVariant& v) { v.quantize = v.quantize_aside = true; });
    with(fp8, [](ScatterVariant& v) { v.side = true; });
    with(fp8, [](ScatterVariant& v) { v.side = v.side_aligned = v.pad_side = true; });
    with(fp8, [](ScatterVariant& v) { v.packed = true; });
    with(fp8, [](ScatterVariant& v) { v.packed = v.pad_side = true; });
    with(fp8, [](ScatterVariant& v) { v.quantize = v.dense = v.packed = v.pad_side = true; });
    const ScatterVariant bf16 = dispatch_like(14336, false, sms);
    vs.push_back(bf16);
    with(bf16, [](ScatterVariant& v) { v.dense = v.side = true; });
    with(bf16, [](ScatterVariant& v) { v.dense = v.packed = v.pad_side = true; });
  }
  if (s.opt.quick) vs.resize(2);
  uint32_t max_r = 0;
  for (const auto& v : vs) max_r = std::max(max_r, v.R * (v.load_twice ? 2u : 1u));
  auto dst = w.alloc<char>(static_cast<size_t>(W) * T * (max_r + 1024));
  DeviceMemory src(static_cast<size_t>(T) * max_r);
  DeviceMemory expected(static_cast<size_t>(T) * max_r);
  DeviceMemory masks_dev(static_cast<size_t>(W) * T * 4);
  DeviceMemory bad(8);
  DeviceMemory ticket(4);
  DeviceMemory slots_dev(static_cast<size_t>(W) * T * W * 4);
  auto side = w.alloc<char>(static_cast<size_t>(W) * T * 512);
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
    const size_t region = static_cast<size_t>(T) * v.R;
    const uint32_t load_bytes = v.R * (v.load_twice ? 2u : 1u);
    const uint32_t packed_bytes = v.packed ? (v.pad_side ? 512u : kSideBytes) : 0u;
    const uint32_t row_stride = (v.R + packed_bytes + v.align - 1) / v.align * v.align;
    fill_pattern(src.data(), static_cast<size_t>(T) * load_bytes, s.seed(test, me), s.stream);
    WEFT_CUDA_CHECK(cudaMemsetAsync(dst.data(), 0, static_cast<size_t>(W) * region, s.stream));
    if (v.dense) {
      // Row t's slot on d: its index among the sender's rows to d (the dispatch's layout).
      std::vector<int> slots(static_cast<size_t>(W) * T * W, -1);
      for (int snd = 0; snd < W; ++snd) {
        std::vector<int> next(W, 0);
        for (int t = 0; t < T; ++t) {
          const uint32_t m = masks[static_cast<size_t>(snd) * T + t] | (v.to_self ? 1u << snd : 0u);
          for (int d = 0; d < W; ++d)
            if ((m >> d) & 1u) slots[(static_cast<size_t>(snd) * T + t) * W + d] = next[d]++;
        }
      }
      WEFT_CUDA_CHECK(cudaMemcpyAsync(slots_dev.data(), slots.data(), slots.size() * 4,
                                      cudaMemcpyHostToDevice, s.stream));
      WEFT_CUDA_CHECK(cudaStreamSynchronize(s.stream));  // `slots` leaves scope
    }
    ScatterParams p{dst.data(),
                    src.as<char>(),
                    masks_dev.as<uint32_t>(),
                    T,
                    v.R,
                    v.load_each,
                    load_bytes,
                    v.spin_ns,
                    v.to_self,
                    v.ticket ? ticket.as<uint32_t>() : nullptr,
                    v.warps,
                    v.quantize,
                    v.dense ? slots_dev.as<int>() : nullptr,
                    v.side ? side.data() : nullptr,
                    v.packed,
                    row_stride,
                    v.side_aligned ? 512u : kSideBytes,
                    v.fence,
                    v.pad_side,
                    v.quantize_aside};
    const int grid = v.sms ? std::min(v.sms, s.sms) : s.sms;
    const ScatterLaunch launch = scatter_launch(v.depth);
    const std::vector<double> samples =
        time_iterations(w, s.stream, s.timing(), [&] { launch(ctx, p, grid, s.stream); });
    w.barrier(s.stream);
    w.synchronize(s.stream);
    // Verify every sender's region where the bytes are the source's, at slot t: not without loads
    // (rows carry the warp's first row), quantized or packed (diagnostics of cost only).
    unsigned long long n_bad = 0;
    const bool verified = v.load_each && !v.quantize && !v.dense && !v.packed;
    if (verified) {
      WEFT_CUDA_CHECK(cudaMemsetAsync(bad.data(), 0, 8, s.stream));
      for (int snd = 0; snd < W; ++snd) {
        if (snd == me) continue;
        fill_pattern(expected.data(), static_cast<size_t>(T) * load_bytes, s.seed(test, snd),
                     s.stream);
        check_scatter_kernel<<<264, 256, 0, s.stream>>>(
            dst.data() + static_cast<size_t>(snd) * region, expected.as<char>(),
            masks_dev.as<uint32_t>() + static_cast<size_t>(snd) * T, me, T, v.R, load_bytes,
            bad.as<unsigned long long>());
        WEFT_CHECK_LAUNCH();
      }
      WEFT_CUDA_CHECK(cudaMemcpyAsync(&n_bad, bad.data(), 8, cudaMemcpyDeviceToHost, s.stream));
      WEFT_CUDA_CHECK(cudaStreamSynchronize(s.stream));
    }
    const bool ok =
        s.all_ok(n_bad == 0, bench + ": " + v.label(), fmt::format("{} mismatched words", n_bad));
    const double us = slowest_rank_median(w, samples);
    const double gb = remote / (us * 1e3);
    s.add({bench, v.label(), fmt::format("{} x {} B", T, v.R), us, gb,
           ok ? (verified ? "" : "not verified (diagnostic)") : "FAILED verification"});
    if (ok && verified) {
      ResultRow row = s.row("row_scatter", "u8");
      row.shape.set("rows", T).set("row_bytes", v.R).set("variant", v.key());
      row.weft_us = us;
      row.extra.set("remote_GBps", round_to(gb, 2)).set("remote_bytes_rank", remote);
      row.extra.set("pattern",
                    "every rank bulk-stores its rows to a subset of peers (see scatter.cu)");
      s.emit(row);
    }
  }
}

}  // namespace weft::bench::primitives
