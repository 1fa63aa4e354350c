#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>

#include "tools/checks/child_world.h"
#include "tools/checks/primitive_checks.h"
#include "weft/device/weft.cuh"
#include "weft/runtime/copy_engine.h"
#include "weft/runtime/cuda_check.h"

namespace weft::checks {
namespace {

using dev::Block;
using dev::Cmp;
using dev::Context;
using dev::Scope;
using dev::Sem;
using dev::SignalOp;
using dev::Thread;
using dev::Warp;

constexpr uint8_t kPoison = 0xA5;

// ---- deterministic data that any rank can regenerate -------------------------------------------

using dev::mix64;

// Byte i of the stream named by `key`.
__host__ __device__ inline uint8_t pattern_byte(uint64_t key, uint64_t i) {
  return static_cast<uint8_t>(mix64(key ^ mix64(i >> 3)) >> ((i & 7) * 8));
}

__host__ __device__ inline uint64_t stream_key(uint64_t seed, uint64_t a, uint64_t b = 0,
                                               uint64_t c = 0) {
  return dev::mix_key(seed, a, b, c);
}
__global__ void fill_pattern(uint8_t* dst, size_t bytes, uint64_t key) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < bytes;
       i += size_t(gridDim.x) * blockDim.x)
    dst[i] = pattern_byte(key, i);
}

void fill(uint8_t* dst, size_t bytes, uint64_t key, cudaStream_t s) {
  fill_pattern<<<64, 256, 0, s>>>(dst, bytes, key);
  WEFT_CHECK_LAUNCH();
}

std::vector<uint8_t> to_host(World& w, const void* src, size_t bytes) {
  std::vector<uint8_t> out(bytes);
  WEFT_CUDA_CHECK(cudaMemcpyAsync(out.data(), src, bytes, cudaMemcpyDeviceToHost, w.stream()));
  w.synchronize(w.stream());
  return out;
}

// Compares host bytes [0, n) with pattern `key` starting at pattern index `first`; returns an
// empty string or a description of the first mismatch.
std::string compare_pattern(const uint8_t* got, size_t n, uint64_t key, size_t first,
                            const std::string& what) {
  for (size_t i = 0; i < n; ++i) {
    const uint8_t want = pattern_byte(key, first + i);
    if (got[i] != want)
      return fmt::format("{}: byte {} of {} is {:#04x}, expected {:#04x}", what, i, n, got[i],
                         want);
  }
  return "";
}

std::string compare_poison(const uint8_t* got, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i)
    if (got[i] != kPoison)
      return fmt::format("{}: byte {} was overwritten ({:#04x})", what, i, got[i]);
  return "";
}

// Accumulates failures of one check on this rank.
struct Failures {
  CheckResult result;
  void add(const std::string& problem) {
    if (problem.empty()) return;
    if (result.ok) result.detail = problem;
    else if (result.detail.size() < 2000) result.detail += "; " + problem;
    result.ok = false;
  }
  // The check cannot run in this world (the same on every rank): it is reported as skipped, not
  // as passed.
  CheckResult skip(const char* why) {
    result.skipped = why;
    return result;
  }
};

// ---- identity -------------------------------------------------------------------------------------

__global__ void identity_kernel(const __grid_constant__ Context ctx, int* out) {
  out[0] = dev::rank(ctx);
  out[1] = dev::world_size(ctx);
  out[2] = dev::lsa_rank(ctx);
  out[3] = dev::lsa_size(ctx);
  for (int p = 0; p < ctx.world_size; ++p) out[4 + p] = dev::is_lsa_peer(ctx, p);
}

CheckResult check_identity(World& w, const CheckOptions&) {
  Failures f;
  int* d = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&d, sizeof(int) * (4 + w.size())));
  identity_kernel<<<1, 1, 0, w.stream()>>>(w.context(), d);
  WEFT_CHECK_LAUNCH();
  std::vector<int> h(4 + w.size());
  WEFT_CUDA_CHECK(cudaMemcpyAsync(h.data(), d, sizeof(int) * h.size(), cudaMemcpyDeviceToHost,
                                  w.stream()));
  w.synchronize(w.stream());
  WEFT_CUDA_CHECK(cudaFree(d));
  if (h[0] != w.rank() || h[1] != w.size() || h[2] != w.lsa_rank() || h[3] != w.lsa_size())
    f.add(fmt::format("device sees rank {} of {} (lsa {} of {}), host {} of {} (lsa {} of {})",
                      h[0], h[1], h[2], h[3], w.rank(), w.size(), w.lsa_rank(), w.lsa_size()));
  for (int p = 0; p < w.size(); ++p) {
    const int lsa_peer = p - w.rank() + w.lsa_rank();
    const bool want = lsa_peer >= 0 && lsa_peer < w.lsa_size();
    if (h[4 + p] != want) f.add(fmt::format("is_lsa_peer({}) = {}", p, h[4 + p]));
  }
  return f.result;
}

// ---- symm_at with loads and stores of every scope and semantic ---------------------------------

// Rank r writes pattern (r) into slot r of every peer's buffer, word by word through symm_at,
// cycling through the store flavours.
__global__ void scatter_words(const __grid_constant__ Context ctx, uint64_t* buf, size_t words,
                              uint64_t key) {
  for (int p = 0; p < ctx.world_size; ++p) {
    uint64_t* slot = dev::symm_at(ctx, buf + size_t(ctx.rank) * words, p);
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < words;
         i += size_t(gridDim.x) * blockDim.x) {
      const uint64_t v = mix64(key ^ i);
      switch (i % 3) {
        case 0: dev::st<Sem::relaxed, Scope::sys>(slot + i, v); break;
        case 1: dev::st<Sem::release, Scope::sys>(slot + i, v); break;
        default: dev::st_release<Scope::sys>(slot + i, v); break;
      }
    }
  }
}

// Reads slot `p` of peer p's buffer for every p into `out`, cycling through the load flavours.
__global__ void gather_words(const __grid_constant__ Context ctx, const uint64_t* buf, size_t words,
                             uint64_t* out) {
  for (int p = 0; p < ctx.world_size; ++p) {
    const uint64_t* slot = dev::symm_at(ctx, buf + size_t(p) * words, p);
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < words;
         i += size_t(gridDim.x) * blockDim.x) {
      uint64_t v;
      switch (i % 4) {
        case 0: v = dev::ld<Sem::relaxed, Scope::sys>(slot + i); break;
        case 1: v = dev::ld<Sem::acquire, Scope::sys>(slot + i); break;
        case 2: v = dev::ld_acquire<Scope::sys>(slot + i); break;
        default: v = slot[i]; break;
      }
      out[size_t(p) * words + i] = v;
    }
  }
}

CheckResult check_symm_at(World& w, const CheckOptions& opt) {
  Failures f;
  const size_t words = 8192 + 3;
  auto buf = w.alloc<uint64_t>(words * w.size());
  uint64_t* gathered = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&gathered, buf.bytes()));
  WEFT_CUDA_CHECK(cudaMemsetAsync(buf.data(), kPoison, buf.bytes(), w.stream()));
  WEFT_CUDA_CHECK(cudaMemsetAsync(gathered, kPoison, buf.bytes(), w.stream()));
  w.barrier(w.stream());
  auto key = [&](int r) { return stream_key(opt.seed, 1, r); };
  scatter_words<<<8, 256, 0, w.stream()>>>(w.context(), buf.data(), words, key(w.rank()));
  WEFT_CHECK_LAUNCH();
  w.barrier(w.stream());
  gather_words<<<8, 256, 0, w.stream()>>>(w.context(), buf.data(), words, gathered);
  WEFT_CHECK_LAUNCH();
  const auto local = to_host(w, buf.data(), buf.bytes());
  const auto remote = to_host(w, gathered, buf.bytes());
  w.barrier(w.stream());  // nobody frees `buf` while a peer may still read it
  w.synchronize(w.stream());
  WEFT_CUDA_CHECK(cudaFree(gathered));
  const uint64_t* lw = reinterpret_cast<const uint64_t*>(local.data());
  const uint64_t* rw = reinterpret_cast<const uint64_t*>(remote.data());
  for (int s = 0; s < w.size() && f.result.ok; ++s)
    for (size_t i = 0; i < words; ++i) {
      const uint64_t want = mix64(key(s) ^ i);
      if (lw[s * words + i] != want) {
        f.add(fmt::format("word {} stored by rank {} through symm_at reads {:#x}, expected {:#x}",
                          i, s, lw[s * words + i], want));
        break;
      }
    }
  for (int p = 0; p < w.size() && f.result.ok; ++p)
    for (size_t i = 0; i < words; ++i) {
      const uint64_t want = mix64(key(p) ^ i);
      if (rw[p * words + i] != want) {
        f.add(fmt::format("word {} loaded from rank {} through symm_at is {:#x}, expected {:#x}",
                          i, p, rw[p * words + i], want));
        break;
      }
    }
  return f.result;
}

// ---- atomics ----------------------------------------------------------------------------------------

struct AtomicCounters {
  uint64_t add64;     // on rank 0: atomic_add by every thread of every rank
  uint64_t red64;     // on rank 0: red_add(2) by every thread of every rank
  uint64_t cas64;     // on each rank: CAS increments by the previous rank's first warp
  uint32_t add32;     // on rank 0: 32-bit atomic_add
  uint32_t red32;     // on rank 0: 32-bit red_release
  uint64_t exchange;  // on each rank: atomic_exchange target
};

