// Host side of the GEMM engine: argument validation, configuration heuristic, dispatch.
#include "weft/gemm/gemm.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "weft/gemm/detail/cuda_check.h"
#include "weft/gemm/detail/registry.h"
#include "weft/runtime/cuda_errors.h"
#include "weft/runtime/error.h"

namespace weft::gemm {

const char* to_string(DType t) {
  switch (t) {
    case DType::kBF16: return "bf16";
    case DType::kFP16: return "fp16";
    case DType::kFP32: return "fp32";
  }
  return "?";
}

int dtype_size(DType t) { return t == DType::kFP32 ? 4 : 2; }

std::string Config::to_string() const {
  std::string s = fmt::format("{}x{}x{}_s{}_c{}x{}{}_g{}{}", block_m, block_n, block_k, stages,
                              cluster_m, cluster_n, pingpong ? "_pp" : "", raster_group,
                              stream_k ? "_sk" : "");
  if (max_sms > 0) s += fmt::format("_sm{}", max_sms);
  return s;
}

Config parse_config(const std::string& s) {
  Config c;
  int used = 0;
  const int n = std::sscanf(s.c_str(), "%dx%dx%d_s%d_c%dx%d%n", &c.block_m, &c.block_n,
                            &c.block_k, &c.stages, &c.cluster_m, &c.cluster_n, &used);
  WEFT_CHECK_ARG(n == 6, "cannot parse GEMM config '{}' (expected e.g. 128x256x64_s4_c1x1_g8)",
                 s);
  const char* rest = s.c_str() + used;
  while (*rest != '\0') {
    int v = 0, k = 0;
    if (std::strncmp(rest, "_pp", 3) == 0) {
      c.pingpong = true;
      k = 3;
    } else if (std::strncmp(rest, "_sk", 3) == 0) {
      c.stream_k = true;
      k = 3;
    } else if (std::sscanf(rest, "_g%d%n", &v, &k) == 1) {
      c.raster_group = v;
    } else if (std::sscanf(rest, "_sm%d%n", &v, &k) == 1) {
      c.max_sms = v;
    } else {
      WEFT_CHECK_ARG(false, "cannot parse GEMM config '{}' near '{}'", s, rest);
    }
    rest += k;
  }
  WEFT_CHECK_ARG(c.raster_group >= 1, "GEMM config '{}': raster group must be >= 1", s);
  WEFT_CHECK_ARG(c.max_sms >= 0, "GEMM config '{}': SM cap must be >= 0", s);
  return c;
}

namespace detail {

void throw_cuda_error(const char* call, cudaError_t err) {
  const std::optional<std::string> fault = ::weft::detail::current_device_fault();
  const std::string detail =
      fmt::format("{} ({}){}{}", cudaGetErrorString(err), cudaGetErrorName(err),
                  fault ? "; device fault: " : "", fault ? *fault : "");
  if (::weft::detail::ends_context(err))
    ::weft::detail::report_context_lost(fmt::format("{}: {}", call, detail));
  throw ::weft::Error(call, detail);
}

void throw_error(const char* call, const std::string& detail) { throw ::weft::Error(call, detail); }

const std::vector<Variant>& all_variants() {
  static const std::vector<Variant> v = [] {
    std::vector<Variant> out;
    register_sm90_bf16_bf16(out);
    register_sm90_bf16_f32(out);
    register_sm90_f16_f16(out);
    register_sm90_f16_f32(out);
    return out;
  }();
  return v;
}

namespace {
// One record per device, so that a kernel that timed out on one device is reported by the next
// call on that device, not by a call on another device of the same process. One host-mapped
// (portable) allocation holds them all, one per device the process sees. Allocated once under
// g_hang_mu and never freed; the pointer is published (release) after the count, so that
// pending_hang_report() can read both without the lock: a failing CUDA check anywhere asks it,
// including one made while g_hang_mu is held.
std::mutex g_hang_mu;
std::atomic<HangRecord*> g_hang_records{nullptr};  // g_hang_devices records
std::atomic<int> g_hang_devices{0};

// One record's text (for take_hang_report() and the fault source).
std::string describe_hang_record(const volatile HangRecord& h) {
  if (h.what == kHangStreamK) {
    return fmt::format(
        "GEMM stream-K partial tile never arrived: block {} waited {} ns on the flag at {:#x} "
        "(expected {}, seen {}); is the workspace shared with a concurrent GEMM?",
        int(h.block), uint64_t(h.waited_ns), uint64_t(h.flag_addr), uint64_t(h.expected),
        uint64_t(h.seen));
  }
  if (h.what == kHangBadTileOrder) {
    return fmt::format(
        "GEMM hooks: tile_order[{}] = {} (block {}) is not a unit id in [0, {}); the order must be "
        "a permutation of the TileGrid's units",
        uint64_t(h.flag_addr), int64_t(h.seen), int(h.block), uint64_t(h.expected));
  }
  if (h.what == kHangGroupOverflow) {
    return fmt::format(
        "grouped GEMM (block {}): the group row counts add up to {} rows, but A and C hold "
        "m_capacity = {}",
        int(h.block), uint64_t(h.seen), uint64_t(h.expected));
  }
  return fmt::format(
      "GEMM {} wait {} after {} ns in block {} thread {}: flag at {:#x} expected >= {} seen {}",
      h.what == kHangChunkFlag ? "A-chunk flag" : "flag",
      h.gave_up != 0 ? "gave up (a rank on this host gave up)" : "timed out", uint64_t(h.waited_ns),
      int(h.block), int(h.thread), uint64_t(h.flag_addr), uint64_t(h.expected), uint64_t(h.seen));
}

// The GEMM engine's fault source (weft::detail::register_fault_source): the current device's
// hang record, if one is there, without taking it, so that the CUDA error that follows a trapped
// hook kernel (World::synchronize's, say) quotes it. No checked CUDA call: see error.h.
std::optional<std::string> pending_hang_report(const void*) {
  const HangRecord* records = g_hang_records.load(std::memory_order_acquire);
  int dev = -1;
  if (records == nullptr || cudaGetDevice(&dev) != cudaSuccess || dev < 0 ||
      dev >= g_hang_devices.load(std::memory_order_relaxed))
    return std::nullopt;
  const volatile HangRecord& h = records[dev];
  if (h.magic != kHangMagic) return std::nullopt;
  return "GEMM engine: " + describe_hang_record(h);
}

int current_device() {
  int dev = 0;
  WEFT_GEMM_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}
}  // namespace

HangRecord* hang_record_device_ptr() {
  const int dev = current_device();
  std::lock_guard<std::mutex> lock(g_hang_mu);
  HangRecord* records = g_hang_records.load(std::memory_order_relaxed);
  if (records == nullptr) {
    int devices = 0;
    WEFT_GEMM_CUDA_CHECK(cudaGetDeviceCount(&devices));
    devices = std::max(devices, 1);
    void* h = nullptr;
    const size_t bytes = sizeof(HangRecord) * static_cast<size_t>(devices);
    WEFT_GEMM_CUDA_CHECK(cudaHostAlloc(&h, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
    std::memset(h, 0, bytes);
    records = static_cast<HangRecord*>(h);
    g_hang_devices.store(devices, std::memory_order_relaxed);
    g_hang_records.store(records, std::memory_order_release);
    // For the life of the process (the records are never freed).
    ::weft::detail::register_fault_source(&g_hang_records, pending_hang_report);
  }
  const int devices = g_hang_devices.load(std::memory_order_relaxed);
  WEFT_CHECK(dev >= 0 && dev < devices, "device {} is not among the {} this process sees", dev,
             devices);
  void* d = nullptr;
  WEFT_GEMM_CUDA_CHECK(cudaHostGetDevicePointer(&d, records + dev, 0));
  return static_cast<HangRecord*>(d);
}

namespace {
// Stream-K workspaces gemm() keeps, one per (device, stream): launches on one stream run one
// after the other, so they can share one. Kept until release_stream_workspace(s) (a captured
// graph may hold one; ~17 MB each).
struct StreamWorkspace {
  int dev;
  cudaStream_t stream;
  // The per-thread default stream is one handle for many streams (one per thread): its
  // workspaces are per thread. (cudaStreamGetId would tell streams apart, but it fails on a
  // capturing stream, where the lookup must work too.)
  std::thread::id thread;
  void* ptr;
  size_t bytes;
};
std::thread::id owner_thread(cudaStream_t stream) {
  return stream == cudaStreamPerThread ? std::this_thread::get_id() : std::thread::id{};
}
std::mutex g_ws_mu;
std::vector<StreamWorkspace> g_ws;
}  // namespace

// The workspace of `stream` on the current device, allocated (flags zeroed, in stream order)
// on first use; nullptr when that would have to happen during a stream capture or fails.
void* stream_workspace(cudaStream_t stream, size_t bytes) {
  int dev = 0;
  WEFT_GEMM_CUDA_CHECK(cudaGetDevice(&dev));
  const std::thread::id thread = owner_thread(stream);
  std::lock_guard<std::mutex> lock(g_ws_mu);
  for (const auto& w : g_ws)
    if (w.dev == dev && w.stream == stream && w.thread == thread)
      return w.bytes >= bytes ? w.ptr : nullptr;
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &st) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  if (st != cudaStreamCaptureStatusNone) return nullptr;
  // Relaxed for this thread: a capture in global mode on another stream (this thread's or
  // another's) would otherwise fail this cudaMalloc and be invalidated by it.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  WEFT_GEMM_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  void* p = nullptr;
  const cudaError_t alloc = cudaMalloc(&p, bytes);
  WEFT_GEMM_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  if (alloc != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  WEFT_GEMM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
  g_ws.push_back({dev, stream, thread, p, bytes});
  return p;
}

// Frees the entries of the current device that `match` selects, each after its stream's work
// (another thread's per-thread default stream cannot be named from here: after the device's).
template <class Match>
int release_workspaces(Match&& match) {
  int dev = 0;
  WEFT_GEMM_CUDA_CHECK(cudaGetDevice(&dev));
  std::vector<StreamWorkspace> mine;
  {
    std::lock_guard<std::mutex> lock(g_ws_mu);
    auto keep = g_ws.begin();
    for (auto& w : g_ws) {
      if (w.dev == dev && match(w)) mine.push_back(w);
      else *keep++ = w;
    }
    g_ws.erase(keep, g_ws.end());
  }
  for (const auto& w : mine) {
    if (w.thread == std::thread::id{} || w.thread == std::this_thread::get_id())
      WEFT_GEMM_CUDA_CHECK(cudaStreamSynchronize(w.stream));
    else
      WEFT_GEMM_CUDA_CHECK(cudaDeviceSynchronize());
    WEFT_GEMM_CUDA_CHECK(cudaFree(w.ptr));
  }
  return static_cast<int>(mine.size());
}

}  // namespace detail

bool release_stream_workspace(cudaStream_t stream) {
  const std::thread::id thread = detail::owner_thread(stream);
  return detail::release_workspaces([&](const detail::StreamWorkspace& w) {
           return w.stream == stream && w.thread == thread;
         }) > 0;
}

int release_stream_workspaces() {
  return detail::release_workspaces([](const detail::StreamWorkspace&) { return true; });
}

size_t stream_k_workspace_bytes() {
  // The largest stream-K tile is 128 x 256 (= 256 x 128); one CTA per SM.
  return detail::stream_k_workspace_bytes_for(sm_count(), 128 * 256);
}

namespace detail {
namespace {

// take_hang_report(), also saying which kind of record it was (`what`, when one was there).
std::string take_hang_report_of_kind(int* what) {
  // No record yet: no kernel with a wait has been launched (and no device is needed to say so).
  HangRecord* records = g_hang_records.load(std::memory_order_acquire);
  if (records == nullptr) return "";
  const int dev = current_device();  // (before the lock: a failing check asks the fault source)
  std::lock_guard<std::mutex> lock(g_hang_mu);
  if (dev < 0 || dev >= g_hang_devices.load(std::memory_order_relaxed)) return "";
  volatile HangRecord* h = records + dev;
  if (h->magic != kHangMagic) return "";
  *what = h->what;
  std::string s = describe_hang_record(*h);
  h->magic = 0;
  return s;
}

// Before a launch: a kernel that trapped earlier killed the context; say why before anything
// else. A record of a bad argument (a tile order entry, group row counts) is an InvalidArgument,
// a wait that timed out a Timeout.
void throw_earlier_fault(const char* call) {
  int what = -1;
  std::string report = take_hang_report_of_kind(&what);
  if (report.empty()) return;
  const std::string where = std::string(call) + " (earlier launch)";
  if (what == kHangBadTileOrder || what == kHangGroupOverflow)
    throw ::weft::InvalidArgument(where, report);
  throw ::weft::Timeout(where, report);
}

}  // namespace
}  // namespace detail

std::string take_hang_report() {
  int what = -1;
  return detail::take_hang_report_of_kind(&what);
}

int sm_count() {
  static std::array<std::atomic<int>, 64> cache{};  // (threads may fill it at once)
  int dev = 0;
  WEFT_GEMM_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < int(cache.size())) {
    const int cached = cache[dev].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int n = 0;
  WEFT_GEMM_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev >= 0 && dev < int(cache.size())) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

std::vector<Config> shipped_configs(DType ab, DType c, bool hooks, bool grouped) {
  std::vector<Config> out;
  for (const auto& v : detail::all_variants()) {
    if (v.ab != ab || v.c != c || v.hooks != hooks || v.grouped != grouped) continue;
    Config cfg;
    cfg.block_m = v.block_m;
    cfg.block_n = v.block_n;
    cfg.stages = v.stages;
    cfg.cluster_m = v.cluster_m;
    cfg.cluster_n = v.cluster_n;
    cfg.pingpong = v.pingpong;
    out.push_back(cfg);
  }
  return out;
}

TileGrid tile_grid(const Config& cfg, int64_t m, int64_t n) {
  TileGrid g;
  g.block_m = cfg.block_m;
  g.block_n = cfg.block_n;
  g.cluster_m = cfg.cluster_m;
  g.cluster_n = cfg.cluster_n;
  g.tiles_m = int((m + cfg.block_m - 1) / cfg.block_m);
  g.tiles_n = int((n + cfg.block_n - 1) / cfg.block_n);
  g.units_m = (g.tiles_m + cfg.cluster_m - 1) / cfg.cluster_m;
  g.units_n = (g.tiles_n + cfg.cluster_n - 1) / cfg.cluster_n;
  g.num_tiles = int64_t(g.tiles_m) * g.tiles_n;
  g.num_units = int64_t(g.units_m) * g.units_n;
  return g;
}

std::vector<int32_t> default_tile_order(const Config& cfg, int64_t m, int64_t n) {
  const TileGrid g = tile_grid(cfg, m, n);
  // (Capped at units_m as the launcher caps it: the same schedule.)
  const int64_t group = std::clamp<int64_t>(cfg.raster_group, 1, std::max<int64_t>(1, g.units_m));
  std::vector<int32_t> order(size_t(g.num_units));
  // Mirrors Scheduler::tile() in kernel_sm90.cuh.
  for (int64_t unit = 0; unit < g.num_units; ++unit) {
    const int64_t per_group = group * g.units_n;
    const int64_t grp = unit / per_group;
    const int64_t in_group = unit - grp * per_group;
    const int64_t first_mu = grp * group;
    const int64_t group_size = std::min<int64_t>(g.units_m - first_mu, group);
    const int64_t mu = first_mu + in_group % group_size;
    const int64_t nu = in_group / group_size;
    order[size_t(unit)] = int32_t(mu * g.units_n + nu);
  }
  return order;
}

int max_groups() { return detail::kMaxGroups; }

void load_kernels() {
  for (const auto& v : detail::all_variants()) v.load();
  (void)detail::hang_record_device_ptr();  // host-mapped: allocate before any capture
}

namespace {

// Relative throughput of one CTA tile shape when the machine is full, measured on an H100 SXM
// (weft_gemm_bench --sweep, weft and cuBLASLt launches interleaved; ratio = cuBLASLt time /
// weft time, docs/runs/gemm-sweep-h100-2026-11-26b.log). Best raster group per tile, median
// over the M >= 4096 shapes of the issue:
//
//   tile     | 8192^3 | 4096x8192x8192 | 4096x7168x8192 | 8192x7168x8192 | 8192x8192x7168
//   128x256  | 1.013  | 0.990          | 0.990          | 0.989          | 1.013
//   256x128  | 1.013  | 0.990          | 0.995          | 0.989          | 1.011
//   128x128  | 1.010  | 0.985          | 0.985          | 0.982          | 1.010   (g4/g8 only:
//            |        |                |                |                |  g16 0.77-0.89, g2 0.88-0.93)
//   128x64   | 0.615  | 0.712          | 0.633          | 0.649          | 0.615
//
// Clusters (2x1 / 1x2 TMA multicast) measure the same as 1x1 for 128x256 and 256x128 (within
// +-1%), and 1-20% slower for 128x128 1x2, so the heuristic leaves them out. Raster group
// (m-units per group) changes 128x256 / 256x128 by under 1% between 2 and 16, but 128x128
// loses 10-25% at 16: 16 for 128x256 (wide tiles), 8 otherwise.
// (The first H100 sweep, which timed weft and cuBLASLt one after the other, showed 0.82-1.06 for
// the same configs: the card was power-capped part of the time, which moved both by up to 20%.)
//
// 128x224 (for N = 7168): 1024x7168x8192 0.97 against 0.87 for 128x256 (224 tiles, 1.7 waves ->
// 256 tiles, 1.94 waves); 4096x8192x7168 0.954-0.960 against 0.957-0.963 (its better wave
// quantization on paper, 0.985 vs 0.97, does not show): the 128x128 bucket's 0.98 keeps it to
// shapes where it gains more than 2% of waves. Those two columns are against the best of
// cuBLASLt's top 8 algorithms; the table above against its first choice (same weft/weft ratios).
double tile_efficiency(int bm, int bn) {
  if (bm * bn >= 128 * 256) return bm == 128 ? 1.0 : 0.99;
  if (bm * bn >= 128 * 128) return 0.98;
  return 0.74;  // 512x8192x8192: 0.74 (it wins only where it halves the waves)
}

// Stream-K and ping-pong (H100, 1211490, docs/runs/gemm-h100-2026-11-26-sk-pp.log; ratios to
// the best of cuBLASLt's top 8, all variants of a shape interleaved in one set):
//
//   shape            | 128x256 | 128x256 sk | 128x128 pp | 128x128 pp sk | 128x224
//   8192^3           | 0.955   | 0.974      | 0.963      | 0.986         | 0.962
//   4096x8192x8192   | 0.956   | 0.970      | 0.964      | 0.972         | 0.962
//   4096x7168x8192   | 0.955   | 0.968      | 0.959      | 0.968         | 0.943
//   8192x7168x8192   | 0.952   | 0.970      | 0.954      | 0.972         | 0.945
//   4096x8192x7168   | 0.950   | 0.962      | 0.956      | 0.966         | 0.955
//   8192x8192x7168   | 0.948   | 0.968      | 0.942      | 0.961         | 0.948
//   1024x7168x8192   | 0.884   | 0.965      | 0.883      | 0.919         | 0.994
//   1024x8192x7168   | 1.005   | 0.966      | 1.003      | 0.989         | 0.767
//   512x8192x8192    | 1.021   | 1.017      | 1.009      | 0.986         |
//
// Stream-K gains 1.2-2% where the last wave is partial and there are many waves (less than
// the 3% of idle tile slots: a partial last wave runs at higher clocks on a power-capped card,
// and the fixup -- every CTA stores or loads a fp32 partial tile at the same moment -- costs
// ~10 us), and loses 4% at 2 waves (1024x8192x7168): only from 4 waves on. Ping-pong is +0.2
// to +1.2% over 128x256 with stream-K at 5 of the 6 M >= 4096 shapes (-0.7% at 8192x8192x7168)
// and slower at M <= 1024.
constexpr double kStreamKWave = 0.985;
constexpr int64_t kStreamKMinWaves = 4;
constexpr int64_t kStreamKMinKBlocks = 16;  // enough k-blocks to split and pay for the fixup
double pingpong_efficiency(int64_t waves) { return waves >= kStreamKMinWaves ? 1.011 : 0.975; }

// Grouped kernels (H100 sweep, ratio to cuBLASLt once per expert, 8 experts): 128x128 is worse
// than in dense GEMMs at K = 7168 -- 8192 rows x N 4096: 128x256 0.95, 256x128 0.95, 128x128
// 0.76-0.89 (g8), 0.84 (g4) -- while it is the best at 1024 rows x N 4096 (1.21 vs 1.14), where
// it halves the waves. So it counts 0.90 here, and 128x224 has no grouped variant.
double grouped_tile_efficiency(int bm, int bn) {
  if (bm * bn == 128 * 128) return 0.90;
  return tile_efficiency(bm, bn);
}

const detail::Variant* find_variant(DType ab, DType c, const Config& cfg, bool hooks,
                                    bool grouped = false) {
  for (const auto& v : detail::all_variants()) {
    if (v.ab == ab && v.c == c && v.hooks == hooks && v.grouped == grouped &&
        v.block_m == cfg.block_m &&
        v.block_n == cfg.block_n && v.stages == cfg.stages && v.cluster_m == cfg.cluster_m &&
        v.cluster_n == cfg.cluster_n && v.pingpong == cfg.pingpong &&
        cfg.block_k == 64)
      return &v;
  }
  return nullptr;
}

// load_kernels() once per device, on the first launch there.
void ensure_kernels_loaded() {
  static std::array<std::once_flag, 64> once;
  int dev = 0;
  WEFT_GEMM_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= int(once.size())) {
    load_kernels();
    return;
  }
  std::call_once(once[size_t(dev)], [] {
    load_kernels();  // (allocates the host-mapped hang record too: before any capture)
  });
}

}  // namespace

std::string list_configs(DType ab, DType c, bool hooks, bool grouped) {
  std::string s;
  for (const auto& cfg : shipped_configs(ab, c, hooks, grouped)) {
    if (!s.empty()) s += ", ";
    s += fmt::format("{}x{}x{}_s{}_c{}x{}{}", cfg.block_m, cfg.block_n, cfg.block_k, cfg.stages,
                     cfg.cluster_m, cfg.cluster_n, cfg.pingpong ? "_pp" : "");
  }
  return s;
}

bool is_shipped(const Config& cfg, DType ab, DType c, bool hooks) {
  return find_variant(ab, c, cfg, hooks) != nullptr && !(hooks && cfg.stream_k);
}

Config choose_config(int64_t m, int64_t n, int64_t k, DType ab, DType c, int sms, bool hooks) {
  if (const char* env = std::getenv("WEFT_GEMM_CONFIG"); env != nullptr && *env != '\0') {
    Config cfg = parse_config(env);
    if (is_shipped(cfg, ab, c, hooks)) return cfg;
    // A plain kernel (stream-K, ping-pong, clusters) has no hook variant: it overrides the plain
    // choice only, and a fused operator's hook kernel keeps the heuristic's.
    WEFT_CHECK_ARG(hooks && is_shipped(cfg, ab, c, false),
                   "WEFT_GEMM_CONFIG={} is not a shipped {} -> {} config; shipped: {}", env,
                   to_string(ab), to_string(c), list_configs(ab, c, false));
  }
  sms = std::max(1, sms);
  Config best;
  double best_score = -1.0;
  for (Config cand : shipped_configs(ab, c, hooks)) {
    // Clusters measured no faster than 1x1 (see tile_efficiency()): not picked.
    if (cand.cluster_m != 1 || cand.cluster_n != 1) continue;
    const int64_t tm = (m + cand.block_m - 1) / cand.block_m;
    const int64_t tn = (n + cand.block_n - 1) / cand.block_n;
    const int64_t tiles = tm * tn;
    const double pad = double(m) * double(n) / (double(tiles) * cand.block_m * cand.block_n);
    const int64_t waves = (tiles + sms - 1) / sms;
    double wave = double(tiles) / double(waves * sms);
    // Stream-K (plain kernels) turns the partial last wave into a full one, less the fixup.
    if (!hooks && tiles >= kStreamKMinWaves * sms && (k + 63) / 64 >= kStreamKMinKBlocks &&
        kStreamKWave > wave) {
      wave = kStreamKWave;
      cand.stream_k = true;
    }
    const double eff = cand.pingpong ? pingpong_efficiency(tiles / sms)
                                     : tile_efficiency(cand.block_m, cand.block_n);
    const double score = pad * wave * eff;
    // Ties (within 1%) go to the larger tile, which needs less L2 bandwidth.
    if (score > best_score * 1.01 ||
        (score > best_score * 0.99 &&
         cand.block_m * cand.block_n > best.block_m * best.block_n)) {
      best = cand;
      best_score = std::max(score, best_score);
    }
  }
  // Raster group: see tile_efficiency().
  best.raster_group = best.block_n >= 2 * best.block_m ? 16 : 8;
  return best;
}

namespace {

// What the TMA needs of the operands, shared by gemm() and grouped_gemm(): leading dimensions
// (0 = packed rows) of at least the row length, A/B rows in whole 16-byte units, 16-byte-aligned
// base addresses. Errors name `call`. Returns the resolved lda, ldb, ldc.
struct LeadingDims {
  int64_t lda, ldb, ldc;
};
LeadingDims check_operand_layout(const char* call, int64_t lda, int64_t ldb, int64_t ldc,
                                 int64_t n, int64_t k, const void* a, const void* b,
                                 const void* c) {
  lda = lda == 0 ? k : lda;
  ldb = ldb == 0 ? k : ldb;
  ldc = ldc == 0 ? n : ldc;
  WEFT_CHECK_ARG_AT(call, lda >= k && lda % 8 == 0,
                    "lda must be >= K ({}) and a multiple of 8, got {}", k, lda);
  WEFT_CHECK_ARG_AT(call, ldb >= k && ldb % 8 == 0,
                    "ldb must be >= K ({}) and a multiple of 8, got {}", k, ldb);
  WEFT_CHECK_ARG_AT(call, ldc >= n, "ldc must be >= N ({}), got {}", n, ldc);
  // (TMA strides must stay below 2^40 bytes, and ld * element size must not overflow.)
  WEFT_CHECK_ARG_AT(call, lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX,
                    "leading dimensions must fit in int32, got lda={} ldb={} ldc={}", lda, ldb,
                    ldc);
  auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) % 16) == 0; };
  WEFT_CHECK_ARG_AT(call, aligned16(a), "A ({}) must be 16-byte aligned", a);
  WEFT_CHECK_ARG_AT(call, aligned16(b), "B ({}) must be 16-byte aligned", b);
  WEFT_CHECK_ARG_AT(call, aligned16(c), "C ({}) must be 16-byte aligned", c);
  return {lda, ldb, ldc};
}

}  // namespace

