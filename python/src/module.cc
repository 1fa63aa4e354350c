// weft._C: the Python binding of weft's runtime and operators (nanobind).
//
// This layer only translates: tensors arrive through DLPack (the Python package passes torch
// tensors), streams as the integer handle torch reports (torch.cuda.current_stream().cuda_stream),
// and weft's exceptions leave as weft.Error / InvalidArgument / Timeout. The operators keep every
// check of shapes, leading dimensions, alignment and capacity (they throw InvalidArgument naming
// the call); here only what DLPack adds is checked: the tensor's device, rank and strides, and
// its dtype where the operator's interface has no dtype of its own.
#include <nanobind/stl/unique_ptr.h>

#include "python/src/bindings.h"
#include "weft/runtime/error.h"
#include "weft/runtime/version.h"

namespace weft::python {

Tensor tensor_arg(nb::handle h, const char* where, const char* name) {
  Tensor t;
  if (nb::try_cast<Tensor>(h, t)) return t;
  PyErr_Clear();  // (whatever the failed import left set: the error below says what is wrong)
  WEFT_CHECK_ARG_AT(where, !h.is_none(), "{} is None; it must be a tensor", name);
  throw InvalidArgument(where, fmt::format("{} must be a tensor that DLPack exports, got {}", name,
                                           nb::inst_name(h).c_str()));
}

void require_this_gpu(const World& world, const Tensor& t, const char* where, const char* name) {
  WEFT_CHECK_ARG_AT(where, t.device_type() == nb::device::cuda::value,
                    "{} must be on a CUDA device (DLPack device type {})", name, t.device_type());
  WEFT_CHECK_ARG_AT(where, t.device_id() == world.device(),
                    "{} is on GPU {}, this rank's GPU is {}", name, t.device_id(), world.device());
}

bool is_dtype(const Tensor& t, nb::dlpack::dtype_code code, int bits) {
  const nb::dlpack::dtype d = t.dtype();
  return d.code == static_cast<uint8_t>(code) && d.bits == bits && d.lanes == 1;
}

namespace {
// The GEMM operators' element type of a 2-D tensor on this rank's GPU (bf16 or fp16).
gemm::DType gemm_operand_dtype(const World& world, const Tensor& t, const char* where,
                               const char* name) {
  WEFT_CHECK_ARG_AT(where, t.ndim() == 2, "{} must be 2-D, got {} dimensions", name, t.ndim());
  require_this_gpu(world, t, where, name);
  const bool bf16 = is_dtype(t, nb::dlpack::dtype_code::Bfloat, 16);
  const bool fp16 = is_dtype(t, nb::dlpack::dtype_code::Float, 16);
  WEFT_CHECK_ARG_AT(where, bf16 || fp16, "{} must be bfloat16 or float16 (DLPack code {}, {} bits)",
                    name, t.dtype().code, t.dtype().bits);
  return bf16 ? gemm::DType::kBF16 : gemm::DType::kFP16;
}
}  // namespace

Matrix matrix(const World& world, const Tensor& t, const char* where, const char* name) {
  const gemm::DType dtype = gemm_operand_dtype(world, t, where, name);
  Matrix m;
  m.data = t.data();
  m.rows = static_cast<int64_t>(t.shape(0));
  m.cols = static_cast<int64_t>(t.shape(1));
  // A tensor of one column (or one row) may report any stride along it.
  WEFT_CHECK_ARG_AT(where, t.stride(1) == 1 || m.cols == 1,
                    "{} must have unit stride along its rows (stride {}); pass a contiguous "
                    "tensor or a column slice of one",
                    name, t.stride(1));
  // The operators read a leading dimension of 0 as "contiguous", so a broadcast tensor (row
  // stride 0) or rows that overlap must not get through as one.
  WEFT_CHECK_ARG_AT(where, m.rows <= 1 || t.stride(0) >= m.cols,
                    "{} has a row stride of {} for {} columns: pass rows that do not overlap (a "
                    "contiguous tensor, or a column slice of one; not an expanded or transposed "
                    "view)",
                    name, t.stride(0), m.cols);
  m.ld = m.rows <= 1 ? m.cols : static_cast<int64_t>(t.stride(0));
  m.dtype = dtype;
  return m;
}

BOperand b_operand(const World& world, const Tensor& t, const char* where) {
  // (One row, e.g. the transpose of a one-column slice, may report any stride along it.)
  const bool column_major =
      t.ndim() == 2 && t.shape(1) > 1 && t.stride(1) != 1 && (t.stride(0) == 1 || t.shape(0) == 1);
  if (!column_major) return {matrix(world, t, where, "b"), tp::BLayout::kNK};
  BOperand b;
  b.m.dtype = gemm_operand_dtype(world, t, where, "b");
  b.m.data = t.data();
  b.m.rows = static_cast<int64_t>(t.shape(0));  // n
  b.m.cols = static_cast<int64_t>(t.shape(1));  // k
  // Column j of b is row j of the [k, n] matrix in memory: its rows must not overlap.
  WEFT_CHECK_ARG_AT(where, t.stride(1) >= b.m.rows,
                    "b is a column-major view whose column stride ({}) is below its {} rows: pass "
                    "a contiguous tensor or the transpose of one",
                    t.stride(1), b.m.rows);
  b.m.ld = static_cast<int64_t>(t.stride(1));
  b.layout = tp::BLayout::kKN;
  return b;
}

}  // namespace weft::python