__global__ void atomics_kernel(const __grid_constant__ Context ctx, AtomicCounters* c, int reps) {
  AtomicCounters* root = dev::symm_at(ctx, c, 0);
  AtomicCounters* next = dev::symm_at(ctx, c, (ctx.rank + 1) % ctx.world_size);
  for (int k = 0; k < reps; ++k) {
    dev::atomic_add<Sem::relaxed, Scope::sys>(&root->add64, uint64_t(1));
    dev::red_add<Sem::relaxed, Scope::sys>(&root->red64, uint64_t(2));
    dev::atomic_add<Sem::acq_rel, Scope::sys>(&root->add32, 1u);
    dev::red_release<Scope::sys>(&root->red32, 1u);
  }
  if (blockIdx.x == 0 && threadIdx.x < 32) {
    for (int k = 0; k < reps; ++k) {
      uint64_t seen = dev::ld<Sem::relaxed, Scope::sys>(&next->cas64);
      while (true) {
        const uint64_t before = dev::atomic_cas<Sem::acq_rel, Scope::sys>(&next->cas64, seen,
                                                                          seen + 1);
        if (before == seen) break;
        seen = before;
      }
    }
    dev::atomic_exchange<Sem::relaxed, Scope::sys>(&next->exchange, uint64_t(ctx.rank + 1));
  }
}

CheckResult check_atomics(World& w, const CheckOptions&) {
  Failures f;
  static_assert(sizeof(AtomicCounters) % sizeof(signal_t) == 0);
  auto raw = w.alloc_signals(sizeof(AtomicCounters) / sizeof(signal_t));  // zeroed everywhere
  auto* c = reinterpret_cast<AtomicCounters*>(raw.data());
  const int blocks = 8, threads = 256, reps = 16;
  atomics_kernel<<<blocks, threads, 0, w.stream()>>>(w.context(), c, reps);
  WEFT_CHECK_LAUNCH();
  w.barrier(w.stream());
  AtomicCounters h{};
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, c, sizeof(h), cudaMemcpyDeviceToHost, w.stream()));
  w.synchronize(w.stream());
  w.barrier(w.stream());
  w.synchronize(w.stream());
  const uint64_t per_rank = uint64_t(blocks) * threads * reps;
  if (w.rank() == 0) {
    const uint64_t total = per_rank * w.size();
    if (h.add64 != total) f.add(fmt::format("64-bit atomic_add total {}, expected {}", h.add64, total));
    if (h.red64 != 2 * total) f.add(fmt::format("64-bit red_add total {}, expected {}", h.red64, 2 * total));
    if (h.add32 != uint32_t(total)) f.add(fmt::format("32-bit atomic_add total {}, expected {}", h.add32, uint32_t(total)));
    if (h.red32 != uint32_t(total)) f.add(fmt::format("32-bit red_release total {}, expected {}", h.red32, uint32_t(total)));
  }
  if (h.cas64 != uint64_t(32) * reps)
    f.add(fmt::format("CAS increments from the previous rank: {}, expected {}", h.cas64, 32 * reps));
  const uint64_t prev = (w.rank() + w.size() - 1) % w.size() + 1;
  if (h.exchange != prev)
    f.add(fmt::format("atomic_exchange left {}, expected {}", h.exchange, prev));
  return f.result;
}

// ---- put / get by SM stores -------------------------------------------------------------------------

enum class GroupKind { thread, warp, block };
const char* name_of(GroupKind g) {
  return g == GroupKind::thread ? "thread" : g == GroupKind::warp ? "warp" : "block";
}
int threads_of(GroupKind g) { return g == GroupKind::thread ? 1 : g == GroupKind::warp ? 32 : 256; }

struct CopyCase {
  size_t src_off, dst_off, bytes;
};

template <class Group>
__global__ void put_get_kernel(const __grid_constant__ Context ctx, bool is_get, bool blocking,
                               uint8_t* dst, const uint8_t* src, CopyCase cc, int peer) {
  Group g;
  if (!is_get) {
    if (blocking) dev::putmem(g, ctx, dst + cc.dst_off, src + cc.src_off, cc.bytes, peer);
    else dev::putmem_nbi(g, ctx, dst + cc.dst_off, src + cc.src_off, cc.bytes, peer);
  } else {
    if (blocking) dev::getmem(g, ctx, dst + cc.dst_off, src + cc.src_off, cc.bytes, peer);
    else dev::getmem_nbi(g, ctx, dst + cc.dst_off, src + cc.src_off, cc.bytes, peer);
  }
  dev::quiet(g);
}

void launch_put_get(World& w, GroupKind gk, bool is_get, bool blocking, uint8_t* dst,
                    const uint8_t* src, CopyCase cc, int peer) {
  const int t = threads_of(gk);
  switch (gk) {
    case GroupKind::thread:
      put_get_kernel<Thread><<<1, t, 0, w.stream()>>>(w.context(), is_get, blocking, dst, src, cc, peer);
      break;
    case GroupKind::warp:
      put_get_kernel<Warp><<<1, t, 0, w.stream()>>>(w.context(), is_get, blocking, dst, src, cc, peer);
      break;
    case GroupKind::block:
      put_get_kernel<Block><<<1, t, 0, w.stream()>>>(w.context(), is_get, blocking, dst, src, cc, peer);
      break;
  }
  WEFT_CHECK_LAUNCH();
}

// The copy case rank `sender` uses in case number `index` (any rank can compute any rank's case).
CopyCase copy_case(uint64_t seed, int index, int sender, size_t region, size_t align) {
  static const size_t sizes[] = {1, 15, 16, 17, 255, 4096, 4099, 65536, 200000};
  const uint64_t h = stream_key(seed, 40, index, sender);
  CopyCase cc;
  cc.bytes = sizes[index % (sizeof(sizes) / sizeof(sizes[0]))];
  if (align > 1) cc.bytes = std::max<size_t>(align, cc.bytes / align * align);
  cc.src_off = (h % 64) / align * align;
  cc.dst_off = ((h >> 8) % 64) / align * align;
  WEFT_CHECK(cc.src_off + cc.bytes <= region && cc.dst_off + cc.bytes <= region, "case too big");
  return cc;
}

// After a put from `sender` (or a get by this rank), check the destination region: the case's
// bytes carry the sender's pattern, everything else is still poison.
void check_region(Failures& f, const std::vector<uint8_t>& region, const CopyCase& cc,
                  uint64_t key, const std::string& what) {
  f.add(compare_poison(region.data(), cc.dst_off, what + " (before the copied range)"));
  f.add(compare_pattern(region.data() + cc.dst_off, cc.bytes, key, cc.src_off, what));
  f.add(compare_poison(region.data() + cc.dst_off + cc.bytes,
                       region.size() - cc.dst_off - cc.bytes, what + " (after the copied range)"));
}

CheckResult check_put_get(World& w, const CheckOptions& opt) {
  Failures f;
  const size_t region = 200000 + 128;
  auto src = w.alloc<uint8_t>(region);
  auto dst = w.alloc<uint8_t>(region);
  const int next = (w.rank() + 1) % w.size(), prev = (w.rank() + w.size() - 1) % w.size();
  int index = 0;
  for (GroupKind gk : {GroupKind::thread, GroupKind::warp, GroupKind::block})
    for (bool is_get : {false, true})
      for (bool blocking : {false, true})
        for (int n = 0; n < 3; ++n, ++index) {
          const uint64_t my_key = stream_key(opt.seed, 41, index, w.rank());
          fill(src.data(), region, my_key, w.stream());
          WEFT_CUDA_CHECK(cudaMemsetAsync(dst.data(), kPoison, region, w.stream()));
          w.barrier(w.stream());
          const int case_index = index * 7 + n;
          const std::string what = fmt::format("{} {}{} of case {}", name_of(gk),
                                               is_get ? "get" : "put", blocking ? "" : "_nbi",
                                               case_index);
          if (!is_get) {
            // Put to next; this rank's dst receives prev's put.
            launch_put_get(w, gk, false, blocking, dst.data(), src.data(),
                           copy_case(opt.seed, case_index, w.rank(), region, 1), next);
            w.barrier(w.stream());
            const CopyCase recv = copy_case(opt.seed, case_index, prev, region, 1);
            check_region(f, to_host(w, dst.data(), region), recv,
                         stream_key(opt.seed, 41, index, prev), what + " from rank " + std::to_string(prev));
          } else {
            // Get prev's source into this rank's dst.
            const CopyCase cc = copy_case(opt.seed, case_index, w.rank(), region, 1);
            launch_put_get(w, gk, true, blocking, dst.data(), src.data(), cc, prev);
            w.barrier(w.stream());
            check_region(f, to_host(w, dst.data(), region), cc,
                         stream_key(opt.seed, 41, index, prev), what + " from rank " + std::to_string(prev));
          }
        }
  w.barrier(w.stream());
  w.synchronize(w.stream());
  return f.result;
}

// ---- TMA put / get ------------------------------------------------------------------------------------

constexpr uint32_t kTmaStages = 4, kTmaStageBytes = 8192;

