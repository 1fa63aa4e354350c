// weft GEMM engine (sm_90a): C[M,N] = A[M,K] * B[N,K]^T (+ bias[N]), fp32 accumulation.
//
//   A  row-major [M, K] (leading dimension lda >= K), bf16 or fp16
//   B  row-major [N, K] (a PyTorch Linear weight; ldb >= K), same dtype as A
//   C  row-major [M, N] (ldc >= N), the input dtype or fp32
//   bias [N] in the input dtype (optional)
//
// Any M, N >= 1; K >= 8 and a multiple of 8. Pointers 16-byte aligned; lda, ldb multiples of 8.
// The kernel is persistent and warp-specialized (TMA producer + two wgmma consumer warpgroups)
// and exposes the overlap hooks weft's fused operators need (see Hooks).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

namespace weft::gemm {

enum class DType : int32_t { kBF16 = 0, kFP16 = 1, kFP32 = 2 };
const char* to_string(DType t);
int dtype_size(DType t);

// Tile configuration. (block_m, block_n, stages, cluster_m, cluster_n) select a compiled kernel
// (see shipped_configs()); raster_group and max_sms are run-time knobs.
struct Config {
  int block_m = 128;
  int block_n = 256;
  int block_k = 64;        // fixed: one 128-byte swizzle row of 16-bit elements
  int stages = 4;          // smem ring depth
  int cluster_m = 1;       // 2: CTA pairs along M share each B tile through TMA multicast
  int cluster_n = 1;       // 2: CTA pairs along N share each A tile through TMA multicast
  bool pingpong = false;   // each consumer warpgroup owns whole block_m x block_n tiles and
                           // stores one while the other computes (plain kernels only)
  int raster_group = 8;    // scheduler units along M per rasterization group
  bool stream_k = false;   // split the last partial wave of tiles by k-blocks over all CTAs
                           // (plain 1x1 kernels; needs a workspace, see GemmArgs::workspace)
  int max_sms = 0;         // hook (d): cap on CTAs (= SMs) of the persistent grid; 0 = all SMs
                           // (rounded down to whole clusters, but at least one cluster)

  // "128x256x64_s4_c1x1_g8" (+ "_pp" after the clusters for ping-pong, "_sk" after the raster
  // group for stream-K, "_sm<max_sms>" when capped). parse_config() reads it back.
  std::string to_string() const;
  bool same_kernel(const Config& o) const {
    return block_m == o.block_m && block_n == o.block_n && block_k == o.block_k &&
           stages == o.stages && cluster_m == o.cluster_m && cluster_n == o.cluster_n &&
           pingpong == o.pingpong;
  }
};

// Parses Config::to_string() output ("_g" and "_sm" parts optional). Throws InvalidArgument.
Config parse_config(const std::string& s);

// Kernel configurations compiled into the library for this dtype pair; `hooks`: variants with
// the overlap hooks compiled in; `grouped`: the grouped (MoE) variants (grouped_gemm()).
std::vector<Config> shipped_configs(DType ab, DType c, bool hooks = false, bool grouped = false);

// The shipped configurations for this dtype pair as text ("128x256x64_s4_c1x1_g16, ..."), for
// error messages.
std::string list_configs(DType ab, DType c, bool hooks = false, bool grouped = false);

// Whether gemm() runs `cfg` for this dtype pair: a shipped kernel, and with `hooks` one compiled
// with the overlap hooks (stream-K, ping-pong and cluster kernels have none).
bool is_shipped(const Config& cfg, DType ab, DType c, bool hooks = false);

// The heuristic: picks the shipped configuration with the best estimated efficiency (padding x
// wave quantization x per-tile throughput) for this problem on `sm_count` SMs. The environment
// variable WEFT_GEMM_CONFIG (a Config string; InvalidArgument if no shipped kernel has it)
// overrides it. `hooks` restricts the choice to configurations compiled with the overlap hooks;
// there WEFT_GEMM_CONFIG applies only if it names one of them.
Config choose_config(int64_t m, int64_t n, int64_t k, DType ab, DType c, int sm_count,
                     bool hooks = false);

// How the output is partitioned into tiles and scheduler units for a config. A unit is the
// cluster_m x cluster_n block of tiles one cluster computes (one tile without clusters, the only
// choice with hooks today). Tile order entries (Hooks::tile_order) are unit ids
// m_unit * units_n + n_unit; per-tile signal indices are tile ids m_blk * tiles_n + n_blk.
struct TileGrid {
  int block_m, block_n, cluster_m, cluster_n;
  int tiles_m, tiles_n;  // CTA tiles
  int units_m, units_n;  // ceil(tiles_m / cluster_m), ceil(tiles_n / cluster_n)
  int64_t num_tiles;     // tiles_m * tiles_n
  int64_t num_units;     // units_m * units_n
};
TileGrid tile_grid(const Config& cfg, int64_t m, int64_t n);

// The order in which the persistent scheduler visits units by default (grouped raster with
// cfg.raster_group), as unit ids. A caller-given Hooks::tile_order that equals this runs the
// same schedule as no order at all; fused operators start from it and move units around.
std::vector<int32_t> default_tile_order(const Config& cfg, int64_t m, int64_t n);

enum class SignalMode : int32_t {
  kNone = 0,
  kPerTile = 1,      // signals[m_blk * tiles_n + n_blk]         one per tile
  kPerRowChunk = 2,  // signals[(m_blk * block_m) / signal_rows]: tiles_n per m-block of the chunk
                     // (tiles_n * signal_rows / block_m, fewer for a last chunk cut by M)
};
enum class SignalOp : int32_t { kAdd = 0, kStore = 1 };

// Overlap hooks (issue 3, item 2). A default-constructed Hooks enables nothing. Any of
// tile_order / wait_flags / signals selects a kernel compiled with hooks.
struct Hooks {
  // (a) Visit scheduler units in this order: device array of TileGrid::num_units unit ids, a
  //     permutation (each CTA walks i = cta, cta + grid, ...; producer and consumers agree).
  //     An entry outside [0, num_units) traps with a report (take_hang_report); a repeated
  //     entry is not detected (its tile is computed twice, another one never).
  const int32_t* tile_order = nullptr;