NB_MODULE(_C, m) {
  using namespace weft;
  using namespace weft::python;
  m.doc() = "weft's runtime and operators (use the `weft` package, not this module)";
  m.attr("__version__") = kVersion;

  // weft::Error and its kinds as Python exceptions; the message names the call and the rank.
  // Each nb::exception registers its own translator and nanobind tries the newest first, so the
  // kinds come after their base. (Not static: the module owns the types.)
  nb::exception<Error> error(m, "Error", PyExc_RuntimeError);
  nb::exception<InvalidArgument>(m, "InvalidArgument", error);
  nb::exception<Timeout>(m, "Timeout", error);

  nb::class_<World>(m, "World")
      .def_static(
          "create",
          [](int64_t heap_bytes) {
            WorldOptions o = world_options_from_env();
            if (heap_bytes > 0) o.heap_bytes = static_cast<size_t>(heap_bytes);
            return World::create(o);
          },
          nb::arg("heap_bytes") = 0, nb::call_guard<nb::gil_scoped_release>(),
          "Joins the job the environment describes (torchrun, weft run, MPI, Slurm); "
          "collective. heap_bytes: symmetric heap per rank (0: WEFT_HEAP_BYTES or 1 GiB).")
      .def_prop_ro("rank", &World::rank)
      .def_prop_ro("size", &World::size)
      .def_prop_ro("local_rank", &World::local_rank)
      .def_prop_ro("local_size", &World::local_size)
      .def_prop_ro("device", &World::device)
      .def(
          "barrier", [](World& w, uintptr_t stream) { w.barrier(as_stream(stream)); },
          nb::arg("stream"), "Device barrier of all ranks on `stream` (graph-capturable).")
      .def("host_barrier", &World::host_barrier, nb::call_guard<nb::gil_scoped_release>())
      .def("abort", &World::abort, nb::arg("reason"),
           "Tells the other ranks on this host that this rank gives up on the collective work it "
           "queued: their waits fail now, quoting `reason`, instead of at their timeout. Final.")
      .def_prop_ro("has_abort_board", &World::has_abort_board)
      .def(
          "synchronize", [](World& w, uintptr_t stream) { w.synchronize(as_stream(stream)); },
          nb::arg("stream"), nb::call_guard<nb::gil_scoped_release>(),
          "Waits for the work queued on `stream` (an int handle, e.g. "
          "torch.cuda.current_stream().cuda_stream) with weft's deadlines: it raises instead of "
          "hanging when the work waits for a rank that gave up or never comes.");

  bind_tensor_parallel(m);
  bind_expert_parallel(m);
}
