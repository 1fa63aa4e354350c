// The World: this process's place among the ranks of a job, and everything weft builds on it —
// the NCCL communicator, NCCL's device communicator, the symmetric heap and the device Context
// that kernels receive.
//
//   auto world = weft::World::create();               // from torchrun / MPI / Slurm / weft run
//   auto buf = world->alloc<float>(1 << 20);          // symmetric: same call on every rank
//   auto sig = world->alloc_signals(world->size());   // zeroed 64-bit epochs
//   my_kernel<<<grid, block, 0, world->stream()>>>(world->context(), buf.data(), sig.data());
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "weft/device/context.h"
#include "weft/runtime/abort_board.h"
#include "weft/runtime/bootstrap.h"
#include "weft/runtime/error.h"
#include "weft/runtime/heap.h"
#include "weft/runtime/rendezvous.h"

namespace weft {

using signal_t = dev::signal_t;

struct WorldOptions {
  // Bytes of symmetric heap per rank (WEFT_HEAP_BYTES overrides; suffixes K, M, G allowed).
  size_t heap_bytes = size_t(1) << 30;
  // Device barriers available to user kernels (indices [0, barrier_count)).
  int barrier_count = 256;
  // How long ranks wait for each other in each host collective step: start-up, and afterwards
  // every symmetric allocation (with check_symmetric_allocations), host barrier and operator's
  // agreement check. A rank busy elsewhere for longer (a checkpoint, say) fails that step on every
  // rank, and the World with it. WEFT_RENDEZVOUS_TIMEOUT_MS overrides (0 = wait forever).
  std::chrono::milliseconds rendezvous_timeout = std::chrono::seconds(120);
  // Device waits trap after this long (WEFT_WAIT_TIMEOUT_MS overrides; 0 = wait forever).
  std::chrono::milliseconds wait_timeout = std::chrono::seconds(30);
  // World::synchronize gives up after this long (WEFT_SYNC_TIMEOUT_MS overrides; 0 = wait
  // forever; negative = derived: forever when wait_timeout is 0, else the larger of 120 s and
  // twice wait_timeout, see effective_sync_timeout). Device waits trap by themselves, but a
  // stream wait (stream_wait_signal, a copy engine's cuStreamWaitValue64) cannot time out on the
  // device: without this, a signal no peer raises would hang the host silently.
  std::chrono::milliseconds sync_timeout{-1};
  // When World::synchronize gives up: false = throw weft::Timeout (the World then tears down
  // without waiting for the device, but other objects' destructors may still block on the stuck
  // stream: exit after catching it); true = print the report and std::_Exit(124) at once, for
  // programs that would only exit anyway (the weft command, tests).
  bool exit_on_sync_timeout = false;
  // Check across ranks that every symmetric allocation got the same offset (one TCP round trip
  // per allocation; WEFT_CHECK_SYMMETRY=0 turns it off).
  bool check_symmetric_allocations = true;
};

// Reads WEFT_HEAP_BYTES, WEFT_RENDEZVOUS_TIMEOUT_MS, WEFT_WAIT_TIMEOUT_MS, WEFT_SYNC_TIMEOUT_MS and
// WEFT_CHECK_SYMMETRY over `base`.
WorldOptions world_options_from_env(WorldOptions base = {}, const EnvLookup& env = process_environment());

// The deadline World::synchronize applies (0 = none): sync_timeout when >= 0, else derived from
// wait_timeout as documented there.
std::chrono::milliseconds effective_sync_timeout(const WorldOptions& options);

class World {
 public:
  // Joins the job described by the environment (see bootstrap.h); collective over all ranks.
  static std::unique_ptr<World> create(const WorldOptions& options = world_options_from_env());
  static std::unique_ptr<World> create(const ProcessInfo& process, const WorldOptions& options);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return process_.rank; }
  int size() const { return process_.world_size; }
  int local_rank() const { return process_.local_rank; }
  int local_size() const { return process_.local_size; }
  int lsa_rank() const { return dev_comm_.lsaRank; }
  int lsa_size() const { return dev_comm_.lsaSize; }
  int device() const { return device_; }
  // The fewest SMs of any rank's GPU. Operators whose work split must agree across ranks (slices,
  // flag counts, strategy) plan with it, so a node of mixed GPUs still derives one plan.
  int min_sm_count() const { return min_sm_count_; }
  // The lowest peak DRAM bandwidth of any rank's GPU, GB/s (memory clock x bus width; 0 when a
  // device does not report it). Planners' cost models scale their memory rates by it, agreed.
  int min_memory_gbps() const { return min_memory_gbps_; }
  const ProcessInfo& process() const { return process_; }