  // (b) Before the producer loads rows [r0, r1) of A it waits, for every chunk c touching those
  //     rows (c = row / wait_chunk_rows), until wait_flags[c] >= wait_expected (ld.acquire.sys
  //     spin), then executes fence.proxy.async.global and only then issues the TMA loads.
  const uint64_t* wait_flags = nullptr;  // device (or mapped) memory, ceil(M / chunk) entries
  int64_t wait_chunk_rows = 0;
  uint64_t wait_expected = 0;
  //     When set, the producer reads the expected value from this device word once, when the
  //     kernel starts, instead of using wait_expected: a CUDA graph replays the same launch, so
  //     an operator that bumps a device epoch counter before each GEMM (in stream order) keeps
  //     monotonic epochs across replays.
  const uint64_t* wait_expected_ptr = nullptr;

  // (c) Epilogue: direct_store writes C (args.c / ldc, which may point into a peer GPU's
  //     buffer) with 16-byte stores from the SMs instead of a TMA store. After a tile is
  //     written, signals[idx] is raised (release, system scope; add or store signal_value).
  bool direct_store = false;
  uint64_t* signals = nullptr;
  SignalMode signal_mode = SignalMode::kNone;
  SignalOp signal_op = SignalOp::kAdd;
  int64_t signal_rows = 0;  // kPerRowChunk: rows per signal, a multiple of block_m
  uint64_t signal_value = 1;

  // Every spin gives up after this long: the kernel records flag address, expected and seen
  // value (read them with take_hang_report()) and traps. 0 = wait forever.
  uint64_t timeout_ns = 10'000'000'000ull;
  // A host-mapped word (device address) that, once non-zero, makes a waiting flag spin give up at
  // once, as if timed out, its report saying so. weft's operators pass their World's abort board
  // (dev::Context::abort_any): a rank on this host that gave up then ends the waits for its chunks
  // within microseconds instead of after timeout_ns. nullptr: only the timeout ends a wait.
  const volatile uint32_t* give_up = nullptr;

