// Plain types shared by host and device code: scopes, semantics, comparisons, signals, the device
// fault report and weft::dev::Context, everything a kernel needs to talk to the other ranks, in one
// plain struct passed by value as a kernel argument. The runtime fills it (World::context()), the
// device primitives read it — the same split NCCL uses for ncclDevComm, which it carries.
//
// This header is plain C++ (with weft/device/hash.cuh's host-and-device mixer, plain too) so host
// code compiled by a host compiler can include it.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>
#include <nccl_device.h>

#include <cstddef>
#include <cstdint>

#include "weft/device/hash.cuh"

namespace weft::dev {

// Which threads must observe an operation: the block, this GPU, or the whole system (peer GPUs
// over NVLink, copy engines, the host). Peer-visible signals use Scope::sys.
enum class Scope { cta, gpu, sys };

// Memory-ordering semantic of a load, store or read-modify-write.
enum class Sem { relaxed, acquire, release, acq_rel };

// Comparison a wait applies as `observed <cmp> expected`.
enum class Cmp { eq, ne, ge, gt, le, lt };

// How a notify changes a signal.
enum class SignalOp { set, add };

// Signals are 64-bit monotonic epochs (see DESIGN.md): never reset, so no memset between calls.
using signal_t = uint64_t;

__host__ __device__ constexpr const char* to_string(Cmp cmp) {
  switch (cmp) {
    case Cmp::eq: return "==";
    case Cmp::ne: return "!=";
    case Cmp::ge: return ">=";
    case Cmp::gt: return ">";
    case Cmp::le: return "<=";
    case Cmp::lt: return "<";
  }
  return "?";
}

// What the ranks of one collective call must agree on, compared after they meet
// (weft/device/call_signature.cuh). Words a call leaves at 0 are agreed on trivially. The last
// word is the digest of the others (call_digest), which the ranks compare first.
struct alignas(16) CallSignature {  // stored and loaded in 16-byte pieces
  enum Field : int {
    op,       // the operation: up to 8 ASCII characters, first in the low byte (call_op_word)
    variant,  // the exchange it runs: up to 8 ASCII characters, like op (call_op_word)
    dtype,
    m,  // m, n, k: the dimensions the ranks share
    n,
    k,
    options,  // protocol parameters (chunk counts, tile heights, ...), packed by the caller
    digest,   // call_digest of the words above
    kFields
  };
  unsigned long long word[kFields];
};

// A hash of every word but the digest: a signature's digest word once the others are set.
__host__ __device__ constexpr unsigned long long call_digest(const CallSignature& s) {
  unsigned long long h = 0x6a09e667f3bcc908ull;
  for (int f = 0; f < CallSignature::digest; ++f) h = mix64(h ^ s.word[f]);
  return h;
}

__host__ __device__ constexpr const char* to_string(CallSignature::Field f) {
  switch (f) {
    case CallSignature::op:
      return "operation";
    case CallSignature::variant:
      return "variant";
    case CallSignature::dtype:
      return "dtype";
    case CallSignature::m:
      return "m";
    case CallSignature::n:
      return "n";
    case CallSignature::k:
      return "k";
    case CallSignature::options:
      return "options";
    case CallSignature::digest:
      return "digest";
    case CallSignature::kFields:
      break;
  }
  return "?";
}

// `name` (at most 8 characters) as CallSignature::op's word.
constexpr unsigned long long call_op_word(const char* name) {
  unsigned long long w = 0;
  for (int i = 0; i < 8 && name[i] != '\0'; ++i)
    w |= static_cast<unsigned long long>(static_cast<unsigned char>(name[i])) << (8 * i);
  return w;
}

// What a kernel that gave up (a wait that timed out, a bad peer address) leaves for the host before
// it traps. The memory is host-mapped, so it survives the trap that ends the CUDA context; the
// runtime turns it into the text of the exception it throws (World::synchronize).
struct FaultReport {
  enum Kind : int {
    none = 0,
    wait_timeout = 1,
    bad_symm_at = 2,
    bad_barrier_index = 3,
    barrier_timeout = 4,
    mbarrier_timeout = 5,  // a TMA completion barrier never completed its phase
    call_mismatch = 6      // the ranks of one collective call were asked for different calls
  };
  unsigned int claimed;  // set by the first faulting thread; later faults leave the report alone
  volatile unsigned int ready;  // set by that thread once every field is written (read this)
  int kind;
  int rank;
  int cmp;                 // weft::dev::Cmp of a timed-out wait
  unsigned long long address;      // the signal / pointer involved
  unsigned long long heap_offset;  // its symmetric-heap offset, or ~0 when outside the heap
  unsigned long long expected, observed, waited_ns;
  int peer_or_index;       // symm_at's peer or the barrier index
  int late_rank;           // barrier_timeout: the rank whose arrival was missing
  int field;               // call_mismatch: the CallSignature::Field that differs (expected:
                           // this rank's word, observed: peer_or_index's)
  int peer_gave_up;        // timeouts: 1 when the wait gave up because a rank on this host (this
                           // one too) had marked the abort board, not because its time ran out
  int block[3], thread[3];
};

struct Context {
  ncclDevComm comm;       // NCCL device communicator: LSA barriers (and GIN across nodes)
  ncclWindow_t window;    // the symmetric heap's NCCL window

  // The symmetric heap. A pointer p into this rank's heap has the same offset (p - heap_base) on
  // every rank; peer q's copy is at lsa_base + q * lsa_stride + offset (NCCL's flat LSA mapping,
  // read from ncclGetLsaPointer when the heap was registered).
  char* heap_base;
  size_t heap_bytes;
  char* lsa_base;
  uint64_t lsa_stride;

  int rank;        // rank in the world
  int world_size;  // ranks in the world
  int lsa_rank;    // rank inside this node's load/store-accessible team
  int lsa_size;    // ranks in that team (== world_size on one node)

  // Device barriers: indices [0, barrier_count) are valid for user kernels; the runtime keeps
  // its own barrier (World::barrier) out of that range.
  int barrier_count;

  // A wait that has not succeeded after this many nanoseconds prints what it waited for and
  // traps, instead of hanging. 0 disables the timeout.
  uint64_t wait_timeout_ns;

  // Where faults are reported (host-mapped; may be null).
  FaultReport* fault;

  // The host's abort board (weft/runtime/abort_board.h; host memory every local rank's GPU maps;
  // both null when the World has none). A fault marks this rank (`abort_mark`, then `abort_any`),
  // and a wait that has spun a while reads `abort_any` and gives up, as if timed out, when
  // a rank has (FaultReport::peer_gave_up; its own mark counts too).
  volatile unsigned int* abort_any;
  volatile unsigned char* abort_mark;
};

}  // namespace weft::dev