  ncclComm_t nccl_comm() const { return comm_; }
  const ncclDevComm& dev_comm() const { return dev_comm_; }
  SymmetricHeap& heap() { return *heap_; }
  Rendezvous& rendezvous() { return *rendezvous_; }
  // A non-blocking stream owned by the world, on this rank's device.
  cudaStream_t stream() const { return stream_; }

  // What kernels receive (by value; declare the parameter `const __grid_constant__ dev::Context`).
  dev::Context context() const;

  // World rank -> rank in this node's team; throws if `rank` is on another node.
  int lsa_rank_of(int rank) const;

  // Symmetric allocation of `count` elements of T: collective, same order on every rank. The
  // contents are uninitialized.
  template <class T>
  SymmetricBuffer<T> alloc(size_t count, size_t alignment = 0) {
    WEFT_CHECK_ARG(count > 0, "cannot allocate an empty symmetric buffer");
    WEFT_CHECK_ARG(count <= SIZE_MAX / sizeof(T), "{} elements of {} bytes overflow a size", count,
                   sizeof(T));
    return SymmetricBuffer<T>(heap_.get(),
                              static_cast<T*>(allocate_symmetric(count * sizeof(T), alignment)),
                              count);
  }

  // Symmetric allocation whose every byte is `byte` on every rank before any rank returns
  // (collective): peers may write into it as soon as their call returns. For buffers whose
  // initial contents a protocol reads: zeroed signals and tags, poisoned staging.
  template <class T>
  SymmetricBuffer<T> alloc_filled(size_t count, unsigned char byte) {
    SymmetricBuffer<T> buffer = alloc<T>(count);
    fill_before_peers(buffer.data(), buffer.bytes(), byte);
    return buffer;
  }

  // `count` signals set to zero on every rank before any rank returns (collective).
  SymmetricBuffer<signal_t> alloc_signals(size_t count) { return alloc_filled<signal_t>(count, 0); }

  // Device barrier of all ranks on `stream` (a one-block kernel on the LSA barrier,
  // acquire-release): work before it on every rank's stream happens before work after it.
  // Graph-capturable. Calls must not overlap on different streams of one rank. Uses the barrier
  // index past the user's range (barrier_count); like every weft wait it gives up after
  // WEFT_WAIT_TIMEOUT_MS, or when a rank on this host gives up (the abort board), with a report
  // naming a rank that did not arrive.
  void barrier(cudaStream_t stream);
  // Host barrier (TCP) of all ranks.
  void host_barrier();
  // Runs rank-local validation (`checks` reads this rank's GPU, inputs or environment) and makes
  // every rank throw when any rank's checks throw (Rendezvous::agree): an operator calls it before
  // its first collective step, so that on a node of mixed GPUs no rank goes on to wait for a peer
  // that rejected the configuration. Collective.
  void agree(const std::function<void()>& checks) { rendezvous_->agree(checks); }
  // The settings an operator's plans depend on (its options and the environment overrides that
  // steer them, written out as text) must be the same on every rank: ranks whose plans differ
  // wait for each other's flags forever, or read each other's buffers with different layouts.
  // One all_gather; every rank throws the same weft::InvalidArgument (at `where`) naming the ranks
  // whose settings differ from rank 0's. Collective.
  void check_same_settings(const std::string& settings, const char* where);

  // Wait for the work queued on `stream` so far. On a device error, throws weft::Error whose text
  // includes what a weft primitive reported before trapping (which rank waited for which signal,
  // and what it saw).
  // Past effective_sync_timeout(options) it prints why to stderr and throws weft::Timeout. The
  // stuck work stays queued, so whatever waits for the device next (operator destructors, the
  // World's teardown) blocks: exit the process (std::_Exit) after catching it. When a rank on this
  // host gave up (the abort board) and the work is still not done a second later, it throws
  // weft::Error saying so, with the same advice.
  void synchronize(cudaStream_t stream);
  // The same with the caller's deadline (0 = none) and no message on stderr; after a Timeout the
  // caller may wait again (not after the abort board's Error).
  void synchronize(cudaStream_t stream, std::chrono::milliseconds timeout);
  // The device fault report, if a kernel of this world left one. When a wait gave up because
  // a rank on this host had (FaultReport::peer_gave_up), the text goes on with those ranks'
  // accounts.
  std::optional<std::string> fault_report() const;

