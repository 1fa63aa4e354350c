// Bandwidth benchmarks: (a) every rank puts `bytes` to rank r+1 at once, (b) every rank puts
// `bytes` to every other rank at once, or reads them from every other rank (pulls). weft methods:
// SM stores (dev::copy), TMA bulk copies (dev::putmem_tma_nbi), copy engines (weft::copy_to_peer),
// and for (b) SM loads (dev::getmem_nbi) and TMA gets (dev::getmem_tma); references: NCCL
// send/recv in a ring for (a), NCCL all-gather of the same bytes for (b).
//
// Work split: block b of a put kernel serves peer index p = b % npeers (peer (rank + 1 + p) % W)
// and part b / npeers of that peer's bytes, a contiguous 4 KiB-aligned slice. Receivers keep one
// slot of `bytes` per peer index: slot p on rank q holds what rank (q - 1 - p) mod W sent.
#include <algorithm>
#include <cstdio>
#include <vector>

#include <fmt/format.h>

#include "bench/common/cuda_resources.h"
#include "bench/primitives/suite.h"
#include "weft/device/weft.cuh"
#include "weft/runtime/copy_engine.h"
#include "weft/runtime/cuda_check.h"

namespace weft::bench::primitives {
namespace {

constexpr size_t kSliceGranule = 4096;

struct Slice {
  int p;     // peer index
  int peer;  // world rank
  size_t off, len;
};

__device__ __forceinline__ bool block_slice(const dev::Context& ctx, size_t bytes, int npeers,
                                            Slice& s) {
  const unsigned parts = gridDim.x / npeers;
  const unsigned j = blockIdx.x / npeers;
  if (j >= parts) return false;
  const size_t granules = bytes / kSliceGranule;
  const size_t per = granules / parts, extra = granules % parts;
  s.off = (j * per + min(size_t(j), extra)) * kSliceGranule;
  s.len = (per + (j < extra ? 1 : 0)) * kSliceGranule;
  if (j == parts - 1) s.len += bytes - granules * kSliceGranule;
  s.p = blockIdx.x % npeers;
  s.peer = (ctx.rank + 1 + s.p) % ctx.world_size;
  return true;
}

// (i) SM stores through the library's block copy.
template <int kThreads, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    put_dev_copy_kernel(const __grid_constant__ dev::Context ctx, char* dst, const char* src,
                        size_t bytes, int npeers) {
  Slice s;
  if (!block_slice(ctx, bytes, npeers, s)) return;
  char* remote = dev::symm_at(ctx, dst + size_t(s.p) * bytes, s.peer);
  dev::copy(dev::Block{}, remote + s.off, src + s.off, s.len);
}

// Reference SM-store loop written out by hand (read-only streaming loads, kUnroll 16-byte loads in
// flight per thread): tells whether dev::copy leaves bandwidth on the table.
__device__ __forceinline__ uint4 ld_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

template <int kThreads, int kMinBlocks, int kUnroll>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    put_vec_kernel(const __grid_constant__ dev::Context ctx, char* dst, const char* src,
                   size_t bytes, int npeers) {
  Slice s;
  if (!block_slice(ctx, bytes, npeers, s)) return;
  uint4* d = reinterpret_cast<uint4*>(dev::symm_at(ctx, dst + size_t(s.p) * bytes, s.peer) + s.off);
  const uint4* x = reinterpret_cast<const uint4*>(src + s.off);
  const size_t n = s.len / sizeof(uint4);
  size_t i = threadIdx.x;
  for (; i + (kUnroll - 1) * kThreads < n; i += kUnroll * kThreads) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = ld_streaming(x + i + u * kThreads);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) d[i + u * kThreads] = v[u];
  }
  for (; i < n; i += kThreads) d[i] = ld_streaming(x + i);
}

// (ii) TMA: one thread per block moves its slice through a shared-memory ring, then quiet().
constexpr uint32_t kRingOffset = 1024;  // mbarriers first, the ring 1 KiB in (16-byte aligned)

