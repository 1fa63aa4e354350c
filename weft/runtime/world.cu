#include <dlfcn.h>
#include <nccl_device.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "weft/device/barrier.cuh"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/world.h"

namespace weft {
namespace {

// How long World::synchronize lets a stream's work go on after a peer on this host gave up before
// it gives up too: work that does not need that peer finishes within it.
constexpr auto kPeerAbortGrace = std::chrono::seconds(1);

// World::barrier's kernel: one block on the barrier index reserved past the user's range, with
// weft's wait (a timeout and the abort board: NCCL's own sync() spins without either).
__global__ void world_barrier_kernel(const __grid_constant__ dev::Context ctx) {
  dev::detail::lsa_barrier_sync_any(dev::Block{}, ctx, static_cast<uint32_t>(ctx.barrier_count),
                                    /*acq_rel=*/true);
}

// What every rank contributes at start-up: rank 0's NCCL id, plus each rank's settings so that a
// rank configured differently is named instead of failing later in a less clear way.
struct StartupRecord {
  ncclUniqueId id;
  uint64_t heap_bytes;
  int32_t barrier_count;
  int32_t nccl_version;
  int32_t world_size;
  int32_t sm_count;
  int32_t memory_gbps;  // peak DRAM bandwidth, GB/s (0: the device does not say)
  int32_t check_symmetry;  // WorldOptions::check_symmetric_allocations: one more round per alloc
};

// Peak DRAM bandwidth from the memory clock and bus width (double data rate), GB/s; 0 when
// either query fails. H100 SXM: 2619 MHz x 5120 bits = 3352.
int32_t peak_memory_gbps(int device) {
  int khz = 0, bits = 0;
  if (cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return static_cast<int32_t>(2.0 * double(khz) * 1e3 * (bits / 8.0) / 1e9);
}

std::string describe_nccl_version(int v) {
  return fmt::format("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100);
}

}  // namespace

void check_nccl_version() {
  int loaded = 0;
  WEFT_NCCL_CHECK(ncclGetVersion(&loaded));
  if (loaded == NCCL_VERSION_CODE) return;
  Dl_info info{};
  const char* path = dladdr(reinterpret_cast<void*>(&ncclGetVersion), &info) && info.dli_fname
                         ? info.dli_fname
                         : "an unknown path";
  throw Error("NCCL version check",
              fmt::format("weft was compiled against NCCL {} but loaded NCCL {} from {}. NCCL's "
                          "device API has no ABI compatibility between releases: put the matching "
                          "libnccl.so.2 first on LD_LIBRARY_PATH (PyTorch 2.11 ships 2.28.9 in "
                          "site-packages/nvidia/nccl/lib) or rebuild weft with -DNCCL_ROOT=<the "
                          "NCCL you run with>",
                          describe_nccl_version(NCCL_VERSION_CODE), describe_nccl_version(loaded),
                          path));
}

std::unique_ptr<World> World::create(const WorldOptions& options) {
  return create(discover_process_info(), options);
}

std::unique_ptr<World> World::create(const ProcessInfo& process, const WorldOptions& options) {
  return std::unique_ptr<World>(new World(process, options));
}

World::World(const ProcessInfo& process, const WorldOptions& options)
    : process_(process), options_(options) {
  set_current_rank(process.rank);
  WEFT_CHECK_ARG(options.barrier_count >= 1 && options.barrier_count <= (1 << 16),
                 "barrier_count must be in [1, 65536], got {}", options.barrier_count);
  WEFT_CHECK_ARG(options.heap_bytes > 0 && options.heap_bytes % NCCL_WIN_REQUIRED_ALIGNMENT == 0,
                 "heap_bytes must be a positive multiple of {}, got {}",
                 NCCL_WIN_REQUIRED_ALIGNMENT, options.heap_bytes);
  check_nccl_version();

  int visible = 0;
  WEFT_CUDA_CHECK(cudaGetDeviceCount(&visible));
  const char* cvd = std::getenv("CUDA_VISIBLE_DEVICES");
  // One GPU per local rank: GPU local_rank when the process sees all of the node's, or the one it
  // sees when the launcher gave each rank its own (Slurm --gpus-per-task=1, per-rank
  // CUDA_VISIBLE_DEVICES).
  WEFT_CHECK_ARG(visible == 1 || process.local_rank < visible,
                 "local rank {} of {} needs GPU {}, but this process sees {} GPU(s) "
                 "(CUDA_VISIBLE_DEVICES={})",
                 process.local_rank, process.local_size, process.local_rank, visible,
                 cvd ? cvd : "<unset>");
  device_ = visible == 1 ? 0 : process.local_rank;
  WEFT_CUDA_CHECK(cudaSetDevice(device_));

  try {
    rendezvous_ = std::make_unique<Rendezvous>(process.rank, process.world_size,
                                               process.master_addr, process.rendezvous_port,
                                               options.rendezvous_timeout);
    StartupRecord mine{};
    if (process.rank == 0) WEFT_NCCL_CHECK(ncclGetUniqueId(&mine.id));
    mine.heap_bytes = options.heap_bytes;
    mine.barrier_count = options.barrier_count;
    WEFT_NCCL_CHECK(ncclGetVersion(&mine.nccl_version));
    mine.world_size = process.world_size;
    WEFT_CUDA_CHECK(
        cudaDeviceGetAttribute(&mine.sm_count, cudaDevAttrMultiProcessorCount, device_));
    mine.memory_gbps = peak_memory_gbps(device_);
    mine.check_symmetry = options.check_symmetric_allocations ? 1 : 0;
    const auto all = rendezvous_->all_gather(
        std::string_view(reinterpret_cast<const char*>(&mine), sizeof(mine)));
    WEFT_CHECK(all[0].size() == sizeof(StartupRecord),
               "rank 0 sent a malformed start-up record (a different weft build?)");
    StartupRecord root{};
    std::memcpy(&root, all[0].data(), sizeof(root));
    min_sm_count_ = mine.sm_count;
    min_memory_gbps_ = mine.memory_gbps;
    for (int r = 0; r < process.world_size; ++r) {
      StartupRecord other{};
      WEFT_CHECK(all[r].size() == sizeof(other), "rank {} sent a malformed start-up record", r);
      std::memcpy(&other, all[r].data(), sizeof(other));
      min_sm_count_ = std::min(min_sm_count_, static_cast<int>(other.sm_count));
      min_memory_gbps_ = std::min(min_memory_gbps_, static_cast<int>(other.memory_gbps));
      WEFT_CHECK_ARG(other.heap_bytes == root.heap_bytes && other.barrier_count == root.barrier_count,
                     "rank {} asked for heap_bytes={} barrier_count={} but rank 0 for {} and {}; "
                     "every rank must create its World with the same options",
                     r, other.heap_bytes, other.barrier_count, root.heap_bytes, root.barrier_count);
      WEFT_CHECK_ARG(other.check_symmetry == root.check_symmetry,
                     "rank {} {} symmetric allocations but rank 0 {} (WEFT_CHECK_SYMMETRY / "
                     "WorldOptions::check_symmetric_allocations): the check is a collective round "
                     "per allocation, so every rank must make the same choice",
                     r, other.check_symmetry ? "checks" : "does not check",
                     root.check_symmetry ? "does" : "does not");
      WEFT_CHECK_ARG(other.nccl_version == root.nccl_version,
                     "rank {} loaded NCCL {} but rank 0 loaded {}", r,
                     describe_nccl_version(other.nccl_version),
                     describe_nccl_version(root.nccl_version));
    }

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    WEFT_NCCL_CHECK(ncclCommInitRankConfig(&comm_, process.world_size, root.id, process.rank,
                                           &config));

    ncclDevCommRequirements reqs;
    std::memset(&reqs, 0, sizeof(reqs));
    reqs.lsaBarrierCount = options.barrier_count + 1;  // + World::barrier's own
    WEFT_NCCL_CHECK(ncclDevCommCreate(comm_, &reqs, &dev_comm_));
    dev_comm_created_ = true;

    heap_ = std::make_unique<SymmetricHeap>(comm_, options.heap_bytes, dev_comm_.lsaRank,
                                            dev_comm_.lsaSize);
    WEFT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    create_abort_board();
    detail::register_fault_source(
        this, [](const void* w) { return static_cast<const World*>(w)->fault_report(); },
        [](const void* w, const std::string& what) {
          const_cast<World*>(static_cast<const World*>(w))->on_context_lost(what);
        });
  } catch (...) {
    release(/*collective=*/false);
    throw;
  }
}

World::~World() { release(/*collective=*/true); }

namespace {
// The device's address of `p`, a host address inside [host_base, ...) that is mapped at
// device_base.
template <class T>
T* device_address(T* p, const void* host_base, void* device_base) {
  const auto offset =
      reinterpret_cast<const volatile char*>(p) - static_cast<const volatile char*>(host_base);
  return reinterpret_cast<T*>(static_cast<char*>(device_base) + offset);
}
}  // namespace

void World::create_abort_board() {
  if (size() > 1)
    board_ = AbortBoard::create(*rendezvous_, AbortBoard::default_host_key(), &board_note_);
  else
    board_note_ = "a World of one rank has nobody to tell";
  if (board_ != nullptr) {
    void* host = board_->page();
    void* device = nullptr;
    cudaError_t err = cudaHostRegister(host, board_->page_bytes(),
                                       cudaHostRegisterMapped | cudaHostRegisterPortable);
    if (err == cudaSuccess) {
      err = cudaHostGetDevicePointer(&device, host, 0);
      if (err != cudaSuccess) cudaHostUnregister(host);
    }
    if (err == cudaSuccess) {
      board_registered_ = true;
      fault_ = board_->own_report();
      fault_dev_ = device_address(fault_, host, device);
      abort_any_dev_ = device_address(board_->any_word(), host, device);
      abort_mark_dev_ = device_address(board_->own_mark(), host, device);
      return;
    }
    (void)cudaGetLastError();
    // The host half still works: it marks the board and reads the peers' marks.
    board_note_ = fmt::format("the abort board could not be mapped for this rank's GPU ({})",
                              cudaGetErrorString(err));
  }
  WEFT_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&fault_), sizeof(dev::FaultReport),
                                cudaHostAllocMapped | cudaHostAllocPortable));
  fault_owned_ = true;
  std::memset(fault_, 0, sizeof(dev::FaultReport));
  void* device = nullptr;
  WEFT_CUDA_CHECK(cudaHostGetDevicePointer(&device, fault_, 0));
  fault_dev_ = static_cast<dev::FaultReport*>(device);
}

