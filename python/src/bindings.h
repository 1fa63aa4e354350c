// What the binding translation units of weft._C share: how tensors, streams and dtypes cross the
// boundary. (README in python/ has the layer's rules: DLPack tensors in, outputs allocated by the
// caller or views of operator-owned buffers out, torch's stream handle as an integer.)
#pragma once

#include <cuda_runtime.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>

#include "weft/gemm/gemm.h"
#include "weft/ops/tensor_parallel/common/tp_common.h"
#include "weft/runtime/world.h"

namespace weft::python {

namespace nb = nanobind;

using Tensor = nb::ndarray<>;

inline cudaStream_t as_stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// A tensor argument, which the bindings take as a plain object and convert inside their checks:
// where nanobind's own conversion fails (None, an object DLPack does not export) it would raise
// TypeError before the binding ran, so before the call could be abandoned; this throws
// InvalidArgument naming `where` and `name` instead. (Declare such arguments .none(), or nanobind
// rejects a None before the binding runs.)
Tensor tensor_arg(nb::handle h, const char* where, const char* name);

// A tensor on this rank's GPU (device type CUDA, the world's device id); throws InvalidArgument
// naming `where` and `name` otherwise.
void require_this_gpu(const World& world, const Tensor& t, const char* where, const char* name);

// Whether a DLPack dtype is `code` with `bits` bits (one lane).
bool is_dtype(const Tensor& t, nb::dlpack::dtype_code code, int bits);

// A 2-D bf16 / fp16 matrix with unit stride along its rows, as the GEMM operators take it.
struct Matrix {
  void* data = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  gemm::DType dtype = gemm::DType::kBF16;
};
Matrix matrix(const World& world, const Tensor& t, const char* where, const char* name);

// A GEMM's B: `matrix`'s checks for a row-major [n, k] tensor (kNK), or a column-major one — the
// transposed view of a row-major [k, n] tensor such as `weight.t()` — read in place as kKN (the
// strategies that cannot take it are then not chosen; asking for one is an error).
struct BOperand {
  Matrix m;
  tp::BLayout layout = tp::BLayout::kNK;
};
BOperand b_operand(const World& world, const Tensor& t, const char* where);

void bind_tensor_parallel(nb::module_& m);
void bind_expert_parallel(nb::module_& m);

}  // namespace weft::python