template <uint32_t kStages, uint32_t kStageBytes>
__global__ void __launch_bounds__(32, 1)
    put_tma_kernel(const __grid_constant__ dev::Context ctx, char* dst, const char* src,
                   size_t bytes, int npeers) {
  extern __shared__ __align__(1024) unsigned char put_tma_smem[];
  static_assert(kStages * sizeof(uint64_t) <= kRingOffset, "mbarriers overlap the ring");
  if (threadIdx.x != 0) return;
  Slice s;
  if (!block_slice(ctx, bytes, npeers, s)) return;
  auto* bars = reinterpret_cast<uint64_t*>(put_tma_smem);
  char* ring = reinterpret_cast<char*>(put_tma_smem) + kRingOffset;
  dev::TmaStaging st = dev::make_tma_staging(ring, bars, kStageBytes, kStages);
  dev::putmem_tma_nbi(ctx, st, dst + size_t(s.p) * bytes + s.off, src + s.off, s.len, s.peer);
  dev::quiet();
}

// (iii) Pulls, the mirror image of (i) and (ii): block b reads peer index p's slice from the
// symmetric `src` on rank (rank - 1 - p) mod W into slot p here, so every slot ends up holding what
// the push kernels would have put there. SM loads through the library's block get, or one thread's
// TMA bulk copies (remote global -> shared -> local global).
__device__ __forceinline__ int pull_source(const dev::Context& ctx, int p) {
  return ((ctx.rank - 1 - p) % ctx.world_size + ctx.world_size) % ctx.world_size;
}

template <int kThreads, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    get_dev_copy_kernel(const __grid_constant__ dev::Context ctx, char* dst, const char* src,
                        size_t bytes, int npeers) {
  Slice s;
  if (!block_slice(ctx, bytes, npeers, s)) return;
  dev::getmem_nbi(dev::Block{}, ctx, dst + size_t(s.p) * bytes + s.off, src + s.off, s.len,
                  pull_source(ctx, s.p));
}

template <uint32_t kStages, uint32_t kStageBytes>
__global__ void __launch_bounds__(32, 1)
    get_tma_kernel(const __grid_constant__ dev::Context ctx, char* dst, const char* src,
                   size_t bytes, int npeers) {
  extern __shared__ __align__(1024) unsigned char get_tma_smem[];
  if (threadIdx.x != 0) return;
  Slice s;
  if (!block_slice(ctx, bytes, npeers, s)) return;
  auto* bars = reinterpret_cast<uint64_t*>(get_tma_smem);
  char* ring = reinterpret_cast<char*>(get_tma_smem) + kRingOffset;
  dev::TmaStaging st = dev::make_tma_staging(ring, bars, kStageBytes, kStages);
  dev::getmem_tma(ctx, st, dst + size_t(s.p) * bytes + s.off, src + s.off, s.len,
                  pull_source(ctx, s.p));
}

using PutLaunch = void (*)(const dev::Context&, char* dst, const char* src, size_t bytes,
                           int npeers, int grid, cudaStream_t);

template <int kThreads, int kMinBlocks>
void launch_dev_copy(const dev::Context& ctx, char* dst, const char* src, size_t bytes,
                     int npeers, int grid, cudaStream_t stream) {
  put_dev_copy_kernel<kThreads, kMinBlocks><<<grid, kThreads, 0, stream>>>(ctx, dst, src, bytes,
                                                                           npeers);
  WEFT_CHECK_LAUNCH();
}

template <int kThreads, int kMinBlocks, int kUnroll>
void launch_vec(const dev::Context& ctx, char* dst, const char* src, size_t bytes, int npeers,
                int grid, cudaStream_t stream) {
  put_vec_kernel<kThreads, kMinBlocks, kUnroll>
      <<<grid, kThreads, 0, stream>>>(ctx, dst, src, bytes, npeers);
  WEFT_CHECK_LAUNCH();
}

template <uint32_t kStages, uint32_t kStageBytes>
constexpr int tma_smem_bytes() {
  return int(kRingOffset + kStages * kStageBytes);
}