__global__ void tma_put_get_kernel(const __grid_constant__ Context ctx, bool is_get, uint8_t* dst,
                                   const uint8_t* src, CopyCase cc, int peer) {
  __shared__ alignas(128) char stage[kTmaStages * kTmaStageBytes];
  __shared__ alignas(8) uint64_t bars[kTmaStages];
  if (threadIdx.x != 0) return;
  dev::TmaStaging st = dev::make_tma_staging(stage, bars, kTmaStageBytes, kTmaStages);
  // Two copies through the same ring, so that reuse of the ring (mbarrier phases) is covered.
  const size_t half = cc.bytes / 32 * 16;
  for (int part = 0; part < 2; ++part) {
    const size_t off = part == 0 ? 0 : half, len = part == 0 ? half : cc.bytes - half;
    if (len == 0) continue;
    if (is_get) dev::getmem_tma(ctx, st, dst + cc.dst_off + off, src + cc.src_off + off, len, peer);
    else dev::putmem_tma(ctx, st, dst + cc.dst_off + off, src + cc.src_off + off, len, peer);
  }
  dev::quiet();
}

CheckResult check_tma_put_get(World& w, const CheckOptions& opt) {
  Failures f;
  const size_t region = 200000 + 128;
  auto src = w.alloc<uint8_t>(region);
  auto dst = w.alloc<uint8_t>(region);
  const int next = (w.rank() + 1) % w.size(), prev = (w.rank() + w.size() - 1) % w.size();
  for (bool is_get : {false, true})
    for (int n = 0; n < 9; ++n) {
      const int index = (is_get ? 100 : 0) + n;
      fill(src.data(), region, stream_key(opt.seed, 42, index, w.rank()), w.stream());
      WEFT_CUDA_CHECK(cudaMemsetAsync(dst.data(), kPoison, region, w.stream()));
      w.barrier(w.stream());
      const int sender = is_get ? w.rank() : prev;
      const CopyCase mine = copy_case(opt.seed, index, w.rank(), region, 16);
      tma_put_get_kernel<<<1, 32, 0, w.stream()>>>(w.context(), is_get, dst.data(), src.data(),
                                                   mine, is_get ? prev : next);
      WEFT_CHECK_LAUNCH();
      w.barrier(w.stream());
      check_region(f, to_host(w, dst.data(), region), copy_case(opt.seed, index, sender, region, 16),
                   stream_key(opt.seed, 42, index, prev),
                   fmt::format("TMA {} case {} from rank {}", is_get ? "get" : "put", index, prev));
    }
  w.barrier(w.stream());
  w.synchronize(w.stream());
  return f.result;
}

// ---- TMA put of strided rows ----------------------------------------------------------------

// One case of putmem_rows_tma_nbi: `rows` rows of `row_bytes`, `src_pitch` / `dst_pitch` bytes
// apart (all multiples of 16); rows longer than a stage cover the split of a row into pieces.
struct RowsCase {
  size_t rows, row_bytes, src_pitch, dst_pitch;
};
RowsCase rows_case(uint64_t seed, int index) {
  const uint64_t h = mix64(stream_key(seed, 44, index));
  RowsCase c;
  c.rows = 1 + h % 40;
  c.row_bytes = 16 * (1 + (h >> 8) % (index % 3 == 0 ? 1500 : 200));  // up to ~3 stages a row
  c.src_pitch = c.row_bytes + 16 * ((h >> 24) % 5);
  c.dst_pitch = c.row_bytes + 16 * ((h >> 32) % 3);
  return c;
}

__global__ void tma_put_rows_kernel(const __grid_constant__ Context ctx, uint8_t* dst,
                                    const uint8_t* src, RowsCase c, int peer) {
  __shared__ alignas(128) char stage[kTmaStages * kTmaStageBytes];
  __shared__ alignas(8) uint64_t bars[kTmaStages];
  if (threadIdx.x != 0) return;
  dev::TmaStaging st = dev::make_tma_staging(stage, bars, kTmaStageBytes, kTmaStages);
  // In two calls through the same ring (its mbarrier phases carry over from the first call).
  const size_t first = c.rows / 2;
  dev::putmem_rows_tma_nbi(ctx, st, dst, c.dst_pitch, src, c.src_pitch, c.row_bytes, first, peer);
  dev::putmem_rows_tma_nbi(ctx, st, dst + first * c.dst_pitch, c.dst_pitch,
                           src + first * c.src_pitch, c.src_pitch, c.row_bytes, c.rows - first,
                           peer);
  dev::quiet();
}

CheckResult check_tma_put_rows(World& w, const CheckOptions& opt) {
  Failures f;
  const size_t region = 48 * (16 * 1500 + 64);
  auto src = w.alloc<uint8_t>(region);
  auto dst = w.alloc<uint8_t>(region);
  const int next = (w.rank() + 1) % w.size(), prev = (w.rank() + w.size() - 1) % w.size();
  for (int index = 0; index < 9; ++index) {
    const RowsCase c = rows_case(opt.seed, index);
    WEFT_CHECK(c.rows * std::max(c.src_pitch, c.dst_pitch) <= region, "rows case too large");
    fill(src.data(), region, stream_key(opt.seed, 45, index, w.rank()), w.stream());
    WEFT_CUDA_CHECK(cudaMemsetAsync(dst.data(), kPoison, region, w.stream()));
    w.barrier(w.stream());
    tma_put_rows_kernel<<<1, 32, 0, w.stream()>>>(w.context(), dst.data(), src.data(), c, next);
    WEFT_CHECK_LAUNCH();
    w.barrier(w.stream());
    // Row r of prev's source (pattern index r * src_pitch) lands at r * dst_pitch; the gaps
    // between rows and everything after the last row keep the poison.
    const std::vector<uint8_t> got = to_host(w, dst.data(), region);
    const uint64_t key = stream_key(opt.seed, 45, index, prev);
    const std::string what =
        fmt::format("TMA put of {} rows of {} bytes (pitches {} / {}) from rank {}", c.rows,
                    c.row_bytes, c.src_pitch, c.dst_pitch, prev);
    for (size_t r = 0; r < c.rows && f.result.ok; ++r) {
      f.add(compare_pattern(got.data() + r * c.dst_pitch, c.row_bytes, key, r * c.src_pitch,
                            fmt::format("{}, row {}", what, r)));
      const size_t gap_end = r + 1 < c.rows ? (r + 1) * c.dst_pitch : region;
      f.add(compare_poison(got.data() + r * c.dst_pitch + c.row_bytes,
                           gap_end - r * c.dst_pitch - c.row_bytes,
                           fmt::format("{}, after row {}", what, r)));
    }
  }
  w.barrier(w.stream());
  w.synchronize(w.stream());
  return f.result;
}

// ---- put with signal, received under an acquiring wait ------------------------------------------------

enum class SignalPath { warp_set, block_set, block_add, warp_add_blocking, tma_set };
const char* name_of(SignalPath p) {
  switch (p) {
    case SignalPath::warp_set: return "warp putmem_signal_nbi(set)";
    case SignalPath::block_set: return "block putmem_signal_nbi(set)";
    case SignalPath::block_add: return "block putmem_signal_nbi(add)";
    case SignalPath::warp_add_blocking: return "warp putmem_signal(add)";
    case SignalPath::tma_set: return "TMA putmem_signal_tma(set)";
  }
  return "?";
}

struct SignalSlots {
  signal_t data_ready;  // in the receiver's memory, raised by the sender
  signal_t consumed;    // in the sender's memory, raised by the receiver (flow control)
};

// Block 0 sends `rounds` messages to `next`; block 1 receives as many from `prev` and checks
// each message's bytes in-kernel, right after its acquiring wait.
template <SignalPath P>
__global__ void put_signal_kernel(const __grid_constant__ Context ctx, uint8_t* inbox,
                                  uint8_t* outbox, SignalSlots* slots, size_t max_bytes,
                                  int rounds, uint64_t seed, int next, int prev,
                                  unsigned long long* errors) {
  __shared__ alignas(128) char stage[kTmaStages * kTmaStageBytes];
  __shared__ alignas(8) uint64_t bars[kTmaStages];
  constexpr bool kWarp = P == SignalPath::warp_set || P == SignalPath::warp_add_blocking;
  auto bytes_of = [&](int sender, int r) {
    size_t b = 16 + mix64(stream_key(seed, 43, sender, r)) % (max_bytes - 16);
    return P == SignalPath::tma_set ? b / 16 * 16 : b;
  };
  if (blockIdx.x == 0) {  // sender
    dev::TmaStaging st{};
    if (P == SignalPath::tma_set && threadIdx.x == 0)
      st = dev::make_tma_staging(stage, bars, kTmaStageBytes, kTmaStages);
    for (int r = 1; r <= rounds; ++r) {
      // Wait until `next` has consumed round r - 1 before overwriting its inbox.
      dev::wait(Block{}, ctx, &slots->consumed, Cmp::ge, uint64_t(r - 1));
      const size_t bytes = bytes_of(ctx.rank, r);
      const uint64_t key = stream_key(seed, 44, ctx.rank, r);
      for (size_t i = threadIdx.x; i < bytes; i += blockDim.x) outbox[i] = pattern_byte(key, i);
      // The TMA (async proxy) reads what these ordinary stores wrote: fence before the barrier.
      if constexpr (P == SignalPath::tma_set) dev::fence_proxy_async_global();
      __syncthreads();
      if constexpr (P == SignalPath::tma_set) {
        if (threadIdx.x == 0) {
          dev::putmem_signal_tma(ctx, st, inbox, outbox, bytes, &slots->data_ready, r,
                                 SignalOp::set, next);
        }
      } else if constexpr (kWarp) {
        if (threadIdx.x < 32) {
          if (P == SignalPath::warp_set)
            dev::putmem_signal_nbi(Warp{}, ctx, inbox, outbox, bytes, &slots->data_ready, r,
                                   SignalOp::set, next);
          else
            dev::putmem_signal(Warp{}, ctx, inbox, outbox, bytes, &slots->data_ready, 1,
                               SignalOp::add, next);
        }
      } else {
        dev::putmem_signal_nbi(Block{}, ctx, inbox, outbox, bytes, &slots->data_ready,
                               P == SignalPath::block_add ? 1 : r,
                               P == SignalPath::block_add ? SignalOp::add : SignalOp::set, next);
      }
      __syncthreads();
    }
  } else {  // receiver
    for (int r = 1; r <= rounds; ++r) {
      dev::wait(Block{}, ctx, &slots->data_ready, Cmp::ge, uint64_t(r));
      const size_t bytes = bytes_of(prev, r);
      const uint64_t key = stream_key(seed, 44, prev, r);
      unsigned long long bad = 0;
      for (size_t i = threadIdx.x; i < bytes; i += blockDim.x) bad += inbox[i] != pattern_byte(key, i);
      if (bad) atomicAdd(errors, bad);
      dev::notify(Block{}, ctx, &slots->consumed, prev, uint64_t(r), SignalOp::set);
    }
  }
}

