// Kernels shared by the tensor-parallel operators (host launch functions; the kernels live in
// kernels.cu):
//
//   prologue      one block at the start of every AG-GEMM / GEMM-RS call: re-arms this rank's
//                 ready flags, writes the fused GEMM's tile order, then a device barrier of all
//                 ranks (every rank's previous call is finished with the buffers peers will
//                 write), at which the ranks compare their calls' signatures.
//   copy_rows     a 2-D copy on this GPU (SMs, 16-byte vectors when the rows allow).
//   fixed_order_reduce
//                 out = sum over ranks r = 0, 1, ..., W-1 of rank r's partial rows, in that order
//                 with fp32 accumulation: bit-identical from run to run, whatever order the
//                 partials arrived in. Waits (with the world's timeout) for the flags that say the
//                 peers' partials are here.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "weft/device/context.h"
#include "weft/ops/tensor_parallel/common/tile_order.h"
#include "weft/ops/tensor_parallel/common/tp_common.h"

namespace weft::tp {

// ---- prologue -----------------------------------------------------------------------------------

// Flags [0, count) of this rank are set to 0 ("not ready"), except [ready_begin, ready_end), set
// to ~0 ("always ready": e.g. the chunk this rank already holds).
struct RearmRange {
  uint64_t* flags = nullptr;
  int32_t count = 0;
  int32_t ready_begin = 0, ready_end = 0;
};
inline constexpr int kMaxRearm = 3;

struct PrologueParams {
  RearmRange rearm[kMaxRearm];
  int32_t n_rearm = 0;
  int32_t barrier = 1;        // run the device barrier (0 only for a 1-rank world)
  int32_t barrier_index = 0;
  int32_t* order_out = nullptr;  // tile order destination (device, order.num_units() entries)
  TileOrderSpec order;           // expanded into order_out when valid
  // The call's signature, checked against every peer's at the barrier when sig_slots is set
  // (CallCheck::attach): a disagreeing peer traps the call on every rank before anyone writes.
  dev::CallSignature signature{};
  dev::CallSignature* sig_slots = nullptr;  // symmetric [2][W]
  uint32_t* calls = nullptr;                // this operator's prologues so far (device): parity
  // This rank abandons the call (CallCheck::abandon): the signature (an 'aborted' one) goes out
  // and the barrier is only arrived at; nothing is re-armed, waited for or compared.
  int32_t abandon = 0;
};

// One block on `stream`. Peers' writes for the new call must wait for this rank's prologue:
// every operator issues them only after its own prologue, whose barrier they all pass together.
void launch_prologue(const dev::Context& ctx, const PrologueParams& p, cudaStream_t stream);
// The same without the launch check (which would also report, and clear, an error some earlier
// work left pending): for a call being abandoned because of such an error.
void launch_prologue_unchecked(const dev::Context& ctx, const PrologueParams& p,
                               cudaStream_t stream) noexcept;

// ---- copies -------------------------------------------------------------------------------------

// rows x row_bytes from src (ld_src bytes apart) to dst (ld_dst bytes apart), on this GPU.
void launch_copy_rows(void* dst, int64_t ld_dst_bytes, const void* src, int64_t ld_src_bytes,
                      int64_t rows, int64_t row_bytes, int sms, cudaStream_t stream);

// ---- fixed-order reduction ---------------------------------------------------------------------

struct ReduceParams {
  void* out = nullptr;         // [rows, cols], leading dimension ldo
  int64_t ldo = 0;
  const void* own = nullptr;   // this rank's partial rows, leading dimension ld_own
  int64_t ld_own = 0;
  const void* slots = nullptr; // rank q's partial at slots + q * slot_stride (elements), ld = cols
  int64_t slot_stride = 0;
  int64_t rows = 0, cols = 0;
  int32_t rank = 0, world = 1;
  // Before reading, wait until flags[q * flags_per_src + f] >= expected for every q != rank and
  // f < flags_used.
  const uint64_t* flags = nullptr;
  int32_t flags_per_src = 1;
  int32_t flags_used = 1;
  uint64_t expected = 1;
  DType dtype = DType::kBF16;
};

// Launched as a programmatic dependent of the kernel before it on `stream` (weft/runtime/pdl.h;
// it waits for that kernel before touching memory); call prepare_pdl() outside stream capture
// first, as GemmRs's constructor does.
void launch_fixed_order_reduce(const dev::Context& ctx, const ReduceParams& p, int sms,
                               cudaStream_t stream);

}  // namespace weft::tp