  // Tells the ranks on this host that this rank gives up on the collective work it has queued
  // (`reason` says why; they quote it): their weft device waits that have spun a while then trap
  // with a report, and World::synchronize throws where a stream wait (copy-engine strategies)
  // holds their streams. This rank's own weft waits still spinning give up too (their trap ends
  // this process's CUDA context; copy what you need off the GPU first). Call it when this rank
  // abandons a sequence of collective calls half way (an exception between two calls, say). A
  // device fault, a CUDA error that ends this process's context, or an operator's call failing
  // half way does this by itself. Final: the World takes part in no collective step afterwards,
  // and its teardown neither waits for the device nor for the peers (it leaves its symmetric heap
  // mapped). Ranks on other hosts are not told (they time out as before). In a World of one rank
  // it does nothing; without an abort board (has_abort_board()) only the teardown changes.
  void abort(const std::string& reason);
  // Whether the ranks on this host share an abort board (weft/runtime/abort_board.h): false for
  // a World alone on its host, or when the shared page could not be set up (another IPC
  // namespace, say; abort_board_note() says why).
  bool has_abort_board() const { return board_ != nullptr; }
  const std::string& abort_board_note() const { return board_note_; }

 private:
  World(const ProcessInfo& process, const WorldOptions& options);
  void* allocate_symmetric(size_t bytes, size_t alignment);
  // Sets `bytes` at `ptr` to `byte`, waits for it, then passes a host barrier of all ranks.
  void fill_before_peers(void* ptr, size_t bytes, unsigned char byte);
  // Frees everything; collective teardown only when the device is healthy.
  void release(bool collective) noexcept;
  // Polls until the work queued on `stream` is done or `timeout` (0 = none) passes; false then.
  // Device errors throw as synchronize() describes.
  // When a rank on this host gave up and the work is not done 1 s later, throws weft::Error (and
  // when `loud`, first says so on stderr, or exits as exit_on_sync_timeout asks).
  bool wait_for(cudaStream_t stream, std::chrono::milliseconds timeout, bool loud = true);
  std::string timeout_message(std::chrono::milliseconds waited) const;
  // The board's accounts of the ranks on this host that gave up (this one included), as one line
  // ("" if none).
  std::string board_accounts() const;
  // A CUDA error ended this process's context (`what` says which): mark the board, unless the
  // fault is a peer's doing (this rank's own report says so, or a peer has marked already).
  void on_context_lost(const std::string& what);
  // Sets up the abort board (collective) and maps it for the device; see has_abort_board().
  void create_abort_board();
  // Frees the fault report and the board's CUDA registration.
  void release_fault_memory(bool healthy) noexcept;

  ProcessInfo process_;
  WorldOptions options_;
  bool stuck_ = false;  // a synchronize() timed out: the device may never drain
  bool aborted_ = false;  // abort() was called: no collective teardown
  int device_ = -1;
  int min_sm_count_ = 0;
  int min_memory_gbps_ = 0;
  std::unique_ptr<Rendezvous> rendezvous_;
  ncclComm_t comm_ = nullptr;
  ncclDevComm dev_comm_{};
  bool dev_comm_created_ = false;
  std::unique_ptr<SymmetricHeap> heap_;
  cudaStream_t stream_ = nullptr;
  // The device fault report (host-mapped): this rank's slot on the abort board, or else memory of
  // its own (fault_owned_). fault_ is the host's address, fault_dev_ the device's.
  dev::FaultReport* fault_ = nullptr;
  dev::FaultReport* fault_dev_ = nullptr;
  bool fault_owned_ = false;
  std::unique_ptr<AbortBoard> board_;
  std::string board_note_;         // why there is no board (or its device half)
  bool board_registered_ = false;  // cudaHostRegister'ed: the device marks and reads it
  volatile unsigned int* abort_any_dev_ = nullptr;
  volatile unsigned char* abort_mark_dev_ = nullptr;
};