CheckResult check_put_signal(World& w, const CheckOptions& opt) {
  Failures f;
  const size_t max_bytes = 12345;
  const int next = (w.rank() + 1) % w.size(), prev = (w.rank() + w.size() - 1) % w.size();
  unsigned long long* errors = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&errors, sizeof(unsigned long long)));
  auto run = [&](auto path_tag) {
    constexpr SignalPath P = decltype(path_tag)::value;
    auto inbox = w.alloc<uint8_t>(max_bytes);
    auto outbox = w.alloc<uint8_t>(max_bytes);
    auto slots = w.alloc_signals(2);
    WEFT_CUDA_CHECK(cudaMemsetAsync(errors, 0, sizeof(unsigned long long), w.stream()));
    put_signal_kernel<P><<<2, 256, 0, w.stream()>>>(
        w.context(), inbox.data(), outbox.data(), reinterpret_cast<SignalSlots*>(slots.data()),
        max_bytes, opt.rounds, opt.seed, next, prev, errors);
    WEFT_CHECK_LAUNCH();
    unsigned long long h = 0;
    WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, errors, sizeof(h), cudaMemcpyDeviceToHost, w.stream()));
    w.barrier(w.stream());
    w.synchronize(w.stream());
    if (h) f.add(fmt::format("{}: {} bytes differed after the signal over {} rounds", name_of(P), h, opt.rounds));
  };
  run(std::integral_constant<SignalPath, SignalPath::warp_set>{});
  run(std::integral_constant<SignalPath, SignalPath::block_set>{});
  run(std::integral_constant<SignalPath, SignalPath::block_add>{});
  run(std::integral_constant<SignalPath, SignalPath::warp_add_blocking>{});
  run(std::integral_constant<SignalPath, SignalPath::tma_set>{});
  WEFT_CUDA_CHECK(cudaFree(errors));
  return f.result;
}

// ---- the tile layer ----------------------------------------------------------------------------------

constexpr int kTileRows = 37, kTileCols = 100, kTileLd = 136;  // odd shape, padded rows

__device__ inline float tile_value(uint64_t seed, int rank, int tile, int r, int c) {
  return static_cast<float>(mix64(stream_key(seed, 50, rank, tile) ^ (uint64_t(r) << 20 | c)) % 1000003);
}

// Block 0 pushes tile t of this rank into `next`'s inbox (tile_push) and produces a local tile
// for block 1 (tile_notify); block 1 consumes it (tile_wait), waits for prev's pushed tile
// (peer_tile_wait) and pulls prev's source tile (tile_pull), checking each element.
__global__ void tile_kernel(const __grid_constant__ Context ctx, float* src, float* inbox,
                            float* local, signal_t* push_flags, signal_t* src_flags,
                            signal_t* local_flags, int tiles, uint64_t seed, uint64_t epoch,
                            int next, int prev, float* pulled, unsigned long long* errors) {
  using dev::TileRef;
  const size_t tile_elems = size_t(kTileRows) * kTileLd;
  unsigned long long bad = 0;
  if (blockIdx.x == 0) {
    for (int t = 0; t < tiles; ++t) {
      float* s = src + t * tile_elems;
      for (int i = threadIdx.x; i < kTileRows * kTileCols; i += blockDim.x)
        s[(i / kTileCols) * kTileLd + i % kTileCols] =
            tile_value(seed, ctx.rank, t, i / kTileCols, i % kTileCols);
      // Mark my source tile readable by pullers, then push it to next.
      dev::tile_notify<Block, Scope::sys>(Block{}, ctx, src_flags, t, epoch);
      dev::tile_push(Block{}, ctx, TileRef<float>{inbox + t * tile_elems, kTileLd, kTileRows, kTileCols},
                     TileRef<const float>{s, kTileLd, kTileRows, kTileCols}, next, push_flags, t,
                     epoch);
      // Producer/consumer inside this rank: a tile for block 1.
      float* l = local + t * tile_elems;
      for (int i = threadIdx.x; i < kTileRows * kTileCols; i += blockDim.x)
        l[(i / kTileCols) * kTileLd + i % kTileCols] = float(t * 7 + i);
      dev::tile_notify(Block{}, ctx, local_flags, t, epoch);
    }
  } else {
    for (int t = 0; t < tiles; ++t) {
      dev::tile_wait(Block{}, ctx, local_flags, t, epoch);
      const float* l = local + t * tile_elems;
      for (int i = threadIdx.x; i < kTileRows * kTileCols; i += blockDim.x)
        bad += l[(i / kTileCols) * kTileLd + i % kTileCols] != float(t * 7 + i);
      dev::peer_tile_wait(Block{}, ctx, push_flags, t, epoch);
      const float* in = inbox + t * tile_elems;
      for (int i = threadIdx.x; i < kTileRows * kTileCols; i += blockDim.x)
        bad += in[(i / kTileCols) * kTileLd + i % kTileCols] !=
               tile_value(seed, prev, t, i / kTileCols, i % kTileCols);
      float* p = pulled + t * kTileRows * kTileCols;  // dense destination, ld = cols
      dev::tile_pull(Block{}, ctx, TileRef<float>{p, kTileCols, kTileRows, kTileCols},
                     TileRef<const float>{src + t * tile_elems, kTileLd, kTileRows, kTileCols},
                     prev, src_flags, t, epoch);
      for (int i = threadIdx.x; i < kTileRows * kTileCols; i += blockDim.x)
        bad += p[i] != tile_value(seed, prev, t, i / kTileCols, i % kTileCols);
    }
  }
  if (bad) atomicAdd(errors, bad);
}

CheckResult check_tiles(World& w, const CheckOptions& opt) {
  Failures f;
  const int tiles = 6;
  const size_t tile_elems = size_t(kTileRows) * kTileLd;
  auto src = w.alloc<float>(tiles * tile_elems);
  auto inbox = w.alloc<float>(tiles * tile_elems);
  auto local = w.alloc<float>(tiles * tile_elems);
  auto push_flags = w.alloc_signals(tiles);
  auto src_flags = w.alloc_signals(tiles);
  auto local_flags = w.alloc_signals(tiles);
  float* pulled = nullptr;
  unsigned long long* errors = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&pulled, sizeof(float) * tiles * kTileRows * kTileCols));
  WEFT_CUDA_CHECK(cudaMalloc(&errors, sizeof(unsigned long long)));
  const int next = (w.rank() + 1) % w.size(), prev = (w.rank() + w.size() - 1) % w.size();
  // Two epochs over the same flags: nothing is reset in between.
  for (uint64_t epoch = 1; epoch <= 2; ++epoch) {
    WEFT_CUDA_CHECK(cudaMemsetAsync(errors, 0, sizeof(unsigned long long), w.stream()));
    WEFT_CUDA_CHECK(cudaMemsetAsync(pulled, kPoison, sizeof(float) * tiles * kTileRows * kTileCols,
                                    w.stream()));
    w.barrier(w.stream());  // nobody overwrites a tile a peer still pulls from the last epoch
    tile_kernel<<<2, 256, 0, w.stream()>>>(w.context(), src.data(), inbox.data(), local.data(),
                                           push_flags.data(), src_flags.data(), local_flags.data(),
                                           tiles, opt.seed ^ epoch, epoch, next, prev, pulled,
                                           errors);
    WEFT_CHECK_LAUNCH();
    unsigned long long h = 0;
    WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, errors, sizeof(h), cudaMemcpyDeviceToHost, w.stream()));
    w.synchronize(w.stream());
    if (h) f.add(fmt::format("epoch {}: {} tile elements wrong (tile_notify/wait, tile_push, "
                             "peer_tile_wait, tile_pull)", epoch, h));
  }
  w.barrier(w.stream());
  w.synchronize(w.stream());
  WEFT_CUDA_CHECK(cudaFree(pulled));
  WEFT_CUDA_CHECK(cudaFree(errors));
  return f.result;
}