  bool needs_hook_kernel() const {
    return tile_order != nullptr || wait_flags != nullptr || signal_mode != SignalMode::kNone;
  }
};

struct GemmArgs {
  const void* a = nullptr;
  int64_t lda = 0;  // 0: K
  const void* b = nullptr;
  int64_t ldb = 0;  // 0: K
  void* c = nullptr;
  int64_t ldc = 0;  // 0: N
  const void* bias = nullptr;
  int64_t m = 0, n = 0, k = 0;
  DType ab_type = DType::kBF16;
  DType c_type = DType::kBF16;
  // Stream-K scratch (used only when the config has stream_k): at least
  // stream_k_workspace_bytes(), 16-byte aligned, zero-filled once before its first use (every
  // launch leaves it reusable), and never used by two GEMMs that may run at the same time.
  // Without one, gemm() uses a workspace it keeps per stream (per thread for cudaStreamPerThread,
  // which is a different stream in each thread), allocated on the first stream-K launch there
  // (release_stream_workspace frees it); a launch being captured into a CUDA graph on a stream
  // without one runs without stream-K. A graph captured with a stream's workspace must not be
  // replayed while stream-K GEMMs run on that stream, another replay of it runs, or a replay of
  // another graph captured on the same stream runs (they all hold that workspace): give GEMMs in
  // graphs that may replay concurrently a workspace each. (Per-thread workspaces follow the
  // thread's id, which a new thread may reuse: synchronize before a thread with stream-K GEMMs
  // in flight on cudaStreamPerThread exits.)
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Bytes of stream-K workspace a GEMM on the current device may need (any shipped config).
size_t stream_k_workspace_bytes();

// Frees the stream-K workspace gemm() keeps for `stream` on the current device (~17 MB on an
// H100), after the stream's queued work; a later stream-K launch there allocates a new one. Call
// it before destroying a stream that ran GEMMs without a caller workspace, and never while a CUDA
// graph captured on that stream with gemm()'s own workspace may still be launched (the graph
// holds the pointer), nor while another thread may call gemm() on that stream. Returns whether
// there was one. Synchronizes `stream`.
bool release_stream_workspace(cudaStream_t stream);
// The same for every stream of the current device; the number freed.
int release_stream_workspaces();

// Validates every argument (weft::InvalidArgument with a clear message), picks a config (or
// uses `config`), encodes the tensor maps and launches on `stream`. Asynchronous; capturable in
// a CUDA graph (no allocation, no sync) once the first call on a device has set the kernel
// attributes. Launch failures throw weft::Error.
void gemm(const GemmArgs& args, cudaStream_t stream, const Config* config = nullptr,
          const Hooks* hooks = nullptr);

// Grouped GEMM for mixture-of-experts layers (issue 3, item 3): for every group (expert) g,
//   C_g[M_g, N] = A_g[M_g, K] * B_g[N, K]^T (+ bias_g[N])
// where the row counts M_g live in device memory (written by a routing kernel; never read by
// the host) and A_g / C_g are consecutive row blocks of A / C: group g's rows start after
// M_0 + ... + M_{g-1} rows. B holds the groups' weights back to back, [groups, N, K].
// One persistent launch covers all groups; the kernel reads the counts when it starts.
struct GroupedGemmArgs {
  const void* a = nullptr;  // [m_capacity, K] packed rows of all groups, lda >= K
  int64_t lda = 0;          // 0: K
  const void* b = nullptr;  // [groups, N, K], rows of ldb elements, group g at row g * N
  int64_t ldb = 0;          // 0: K
  void* c = nullptr;        // [m_capacity, N], ldc >= N; rows past the groups' total untouched
  int64_t ldc = 0;          // 0: N
  const void* bias = nullptr;          // [groups, N] in the input dtype, or nullptr
  const int32_t* group_rows = nullptr;  // device [groups]: M_g (negative counts as 0)
  int64_t groups = 0;                   // 1..max_groups()
  int64_t m_capacity = 0;               // rows A and C hold; sum of M_g must not exceed it
  int64_t n = 0, k = 0;
  DType ab_type = DType::kBF16;
  DType c_type = DType::kBF16;
  // A sum of M_g above m_capacity cannot be checked on the host: the kernel then records it
  // (take_hang_report()) and traps instead of writing out of bounds.
};

// Most groups one grouped_gemm() call takes.
int max_groups();

// Heuristic for grouped GEMM: `expected_rows` is a guess of the total rows (e.g. tokens * topk);
// WEFT_GEMM_GROUPED_CONFIG overrides it.
Config choose_grouped_config(int64_t expected_rows, int64_t groups, int64_t n, int64_t k,
                             DType ab, DType c, int sm_count);

// Validates, picks a config (choose_grouped_config(m_capacity, ...) unless `config` is given)
// and launches. Asynchronous, no allocation, no sync: CUDA-graph capturable.
void grouped_gemm(const GroupedGemmArgs& args, cudaStream_t stream,
                  const Config* config = nullptr);

// Loads every GEMM kernel on the current device and sets its attributes. CUDA loads kernels
// lazily, and a load may wait for the device to go idle: call this once per device before
// launching a GEMM beside a kernel that waits for it (signals) or that it waits for (flags).
// gemm() itself calls it on its first use on a device. Launch any kernel of your own that runs
// beside a waiting GEMM once beforehand (or cudaFuncGetAttributes it) for the same reason.
void load_kernels();

// Number of SMs of the current device (cached).
int sm_count();

// If a kernel on the current device timed out in a wait (and trapped), a description of the flag
// it was waiting for; otherwise "". Clears that device's record (one per device). Readable after
// the trap because the records live in host-mapped memory.
std::string take_hang_report();

}  // namespace weft::gemm
