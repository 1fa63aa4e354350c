// The GEMM-AR all-reduce kernel (one-shot and two-shot), see gemm_ar.h for the protocol; its
// two-shot reduce-scatter alone also serves GEMM-RS (push_reduce), and an all-gather mode on the
// same queue, epochs and slots serves AG-GEMM (push_gather).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "weft/device/context.h"
#include "weft/ops/tensor_parallel/common/tp_common.h"

namespace weft::tp {

// Device-resident call counter and work queue of one GemmAr object (zero-initialized).
struct ArState {
  unsigned long long epoch;     // epoch of the last call (calls are numbered 1, 2, ...)
  unsigned int next_item;       // work queue of the running call
  unsigned int last_abandoned;  // 1 when the last call was abandoned (the kernel's abandon branch)
};

struct ArParams {
  const void* partial = nullptr;  // this rank's partial product, total elements contiguous
  void* out = nullptr;            // [total / n, n], leading dimension ldo
  int64_t ldo = 0, n = 0;
  int64_t total = 0;              // m * n
  void* rx = nullptr;             // receive slots: [2 parities][W sources][rx_slot]
  int64_t rx_slot = 0;
  void* rx2 = nullptr;            // two-shot results: [2 parities][rx2_half], owner q at q * chunk
  int64_t rx2_half = 0;
  uint64_t* flags = nullptr;      // [2 phases][W sources][kArMaxSlices] (scatter_only and
                                  // gather_only use phase 0 only: [W][kArMaxSlices] suffices)
  int32_t max_slices = 0;         // flags per (phase, source)
  ArState* state = nullptr;
  int64_t chunk = 0;              // two-shot, scatter_only, gather_only: elements of each
                                  // rank's share (multiple of 8)
  int64_t slice = 0;              // elements per work item (multiple of 8)
  int32_t slices = 0;             // work items per phase
  int32_t two_shot = 0;
  // Two-shot's first two phases only (GEMM-RS push_reduce): this rank's share of the sum is
  // stored at `out` as [chunk / n, n] (leading dimension ldo; chunk must be a multiple of n), and
  // nothing is pushed back. rx2 is not used.
  int32_t scatter_only = 0;
  // All-gather (AG-GEMM push_gather): `partial` is this rank's [chunk / n, n] rows (leading
  // dimension src_ld); phase 0 pushes them into every peer's slot, phase 1 waits for the peers'
  // and writes all W ranks' rows, in rank order, to `out` [total / n, n] (leading dimension ldo).
  // one-shot's item split over chunk; two_shot and scatter_only are 0.
  int32_t gather_only = 0;
  int64_t src_ld = 0;
  int32_t out_vec = 0;            // out allows 16-byte stores (n % 8 == 0, ldo % 8 == 0, aligned)
  DType dtype = DType::kBF16;
  // The call's signature, compared with every peer's before their data is used (null slots: no
  // check). Symmetric [2 parities][W], alternating with the epoch like rx.
  dev::CallSignature signature{};
  dev::CallSignature* sig_slots = nullptr;
  // This rank abandons the call (launch_allreduce_abandon): only `flags`, `max_slices`, `state`,
  // `sig_slots` and `signature` (an 'aborted' one) are used.
  int32_t abandon = 0;
};

// What every use of the kernel sets: the source (`partial`), the output [total / n, n] with
// leading dimension ldo (16-byte stores when n, ldo and `out` allow them), each rank's share
// (`chunk`), the work split (`slices` items of `slice` elements) and the dtype. The caller adds
// its mode (two_shot, scatter_only, gather_only), workspace (PushWorkspace::attach or its own)
// and, for gather_only, src_ld.
inline ArParams ar_params(const void* partial, void* out, int64_t ldo, int64_t n, int64_t total,
                          int64_t chunk, int64_t slice, int32_t slices, DType dtype) {
  ArParams p;
  p.partial = partial;
  p.out = out;
  p.ldo = ldo;
  p.n = n;
  p.total = total;
  p.chunk = chunk;
  p.slice = slice;
  p.slices = slices;
  p.out_vec = n % 8 == 0 && ldo % 8 == 0 && is_aligned(out, 16) ? 1 : 0;
  p.dtype = dtype;
  return p;
}

// Launches the all-reduce kernel on `stream` (the current device's), as a programmatic dependent
// of the kernel before it where the device supports that (weft/runtime/pdl.h; callers run
// prepare_pdl() outside stream capture first, as GemmAr's and PushWorkspace's constructors do).
void launch_allreduce(const dev::Context& ctx, const ArParams& p, int blocks, cudaStream_t stream);

// For a call this rank abandons (a check of its own failed before it queued anything): one block
// takes the call's epoch, gives every peer `p.signature` (an 'aborted' one) and flag (0, this
// rank, 0), whose check then fails at once naming this rank, and moves the epoch on. No launch
// check (it would report, and clear, an error earlier work left pending).
void launch_allreduce_abandon(const dev::Context& ctx, ArParams p, cudaStream_t stream) noexcept;

}  // namespace weft::tp