// ---- the remaining signal and copy forms ------------------------------------------------------------

// Each rank, in one kernel: typed put to next by a single thread with putmem_signal (Thread
// group, add) and rank_copy (Block); waits for prev's with signal_wait_until and wait_all over
// both signals; typed get of prev's source; a TMA read of the received data after wait_for_tma;
// signal_op(set) to next as a final handshake. Every received value is checked.
__global__ void signal_forms_kernel(const __grid_constant__ Context ctx, uint32_t* src,
                                    uint32_t* inbox_a, uint32_t* inbox_b, uint32_t* got,
                                    signal_t* sigs, int n, uint64_t seed, uint64_t epoch, int next,
                                    int prev, unsigned long long* errors) {
  __shared__ alignas(128) char stage[kTmaStages * kTmaStageBytes];
  __shared__ alignas(8) uint64_t bars[kTmaStages];
  auto value = [&](int rank, int i) { return uint32_t(mix64(stream_key(seed, 60, rank, epoch) ^ i)); };
  for (int i = threadIdx.x; i < n; i += blockDim.x) src[i] = value(ctx.rank, i);
  __syncthreads();
  if (threadIdx.x == 0)
    dev::putmem_signal(Thread{}, ctx, inbox_a, src, n * sizeof(uint32_t), &sigs[0], 1,
                       SignalOp::add, next);
  dev::rank_copy(Block{}, ctx, inbox_b, src, n * sizeof(uint32_t), next, &sigs[1], epoch);
  // Receive: both signals (sigs[0] counts one add per epoch, sigs[1] carries the epoch).
  if (threadIdx.x == 0) dev::signal_wait_until(ctx, &sigs[0], Cmp::ge, epoch);
  dev::wait_all(Block{}, ctx, sigs, 2, Cmp::ge, epoch);
  unsigned long long bad = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    bad += (inbox_a[i] != value(prev, i)) + (inbox_b[i] != value(prev, i));
  // TMA consumer of peer-written data: acquire + proxy fence, then a bulk copy of inbox_b.
  dev::wait_for_tma(Block{}, ctx, &sigs[1], Cmp::ge, epoch);
  if (threadIdx.x == 0) {
    dev::TmaStaging st = dev::make_tma_staging(stage, bars, kTmaStageBytes, kTmaStages);
    dev::getmem_tma(ctx, st, got, inbox_b, n * sizeof(uint32_t), ctx.rank);  // local "peer"
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) bad += got[i] != value(prev, i);
  // Typed get straight from prev's source.
  dev::get(Block{}, ctx, got, src, size_t(n), prev);
  for (int i = threadIdx.x; i < n; i += blockDim.x) bad += got[i] != value(prev, i);
  dev::fence<Scope::sys>();
  // Handshake so that no rank refills `src` while its next rank still reads it with get.
  __syncthreads();
  if (threadIdx.x == 0) {
    dev::signal_op(ctx, &sigs[2], epoch, SignalOp::set, prev);
    dev::wait(ctx, &sigs[2], Cmp::eq, epoch);
  }
  __syncthreads();
  if (bad) atomicAdd(errors, bad);
}

CheckResult check_signal_forms(World& w, const CheckOptions& opt) {
  Failures f;
  const int n = 4096 + 4;  // 16-byte multiple for the TMA copy
  auto src = w.alloc<uint32_t>(n);
  auto inbox_a = w.alloc<uint32_t>(n);
  auto inbox_b = w.alloc<uint32_t>(n);
  auto got = w.alloc<uint32_t>(n);
  auto sigs = w.alloc_signals(3);
  unsigned long long* errors = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&errors, sizeof(unsigned long long)));
  const int next = (w.rank() + 1) % w.size(), prev = (w.rank() + w.size() - 1) % w.size();
  for (uint64_t epoch = 1; epoch <= 3; ++epoch) {
    WEFT_CUDA_CHECK(cudaMemsetAsync(errors, 0, sizeof(unsigned long long), w.stream()));
    w.barrier(w.stream());
    signal_forms_kernel<<<1, 256, 0, w.stream()>>>(w.context(), src.data(), inbox_a.data(),
                                                   inbox_b.data(), got.data(), sigs.data(), n,
                                                   opt.seed, epoch, next, prev, errors);
    WEFT_CHECK_LAUNCH();
    unsigned long long h = 0;
    WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, errors, sizeof(h), cudaMemcpyDeviceToHost, w.stream()));
    w.synchronize(w.stream());
    if (h) f.add(fmt::format("epoch {}: {} values wrong", epoch, h));
  }
  w.barrier(w.stream());
  w.synchronize(w.stream());
  WEFT_CUDA_CHECK(cudaFree(errors));
  return f.result;
}

// ---- tagged words (put_tagged / wait_tagged), and every comparison a wait offers -------------

constexpr int kTaggedWords = 256;

__host__ __device__ inline uint32_t tagged_value(int rank, int word, uint32_t tag) {
  return uint32_t(rank) * 100003u + uint32_t(word) * 7919u + tag * 31u;
}

// Thread i puts (tag, tagged_value(rank, i, tag)) into word i of the next rank, then waits until
// its own word i carries `tag` and records the value. Launched with tag 1, then (after a
// barrier) tag 2: the second launch must skip the first one's words still standing there.
__global__ void tagged_kernel(const __grid_constant__ Context ctx, uint64_t* words, uint32_t* seen,
                              uint32_t tag) {
  const int i = threadIdx.x;
  dev::put_tagged(ctx, words + i, (ctx.rank + 1) % ctx.world_size, tag,
                  tagged_value(ctx.rank, i, tag));
  seen[i] = dev::wait_tagged(ctx, words + i, tag);
}

// `sig` holds 100: every comparison is waited for where it holds (the value seen comes back),
// and compare() is asked where it does not.
__global__ void comparisons_kernel(const __grid_constant__ Context ctx, const signal_t* sig,
                                   uint64_t* out) {
  out[0] = dev::wait(ctx, sig, Cmp::eq, 100);
  out[1] = dev::wait(ctx, sig, Cmp::ne, 99);
  out[2] = dev::wait(ctx, sig, Cmp::ge, 100);
  out[3] = dev::wait(ctx, sig, Cmp::gt, 99);
  out[4] = dev::wait(ctx, sig, Cmp::le, 100);
  out[5] = dev::wait(ctx, sig, Cmp::lt, 101);
  const bool wrong[] = {dev::compare(Cmp::eq, 100, 101), dev::compare(Cmp::ne, 100, 100),
                        dev::compare(Cmp::ge, 100, 101), dev::compare(Cmp::gt, 100, 100),
                        dev::compare(Cmp::le, 100, 99),  dev::compare(Cmp::lt, 100, 100)};
  uint64_t bits = 0;
  for (int c = 0; c < 6; ++c) bits |= uint64_t(wrong[c]) << c;
  out[6] = bits;
}

CheckResult check_tagged_and_comparisons(World& w, const CheckOptions&) {
  Failures f;
  auto words = w.alloc_signals(kTaggedWords);  // zeroed everywhere: tag 0
  uint32_t* seen = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&seen, kTaggedWords * sizeof(uint32_t)));
  std::vector<uint32_t> h(kTaggedWords);
  const int prev = (w.rank() + w.size() - 1) % w.size();
  for (uint32_t tag : {1u, 2u}) {
    w.barrier(w.stream());  // every rank done with the last tag's words before they change
    tagged_kernel<<<1, kTaggedWords, 0, w.stream()>>>(w.context(), words.data(), seen, tag);
    WEFT_CHECK_LAUNCH();
    WEFT_CUDA_CHECK(cudaMemcpyAsync(h.data(), seen, h.size() * sizeof(uint32_t),
                                    cudaMemcpyDeviceToHost, w.stream()));
    w.synchronize(w.stream());
    int bad = 0;
    for (int i = 0; i < kTaggedWords; ++i) bad += h[i] != tagged_value(prev, i, tag);
    if (bad)
      f.add(fmt::format("tag {}: {} of {} words carried another value than rank {}'s", tag, bad,
                        kTaggedWords, prev));
  }
  WEFT_CUDA_CHECK(cudaFree(seen));

  auto sig = w.alloc_signals(1);
  const uint64_t hundred = 100;
  WEFT_CUDA_CHECK(
      cudaMemcpyAsync(sig.data(), &hundred, sizeof(hundred), cudaMemcpyHostToDevice, w.stream()));
  uint64_t* out = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&out, 7 * sizeof(uint64_t)));
  comparisons_kernel<<<1, 1, 0, w.stream()>>>(w.context(), sig.data(), out);
  WEFT_CHECK_LAUNCH();
  uint64_t o[7] = {};
  WEFT_CUDA_CHECK(cudaMemcpyAsync(o, out, sizeof(o), cudaMemcpyDeviceToHost, w.stream()));
  w.synchronize(w.stream());
  WEFT_CUDA_CHECK(cudaFree(out));
  for (int c = 0; c < 6; ++c)
    if (o[c] != 100)
      f.add(fmt::format("wait with {} returned {}, expected 100",
                        dev::to_string(static_cast<Cmp>(c)), o[c]));
  if (o[6] != 0)
    f.add(fmt::format("compare() held where it must not (bits {:#x}: eq ne ge gt le lt)", o[6]));
  w.barrier(w.stream());
  w.synchronize(w.stream());
  return f.result;
}