void World::release_fault_memory(bool healthy) noexcept {
  if (healthy) {
    if (fault_owned_ && fault_ != nullptr) cudaFreeHost(fault_);
    if (board_registered_) cudaHostUnregister(board_->page());
    board_.reset();
  } else {
    // The device may still be running (a stuck stream) and write its report: leave the memory
    // mapped for the rest of the process.
    (void)board_.release();
  }
  fault_ = fault_dev_ = nullptr;
  fault_owned_ = board_registered_ = false;
  abort_any_dev_ = nullptr;
  abort_mark_dev_ = nullptr;
}

void World::release(bool collective) noexcept {
  detail::unregister_fault_source(this);
  if (device_ < 0) return;
  cudaSetDevice(device_);
  // After a device fault (a trapped wait, say) the context is unusable and peers may be gone:
  // collective teardown could hang, so abort the communicator instead.
  // After a synchronize() that timed out the device may never drain: do not wait for it. Nor
  // after a failed host round (a peer is gone or out of step): work waiting for that peer (a
  // copy-engine stream wait has no timeout of its own) would keep the wait from ever returning,
  // and the collective teardown could not complete anyway.
  const bool peers_gone = rendezvous_ != nullptr && rendezvous_->broken();
  // After abort(), or once any rank on this host gave up, the peers are failing or gone: neither a
  // device synchronization (a stream wait for a peer's flag never ends) nor a collective teardown
  // would finish.
  const bool given_up = aborted_ || (board_ != nullptr && board_->any());
  const cudaError_t device_state =
      collective && !stuck_ && !peers_gone && !given_up ? cudaDeviceSynchronize() : cudaSuccess;
  const bool healthy =
      collective && !stuck_ && !peers_gone && !given_up && device_state == cudaSuccess;
  // A rank that leaves after a failure tells the peers on its host, unless one of them failed
  // first (then this rank's failure is probably that one's doing) or it told them already.
  if (collective && !healthy && board_ != nullptr && !board_->marked() && !board_->any_peer()) {
    board_->mark_host(fmt::format(
        "rank {}: tore down its World after {}", rank(),
        stuck_       ? "a World::synchronize that timed out"
        : peers_gone ? "a failed host rendezvous with the other ranks"
                     : fmt::format("a device error ({})", cudaGetErrorName(device_state))));
  }
  if (stream_) cudaStreamDestroy(stream_);
  stream_ = nullptr;
  release_fault_memory(healthy);
  if (healthy) {
    heap_.reset();
    if (dev_comm_created_) ncclDevCommDestroy(comm_, &dev_comm_);
    if (comm_) {
      ncclCommFinalize(comm_);
      ncclCommDestroy(comm_);
    }
  } else {
    heap_.release();  // leaked on purpose: deregistration is collective
    if (comm_) ncclCommAbort(comm_);
  }
  dev_comm_created_ = false;
  comm_ = nullptr;
  rendezvous_.reset();
  device_ = -1;
}

