// weft._C: the MoE expert-parallel dispatch and combine (weft::ops::ExpertParallel).
//
// buffers() gives the operator's own receive buffers as torch tensors (DLPack, no copy), each
// holding a reference to the operator; their contents are the last dispatch's until the next
// dispatch on the operator. Rows come as bytes (the Python layer views them as bf16 or
// torch.float8_e4m3fn), and each row's source as four int32 (rank, token, slot, weight's bits).
#include "weft/ops/expert_parallel/expert_parallel.h"

#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>

#include "python/src/bindings.h"
#include "weft/runtime/error.h"
#include "weft/runtime/validate.h"

namespace weft::python {
namespace {

using ops::EpDType;
using ops::ExpertParallel;
using View = nb::ndarray<nb::pytorch>;

// The operator's dtype for a tensor (the operator checks which it accepts, and says so).
EpDType ep_dtype(const Tensor& t, const char* where, const char* name) {
  using code = nb::dlpack::dtype_code;
  if (is_dtype(t, code::Bfloat, 16)) return EpDType::bf16;
  if (is_dtype(t, code::Float, 16)) return EpDType::f16;
  if (is_dtype(t, code::Float, 32)) return EpDType::f32;
  if (is_dtype(t, code::Int, 32)) return EpDType::i32;
  if (is_dtype(t, code::Int, 64)) return EpDType::i64;
  throw InvalidArgument(where, fmt::format("{} has a dtype the operator never takes (DLPack code "
                                           "{}, {} bits)",
                                           name, t.dtype().code, t.dtype().bits));
}

// A C-contiguous 2-D tensor on this GPU of `cols` columns and `rows` rows (any number when < 0).
void require_rows(const World& world, const Tensor& t, int64_t rows, int64_t cols,
                  const char* where, const char* name) {
  require_this_gpu(world, t, where, name);
  WEFT_CHECK_ARG_AT(where, t.ndim() == 2, "{} must have 2 dimensions, got {}", name, t.ndim());
  if (rows >= 0)
    WEFT_CHECK_ARG_AT(where, static_cast<int64_t>(t.shape(0)) == rows,
                      "{} has {} rows, expected {}", name, t.shape(0), rows);
  WEFT_CHECK_ARG_AT(where, static_cast<int64_t>(t.shape(1)) == cols,
                    "{} has {} columns, expected {}", name, t.shape(1), cols);
  WEFT_CHECK_ARG_AT(where, t.shape(0) <= 1 || t.stride(0) == static_cast<int64_t>(t.shape(1)),
                    "{} must be contiguous (row stride {}, {} columns)", name, t.stride(0),
                    t.shape(1));
  WEFT_CHECK_ARG_AT(where, t.stride(1) == 1 || t.shape(1) <= 1,
                    "{} must be contiguous (column stride {})", name, t.stride(1));
}

View view(const World& world, const void* data, std::initializer_list<size_t> shape,
          nb::dlpack::dtype dtype, nb::handle owner) {
  return View(const_cast<void*>(data), shape, owner, {}, dtype, nb::device::cuda::value,
              world.device());
}

void dispatch(ExpertParallel& op, const World& world, nb::handle x_h, nb::handle topk_idx_h,
              nb::handle topk_weights_h, bool fp8, uintptr_t stream) {
  const char* where = "weft.ExpertParallel.dispatch";
  const ops::EpConfig& c = op.config();
  Tensor x, topk_idx, topk_weights;
  int64_t T = 0;
  ops::EpDispatchArgs a;
  // The binding's own checks abandon the call like the operator's (see its contract).
  checks_or_abandon(
      world, as_stream(stream),
      [&] {
        x = tensor_arg(x_h, where, "x");
        topk_idx = tensor_arg(topk_idx_h, where, "topk_idx");
        topk_weights = tensor_arg(topk_weights_h, where, "topk_weights");
        require_rows(world, x, -1, c.hidden, where, "x");
        T = static_cast<int64_t>(x.shape(0));
        require_rows(world, topk_idx, T, c.topk, where, "topk_idx");
        require_rows(world, topk_weights, T, c.topk, where, "topk_weights");
        a.x_dtype = ep_dtype(x, where, "x");
        a.topk_idx_dtype = ep_dtype(topk_idx, where, "topk_idx");
        a.topk_weights_dtype = ep_dtype(topk_weights, where, "topk_weights");
      },
      [&] { op.abandon_dispatch(fp8, as_stream(stream)); });
  a.x = x.data();
  a.topk_idx = topk_idx.data();
  a.topk_weights = static_cast<const float*>(topk_weights.data());
  a.num_tokens = static_cast<int>(T);
  a.fp8 = fp8;
  op.dispatch(a, as_stream(stream));
}

// The receive buffers whole, as torch tensors: rows as bytes [capacity, 2 x hidden], scales,
// sources [capacity, 4] and the counts block. They are the same on every call, so the Python
// layer makes these once (making torch tensors costs more host time than a dispatch) and slices
// each format's views out of them; torch.compile sees them as what a dispatch mutates.
nb::dict buffers(nb::handle self, const ExpertParallel& op, const World& world) {
  const ops::EpReceiveBuffers b = op.receive_buffers();
  const size_t cap = static_cast<size_t>(b.capacity), H = static_cast<size_t>(op.config().hidden);
  nb::dict out;
  out["rows"] = view(world, b.rows, {cap, b.row_bytes}, nb::dtype<uint8_t>(), self);
  out["scales"] = view(world, b.scales, {cap, H / ops::kEpScaleGroup}, nb::dtype<float>(), self);
  out["sources"] = view(world, b.sources, {cap, 4}, nb::dtype<int32_t>(), self);
  out["counts"] = view(world, b.counts_block, {static_cast<size_t>(b.counts_block_ints)},
                       nb::dtype<int32_t>(), self);
  return out;
}

void combine(ExpertParallel& op, const World& world, nb::handle expert_out_h, nb::handle out_h,
             uintptr_t stream) {
  const char* where = "weft.ExpertParallel.combine";
  const int64_t H = op.config().hidden;
  Tensor expert_out, out;
  ops::EpCombineArgs a;
  checks_or_abandon(  // as in dispatch()
      world, as_stream(stream),
      [&] {
        expert_out = tensor_arg(expert_out_h, where, "expert_out");
        out = tensor_arg(out_h, where, "out");
        require_rows(world, expert_out, -1, H, where, "expert_out");
        // The kernel reads the row of every received pair, whose count only the device knows:
        // ask for the dispatch's capacity, as its x has.
        WEFT_CHECK_ARG_AT(where, static_cast<int64_t>(expert_out.shape(0)) >= op.capacity(),
                          "expert_out has {} rows; it needs the dispatch's capacity, {} (one row "
                          "per row of the dispatched x)",
                          expert_out.shape(0), op.capacity());
        require_rows(world, out, op.last_num_tokens(), H, where, "out");
        // The kernel reads rows of expert_out while it writes out (both contiguous here).
        WEFT_CHECK_ARG_AT(
            where,
            !ranges_overlap(out.data(), out.nbytes(), expert_out.data(), expert_out.nbytes()),
            "out overlaps expert_out; it must be memory of its own");
        a.expert_out_dtype = ep_dtype(expert_out, where, "expert_out");
        a.out_dtype = ep_dtype(out, where, "out");
      },
      [&] { op.abandon_combine(as_stream(stream)); });
  a.expert_out = expert_out.data();
  a.out = out.data();
  op.combine(a, as_stream(stream));
}

}  // namespace

void bind_expert_parallel(nb::module_& m) {
  nb::class_<ExpertParallel>(m, "ExpertParallel")
      .def(
          "__init__",
          [](ExpertParallel* self, World& world, const std::string& mode, int num_experts,
             int hidden, int topk, int max_tokens, int num_sms, int send_sms,
             int64_t max_recv_pairs) {
            ops::EpConfig c;
            WEFT_CHECK_ARG_AT("weft.ExpertParallel", mode == "low_latency" || mode == "throughput",
                              "mode must be \"low_latency\" or \"throughput\", got \"{}\"", mode);
            c.mode = mode == "throughput" ? ops::EpMode::throughput : ops::EpMode::low_latency;
            c.num_experts = num_experts;
            c.hidden = hidden;
            c.topk = topk;
            c.max_tokens = max_tokens;
            c.num_sms = num_sms;
            c.send_sms = send_sms;
            c.max_recv_pairs = max_recv_pairs;
            new (self) ExpertParallel(world, c);
          },
          nb::arg("world"), nb::arg("mode"), nb::arg("num_experts"), nb::arg("hidden"),
          nb::arg("topk"), nb::arg("max_tokens"), nb::arg("num_sms") = 0, nb::arg("send_sms") = 0,
          nb::arg("max_recv_pairs") = 0, nb::keep_alive<1, 2>(),
          nb::call_guard<nb::gil_scoped_release>())
      .def("dispatch", &dispatch, nb::arg("world"), nb::arg("x").none(), nb::arg("topk_idx").none(),
           nb::arg("topk_weights").none(), nb::arg("fp8"), nb::arg("stream"))
      .def(
          "buffers",
          [](nb::pointer_and_handle<ExpertParallel> self, const World& world) {
            return buffers(self.h, *self.p, world);
          },
          nb::arg("world"))
      .def("combine", &combine, nb::arg("world"), nb::arg("expert_out").none(),
           nb::arg("out").none(), nb::arg("stream"))
      // For the Python layer's own checks, made before dispatch() / combine() (which abandon by
      // themselves where the binding's or the operator's checks fail).
      .def(
          "abandon_dispatch",
          [](ExpertParallel& op, const World& world, bool fp8, uintptr_t stream) {
            if (may_abandon(world, as_stream(stream))) op.abandon_dispatch(fp8, as_stream(stream));
          },
          nb::arg("world"), nb::arg("fp8"), nb::arg("stream"),
          "Abandons this rank's dispatch: the peers' ends at once, void, naming this rank. A "
          "no-op while the stream is captured and in a world of one rank.")
      .def(
          "abandon_combine",
          [](ExpertParallel& op, const World& world, uintptr_t stream) {
            if (may_abandon(world, as_stream(stream))) op.abandon_combine(as_stream(stream));
          },
          nb::arg("world"), nb::arg("stream"),
          "Abandons this rank's combine: the peers' ends at once, naming this rank. A no-op "
          "while the stream is captured and in a world of one rank.")
      .def("check_errors", &ExpertParallel::check_errors)
      .def("host_counts",
           [](ExpertParallel& op) {
             ops::EpHostCounts h;
             {
               nb::gil_scoped_release waits_for_a_copy;
               h = op.host_counts();
             }
             nb::dict d;
             d["expert_counts"] = h.expert_counts;
             d["expert_offsets"] = h.expert_offsets;
             d["source_rows"] = h.source_rows;
             d["total_rows"] = h.total_rows;
             d["abandoned_by"] = h.abandoned_by;
             return d;
           })
      .def_prop_ro("capacity", &ExpertParallel::capacity)
      .def_prop_ro("experts_local", &ExpertParallel::experts_local)
      .def_prop_ro("last_num_tokens", &ExpertParallel::last_num_tokens)
      .def_prop_ro("mode",
                   [](const ExpertParallel& op) { return std::string(ops::to_string(op.mode())); });
}

}  // namespace weft::python