// ---- message-passing litmus test -----------------------------------------------------------------------

// Payload words sit on separate 128-byte lines so that a reordering between them and the flag is
// not hidden by a single-line transfer.
constexpr int kPayloadWords = 4, kPayloadStride = 16;  // 16 x 8 bytes = 128 bytes apart
struct LitmusMailbox {
  uint64_t payload[kPayloadWords * kPayloadStride];
};

// Block j pairs this rank with peer p = rank + 1 + j: warp 0 writes payload then flag to p, warp 1
// reads p's payload after acquiring p's flag and counts payload words that are not the round.
__global__ void litmus_kernel(const __grid_constant__ Context ctx, LitmusMailbox* boxes,
                              signal_t* flags, signal_t* acks, int rounds,
                              unsigned long long* violations) {
  const int peer = (ctx.rank + 1 + blockIdx.x) % ctx.world_size;
  if (threadIdx.x == 0) {  // writer: me -> peer
    LitmusMailbox* box = dev::symm_at(ctx, boxes + ctx.rank, peer);
    for (int r = 1; r <= rounds; ++r) {
      dev::wait(ctx, acks + peer, Cmp::ge, uint64_t(r - 1));  // peer consumed round r - 1
      for (int k = 0; k < kPayloadWords; ++k) box->payload[k * kPayloadStride] = r;
      dev::notify(ctx, flags + ctx.rank, peer, uint64_t(r), SignalOp::set);
    }
  } else if (threadIdx.x == 32) {  // reader: peer -> me
    const LitmusMailbox* box = boxes + peer;
    unsigned long long bad = 0;
    for (int r = 1; r <= rounds; ++r) {
      dev::wait(ctx, flags + peer, Cmp::eq, uint64_t(r));
      for (int k = 0; k < kPayloadWords; ++k) bad += box->payload[k * kPayloadStride] != uint64_t(r);
      dev::notify(ctx, acks + ctx.rank, peer, uint64_t(r), SignalOp::set);
    }
    violations[blockIdx.x] = bad;
  }
}

CheckResult check_litmus(World& w, const CheckOptions& opt) {
  Failures f;
  if (w.size() < 2) return f.skip("needs two ranks");
  auto boxes = w.alloc<LitmusMailbox>(w.size());
  auto flags = w.alloc_signals(w.size());
  auto acks = w.alloc_signals(w.size());
  unsigned long long* violations = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&violations, sizeof(unsigned long long) * (w.size() - 1)));
  WEFT_CUDA_CHECK(cudaMemsetAsync(violations, 0xFF, sizeof(unsigned long long) * (w.size() - 1),
                                  w.stream()));
  WEFT_CUDA_CHECK(cudaMemsetAsync(boxes.data(), 0, boxes.bytes(), w.stream()));
  w.barrier(w.stream());
  litmus_kernel<<<w.size() - 1, 64, 0, w.stream()>>>(w.context(), boxes.data(), flags.data(),
                                                     acks.data(), opt.litmus_rounds, violations);
  WEFT_CHECK_LAUNCH();
  std::vector<unsigned long long> h(w.size() - 1);
  WEFT_CUDA_CHECK(cudaMemcpyAsync(h.data(), violations, sizeof(h[0]) * h.size(),
                                  cudaMemcpyDeviceToHost, w.stream()));
  w.barrier(w.stream());
  w.synchronize(w.stream());
  WEFT_CUDA_CHECK(cudaFree(violations));
  for (int j = 0; j < w.size() - 1; ++j)
    if (h[j] != 0)
      f.add(fmt::format("{} stale payload words seen from rank {} after acquiring its flag "
                        "({} rounds)",
                        h[j], (w.rank() + 1 + j) % w.size(), opt.litmus_rounds));
  return f.result;
}

// ---- device barriers ----------------------------------------------------------------------------------

// In round k every rank adds 1 to counter[b] of every rank, then passes barrier b; after it, the
// counter must hold at least k * W (everyone's increments of rounds <= k) and at most (k+1) * W.
template <class Group>
__global__ void barrier_kernel(const __grid_constant__ Context ctx, uint64_t* counters,
                               int groups_per_block, int rounds, unsigned long long* errors) {
  Group g;
  const int group_in_block = threadIdx.x / g.size();
  const int index = blockIdx.x * groups_per_block + group_in_block;
  uint64_t* counter = counters + index;
  for (int k = 1; k <= rounds; ++k) {
    if (g.thread_rank() == 0)
      for (int p = 0; p < ctx.world_size; ++p)
        dev::red_add<Sem::relaxed, Scope::sys>(dev::symm_at(ctx, counter, p), uint64_t(1));
    dev::barrier_all(g, ctx, index);
    if (g.thread_rank() == 0) {
      const uint64_t v = dev::ld<Sem::relaxed, Scope::sys>(counter);
      if (v < uint64_t(k) * ctx.world_size || v > uint64_t(k + 1) * ctx.world_size)
        atomicAdd(errors, 1ull);
    }
  }
  for (int k = 0; k < rounds; ++k) dev::sync_all(g, ctx, index);
}

CheckResult check_barriers(World& w, const CheckOptions& opt) {
  Failures f;
  const int blocks = 4, warps = 4;
  auto counters = w.alloc_signals(blocks * warps);
  unsigned long long* errors = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&errors, sizeof(unsigned long long)));
  for (bool warp_groups : {false, true}) {
    WEFT_CUDA_CHECK(cudaMemsetAsync(counters.data(), 0, counters.bytes(), w.stream()));
    WEFT_CUDA_CHECK(cudaMemsetAsync(errors, 0, sizeof(unsigned long long), w.stream()));
    w.barrier(w.stream());
    if (warp_groups)
      barrier_kernel<Warp><<<blocks, 32 * warps, 0, w.stream()>>>(w.context(), counters.data(),
                                                                  warps, opt.rounds, errors);
    else
      barrier_kernel<Block><<<blocks, 128, 0, w.stream()>>>(w.context(), counters.data(), 1,
                                                            opt.rounds, errors);
    WEFT_CHECK_LAUNCH();
    unsigned long long h = 0;
    WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, errors, sizeof(h), cudaMemcpyDeviceToHost, w.stream()));
    w.synchronize(w.stream());
    if (h)
      f.add(fmt::format("{}-group barrier_all let {} group-rounds through before every rank "
                        "arrived",
                        warp_groups ? "warp" : "block", h));
  }
  w.barrier(w.stream());
  w.synchronize(w.stream());
  WEFT_CUDA_CHECK(cudaFree(errors));
  return f.result;
}

// ---- copy engines and stream memory operations -----------------------------------------------------

__global__ void wait_then_compare(const __grid_constant__ Context ctx, const signal_t* sig,
                                  uint64_t epoch, const uint8_t* data, size_t bytes, uint64_t key,
                                  unsigned long long* errors) {
  dev::wait(Block{}, ctx, sig, Cmp::ge, epoch);
  unsigned long long bad = 0;
  for (size_t i = threadIdx.x; i < bytes; i += blockDim.x) bad += data[i] != pattern_byte(key, i);
  if (bad) atomicAdd(errors, bad);
}