dev::Context World::context() const {
  dev::Context c{};
  c.comm = dev_comm_;
  c.window = heap_->window();
  c.heap_base = heap_->base();
  c.heap_bytes = heap_->capacity();
  c.lsa_base = heap_->lsa_base();
  c.lsa_stride = heap_->lsa_stride();
  c.rank = rank();
  c.world_size = size();
  c.lsa_rank = lsa_rank();
  c.lsa_size = lsa_size();
  c.barrier_count = options_.barrier_count;
  c.wait_timeout_ns = static_cast<uint64_t>(options_.wait_timeout.count()) * 1000000ull;
  c.fault = fault_dev_;
  c.abort_any = abort_any_dev_;
  c.abort_mark = abort_mark_dev_;
  return c;
}

int World::lsa_rank_of(int peer) const {
  WEFT_CHECK_ARG(peer >= 0 && peer < size(), "rank {} is not in the world [0, {})", peer, size());
  const int lsa_peer = peer - rank() + lsa_rank();
  WEFT_CHECK_ARG(lsa_peer >= 0 && lsa_peer < lsa_size(),
                 "rank {} is on another node; only this node's ranks [{}, {}) are load/store "
                 "accessible",
                 peer, rank() - lsa_rank(), rank() - lsa_rank() + lsa_size());
  return lsa_peer;
}

