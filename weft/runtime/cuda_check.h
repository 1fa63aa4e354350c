// Checks for CUDA runtime, CUDA driver and NCCL return codes: a failure throws weft::Error naming
// the call (its source text), the error and where it happened.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <optional>
#include <string>

#include "weft/runtime/error.h"

namespace weft::detail {
// Where a failed CUDA call looks for the device's own account: a kernel that traps (a timed-out
// wait, a call mismatch) leaves a host-mapped fault report, and the next CUDA call anywhere in
// the process fails with a bare "unspecified launch failure". The World registers its report
// while it lives (the last registration wins; one World per process in practice), and
// throw_cuda_error appends the report's text when one is ready.
using FaultSource = std::optional<std::string> (*)(const void* owner);
void register_fault_source(const void* owner, FaultSource source) noexcept;
void unregister_fault_source(const void* owner) noexcept;  // only if `owner` is the current one
std::optional<std::string> current_device_fault();

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
