// The fused_push strategy's all-gather kernel: `blocks` blocks (one per reserved SM) push this
// rank's A rows into every peer's gather buffer with TMA bulk copies, in the ring order
// rank-1, rank-2, ... (so every rank receives from rank+1 first, matching the GEMM's tile order),
// and after each piece add 1 to the receiver's ready flag of that chunk: a chunk is complete when
// its flag reaches `blocks`.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "weft/device/context.h"

namespace weft::tp {

struct AgPushParams {
  const char* a = nullptr;     // this rank's A rows
  int64_t lda_bytes = 0;       // bytes between rows of A
  int64_t row_bytes = 0;       // k * element size (a multiple of 16)
  int64_t m_local = 0;         // rows of A
  char* gather = nullptr;      // gather buffer (this rank's address), rows of row_bytes
  uint64_t* flags = nullptr;   // ready flags, [world * chunks_per_rank] on every rank
  int32_t chunks_per_rank = 1; // divides m_local
};

// Sets the kernel's shared-memory attribute; call once per device before launches (and before
// any graph capture).
void prepare_ag_push_kernel();

void launch_ag_push(const dev::Context& ctx, const AgPushParams& p, int blocks,
                    cudaStream_t stream);

}  // namespace weft::tp