void* World::allocate_symmetric(size_t bytes, size_t alignment) {
  // Every rank reports its outcome before any rank throws, so that a failure on one rank
  // (out of heap, say) fails every rank with the same message instead of leaving them waiting.
  struct Outcome {
    uint64_t offset, bytes, alignment;
    int32_t ok;
  } mine{0, bytes, alignment, 0};
  std::string error;
  void* p = nullptr;
  try {
    p = heap_->allocate(bytes, alignment);
    mine.offset = heap_->offset_of(p);
    mine.ok = 1;
  } catch (const Error& e) {
    error = e.detail();
  }
  if (!options_.check_symmetric_allocations || size() == 1) {
    WEFT_CHECK(mine.ok, "symmetric allocation of {} bytes failed: {}", bytes, error);
    return p;
  }
  const auto all = rendezvous_->all_gather(
      std::string_view(reinterpret_cast<const char*>(&mine), sizeof(mine)));
  for (int r = 0; r < size(); ++r) {
    Outcome other{};
    std::string problem;
    if (all[r].size() != sizeof(other)) {  // an all_gather of another kind in the same round
      problem = fmt::format(
          "rank {} was not allocating at this point (it made another collective call); every "
          "rank must make the same collective weft calls in the same order",
          r);
    } else {
      std::memcpy(&other, all[r].data(), sizeof(other));
      if (!other.ok)
        problem = fmt::format("rank {} could not allocate {} bytes{}", r, other.bytes,
                              r == rank() ? ": " + error : "");
      else if (mine.ok && (other.offset != mine.offset || other.bytes != mine.bytes))
        problem = fmt::format(
            "asymmetric allocation: this rank allocated {} bytes at heap offset {}, rank {} "
            "allocated {} bytes at offset {}; every rank must make the same symmetric "
            "allocations in the same order",
            mine.bytes, mine.offset, r, other.bytes, other.offset);
    }
    if (!problem.empty()) {
      if (p) heap_->free(p);
      throw Error("World::alloc", problem);
    }
  }
  return p;
}

