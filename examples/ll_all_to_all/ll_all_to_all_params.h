// Plain structs shared by the low-latency all-to-all kernel (ll_all_to_all.cuh) and its host
// wrapper (ll_all_to_all.h). Plain C++: a host compiler can include this header.
#pragma once

#include <cstdint>

#include "weft/device/context.h"

namespace weft::examples {

// Per-instance state in device memory (local, not symmetric). It carries the call counter so that
// a CUDA graph that captured one call advances it on every replay: the kernel reads `next_epoch`
// when it starts and the last of its blocks to finish stores next_epoch + 1.
struct LlA2AState {
  uint64_t next_epoch;  // epoch of the next call: 1, 2, 3, ... (signals start at 0)
  uint64_t arrivals;    // blocks that finished, over all calls (grid size * calls so far)
};

// What the kernel found wrong with the device-resident split counts (host-mapped memory, first
// error wins; the host reads it in LowLatencyAllToAll::check_errors()).
struct LlA2AError {
  enum Kind : int { none = 0, rows_exceed_max_m = 1, negative_split = 2 };
  unsigned int claimed;  // arbitration between faulting blocks (device only)
  int kind;
  int dest;         // destination rank whose rows could not be sent
  int expert;       // first expert with a negative count (negative_split)
  long long value;  // the offending row sum or count
  unsigned long long epoch;
  volatile int ready;  // set last: the fields above are complete
};

// Kernel arguments. Buffers marked "symmetric" come from World::alloc (same offset on every
// rank); the rest may be any device memory of this GPU.
//
// Layouts (W = world size, E = W * experts_per_rank, row = hidden * element_bytes bytes):
//   data_src   [sum(splits_src)][hidden]  rows sorted by expert, local
//   splits_src [E] int32                  rows per expert, local
//   scale_src  [sum(splits_src)] fp32     one scale per row, local (with scales only)
//   data_dst   [2][W][max_m][hidden]      symmetric; [parity][src rank] holds src's rows
//   splits_dst [2][W][experts_per_rank]   symmetric; [parity][src rank] holds src's counts
//   scale_dst  [2][W][max_m] fp32         symmetric (with scales only)
//   signals    [2][W][blocks_per_peer]    symmetric 64-bit epochs; [parity][src rank][chunk]
struct LlA2AParams {
  const void* data_src;
  const int32_t* splits_src;
  const float* scale_src;
  void* data_dst;
  int32_t* splits_dst;
  float* scale_dst;
  uint64_t* signals;  // weft::dev::signal_t
  LlA2AState* state;
  LlA2AError* error;  // may be null
  int max_m;
  int experts_per_rank;
  int blocks_per_peer;
  uint64_t row_bytes;  // hidden * element_bytes
};

}  // namespace weft::examples
