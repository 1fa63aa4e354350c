// CUDA runtime error checking for the GEMM layer: every failing call becomes a weft::Error that
// names the call text and cudaGetErrorString of its result.
//
// Deliberately free of fmt: fmt 9's consteval format strings do not compile under nvcc in
// C++20 mode, so .cu files must not include weft/runtime/error.h. The throwing helpers are
// defined in gemm.cc (a g++ translation unit).
#pragma once

#include <string>

#include <cuda_runtime_api.h>

namespace weft::gemm::detail {
// Throw weft::Error(call, "<cudaGetErrorString> (<cudaGetErrorName>)").
[[noreturn]] void throw_cuda_error(const char* call, cudaError_t err);
// Throw weft::Error(call, detail).
[[noreturn]] void throw_error(const char* call, const std::string& detail);
}  // namespace weft::gemm::detail

#define WEFT_GEMM_CUDA_CHECK(call)                                                    \
  do {                                                                                \
    const cudaError_t weft_gemm_err_ = (call);                                        \
    if (weft_gemm_err_ != cudaSuccess)                                                \
      ::weft::gemm::detail::throw_cuda_error(#call, weft_gemm_err_);                  \
  } while (0)

// Internal invariant with a plain std::string message (usable from .cu files).
#define WEFT_GEMM_CHECK(cond, msg)                                                    \
  do {                                                                                \
    if (!(cond)) ::weft::gemm::detail::throw_error(__func__, (msg));                  \
  } while (0)