void World::fill_before_peers(void* ptr, size_t bytes, unsigned char byte) {
  // Behind the work on stream_ (memory a freed buffer had may still be read there), waited for
  // with the synchronize timeout: work there that never ends gives an error, not a hang.
  WEFT_CUDA_CHECK(cudaMemsetAsync(ptr, byte, bytes, stream_));
  const auto limit = effective_sync_timeout(options_);
  if (!wait_for(stream_, limit)) {
    throw Timeout("World::alloc",
                  fmt::format("rank {}: filling a new symmetric buffer of {} bytes waited {} ms "
                              "behind the work queued on the World's stream, which is not "
                              "finishing (a wait no peer satisfies?)",
                              rank(), bytes, limit.count()));
  }
  host_barrier();  // no rank may write into the buffer before its owner filled it
}

void World::barrier(cudaStream_t stream) {
  world_barrier_kernel<<<1, 32, 0, stream>>>(context());
  WEFT_CHECK_LAUNCH();
}

void World::host_barrier() { rendezvous_->barrier(); }

void World::check_same_settings(const std::string& settings, const char* where) {
  const std::vector<std::string> all = rendezvous_->all_gather(settings);
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += fmt::format("; rank {}: {}", r, all[r]);
  WEFT_CHECK_ARG_AT(where, differ.empty(),
                    "every rank must construct the operator with the same plan settings (options "
                    "and WEFT_* overrides), or their plans differ and they wait on each other: "
                    "rank 0: {}{}",
                    all[0], differ);
}

void World::synchronize(cudaStream_t stream) {
  const auto limit = effective_sync_timeout(options_);
  const auto start = std::chrono::steady_clock::now();
  if (wait_for(stream, limit)) return;
  const std::string message =
      timeout_message(std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - start)) +
      " The stream's work is still queued: whatever waits for the device next (operator "
      "destructors, the World's teardown) blocks, so exit the process after catching this.";
  // Say why now: destructors run before anyone prints the exception, and they may block.
  std::fprintf(stderr, "weft: World::synchronize: %s\n", message.c_str());
  std::fflush(stderr);
  stuck_ = true;
  if (options_.exit_on_sync_timeout) {
    std::fflush(nullptr);
    std::_Exit(124);
  }
  throw Timeout("World::synchronize", message);
}

void World::synchronize(cudaStream_t stream, std::chrono::milliseconds timeout) {
  const auto start = std::chrono::steady_clock::now();
  if (wait_for(stream, timeout, /*loud=*/false)) return;
  // (A caller-chosen limit, maybe a probe: the stream may still drain, so stuck_ stays unset.)
  throw Timeout("World::synchronize",
                timeout_message(std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::steady_clock::now() - start)) +
                    " The stream's work is still queued.");
}

std::string World::timeout_message(std::chrono::milliseconds waited) const {
  const auto fault = fault_report();
  const bool device_waits_trap = options_.wait_timeout.count() > 0;
  return fmt::format(
      "rank {}: the stream's work is not done after {} ms. {}the likely cause is a stream wait "
      "(stream_wait_signal, e.g. a copy-engine strategy's) for a signal that no peer raised, or "
      "an NCCL collective that a peer never joined: a peer that died or skipped a collective "
      "call.{}{}",
      rank(), waited.count(),
      device_waits_trap ? "weft's device waits trap with a report by themselves, so " : "",
      fault ? " Device fault: " : "", fault ? *fault : "");
}