CheckResult check_copy_engine(World& w, const CheckOptions& opt) {
  Failures f;
  const size_t bytes = (size_t(8) << 20) + 48;
  auto src = w.alloc<uint8_t>(bytes);
  auto inbox = w.alloc<uint8_t>(bytes);
  auto sigs = w.alloc_signals(2);
  uint8_t* pulled = nullptr;
  unsigned long long* errors = nullptr;
  WEFT_CUDA_CHECK(cudaMalloc(&pulled, bytes));
  WEFT_CUDA_CHECK(cudaMalloc(&errors, sizeof(unsigned long long)));
  const int next = (w.rank() + 1) % w.size(), prev = (w.rank() + w.size() - 1) % w.size();
  cudaStream_t side = nullptr;
  WEFT_CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  for (uint64_t epoch = 1; epoch <= 3; ++epoch) {
    const uint64_t key = stream_key(opt.seed, 45, epoch, w.rank());
    const uint64_t prev_key = stream_key(opt.seed, 45, epoch, prev);
    fill(src.data(), bytes, key, w.stream());
    WEFT_CUDA_CHECK(cudaMemsetAsync(pulled, kPoison, bytes, w.stream()));
    WEFT_CUDA_CHECK(cudaMemsetAsync(errors, 0, sizeof(unsigned long long), w.stream()));
    w.barrier(w.stream());  // everyone's inbox is free and every src is filled
    // Push by copy engine, then raise the peer's signal behind it (stream order).
    copy_to_peer(w, inbox.data(), src.data(), bytes, next, w.stream());
    stream_write_signal(w, &sigs.data()[0], next, epoch, w.stream());
    // Receive: one stream waits on the signal without an SM, a kernel waits with dev::wait.
    cudaEvent_t ready;
    WEFT_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    WEFT_CUDA_CHECK(cudaEventRecord(ready, w.stream()));
    WEFT_CUDA_CHECK(cudaStreamWaitEvent(side, ready));
    stream_wait_signal(&sigs.data()[0], epoch, side);
    std::vector<uint8_t> got(bytes);
    WEFT_CUDA_CHECK(cudaMemcpyAsync(got.data(), inbox.data(), bytes, cudaMemcpyDeviceToHost, side));
    wait_then_compare<<<1, 256, 0, w.stream()>>>(w.context(), &sigs.data()[0], epoch, inbox.data(),
                                                 bytes, prev_key, errors);
    WEFT_CHECK_LAUNCH();
    // Pull prev's source by copy engine.
    copy_from_peer(w, pulled, src.data(), bytes, prev, w.stream());
    w.synchronize(side);
    WEFT_CUDA_CHECK(cudaEventDestroy(ready));
    unsigned long long h = 0;
    WEFT_CUDA_CHECK(cudaMemcpyAsync(&h, errors, sizeof(h), cudaMemcpyDeviceToHost, w.stream()));
    const auto pulled_h = to_host(w, pulled, bytes);
    f.add(compare_pattern(got.data(), bytes, prev_key, 0,
                          fmt::format("copy_to_peer from rank {} after stream_wait_signal", prev)));
    if (h) f.add(fmt::format("{} bytes differed in a kernel after dev::wait on a stream-written signal", h));
    f.add(compare_pattern(pulled_h.data(), bytes, prev_key, 0,
                          fmt::format("copy_from_peer of rank {}", prev)));
    w.barrier(w.stream());  // prev may not refill its src before this rank pulled it
  }
  w.synchronize(w.stream());
  WEFT_CUDA_CHECK(cudaStreamDestroy(side));
  WEFT_CUDA_CHECK(cudaFree(pulled));
  WEFT_CUDA_CHECK(cudaFree(errors));
  return f.result;
}

// ---- a stream wait nobody satisfies: World::synchronize gives up, and the stream recovers -------


CheckResult check_stream_wait_timeout(World& w, const CheckOptions&) {
  Failures f;
  auto sig = w.alloc_signals(1);
  cudaStream_t waiting = nullptr;
  WEFT_CUDA_CHECK(cudaStreamCreateWithFlags(&waiting, cudaStreamNonBlocking));
  struct DestroyAtExit {
    cudaStream_t s;
    ~DestroyAtExit() { cudaStreamDestroy(s); }
  } destroy{waiting};
  w.synchronize(w.stream());  // the signal is zeroed
  // Nobody raises the signal yet: a copy engine's wait cannot time out on the device.
  stream_wait_signal(&sig.data()[0], 1, waiting);
  const auto start = std::chrono::steady_clock::now();
  bool timed_out = false;
  try {
    w.synchronize(waiting, std::chrono::milliseconds(200));
  } catch (const Timeout& e) {
    timed_out = true;
    const std::string text = e.what();
    if (text.find("stream wait") == std::string::npos ||
        text.find("still queued") == std::string::npos)
      f.add("the Timeout does not name the stream wait or say the work is still queued: " + text);
  }
  const double waited_ms = std::chrono::duration<double, std::milli>(
                               std::chrono::steady_clock::now() - start).count();
  if (!timed_out)
    f.add("World::synchronize returned although the stream waits on a signal nobody raised");
  if (waited_ms < 190 || waited_ms > 5000)
    f.add(fmt::format("gave up after {:.0f} ms, asked for 200", waited_ms));
  // Raising the signal releases the stream; the device is unharmed.
  stream_write_signal(w, &sig.data()[0], w.rank(), 1, w.stream());
  w.synchronize(waiting, std::chrono::seconds(20));
  w.synchronize(w.stream());
  return f.result;
}


// ---- a wait that can never succeed must time out and say so ------------------------------------------

constexpr const char* kChildVariable = "WEFT_WAIT_TIMEOUT_CHILD";
constexpr uint64_t kChildTimeoutMs = 300;
constexpr uint64_t kChildExpected = 5;

// With it set to "mbarrier" the child waits on a TMA mbarrier instead: 16 bytes announced, none
// ever loaded.
constexpr const char* kChildKindVariable = "WEFT_WAIT_TIMEOUT_CHILD_KIND";

__global__ void hopeless_wait(const __grid_constant__ Context ctx, const signal_t* sig) {
  dev::wait(Block{}, ctx, sig, Cmp::ge, kChildExpected);
}

// Debug builds (WEFT_DEVICE_DEBUG) only, kind "symm_span": a put that starts inside the 64-byte
// heap and runs past its end must trap with symm_at's report instead of writing beyond it.
__global__ void overrunning_put(const __grid_constant__ Context ctx, const uint8_t* src) {
  dev::putmem_nbi(dev::Thread{}, ctx, ctx.heap_base + 32, src, 64, ctx.rank);
}

__global__ void hopeless_mbarrier_wait(const __grid_constant__ Context ctx) {
  __shared__ alignas(8) uint64_t bar;
  if (threadIdx.x == 0) {
    dev::mbarrier_init(&bar, 1);
    dev::mbarrier_arrive_expect_tx(&bar, 16);
  }
  __syncthreads();
  if (threadIdx.x == 0) dev::mbarrier_wait(ctx, &bar, 0);
}

CheckResult check_wait_timeout(World& w, const CheckOptions&) {
  Failures f;
  // Only one rank needs to show it; the child uses this rank's GPU alone.
  if (w.rank() != 0) return f.result;
  // Each child's report must hold every one of `want`.
  auto expect_child = [&](const char* kind, std::vector<std::string> want) {
    const auto start = std::chrono::steady_clock::now();
    auto [status, out] =
        spawn_and_capture("/proc/self/exe",
                          {fmt::format("{}={}", kChildVariable, w.rank()),
                           fmt::format("{}={}", kChildKindVariable, kind), visible_device_of(w)},
                          std::chrono::seconds(60));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    bool found = status == 0;
    for (const std::string& text : want) found = found && out.find(text) != std::string::npos;
    if (!found)
      f.add(fmt::format("the {} child did not report as expected (exit {}, {:.1f} s): {}", kind,
                        status, seconds, out));
  };
  expect_child("signal", {fmt::format("rank {}: wait timed out after", w.rank()),
                          fmt::format("expected value >= {}, observed 0", kChildExpected),
                          "symmetric heap offset 8"});
  expect_child("mbarrier", {fmt::format("rank {}: TMA mbarrier wait timed out after", w.rank()),
                            "phase parity 0"});
#if defined(WEFT_DEVICE_DEBUG) && WEFT_DEVICE_DEBUG
  expect_child("symm_span", {fmt::format("rank {}: symm_at(", w.rank()), "is invalid"});
#endif
  return f.result;
}

// ---- a device barrier a rank never reaches must time out and name it ----------------------------

constexpr const char* kBarrierChildVariable = "WEFT_BARRIER_TIMEOUT_CHILD";

__global__ void mismatched_barrier(const __grid_constant__ Context ctx, uint32_t index) {
  dev::sync_all(Block{}, ctx, index);
}

// Every rank starts one child; the children form a world of their own on the same GPUs (a fresh
// rendezvous port) in which each waits on a different barrier index, so every barrier must time
// out on the device and name a rank that never arrived.
CheckResult check_barrier_timeout(World& w, const CheckOptions&) {
  Failures f;
  if (w.size() < 2) return f.skip("needs two ranks: nobody to miss the barrier");
  const auto start = std::chrono::steady_clock::now();
  auto [status, out] = run_child_world(
      w,
      {fmt::format("{}=1", kBarrierChildVariable), "WEFT_HEAP_BYTES=64M",
       fmt::format("WEFT_WAIT_TIMEOUT_MS={}", kChildTimeoutMs), "WEFT_SYNC_TIMEOUT_MS=60000"},
      std::chrono::seconds(90));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The first rank to time out marks the abort board; the others may then give up before their
  // own time runs out, saying so (and quoting that rank's report).
  const std::string own = fmt::format("rank {}: device barrier {} ", w.rank(), w.rank());
  const bool reported = out.find(own + "timed out after") != std::string::npos ||
                        out.find(own + "gave up because a rank") != std::string::npos;
  if (status != 0 || !reported || out.find("waiting for rank") == std::string::npos)
    f.add(fmt::format("the timed-out barrier did not report as expected (exit {}, {:.1f} s): {}",
                      status, seconds, out));
  return f.result;
}

// ---- a rank that gives up is noticed by its peers at once, not at their timeout ----------------

constexpr const char* kPeerAbortChildVariable = "WEFT_PEER_ABORT_CHILD";
constexpr const char* kPeerAbortReason = "the check gave up on purpose";

// The fault path a failing weft kernel takes (its report, then the board's mark), called directly.
__global__ void faulting_kernel(const __grid_constant__ Context ctx) {
  dev::detail::bad_symm_at(ctx, ctx.heap_base, ctx.world_size);
}

// A kernel that fails without any report of weft's: only the host learns (a CUDA error).
__global__ void trapping_kernel() { __trap(); }

