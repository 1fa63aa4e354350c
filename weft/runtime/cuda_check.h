// Checks for CUDA runtime, CUDA driver and NCCL return codes: a failure throws weft::Error naming
// the call (its source text), the error and where it happened.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "weft/runtime/cuda_errors.h"
#include "weft/runtime/error.h"

namespace weft::detail {
[[noreturn]] void throw_cuda_error(const char* call, cudaError_t err, const char* file, int line);
[[noreturn]] void throw_cu_error(const char* call, CUresult err, const char* file, int line);
[[noreturn]] void throw_nccl_error(const char* call, ncclResult_t err, const char* file, int line);
}  // namespace weft::detail

#define WEFT_CUDA_CHECK(expr)                                                          \
  do {                                                                                 \
    cudaError_t weft_err_ = (expr);                                                    \
    if (weft_err_ != cudaSuccess)                                                      \
      ::weft::detail::throw_cuda_error(#expr, weft_err_, __FILE__, __LINE__);          \
  } while (0)

#define WEFT_CU_CHECK(expr)                                                            \
  do {                                                                                 \
    CUresult weft_err_ = (expr);                                                       \
    if (weft_err_ != CUDA_SUCCESS)                                                     \
      ::weft::detail::throw_cu_error(#expr, weft_err_, __FILE__, __LINE__);            \
  } while (0)

#define WEFT_NCCL_CHECK(expr)                                                          \
  do {                                                                                 \
    ncclResult_t weft_err_ = (expr);                                                   \
    if (weft_err_ != ncclSuccess)                                                      \
      ::weft::detail::throw_nccl_error(#expr, weft_err_, __FILE__, __LINE__);          \
  } while (0)

// After a kernel launch: report launch-configuration errors at the launch site.
#define WEFT_CHECK_LAUNCH() WEFT_CUDA_CHECK(cudaGetLastError())