bool World::wait_for(cudaStream_t stream, std::chrono::milliseconds timeout, bool loud) {
  // Wait for the work queued so far (an event), not for the stream to go idle: another thread
  // may keep adding to it. A capturing stream cannot record a plain event; its query fails the
  // capture with an error, as cudaStreamSynchronize would.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaEvent_t done = nullptr;
  if (cudaStreamIsCapturing(stream, &capture) == cudaSuccess &&
      capture == cudaStreamCaptureStatusNone &&
      cudaEventCreateWithFlags(&done, cudaEventDisableTiming) == cudaSuccess &&
      cudaEventRecord(done, stream) != cudaSuccess) {
    cudaEventDestroy(done);
    done = nullptr;
  }
  auto query = [&] { return done != nullptr ? cudaEventQuery(done) : cudaStreamQuery(stream); };
  // Poll: briefly without sleeping (a short wait stays short), then with sleeps growing to
  // 200 us.
  const auto start = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(10);
  std::optional<std::chrono::steady_clock::time_point> peer_gave_up;
  cudaError_t err;
  for (int polls = 0; (err = query()) == cudaErrorNotReady; ++polls) {
    const auto now = std::chrono::steady_clock::now();
    if (timeout.count() > 0 && now - start > timeout) {
      if (done != nullptr) cudaEventDestroy(done);
      return false;
    }
    // A rank on this host gave up (this one too, by abort()). This rank's device waits notice by
    // themselves and trap (the query then fails with their report); a stream wait
    // (cuStreamWaitValue64) cannot, so after a grace period in which work that does not need that
    // rank may still finish, give up here.
    if (board_ != nullptr && (polls & 63) == 0 && board_->any()) {
      if (!peer_gave_up) peer_gave_up = now;
      if (now - *peer_gave_up > kPeerAbortGrace) {
        if (done != nullptr) cudaEventDestroy(done);
        const std::string message = fmt::format(
            "rank {}: the stream's work is not done {} ms after a rank on this host gave up, so "
            "it never will: {}. The stream's work is still queued: whatever waits for the device "
            "next (operator destructors) may block, so exit the process after catching this.",
            rank(),
            std::chrono::duration_cast<std::chrono::milliseconds>(now - *peer_gave_up).count(),
            board_accounts());
        stuck_ = true;  // the World's own teardown must not wait for the device
        if (loud) {
          std::fprintf(stderr, "weft: World::synchronize: %s\n", message.c_str());
          std::fflush(stderr);
          if (options_.exit_on_sync_timeout) {
            std::fflush(nullptr);
            std::_Exit(124);
          }
        }
        throw Error("World::synchronize", message);
      }
    }
    if (polls < 1000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(200));
    }
  }
  if (done != nullptr) cudaEventDestroy(done);
  if (err == cudaSuccess) return true;
  // Every ready device report: this World's, and a trapped GEMM hook kernel's hang record.
  const auto fault = detail::current_device_fault();
  const std::string detail =
      fmt::format("{} ({}){}{}", cudaGetErrorString(err), cudaGetErrorName(err),
                  fault ? "; device fault: " : "", fault ? *fault : "");
  if (detail::ends_context(err)) on_context_lost("World::synchronize: " + detail);
  throw Error("World::synchronize", detail);
}

void World::abort(const std::string& reason) {
  if (size() == 1) return;  // nobody waits for this rank
  aborted_ = true;
  if (board_ != nullptr) board_->mark_host(fmt::format("rank {}: {}", rank(), reason));
}

void World::on_context_lost(const std::string& what) {
  if (board_ == nullptr || board_->marked() || board_->any_peer()) return;
  const auto* own = static_cast<const volatile dev::FaultReport*>(fault_);
  if (own != nullptr && own->ready != 0 && own->peer_gave_up != 0) return;
  board_->mark_host(fmt::format("rank {}: {}", rank(), what));
}

std::string World::board_accounts() const {
  if (board_ == nullptr) return "";
  std::string out;
  for (const AbortBoard::Account& a : board_->accounts(/*include_own=*/true)) {
    std::string text = a.report ? describe_fault(*a.report)
                       : !a.reason.empty()
                           ? a.reason
                           : fmt::format("rank {}: its kernel faulted (no report yet)", a.rank);
    if (a.report && !a.reason.empty()) text += "; its host: " + a.reason;
    out += fmt::format("{}[rank {}{} gave up] {}", out.empty() ? "" : "; ", a.rank,
                       a.rank == rank() ? " (this rank)" : "", text);
  }
  return out;
}