void gemm(const GemmArgs& args, cudaStream_t stream, const Config* config, const Hooks* hooks) {
  detail::throw_earlier_fault("weft::gemm::gemm");

  const int64_t m = args.m, n = args.n, k = args.k;
  WEFT_CHECK_ARG(args.ab_type == DType::kBF16 || args.ab_type == DType::kFP16,
                 "A/B dtype must be bf16 or fp16, got {}", to_string(args.ab_type));
  WEFT_CHECK_ARG(args.c_type == args.ab_type || args.c_type == DType::kFP32,
                 "C dtype must be the input dtype ({}) or fp32, got {}", to_string(args.ab_type),
                 to_string(args.c_type));
  WEFT_CHECK_ARG(m >= 1 && n >= 1 && k >= 1, "M, N, K must be >= 1, got M={} N={} K={}", m, n,
                 k);
  WEFT_CHECK_ARG(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX,
                 "M, N, K must fit in int32, got M={} N={} K={}", m, n, k);
  WEFT_CHECK_ARG(k % 8 == 0, "K must be a multiple of 8 (TMA needs 16-byte rows), got K={}", k);
  WEFT_CHECK_ARG(args.a != nullptr && args.b != nullptr && args.c != nullptr,
                 "A, B and C must be non-null (A={} B={} C={})", args.a, static_cast<const void*>(args.b),
                 args.c);
  const auto [lda, ldb, ldc] =
      check_operand_layout(__func__, args.lda, args.ldb, args.ldc, n, k, args.a, args.b, args.c);
  auto aligned = [](const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; };
  WEFT_CHECK_ARG(args.bias == nullptr || aligned(args.bias, 2), "bias ({}) must be 2-byte aligned",
                 args.bias);

  const bool hook_kernel = hooks != nullptr && hooks->needs_hook_kernel();
  Config cfg = config != nullptr
                   ? *config
                   : choose_config(m, n, k, args.ab_type, args.c_type, sm_count(), hook_kernel);
  WEFT_CHECK_ARG(cfg.raster_group >= 1, "config raster_group must be >= 1, got {}",
                 cfg.raster_group);
  WEFT_CHECK_ARG(cfg.max_sms >= 0, "config max_sms must be >= 0, got {}", cfg.max_sms);
  const detail::Variant* v = find_variant(args.ab_type, args.c_type, cfg, hook_kernel);
  WEFT_CHECK_ARG(v != nullptr, "config {} is not a shipped {} -> {} kernel{}; shipped: {}",
                 cfg.to_string(), to_string(args.ab_type), to_string(args.c_type),
                 hook_kernel ? " with hooks" : "", list_configs(args.ab_type, args.c_type, hook_kernel));

  detail::LaunchRequest r{};
  r.a = args.a;
  r.lda = lda;
  r.b = args.b;
  r.ldb = ldb;
  r.c = args.c;
  r.ldc = ldc;
  r.m = m;
  r.n = n;
  r.k = k;
  r.raster_group = cfg.raster_group;
  r.max_ctas = cfg.max_sms;
  r.groups = 1;
  r.stream_k = false;
  r.sk_workspace = nullptr;
  r.sk_workspace_bytes = 0;

  detail::KernelParams& kp = r.kp;
  kp.bias = args.bias;
  if (cfg.stream_k) {
    WEFT_CHECK_ARG(!hook_kernel,
                   "config {}: stream-K runs in the plain kernels only (not with tile_order, "
                   "wait_flags or signals)",
                   cfg.to_string());
    WEFT_CHECK_ARG(cfg.cluster_m == 1 && cfg.cluster_n == 1,
                   "config {}: stream-K needs a 1x1 cluster", cfg.to_string());
    if (args.workspace != nullptr) {
      WEFT_CHECK_ARG(aligned(args.workspace, 16), "workspace ({}) must be 16-byte aligned",
                     args.workspace);
      WEFT_CHECK_ARG(args.workspace_bytes >= stream_k_workspace_bytes(),
                     "workspace_bytes {} is below stream_k_workspace_bytes() = {}",
                     args.workspace_bytes, stream_k_workspace_bytes());
    }
  }
  // The TMA store needs 16-byte row strides, and it bounds the last columns of a row in 16-byte
  // units: with N * size not a multiple of 16 it would write past column N (seen on H100: fp32,
  // N = 1001, ldc = 1004 wrote columns 1001-1003). Such shapes use direct stores.
  const int64_t row_bytes = ldc * dtype_size(args.c_type);
  const bool tma_store_ok = row_bytes % 16 == 0 && (n * dtype_size(args.c_type)) % 16 == 0;
  kp.epi_direct = (!tma_store_ok || (hooks != nullptr && hooks->direct_store)) ? 1 : 0;
  kp.epi_vec16 = row_bytes % 16 == 0 ? 1 : 0;  // rows 16-byte aligned (C itself is, checked above)
  kp.out = args.c;
  kp.ldo = ldc;

  if (hook_kernel) {
    const Hooks& h = *hooks;
    const TileGrid g = tile_grid(cfg, m, n);
    if (h.tile_order != nullptr) {
      WEFT_CHECK_ARG(aligned(h.tile_order, 4), "tile_order ({}) must be 4-byte aligned",
                     static_cast<const void*>(h.tile_order));
      WEFT_CHECK_ARG(g.num_units <= INT_MAX, "too many tiles for a tile order ({})", g.num_units);
    }
    if (h.wait_flags != nullptr) {
      WEFT_CHECK_ARG(h.wait_chunk_rows >= 1, "wait_chunk_rows must be >= 1 with wait_flags, got {}",
                     h.wait_chunk_rows);
      // (A flag is always >= 0: without either, A would be loaded without waiting.)
      WEFT_CHECK_ARG(h.wait_expected >= 1 || h.wait_expected_ptr != nullptr,
                     "wait_flags needs wait_expected >= 1 or wait_expected_ptr: waiting for a "
                     "flag >= 0 waits for nothing");
      WEFT_CHECK_ARG(aligned(h.wait_flags, 8), "wait_flags ({}) must be 8-byte aligned",
                     static_cast<const void*>(h.wait_flags));
    }
    if (h.wait_expected_ptr != nullptr) {
      WEFT_CHECK_ARG(h.wait_flags != nullptr, "wait_expected_ptr set but wait_flags is null");
      WEFT_CHECK_ARG(aligned(h.wait_expected_ptr, 8),
                     "wait_expected_ptr ({}) must be 8-byte aligned",
                     static_cast<const void*>(h.wait_expected_ptr));
    }
    if (h.signal_mode != SignalMode::kNone) {
      WEFT_CHECK_ARG(h.signals != nullptr, "signal_mode set but signals is null");
      WEFT_CHECK_ARG(aligned(h.signals, 8), "signals ({}) must be 8-byte aligned",
                     static_cast<const void*>(h.signals));
      WEFT_CHECK_ARG(h.signal_value >= 1,
                     "signal_value must be >= 1 (a signal of 0 is never seen), got 0");
      if (h.signal_mode == SignalMode::kPerRowChunk) {
        WEFT_CHECK_ARG(h.signal_rows >= 1 && h.signal_rows % cfg.block_m == 0,
                       "signal_rows must be a positive multiple of block_m ({}), got {}",
                       cfg.block_m, h.signal_rows);
        // Each tile of a chunk raises it when stored: a store would say "done" at the first.
        const int64_t tiles_per_chunk = h.signal_rows / cfg.block_m * int64_t(g.tiles_n);
        WEFT_CHECK_ARG(h.signal_op == SignalOp::kAdd || tiles_per_chunk == 1,
                       "per-row-chunk signals with SignalOp::kStore would be raised by the "
                       "first of a chunk's {} tiles: use kAdd and wait for {} x signal_value",
                       tiles_per_chunk, tiles_per_chunk);
      }
    }
    WEFT_CHECK_ARG(h.signal_mode == SignalMode::kNone || h.signal_mode == SignalMode::kPerTile ||
                       h.signal_mode == SignalMode::kPerRowChunk,
                   "invalid signal_mode {}", int(h.signal_mode));
    WEFT_CHECK_ARG(h.signal_op == SignalOp::kAdd || h.signal_op == SignalOp::kStore,
                   "invalid signal_op {}", int(h.signal_op));
    // A tile order, per-tile signal indices and the count a row chunk's signal reaches are laid
    // out for one tile grid: the caller must name the config it built them for (the heuristic
    // or WEFT_GEMM_CONFIG could pick another).
    WEFT_CHECK_ARG(
        config != nullptr || (h.tile_order == nullptr && h.signal_mode == SignalMode::kNone),
        "tile_order and per-tile or per-row-chunk signals depend on the tile grid: "
        "pass the Config they were built for");
    kp.tile_order = h.tile_order;
    kp.wait_flags = h.wait_flags;
    kp.wait_chunk_rows = h.wait_chunk_rows;
    kp.wait_expected = h.wait_expected;
    kp.signals = h.signal_mode != SignalMode::kNone ? h.signals : nullptr;
    kp.signal_mode = int32_t(h.signal_mode);
    kp.signal_op = int32_t(h.signal_op);
    kp.signal_rows = h.signal_rows;
    kp.signal_value = h.signal_value;
    kp.timeout_ns = h.timeout_ns;
    kp.give_up = h.give_up;
    kp.wait_expected_ptr = h.wait_expected_ptr;
  }
  ensure_kernels_loaded();  // (after every check; also allocates the hang record)
  // Hook kernels report a timed-out flag wait and a bad tile order entry there.
  if (hook_kernel) kp.hang = detail::hang_record_device_ptr();
  if (cfg.stream_k) {
    if (args.workspace != nullptr) {
      r.sk_workspace = args.workspace;
      r.sk_workspace_bytes = args.workspace_bytes;
    } else {
      r.sk_workspace_bytes = stream_k_workspace_bytes();
      r.sk_workspace = detail::stream_workspace(stream, r.sk_workspace_bytes);
    }
    r.stream_k = r.sk_workspace != nullptr;
    if (r.stream_k) kp.hang = detail::hang_record_device_ptr();  // a lost partial: report + trap
  }
  v->launch(r, stream);
}