// Every rank starts one child; in the children's world the last rank gives up in one of six
// ways while the others wait for a signal nobody raises, with a wait timeout (60 s) far beyond the
// check's bound: "device" (a kernel's fault report), "trap" (a bare trap: the host's CUDA error),
// "host" (World::abort), "stream" (World::abort while the others' streams hold a copy-engine
// stream wait, which no device wait watches), "barrier" (World::abort while the others are in
// World::barrier) and "unwind" (an exception leaves an operator's call through its AbortIfUnwound
// guard). The waiting ranks must fail within seconds, quoting the last rank's account.
CheckResult check_peer_abort(World& w, const CheckOptions&) {
  Failures f;
  if (w.size() < 2) return f.skip("needs two ranks: nobody to tell");
  if (!w.has_abort_board()) {
    f.add("the World has no abort board: " + w.abort_board_note());
    return f.result;
  }
  const int last = w.size() - 1;
  const std::vector<std::pair<std::string, std::string>> kinds = {
      {"device", "symm_at("},
      {"trap", "unspecified launch failure"},
      {"host", kPeerAbortReason},
      {"stream", kPeerAbortReason},
      {"barrier", kPeerAbortReason},
      {"unwind", "PeerAbortCheck::call failed after it had begun to queue"}};
  for (const auto& [kind, account] : kinds) {
    const auto start = std::chrono::steady_clock::now();
    auto [status, out] =
        run_child_world(w,
                        {fmt::format("{}={}", kPeerAbortChildVariable, kind), "WEFT_HEAP_BYTES=64M",
                         "WEFT_WAIT_TIMEOUT_MS=60000", "WEFT_SYNC_TIMEOUT_MS=120000"},
                        std::chrono::seconds(100));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::vector<std::string> want = {"host saw"};
    if (w.rank() != last) {
      want.push_back(fmt::format("[rank {} gave up]", last));
      want.push_back(account);
      want.push_back("a rank on this host gave up");
    }
    bool found = status == 0 && seconds < 30;
    for (const std::string& text : want) found = found && out.find(text) != std::string::npos;
    if (!found)
      f.add(fmt::format("'{}': rank {}'s child did not report as expected (exit {}, {:.1f} s): {}",
                        kind, w.rank(), status, seconds, out));
  }
  return f.result;
}

}  // namespace

int run_barrier_timeout_child_if_requested() {
  if (std::getenv(kBarrierChildVariable) == nullptr) return -1;
  try {
    auto world = World::create();
    mismatched_barrier<<<1, 128, 0, world->stream()>>>(world->context(),
                                                       static_cast<uint32_t>(world->rank()));
    WEFT_CHECK_LAUNCH();
    world->synchronize(world->stream());
    std::printf("the barrier returned although the ranks used different indices\n");
    return 3;
  } catch (const std::exception& e) {
    std::printf("host saw: %s\n", e.what());
    std::fflush(stdout);
    return 0;
  }
}

int run_wait_timeout_child_if_requested() {
  const char* v = std::getenv(kChildVariable);
  if (v == nullptr) return -1;
  try {
    WEFT_CUDA_CHECK(cudaSetDevice(0));
    // A bare Context (no NCCL): the signal lives at offset 8 of a one-rank "heap".
    signal_t* heap = nullptr;
    WEFT_CUDA_CHECK(cudaMalloc(&heap, 64));
    WEFT_CUDA_CHECK(cudaMemset(heap, 0, 64));
    dev::FaultReport* fault = nullptr;
    WEFT_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&fault), sizeof(*fault),
                                  cudaHostAllocMapped));
    std::memset(fault, 0, sizeof(*fault));
    Context ctx{};
    ctx.rank = std::atoi(v);
    ctx.world_size = ctx.lsa_size = 1;
    ctx.heap_base = reinterpret_cast<char*>(heap);
    ctx.heap_bytes = 64;
    ctx.wait_timeout_ns = kChildTimeoutMs * 1000000ull;
    ctx.fault = fault;
    const char* kind = std::getenv(kChildKindVariable);
    uint8_t* src = nullptr;
    WEFT_CUDA_CHECK(cudaMalloc(&src, 64));
    if (kind != nullptr && std::string_view(kind) == "mbarrier")
      hopeless_mbarrier_wait<<<1, 32>>>(ctx);
    else if (kind != nullptr && std::string_view(kind) == "symm_span")
      overrunning_put<<<1, 1>>>(ctx, src);
    else
      hopeless_wait<<<1, 32>>>(ctx, heap + 1);
    WEFT_CHECK_LAUNCH();
    const cudaError_t err = cudaDeviceSynchronize();
    if (err == cudaSuccess) {
      std::printf("the wait returned although nothing raised the signal\n");
      return 3;
    }
    if (fault->ready == 0) {
      std::printf("the kernel failed (%s) but left no fault report\n", cudaGetErrorString(err));
      return 4;
    }
    std::printf("host saw: %s (%s)\n", describe_fault(*fault).c_str(), cudaGetErrorName(err));
    return 0;
  } catch (const std::exception& e) {
    std::printf("%s\n", e.what());
    return 5;
  }
}

int run_peer_abort_child_if_requested() {
  const char* kind_env = std::getenv(kPeerAbortChildVariable);
  if (kind_env == nullptr) return -1;
  const std::string kind = kind_env;
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  // Held outside the try: after the failure the child exits without tearing them down (a stream
  // still held by a stream wait would block the teardown; World::synchronize says so).
  std::unique_ptr<World> world;
  std::optional<SymmetricBuffer<signal_t>> sig;
  try {
    world = World::create();
    if (!world->has_abort_board()) {
      std::printf("no abort board: %s\n", world->abort_board_note().c_str());
      return 6;
    }
    sig.emplace(world->alloc_signals(1));
    world->host_barrier();
    if (world->rank() == world->size() - 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the others are waiting
      if (kind == "host" || kind == "stream" || kind == "barrier") {
        world->abort(kPeerAbortReason);
        std::printf("host saw: nothing; it gave up itself (%.1f s)\n", seconds());
        std::fflush(stdout);
        std::_Exit(0);
      }
      if (kind == "unwind") {  // what an operator's call does when it fails half way
        AbortIfUnwound guard(*world, /*capturing=*/false, "PeerAbortCheck::call");
        guard.arm();
        throw Error("PeerAbortCheck::call", "a launch failed half way (on purpose)");
      }
      if (kind == "device")
        faulting_kernel<<<1, 1, 0, world->stream()>>>(world->context());
      else
        trapping_kernel<<<1, 1, 0, world->stream()>>>();
      WEFT_CHECK_LAUNCH();
    } else if (kind == "stream") {
      stream_wait_signal(sig->data(), 1, world->stream());
    } else if (kind == "barrier") {
      world->barrier(world->stream());
    } else {
      hopeless_wait<<<1, 32, 0, world->stream()>>>(world->context(), sig->data());
      WEFT_CHECK_LAUNCH();
    }
    world->synchronize(world->stream());
    std::printf("the stream finished although a rank gave up (%.1f s)\n", seconds());
    return 3;
  } catch (const std::exception& e) {
    std::printf("host saw (%.1f s): %s\n", seconds(), e.what());
    std::fflush(stdout);
    std::_Exit(0);
  }
}

const std::vector<Check>& primitive_checks() {
  static const std::vector<Check> checks = {
      {"identity", "rank, world_size, lsa_rank, lsa_size, is_lsa_peer", check_identity},
      {"symm_at", "peer addressing with ld/st of every scope and semantic", check_symm_at},
      {"atomics", "atomic_add, red_add, atomic_cas, atomic_exchange (32/64-bit, peer)",
       check_atomics},
      {"put_get", "putmem/getmem (+_nbi) by thread, warp and block, any alignment", check_put_get},
      {"tma_put_get", "putmem_tma/getmem_tma through a shared-memory ring", check_tma_put_get},
      {"tma_put_rows", "putmem_rows_tma_nbi: strided rows, pieces of a row, one pipeline",
       check_tma_put_rows},
      {"tagged", "put_tagged / wait_tagged across two tags, and wait with every comparison",
       check_tagged_and_comparisons},
      {"put_signal", "put with signal (set/add, warp/block/TMA) read after an acquiring wait",
       check_put_signal},
      {"tiles", "tile_notify/wait, tile_push, peer_tile_wait, tile_pull", check_tiles},
      {"signal_forms",
       "putmem_signal (thread), rank_copy, signal_op, signal_wait_until, wait_all, wait_for_tma, "
       "typed put/get",
       check_signal_forms},
      {"litmus", "message passing: payload then flag, no stale reads", check_litmus},
      {"barriers", "barrier_all / sync_all for block and warp groups", check_barriers},
      {"copy_engine", "copy_to/from_peer, stream_write_signal, stream_wait_signal",
       check_copy_engine},
      {"stream_wait_timeout",
       "World::synchronize gives up on a stream wait nobody satisfies; raising the signal frees it",
       check_stream_wait_timeout},
      {"wait_timeout",
       "a signal wait and a TMA mbarrier wait nobody satisfies report what they waited for, then "
       "trap (debug builds: a put past the heap's end traps with symm_at's report)",
       check_wait_timeout},
      {"barrier_timeout", "a device barrier a rank never reaches reports that rank, then traps",
       check_barrier_timeout},
      {"peer_abort",
       "a rank that gives up (a fault, a trap, World::abort) fails its peers' waits (and "
       "World::barrier) at once",
       check_peer_abort},
  };
  return checks;
}

}  // namespace weft::checks