std::optional<std::string> World::fault_report() const {
  if (fault_ == nullptr) return std::nullopt;
  if (static_cast<volatile dev::FaultReport*>(fault_)->ready == 0) return std::nullopt;
  std::atomic_thread_fence(std::memory_order_acquire);
  dev::FaultReport report;
  std::memcpy(&report, fault_, sizeof(report));
  std::string text = describe_fault(report);
  if (report.peer_gave_up != 0) {
    const std::string peers = board_accounts();
    if (!peers.empty()) text += ": " + peers;
  }
  return text;
}

namespace {

// A signature word as text: the operation, variant and dtype words as 'name' when they are up to
// 8 printable characters (call_op_word), every other word as its number.
std::string call_word_text(int field, uint64_t w) {
  if (field != dev::CallSignature::op && field != dev::CallSignature::variant &&
      field != dev::CallSignature::dtype)
    return std::to_string(w);
  std::string text;
  for (int i = 0; i < 8; ++i) {
    const char c = static_cast<char>((w >> (8 * i)) & 0xff);
    if (c == '\0') {
      if ((w >> (8 * i)) != 0) return std::to_string(w);  // a NUL before other bytes
      break;
    }
    if (c < 0x20 || c > 0x7e) return std::to_string(w);
    text += c;
  }
  return text.empty() ? std::to_string(w) : fmt::format("'{}'", text);
}

}  // namespace

std::string describe_fault(const dev::FaultReport& f) {
  const std::string where = fmt::format("block ({},{},{}) thread ({},{},{})", f.block[0], f.block[1],
                                        f.block[2], f.thread[0], f.thread[1], f.thread[2]);
  const std::string offset =
      f.heap_offset == ~0ull ? "outside the symmetric heap"
                             : fmt::format("symmetric heap offset {}", f.heap_offset);
  // A wait ends by its own timeout, or early because a rank on this host gave up (the abort board).
  const char* ended =
      f.peer_gave_up ? "gave up because a rank on this host gave up, " : "timed out ";
  switch (f.kind) {
    case dev::FaultReport::wait_timeout:
      return fmt::format(
          "rank {}: wait {}after {} ms on signal {:#x} ({}): expected value {} {}, "
          "observed {} [{}]",
          f.rank, ended, f.waited_ns / 1000000, f.address, offset,
          dev::to_string(static_cast<dev::Cmp>(f.cmp)), f.expected, f.observed, where);
    case dev::FaultReport::bad_symm_at:
      return fmt::format("rank {}: symm_at({:#x}, peer {}) is invalid ({}) [{}]", f.rank,
                         f.address, f.peer_or_index, offset, where);
    case dev::FaultReport::barrier_timeout:
      return fmt::format(
          "rank {}: device barrier {} {}after {} ms waiting for rank {} (its arrival count "
          "is {}, expected {}: that rank has not reached this barrier) [{}]",
          f.rank, f.peer_or_index, ended, f.waited_ns / 1000000, f.late_rank, f.observed,
          f.expected, where);
    case dev::FaultReport::mbarrier_timeout:
      return fmt::format(
          "rank {}: TMA mbarrier wait {}after {} ms (barrier at {:#x}, phase parity "
          "{}): its bulk copies never completed the bytes announced (an expect_tx "
          "count above the bytes loaded, or a copy that never finished) [{}]",
          f.rank, ended, f.waited_ns / 1000000, f.address, f.expected, where);
    case dev::FaultReport::call_mismatch:
      return fmt::format(
          "rank {}: collective call mismatch: rank {} was asked for another call ({} is {} on "
          "this rank, {} on rank {}); every rank must make the same collective calls in the same "
          "order, agreeing on every argument the ranks share [{}]",
          f.rank, f.peer_or_index, dev::to_string(static_cast<dev::CallSignature::Field>(f.field)),
          call_word_text(f.field, f.expected), call_word_text(f.field, f.observed), f.peer_or_index,
          where);
    case dev::FaultReport::bad_barrier_index:
      return fmt::format("rank {}: barrier index {} out of range [{}]", f.rank, f.peer_or_index,
                         where);
    default:
      return fmt::format("rank {}: unknown device fault kind {} [{}]", f.rank, f.kind, where);
  }
}

}  // namespace weft