Config choose_grouped_config(int64_t expected_rows, int64_t groups, int64_t n, int64_t k,
                             DType ab, DType c, int sms) {
  if (const char* env = std::getenv("WEFT_GEMM_GROUPED_CONFIG"); env != nullptr && *env != '\0') {
    Config cfg = parse_config(env);
    WEFT_CHECK_ARG(find_variant(ab, c, cfg, false, true) != nullptr,
                   "WEFT_GEMM_GROUPED_CONFIG={} is not a shipped grouped {} -> {} config; "
                   "shipped: {}",
                   env, to_string(ab), to_string(c), list_configs(ab, c, false, true));
    return cfg;
  }
  sms = std::max(1, sms);
  groups = std::max<int64_t>(1, groups);
  expected_rows = std::max<int64_t>(1, expected_rows);
  Config best;
  double best_score = -1.0;
  for (const Config& cand : shipped_configs(ab, c, false, true)) {
    // Each group's last m-tile is on average half empty.
    const double tm = double(expected_rows) / cand.block_m + 0.5 * double(groups);
    const int64_t tn = (n + cand.block_n - 1) / cand.block_n;
    const double tiles = std::ceil(tm) * double(tn);
    const double pad = double(expected_rows) * double(n) / (tiles * cand.block_m * cand.block_n);
    const double waves = std::ceil(tiles / sms);
    const double wave = tiles / (waves * sms);
    const double score = pad * wave * grouped_tile_efficiency(cand.block_m, cand.block_n);
    if (score > best_score * 1.01 ||
        (score > best_score * 0.99 &&
         cand.block_m * cand.block_n > best.block_m * best.block_n)) {
      best = cand;
      best_score = std::max(score, best_score);
    }
  }
  best.raster_group = 8;
  (void)k;
  return best;
}

