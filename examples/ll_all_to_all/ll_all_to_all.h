// LowLatencyAllToAll: host wrapper of the low-latency all-to-all (MoE dispatch for decode) in
// ll_all_to_all.cuh. It owns the symmetric receive buffers and signals (allocated once), the call
// counter (in device memory, so CUDA graphs can replay a captured call), validates its inputs,
// and launches one kernel per call: no host synchronization, no memset between calls.
//
//   weft::examples::LowLatencyAllToAll a2a(world, /*max_m=*/1024, /*hidden=*/7168,
//                                          /*experts_per_rank=*/256 / world.size(),
//                                          /*element_bytes=*/1, /*with_scale=*/true);
//   auto rx = a2a.run(tokens, splits, scales, stream);   // every rank, same order
//   // rx.data:   [W][max_m][hidden]   rows from rank s start at rx.data + s * max_m * row bytes
//   // rx.splits: [W][experts_per_rank] rows from rank s for each of this rank's experts
//   // rx.scales: [W][max_m]            (with_scale only)
//
// Contract:
//  - Collective: every rank constructs the object with the same arguments and calls run() the
//    same number of times, in the same order relative to other collective weft calls. Use one
//    stream at a time per object (calls are ordered by the stream).
//  - Inputs (device memory of this GPU): data_src rows sorted by expert (row = hidden *
//    element_bytes bytes, sum(splits_src) rows); splits_src[W * experts_per_rank] int32 rows per
//    expert; scale_src one fp32 per row iff with_scale.
//  - For every destination rank d, the counts of d's experts must sum to at most max_m, and no
//    count may be negative. The counts live on the device, so the kernel checks this: it sends no
//    rows to such a destination (its counts and signal still go, so nobody hangs), records the
//    error, and check_errors() throws weft::InvalidArgument on the sending rank (or else its next
//    run() does, once that call is enqueued, so the peers' calls complete).
//  - The views returned by run() stay valid until this rank's next call starts executing on the
//    stream: peers may then write the call after that one into the same half. Consume or copy the
//    rows before the next run() in stream order (the double buffer needs no other handshake).
//  - CUDA graphs: run() may be captured. Each replay advances the device epoch, so the half it
//    writes alternates; the host cannot know it at capture time, so a captured run() returns
//    views with parity -1 and null pointers: pick the half on the device with ll_a2a_last_parity(
//    device_state()) (ll_all_to_all.cuh), or on the host with received(parity) and
//    next_epoch(). After a capture, eager calls read the epoch back from the device first (one
//    host round trip per eager call), because replays advance it behind the host's back.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <optional>

#include "examples/ll_all_to_all/ll_all_to_all_params.h"
#include "weft/runtime/world.h"

namespace weft::examples {

class LowLatencyAllToAll {
 public:
  // One half of the double-buffered receive area.
  struct Received {
    const void* data = nullptr;       // [world][max_m][hidden] elements of element_bytes
    const int32_t* splits = nullptr;  // [world][experts_per_rank]
    const float* scales = nullptr;    // [world][max_m]; null without scales
    int parity = -1;                  // 0 or 1; -1 when unknown (captured into a graph)
    uint64_t epoch = 0;               // the call's epoch (1, 2, ...); 0 when unknown
  };

  // Collective: allocates 2 * W * max_m * hidden * element_bytes bytes of receive buffer (plus
  // counts, scales and 2 * W * blocks_per_peer signals) from the world's symmetric heap.
  //   max_m             most rows one rank sends to one rank in a call
  //   experts_per_rank  experts each rank owns (E = W * experts_per_rank in total)
  //   element_bytes     1 (fp8), 2 (bf16/fp16) or 4 (fp32)
  //   with_scale        also send one fp32 scale per row (the fp8 path)
  //   blocks_per_peer   blocks that push to each destination (1 = Triton-distributed's kernel;
  //                     more splits the rows of a destination for bandwidth)
  LowLatencyAllToAll(World& world, int max_m, int hidden, int experts_per_rank, int element_bytes,
                     bool with_scale, int blocks_per_peer = 1);
  ~LowLatencyAllToAll();
  LowLatencyAllToAll(const LowLatencyAllToAll&) = delete;
  LowLatencyAllToAll& operator=(const LowLatencyAllToAll&) = delete;

  // One all-to-all on `stream` (collective). Returns this call's half of the receive buffers.
  // scale_src must be non-null exactly when the object was built with with_scale.
  Received run(const void* data_src, const int32_t* splits_src, const float* scale_src,
               cudaStream_t stream);

  // Views of half `parity` (0 or 1) of the receive buffers.
  Received received(int parity) const;

  // Throws weft::InvalidArgument if a finished call found bad device-resident split counts (see
  // above), and clears the report. Call after synchronizing the stream for a definite answer.
  void check_errors();

  // The epoch the next call will use (1 before the first call). Blocking: waits for `stream`.
  uint64_t next_epoch(cudaStream_t stream);

  // Device-side counter, for consumers that pick the half on the device (ll_a2a_last_parity).
  const LlA2AState* device_state() const { return state_; }

  int world_size() const { return world_size_; }
  int max_m() const { return max_m_; }
  int hidden() const { return hidden_; }
  int experts_per_rank() const { return experts_per_rank_; }
  int num_experts() const { return experts_per_rank_ * world_size_; }
  int element_bytes() const { return element_bytes_; }
  bool with_scale() const { return with_scale_; }
  int blocks_per_peer() const { return blocks_per_peer_; }
  size_t row_bytes() const { return static_cast<size_t>(hidden_) * element_bytes_; }

 private:
  void release_local() noexcept;
  // Throws the report, if any, as check_errors() describes it, with `note` appended.
  void throw_error(const std::optional<LlA2AError>& found, const char* note) const;

  World& world_;
  int world_size_, max_m_, hidden_, experts_per_rank_, element_bytes_;
  bool with_scale_;
  int blocks_per_peer_;
  dev::Context ctx_;

  SymmetricBuffer<char> data_dst_;
  SymmetricBuffer<int32_t> splits_dst_;
  SymmetricBuffer<float> scale_dst_;
  SymmetricBuffer<signal_t> signals_;
  LlA2AState* state_ = nullptr;      // device memory
  LlA2AError* error_ = nullptr;      // host-mapped, host address
  LlA2AError* error_dev_ = nullptr;  // the same, device address

  // Host mirror of state_->next_epoch; exact while every call was launched eagerly by this object.
  uint64_t host_next_epoch_ = 1;
  bool host_epoch_exact_ = true;
  uint64_t* epoch_readback_ = nullptr;  // pinned
  cudaStream_t last_stream_ = nullptr;
  bool launched_ = false;
  // Inputs already checked with cudaPointerGetAttributes (the check is skipped when they repeat).
  const void* checked_[3] = {nullptr, nullptr, nullptr};
};

}  // namespace weft::examples