// For an operator's call: arm() it just before the call queues the first work its peers wait for
// (a prologue barrier, a push kernel's flags). Should the scope then be left by an exception (a
// failed launch, a cuBLAS error), the peers would wait for the rest of this rank's part of the
// call, which never comes; the guard tells them (World::abort, naming `where`). An error thrown
// before arm() (validation, which every rank does alike) leaves the World usable. Never armed
// while the stream is captured (nothing runs yet) nor in a World of one rank; dismiss() it once
// everything is queued (an error thrown after that leaves the peers nothing to wait for).
class AbortIfUnwound {
 public:
  AbortIfUnwound(World& world, bool capturing, const char* where)
      : world_(world),
        capturing_(capturing),
        where_(where),
        exceptions_(std::uncaught_exceptions()) {}
  ~AbortIfUnwound() {
    if (!armed_ || std::uncaught_exceptions() <= exceptions_) return;
    try {
      world_.abort(
          fmt::format("{} failed after it had begun to queue its part of the collective "
                      "call (its own exception says why)",
                      where_));
    } catch (...) {  // telling the peers is best effort; the exception in flight goes on
    }
  }
  void arm() { armed_ = !capturing_ && world_.size() > 1; }
  void dismiss() { armed_ = false; }
  AbortIfUnwound(const AbortIfUnwound&) = delete;
  AbortIfUnwound& operator=(const AbortIfUnwound&) = delete;

 private:
  World& world_;
  bool capturing_;
  bool armed_ = false;
  const char* where_;
  int exceptions_;
};

// Whether a call on `stream` that this rank gives up may be abandoned, i.e. something queued
// there now would run: not while `stream` is being captured (nothing runs yet), not in a World of
// one rank (no peer waits), not on a stream that cannot be queried.
inline bool may_abandon(const World& world, cudaStream_t stream) noexcept {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return world.size() > 1 && cudaStreamIsCapturing(stream, &status) == cudaSuccess &&
         status == cudaStreamCaptureStatusNone;
}

// A collective call's checks of this rank's own arguments (`checks`), run before it queues
// anything. When one throws, `abandon` first queues what lets the peers finish their part of the
// call at once and say so, instead of waiting for this rank until their timeout (where
// may_abandon); then the exception goes on. `abandon` is best effort and must not throw.
template <class Checks, class Abandon>
void checks_or_abandon(const World& world, cudaStream_t stream, Checks&& checks,
                       Abandon&& abandon) {
  try {
    checks();
  } catch (...) {
    if (may_abandon(world, stream)) abandon();
    throw;
  }
}

// For operators whose abandoned calls wait for no peer (the TP operators' kernels only arrive and
// signal): the call after one could run ahead of a peer still in the call before, into the
// receive halves and signature slots that peer is reading (they alternate by parity). So where
// this rank abandoned a call, its next call on the operator, abandoned or not, starts with a
// device barrier (World::barrier): ranks that abandoned alike pass it together, each after its
// previous call; a rank whose peers did not abandon finds them gone (they failed the abandoned
// call's check) and gives up there, on the board. Host state only: nothing runs before calls that
// follow ordinary ones. (A call captured into a graph right after an abandoned one captures the
// barrier too.)
class AbandonFence {
 public:
  void abandoned() { pending_ = true; }
  // Before the call's first peer-visible work. Disarmed first: where the barrier's launch check
  // throws, it is for an error some earlier work left pending (an abandoning call's own check may
  // have failed on just that), and the barrier was queued all the same, as on the peers.
  void before_call(World& world, cudaStream_t stream) {
    if (!pending_) return;
    pending_ = false;
    world.barrier(stream);
  }

 private:
  bool pending_ = false;
};

// Human-readable text of a device fault report ("rank 1: wait timed out after 200 ms on signal
// 0x... (heap offset 4096): expected >= 5, observed 4, block (0,0,0) thread (0,0,0)").
std::string describe_fault(const dev::FaultReport& report);

// Refuses to run when the NCCL library loaded at run time is not the release weft was compiled
// against (2.28.x gives no ABI guarantee for the device API). Called by World::create.
void check_nccl_version();

}  // namespace weft