void grouped_gemm(const GroupedGemmArgs& args, cudaStream_t stream, const Config* config) {
  detail::throw_earlier_fault("weft::gemm::grouped_gemm");

  const int64_t m = args.m_capacity, n = args.n, k = args.k, groups = args.groups;
  WEFT_CHECK_ARG(args.ab_type == DType::kBF16 || args.ab_type == DType::kFP16,
                 "A/B dtype must be bf16 or fp16, got {}", to_string(args.ab_type));
  WEFT_CHECK_ARG(args.c_type == args.ab_type || args.c_type == DType::kFP32,
                 "C dtype must be the input dtype ({}) or fp32, got {}", to_string(args.ab_type),
                 to_string(args.c_type));
  WEFT_CHECK_ARG(groups >= 1 && groups <= detail::kMaxGroups,
                 "groups must be in [1, {}], got {}", detail::kMaxGroups, groups);
  WEFT_CHECK_ARG(m >= 1 && n >= 1 && k >= 1, "m_capacity, N, K must be >= 1, got {} {} {}", m,
                 n, k);
  WEFT_CHECK_ARG(m <= INT_MAX && k <= INT_MAX && n <= INT_MAX / groups,
                 "m_capacity, K and groups * N must fit in int32, got {} {} {} x {}", m, k, groups,
                 n);
  WEFT_CHECK_ARG(k % 8 == 0, "K must be a multiple of 8 (TMA needs 16-byte rows), got K={}", k);
  WEFT_CHECK_ARG(args.a != nullptr && args.b != nullptr && args.c != nullptr &&
                     args.group_rows != nullptr,
                 "A, B, C and group_rows must be non-null (A={} B={} C={} group_rows={})", args.a,
                 args.b, static_cast<const void*>(args.c),
                 static_cast<const void*>(args.group_rows));
  const auto [lda, ldb, ldc] =
      check_operand_layout(__func__, args.lda, args.ldb, args.ldc, n, k, args.a, args.b, args.c);
  auto aligned = [](const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; };
  WEFT_CHECK_ARG(aligned(args.group_rows, 4), "group_rows ({}) must be 4-byte aligned",
                 static_cast<const void*>(args.group_rows));
  WEFT_CHECK_ARG(args.bias == nullptr || aligned(args.bias, 2), "bias ({}) must be 2-byte aligned",
                 args.bias);

  Config cfg = config != nullptr ? *config
                                 : choose_grouped_config(m, groups, n, k, args.ab_type,
                                                         args.c_type, sm_count());
  WEFT_CHECK_ARG(cfg.raster_group >= 1, "config raster_group must be >= 1, got {}",
                 cfg.raster_group);
  WEFT_CHECK_ARG(cfg.max_sms >= 0, "config max_sms must be >= 0, got {}", cfg.max_sms);
  WEFT_CHECK_ARG(!cfg.stream_k, "config {}: grouped GEMM has no stream-K", cfg.to_string());
  const detail::Variant* v = find_variant(args.ab_type, args.c_type, cfg, false, true);
  WEFT_CHECK_ARG(v != nullptr, "config {} is not a shipped grouped {} -> {} kernel; shipped: {}",
                 cfg.to_string(), to_string(args.ab_type), to_string(args.c_type),
                 list_configs(args.ab_type, args.c_type, false, true));
  // The kernel keeps each group's first m-tile in 16 bits.
  WEFT_CHECK_ARG((m + cfg.block_m - 1) / cfg.block_m + groups < 65536,
                 "m_capacity {} is too large for grouped GEMM with block_m {} ({} groups)", m,
                 cfg.block_m, groups);

  detail::LaunchRequest r{};
  r.a = args.a;
  r.lda = lda;
  r.b = args.b;
  r.ldb = ldb;
  r.c = args.c;
  r.ldc = ldc;
  r.m = m;
  r.n = n;
  r.k = k;
  r.raster_group = cfg.raster_group;
  r.max_ctas = cfg.max_sms;
  r.groups = groups;
  detail::KernelParams& kp = r.kp;
  kp.bias = args.bias;
  const int64_t row_bytes = ldc * dtype_size(args.c_type);
  const bool tma_store_ok = row_bytes % 16 == 0 && (n * dtype_size(args.c_type)) % 16 == 0;
  kp.epi_direct = tma_store_ok ? 0 : 1;
  kp.epi_vec16 = row_bytes % 16 == 0 ? 1 : 0;
  kp.out = args.c;
  kp.ldo = ldc;
  kp.group_rows = args.group_rows;
  kp.groups = int32_t(groups);
  kp.hang = detail::hang_record_device_ptr();  // row-count overflow report
  ensure_kernels_loaded();
  v->launch(r, stream);
}

}  // namespace weft::gemm