// A TMA kernel (one thread per block) with its ring of kStages x kStageBytes in dynamic shared
// memory: puts (put_tma_kernel) or gets (get_tma_kernel).
template <auto kKernel, uint32_t kStages, uint32_t kStageBytes>
void launch_tma(const dev::Context& ctx, char* dst, const char* src, size_t bytes, int npeers,
                int grid, cudaStream_t stream) {
  constexpr int smem = tma_smem_bytes<kStages, kStageBytes>();
  static bool configured = false;  // the attribute is per function; set it once
  if (!configured) {
    WEFT_CUDA_CHECK(
        cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  kKernel<<<grid, 32, smem, stream>>>(ctx, dst, src, bytes, npeers);
  WEFT_CHECK_LAUNCH();
}

template <int kThreads, int kMinBlocks>
void launch_get_copy(const dev::Context& ctx, char* dst, const char* src, size_t bytes, int npeers,
                     int grid, cudaStream_t stream) {
  get_dev_copy_kernel<kThreads, kMinBlocks>
      <<<grid, kThreads, 0, stream>>>(ctx, dst, src, bytes, npeers);
  WEFT_CHECK_LAUNCH();
}

struct KernelVariant {
  std::string label;  // table text
  std::string key;    // JSON key
  int blocks_per_sm;
  PutLaunch launch;
};

// The first of each list is the configuration the design names; the others (skipped in quick
// mode) show whether more blocks per SM or a hand-written loop would be faster.
std::vector<KernelVariant> sm_variants(bool quick) {
  std::vector<KernelVariant> v = {
      {"SM stores, dev::copy, 1 blk x 1024 thr/SM", "dev_copy_1x1024", 1, launch_dev_copy<1024, 1>},
      {"SM stores, dev::copy, 2 blk x 1024 thr/SM", "dev_copy_2x1024", 2, launch_dev_copy<1024, 2>},
      {"SM stores, dev::copy, 2 blk x 512 thr/SM", "dev_copy_2x512", 2, launch_dev_copy<512, 2>},
  };
  if (quick) v.resize(1);
  return v;
}

KernelVariant reference_vec_variant() {
  return {"SM stores, hand loop ld.nc x8, 1 blk x 1024 thr/SM", "ldnc8_1x1024", 1,
          launch_vec<1024, 1, 8>};
}

std::vector<KernelVariant> tma_variants(bool quick) {
  std::vector<KernelVariant> v = {
      {"TMA, 1 thr/blk, ring 4 x 32 KiB, 1 blk/SM", "tma_4x32k_1blk", 1,
       launch_tma<put_tma_kernel<4, 32768>, 4, 32768>},
      {"TMA, 1 thr/blk, ring 4 x 16 KiB, 2 blk/SM", "tma_4x16k_2blk", 2,
       launch_tma<put_tma_kernel<4, 16384>, 4, 16384>},
  };
  if (quick) v.resize(1);
  return v;
}

// Pulls (every rank reads from every other rank at once): SM loads, then TMA.
std::vector<KernelVariant> get_variants(bool quick) {
  std::vector<KernelVariant> v = {
      {"SM loads, dev::getmem, 1 blk x 1024 thr/SM", "get_dev_copy_1x1024", 1,
       launch_get_copy<1024, 1>},
      {"TMA get, 1 thr/blk, ring 4 x 32 KiB, 1 blk/SM", "get_tma_4x32k_1blk", 1,
       launch_tma<get_tma_kernel<4, 32768>, 4, 32768>},
  };
  if (quick) v.resize(1);
  return v;
}

struct Measurement {
  double us = NAN;  // slowest rank's median
  bool ok = false;  // verified on every rank
};

// Merge the check of one received region into `total` (offsets relative to the whole buffer).
void merge(PatternCheck& total, const PatternCheck& part, size_t base) {
  if (part.ok()) return;
  total.mismatched_words += part.mismatched_words;
  total.first_bad_byte = std::min(total.first_bad_byte, base + part.first_bad_byte);
}

// Fill `src` with this rank's data for `test`, clear `recv`, time `body` (a barrier before every
// iteration), then wait for every rank and verify with `check` (returns this rank's PatternCheck).
template <class Body, class Check>
Measurement measure(Suite& s, const std::string& what, int test, void* src, size_t src_bytes,
                    void* recv, size_t recv_bytes, Body&& body, Check&& check) {
  World& w = s.world;
  fill_pattern(src, src_bytes, s.seed(test, w.rank()), s.stream);
  WEFT_CUDA_CHECK(cudaMemsetAsync(recv, 0, recv_bytes, s.stream));
  const std::vector<double> samples = time_iterations(w, s.stream, s.timing(), body);
  w.barrier(s.stream);  // every rank's writes have landed
  w.synchronize(s.stream);
  const PatternCheck c = check();
  Measurement m;
  m.ok = s.all_ok(c.ok(), what, c.describe());
  m.us = slowest_rank_median(w, samples);
  return m;
}

// Bytes per slot that fit `slots` slots in the free symmetric heap (same on every rank).
size_t fit_heap(Suite& s, size_t want, int slots, const char* what) {
  SymmetricHeap& heap = s.world.heap();
  const size_t margin = size_t(4) << 20;
  const size_t free_bytes = heap.capacity() - heap.bytes_in_use();
  size_t fit = free_bytes > margin ? (free_bytes - margin) / size_t(slots) : 0;
  if (fit < want) {
    // Keep reduced sizes readable: a multiple of 64 MiB, or a power of two below that.
    const size_t step = size_t(64) << 20;
    if (fit >= step) {
      fit = fit / step * step;
    } else {
      size_t pow2 = kSliceGranule;
      while (pow2 * 2 <= fit) pow2 *= 2;
      fit = fit >= kSliceGranule ? pow2 : 0;
    }
  } else {
    fit = want;
  }
  fit = static_cast<size_t>(-slowest_rank(s.world, -static_cast<double>(fit)));  // min over ranks
  WEFT_CHECK(fit >= kSliceGranule,
             "{}: the symmetric heap ({} bytes, {} free) cannot hold {} x {} bytes; give the world "
             "a bigger heap (WorldOptions::heap_bytes or WEFT_HEAP_BYTES, see "
             "primitive_bench_heap_bytes)",
             what, heap.capacity(), free_bytes, slots, kSliceGranule);
  if (fit < want && s.world.rank() == 0)
    std::printf(
        "weft bench: %s: the symmetric heap (%zu bytes) holds %d x %zu bytes, not %d x %zu; "
        "running with %zu bytes per peer (set WEFT_HEAP_BYTES=%zu for the full size)\n",
        what, heap.capacity(), slots, fit, slots, want, fit,
        primitive_bench_heap_bytes(s.world.size(), want));
  return fit;
}

std::string pct(double part, double whole) {
  return std::isnan(part) || std::isnan(whole) ? "?" : fmt::format("{:.1f}%", 100.0 * part / whole);
}

std::string times(double ref_us, double us) {
  return std::isnan(ref_us) || std::isnan(us) || us <= 0 ? "?" : fmt::format("{:.2f}x", ref_us / us);
}

std::string status(bool ok) { return ok ? "" : "FAILED verification; "; }

// Index of the fastest verified measurement, or -1.
int best_of(const std::vector<Measurement>& ms) {
  int best = -1;
  for (int i = 0; i < static_cast<int>(ms.size()); ++i)
    if (ms[i].ok && (best < 0 || ms[i].us < ms[best].us)) best = i;
  return best;
}

// Each verified variant's time, by the variant's key (a row's "variants_us").
Json variant_times(const std::vector<KernelVariant>& vs, const std::vector<Measurement>& ms) {
  Json j = Json::object();
  for (size_t i = 0; i < vs.size(); ++i)
    if (ms[i].ok) j.set(vs[i].key, round_to(ms[i].us, 3));
  return j;
}

}  // namespace

// ---- (a) every rank -> rank + 1 ----------------------------------------------------------------

void run_put_one_peer(Suite& s) {
  World& w = s.world;
  const int W = w.size(), r = w.rank();
  const int next = (r + 1) % W, prev = (r - 1 + W) % W;
  const size_t bytes = fit_heap(s, s.opt.bytes, 1, "put r->r+1");
  const dev::Context ctx = w.context();
  const std::string bench = "put r->r+1";
  const std::string size = human_bytes(bytes);

  DeviceMemory src(bytes);
  DeviceMemory nccl_recv(bytes);
  auto dst = w.alloc<char>(bytes);

  auto check_from_prev = [&](int test) {
    return [&, test] { return check_pattern(dst.data(), bytes, s.seed(test, prev), s.stream); };
  };

  // (i) SM stores and (ii) TMA, each in its variants.
  auto run_kernels = [&](const std::vector<KernelVariant>& variants, int test) {
    std::vector<Measurement> out;
    for (const auto& v : variants) {
      const int grid = v.blocks_per_sm * s.sms;
      out.push_back(measure(
          s, bench + ": " + v.label, test, src.data(), bytes, dst.data(), bytes,
          [&] { v.launch(ctx, dst.data(), src.as<char>(), bytes, 1, grid, s.stream); },
          check_from_prev(test)));
    }
    return out;
  };
  const auto smv = sm_variants(s.opt.quick);
  const auto sm = run_kernels(smv, kPutSmCopy);
  std::vector<Measurement> vec;
  if (!s.opt.quick) vec = run_kernels({reference_vec_variant()}, kPutSmVec);
  const auto tmav = tma_variants(s.opt.quick);
  const auto tma = run_kernels(tmav, kPutTma);

  // (iii) copy engine.
  const Measurement ce = measure(
      s, bench + ": copy engine", kPutCe, src.data(), bytes, dst.data(), bytes,
      [&] { copy_to_peer(w, dst.data(), src.data(), bytes, next, s.stream); },
      check_from_prev(kPutCe));

  // (iv) NCCL send/recv ring.
  const Measurement nccl = measure(
      s, bench + ": NCCL send/recv", kPutNccl, src.data(), bytes, nccl_recv.data(), bytes,
      [&] {
        WEFT_NCCL_CHECK(ncclGroupStart());
        WEFT_NCCL_CHECK(ncclSend(src.data(), bytes, ncclUint8, next, w.nccl_comm(), s.stream));
        WEFT_NCCL_CHECK(ncclRecv(nccl_recv.data(), bytes, ncclUint8, prev, w.nccl_comm(), s.stream));
        WEFT_NCCL_CHECK(ncclGroupEnd());
      },
      [&] { return check_pattern(nccl_recv.data(), bytes, s.seed(kPutNccl, prev), s.stream); });
  dst.reset();  // every rank passed the barrier after its last write into it

  const double B = static_cast<double>(bytes);
  const double ce_us = ce.ok ? ce.us : NAN;
  const double nccl_us = nccl.ok ? nccl.us : NAN;
  auto note = [&](const Measurement& m) {
    return status(m.ok) + pct(ce_us, m.us) + " of copy engine, " + times(nccl_us, m.us) + " NCCL";
  };
  for (size_t i = 0; i < smv.size(); ++i)
    s.add({bench, smv[i].label, size, sm[i].us, gbps(B, sm[i].us), note(sm[i])});
  if (!vec.empty())
    s.add({bench, reference_vec_variant().label, size, vec[0].us, gbps(B, vec[0].us),
           note(vec[0]) + " (reference loop)"});
  for (size_t i = 0; i < tmav.size(); ++i)
    s.add({bench, tmav[i].label, size, tma[i].us, gbps(B, tma[i].us), note(tma[i])});
  s.add({bench, "copy engine (weft::copy_to_peer)", size, ce.us, gbps(B, ce.us),
         status(ce.ok) + times(nccl_us, ce.us) + " NCCL"});
  s.add({bench, "NCCL send/recv ring", size, nccl.us, gbps(B, nccl.us), status(nccl.ok), true});

  // Rows: one per weft method (its best verified configuration), NCCL as the main baseline.
  auto emit = [&](const std::string& method, const std::string& config, const Measurement& m,
                  const Json& variants) {
    if (!m.ok || !nccl.ok) return;
    ResultRow row = s.row("put_peer", "u8");
    row.shape.set("bytes", bytes).set("method", method);
    if (!config.empty()) row.shape.set("config", config);
    row.weft_us = m.us;
    row.baselines.push_back({"nccl_sendrecv", nccl.us});
    if (method != "copy_engine" && ce.ok) row.baselines.push_back({"copy_engine", ce.us});
    row.main_baseline = "nccl_sendrecv";
    Json unit = Json::object();
    unit.set("weft_GBps", round_to(gbps(B, m.us), 2)).set("nccl_GBps", round_to(gbps(B, nccl.us), 2));
    if (ce.ok) unit.set("copy_engine_GBps", round_to(gbps(B, ce.us), 2));
    row.extra.set("unit_extra", unit);
    if (method != "copy_engine" && ce.ok)
      row.extra.set("fraction_of_copy_engine", round_to(ce.us / m.us, 4));
    if (variants.size() > 0) row.extra.set("variants_us", variants);
    row.extra.set("pattern", "every rank r puts to rank (r+1) % world at once");
    s.emit(row);
  };
  Json sm_json = variant_times(smv, sm);
  if (!vec.empty() && vec[0].ok) sm_json.set(reference_vec_variant().key, round_to(vec[0].us, 3));
  if (int b = best_of(sm); b >= 0) emit("sm_stores", smv[b].key, sm[b], sm_json);
  if (int b = best_of(tma); b >= 0) emit("tma", tmav[b].key, tma[b], variant_times(tmav, tma));
  emit("copy_engine", "", ce, Json::object());
}

// ---- (b) every rank -> every other rank ----------------------------------------------------------

void run_put_all_peers(Suite& s) {
  World& w = s.world;
  const int W = w.size(), r = w.rank(), P = W - 1;
  // P receive slots and, for the pulls, a symmetric copy of the source.
  const size_t bytes = fit_heap(s, s.opt.bytes, P + 1, "put all peers");
  const dev::Context ctx = w.context();
  const std::string bench = fmt::format("put to all {} peers", P);
  const std::string size = fmt::format("{} x {}", P, human_bytes(bytes));

  DeviceMemory src(bytes);
  auto dst = w.alloc<char>(size_t(P) * bytes);
  auto src_symmetric = w.alloc<char>(bytes);

  auto check_slots = [&](int test) {
    return [&, test] {
      PatternCheck total;
      for (int p = 0; p < P; ++p) {
        const int sender = ((r - 1 - p) % W + W) % W;
        merge(total, check_pattern(dst.data() + size_t(p) * bytes, bytes, s.seed(test, sender), s.stream),
              size_t(p) * bytes);
      }
      return total;
    };
  };

  auto run_kernels = [&](const std::vector<KernelVariant>& variants, int test,
                         char* source = nullptr) {
    if (source == nullptr) source = src.as<char>();
    std::vector<Measurement> out;
    for (const auto& v : variants) {
      const int grid = (v.blocks_per_sm * s.sms) / P * P;
      out.push_back(measure(
          s, bench + ": " + v.label, test, source, bytes, dst.data(), size_t(P) * bytes,
          [&] { v.launch(ctx, dst.data(), source, bytes, P, grid, s.stream); }, check_slots(test)));
    }
    return out;
  };
  const auto smv = sm_variants(s.opt.quick);
  const auto sm = run_kernels(smv, kAllSmCopy);
  std::vector<Measurement> vec;
  if (!s.opt.quick) vec = run_kernels({reference_vec_variant()}, kAllSmVec);
  const auto tmav = tma_variants(s.opt.quick);
  const auto tma = run_kernels(tmav, kAllTma);
  const auto getv = get_variants(s.opt.quick);
  const auto get = run_kernels(getv, kAllGet, src_symmetric.data());
  src_symmetric.reset();

  // Copy engines: one stream per peer, forked from and joined back into the world stream.
  std::vector<Stream> side(P);
  std::vector<Event> joined;
  for (int p = 0; p < P; ++p) joined.emplace_back(false);
  Event fork(false);
  const Measurement ce = measure(
      s, bench + ": copy engines", kAllCe, src.data(), bytes, dst.data(), size_t(P) * bytes,
      [&] {
        WEFT_CUDA_CHECK(cudaEventRecord(fork, s.stream));
        for (int p = 0; p < P; ++p) {
          WEFT_CUDA_CHECK(cudaStreamWaitEvent(side[p], fork, 0));
          copy_to_peer(w, dst.data() + size_t(p) * bytes, src.data(), bytes, (r + 1 + p) % W, side[p]);
          WEFT_CUDA_CHECK(cudaEventRecord(joined[p], side[p]));
          WEFT_CUDA_CHECK(cudaStreamWaitEvent(s.stream, joined[p], 0));
        }
      },
      check_slots(kAllCe));
  dst.reset();

  // NCCL all-gather of `bytes` per rank: each rank receives the same (W-1) x bytes from its peers.
  DeviceMemory gathered(size_t(W) * bytes);
  const Measurement nccl = measure(
      s, bench + ": NCCL all-gather", kAllNccl, src.data(), bytes, gathered.data(), size_t(W) * bytes,
      [&] {
        WEFT_NCCL_CHECK(ncclAllGather(src.data(), gathered.data(), bytes, ncclUint8, w.nccl_comm(),
                                      s.stream));
      },
      [&] {
        PatternCheck total;
        for (int q = 0; q < W; ++q)
          merge(total, check_pattern(gathered.as<char>() + size_t(q) * bytes, bytes,
                                     s.seed(kAllNccl, q), s.stream),
                size_t(q) * bytes);
        return total;
      });

  const double out_bytes = double(P) * double(bytes);  // leaving (and entering) each GPU
  const double nccl_us = nccl.ok ? nccl.us : NAN;
  auto note = [&](const Measurement& m) {
    return status(m.ok) + times(nccl_us, m.us) + " NCCL all-gather";
  };
  for (size_t i = 0; i < smv.size(); ++i)
    s.add({bench, smv[i].label, size, sm[i].us, gbps(out_bytes, sm[i].us), note(sm[i])});
  if (!vec.empty())
    s.add({bench, reference_vec_variant().label, size, vec[0].us, gbps(out_bytes, vec[0].us),
           note(vec[0]) + " (reference loop)"});
  for (size_t i = 0; i < tmav.size(); ++i)
    s.add({bench, tmav[i].label, size, tma[i].us, gbps(out_bytes, tma[i].us), note(tma[i])});
  for (size_t i = 0; i < getv.size(); ++i)
    s.add({bench, getv[i].label, size, get[i].us, gbps(out_bytes, get[i].us),
           note(get[i]) + " (pull: bytes entering each GPU)"});
  s.add({bench, fmt::format("copy engines, {} streams", P), size, ce.us, gbps(out_bytes, ce.us),
         note(ce)});
  s.add({bench, "NCCL all-gather (bus bandwidth)", size, nccl.us, gbps(out_bytes, nccl.us),
         status(nccl.ok) + fmt::format("algorithm bandwidth {:.1f} GB/s",
                                       gbps(double(W) * double(bytes), nccl.us)),
         true});

  auto emit = [&](const std::string& method, const std::string& config, const Measurement& m,
                  const Json& variants) {
    if (!m.ok || !nccl.ok) return;
    ResultRow row = s.row("put_all_peers", "u8");
    row.shape.set("bytes_per_peer", bytes).set("peers", P).set("method", method);
    if (!config.empty()) row.shape.set("config", config);
    row.weft_us = m.us;
    row.baselines.push_back({"nccl_allgather", nccl.us});
    row.main_baseline = "nccl_allgather";
    Json unit = Json::object();
    unit.set("weft_GBps", round_to(gbps(out_bytes, m.us), 2))
        .set("nccl_algbw_GBps", round_to(gbps(double(W) * double(bytes), nccl.us), 2))
        .set("nccl_busbw_GBps", round_to(gbps(out_bytes, nccl.us), 2));
    row.extra.set("unit_extra", unit);
    if (variants.size() > 0) row.extra.set("variants_us", variants);
    row.extra.set("pattern",
                  method == "pull"
                      ? "every rank reads bytes_per_peer from every other rank at once; GB/s = "
                        "bytes entering each GPU / time (NCCL: bus bandwidth)"
                      : "every rank puts bytes_per_peer to every other rank at once; GB/s = bytes "
                        "leaving each GPU / time (NCCL: bus bandwidth)");
    s.emit(row);
  };
  Json sm_json = variant_times(smv, sm);
  if (!vec.empty() && vec[0].ok) sm_json.set(reference_vec_variant().key, round_to(vec[0].us, 3));
  if (int b = best_of(sm); b >= 0) emit("sm_stores", smv[b].key, sm[b], sm_json);
  if (int b = best_of(tma); b >= 0) emit("tma", tmav[b].key, tma[b], variant_times(tmav, tma));
  if (int b = best_of(get); b >= 0) emit("pull", getv[b].key, get[b], variant_times(getv, get));
  emit("copy_engine", fmt::format("{}_streams", P), ce, Json::object());
}

}  // namespace weft::bench::primitives
