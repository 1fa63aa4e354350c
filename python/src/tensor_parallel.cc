// weft._C: AG-GEMM, GEMM-RS and GEMM-AR. Each operator object keeps its World alive
// (nb::keep_alive) and runs one call per `run`, into outputs the caller allocated; `run` returns
// the name of the strategy it executed.
#include <nanobind/stl/string.h>

#include <string>

#include "python/src/bindings.h"
#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"
#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs.h"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/error.h"
#include "weft/runtime/validate.h"

namespace weft::python {
namespace {

void same_dtype(const char* where, const Matrix& a, const Matrix& b, const char* name) {
  WEFT_CHECK_ARG_AT(where, a.dtype == b.dtype, "{} must have the dtype of a", name);
}

// The workspace's gathered A is valid until the next call: copied out at once, as part of the
// call (so that closing the operator waits for the copy).
void copy_gathered_out(tp::AgGemm& op, const Matrix& g, uintptr_t stream) {
  op.copy_gathered_a(g.data, g.ld, g.rows, g.cols, as_stream(stream));
}

std::string ag_gemm_run(tp::AgGemm& op, const World& world, nb::handle a_t, nb::handle b_t,
                        nb::handle c_t, nb::handle gathered_t, const std::string& strategy,
                        uintptr_t stream) {
  const char* where = "weft.AGGemm";
  Matrix a, c, g;
  BOperand bo;
  const Matrix& b = bo.m;
  const bool gather_a = !gathered_t.is_none();
  tp::AgGemmArgs args;
  // The binding's checks abandon the call like the operator's (AgGemm::abandon).
  checks_or_abandon(
      world, as_stream(stream),
      [&] {
        if (!strategy.empty()) args.strategy = tp::parse_ag_gemm_strategy(strategy);
        a = matrix(world, tensor_arg(a_t, where, "a"), where, "a");
        bo = b_operand(world, tensor_arg(b_t, where, "b"), where);
        c = matrix(world, tensor_arg(c_t, where, "out"), where, "out");
        same_dtype(where, a, b, "b");
        same_dtype(where, a, c, "out");
        WEFT_CHECK_ARG_AT(where, b.cols == a.cols, "b has {} columns, a has {} (both are K)",
                          b.cols, a.cols);
        WEFT_CHECK_ARG_AT(where, c.rows == a.rows * world.size() && c.cols == b.rows,
                          "out must be [{}, {}] (world size x a's rows, b's rows), got [{}, {}]",
                          a.rows * world.size(), b.rows, c.rows, c.cols);
        if (!gather_a) return;
        g = matrix(world, tensor_arg(gathered_t, where, "gathered_a"), where, "gathered_a");
        same_dtype(where, a, g, "gathered_a");
        WEFT_CHECK_ARG_AT(where, g.rows == c.rows && g.cols == a.cols,
                          "gathered_a must be [{}, {}], got [{}, {}]", c.rows, a.cols, g.rows,
                          g.cols);
        // The gathered rows are copied out after the GEMM: over out or b they would overwrite
        // them (over a is fine: a's rows are read before, and are among the rows written).
        const auto g_bytes = static_cast<size_t>(tp::span_bytes(g.rows, g.cols, g.ld, g.dtype));
        WEFT_CHECK_ARG_AT(
            where,
            !ranges_overlap(g.data, g_bytes, c.data,
                            static_cast<size_t>(tp::span_bytes(c.rows, c.cols, c.ld, c.dtype))) &&
                !ranges_overlap(g.data, g_bytes, b.data,
                                static_cast<size_t>(
                                    tp::b_span_bytes(b.rows, b.cols, b.ld, bo.layout, b.dtype))),
            "gathered_a overlaps out or b; it must be memory of its own");
      },
      [&] { op.abandon(as_stream(stream)); });
  args.a = a.data;
  args.lda = a.ld;
  args.b = b.data;
  args.ldb = b.ld;
  args.b_layout = bo.layout;
  args.c = c.data;
  args.ldc = c.ld;
  args.m_local = a.rows;
  args.n = b.rows;
  args.k = a.cols;
  args.dtype = a.dtype;
  args.gather_a = gather_a;
  const tp::AgGemmPlan plan = op.run(args, as_stream(stream));
  if (args.gather_a) copy_gathered_out(op, g, stream);
  return tp::to_string(plan.strategy);
}

std::string ag_gather_run(tp::AgGemm& op, const World& world, nb::handle a_t, nb::handle out_t,
                          uintptr_t stream) {
  const char* where = "weft.AGGemm.all_gather";
  Matrix a, g;
  checks_or_abandon(  // as in ag_gemm_run
      world, as_stream(stream),
      [&] {
        a = matrix(world, tensor_arg(a_t, where, "a"), where, "a");
        g = matrix(world, tensor_arg(out_t, where, "out"), where, "out");
        same_dtype(where, a, g, "out");
        WEFT_CHECK_ARG_AT(where, g.rows == a.rows * world.size() && g.cols == a.cols,
                          "out must be [{}, {}] (world size x a's rows, a's columns), got [{}, {}]",
                          a.rows * world.size(), a.cols, g.rows, g.cols);
      },
      [&] { op.abandon(as_stream(stream)); });
  tp::AgGatherArgs args;
  args.a = a.data;
  args.lda = a.ld;
  args.m_local = a.rows;
  args.k = a.cols;
  args.dtype = a.dtype;
  const char* ran = op.all_gather(args, as_stream(stream));
  copy_gathered_out(op, g, stream);
  return ran;
}

// For the Python layer's own checks of a call (weft/tensor_parallel.py), which come before the
// binding's: the operator's abandon(stream), where weft::may_abandon (as checks_or_abandon).
template <class Op>
void abandon_call(Op& op, const World& world, uintptr_t stream) {
  if (may_abandon(world, as_stream(stream))) op.abandon(as_stream(stream));
}

constexpr const char* kAbandonDoc =
    "Abandons this rank's call (its peers' fail at once, naming it, instead of waiting for it); "
    "for checks made before run() or all_gather(), which abandon by themselves. A no-op while "
    "the stream is captured and in a world of one rank.";

// GEMM-RS and GEMM-AR take the same operands (a_r [M, K/W], b_r [N, K/W]) and differ in the
// output's rows: M / W (this rank's slice) or M.
template <class Op>
struct ReduceBinding;
template <>
struct ReduceBinding<tp::GemmRs> {
  using Args = tp::GemmRsArgs;
  using Options = tp::GemmRsOptions;
  static constexpr const char* kWhere = "weft.GemmRS";
  static constexpr bool kScatter = true;
  static tp::GemmRsStrategy parse(const std::string& s) { return tp::parse_gemm_rs_strategy(s); }
};
template <>
struct ReduceBinding<tp::GemmAr> {
  using Args = tp::GemmArArgs;
  using Options = tp::GemmArOptions;
  static constexpr const char* kWhere = "weft.GemmAR";
  static constexpr bool kScatter = false;
  static tp::GemmArStrategy parse(const std::string& s) { return tp::parse_gemm_ar_strategy(s); }
};

template <class Op>
std::string reduce_run(Op& op, const World& world, nb::handle a_t, nb::handle b_t, nb::handle out_t,
                       const std::string& strategy, uintptr_t stream) {
  using B = ReduceBinding<Op>;
  const char* where = B::kWhere;
  Matrix a, o;
  BOperand bo;
  const Matrix& b = bo.m;
  typename B::Args args;
  checks_or_abandon(  // as in ag_gemm_run
      world, as_stream(stream),
      [&] {
        if (!strategy.empty()) args.strategy = B::parse(strategy);
        a = matrix(world, tensor_arg(a_t, where, "a"), where, "a");
        // GEMM-RS also takes B as the transpose of a row-major [k, n] tensor; GEMM-AR does not.
        const Tensor b_tensor = tensor_arg(b_t, where, "b");
        bo = B::kScatter ? b_operand(world, b_tensor, where)
                         : BOperand{matrix(world, b_tensor, where, "b")};
        o = matrix(world, tensor_arg(out_t, where, "out"), where, "out");
        same_dtype(where, a, b, "b");
        same_dtype(where, a, o, "out");
        WEFT_CHECK_ARG_AT(where, b.cols == a.cols, "b has {} columns, a has {} (both are K / W)",
                          b.cols, a.cols);
        int64_t out_rows = a.rows;
        if constexpr (B::kScatter) {
          WEFT_CHECK_ARG_AT(where, a.rows % world.size() == 0,
                            "a's rows ({}) must split evenly over the {} ranks", a.rows,
                            world.size());
          out_rows = a.rows / world.size();
        }
        WEFT_CHECK_ARG_AT(where, o.rows == out_rows && o.cols == b.rows,
                          "out must be [{}, {}] ({}, b's rows), got [{}, {}]", out_rows, b.rows,
                          B::kScatter ? "a's rows / world size" : "a's rows", o.rows, o.cols);
      },
      [&] { op.abandon(as_stream(stream)); });
  args.a = a.data;
  args.lda = a.ld;
  args.b = b.data;
  args.ldb = b.ld;
  if constexpr (B::kScatter) args.b_layout = bo.layout;
  args.out = o.data;
  args.ldo = o.ld;
  args.m = a.rows;
  args.n = b.rows;
  args.k = a.cols;
  args.dtype = a.dtype;
  return tp::to_string(op.run(args, as_stream(stream)).strategy);
}

// The class with its collective constructor (max_m, max_n, strategy) and `run`.
template <class Op>
nb::class_<Op> bind_reduce_op(nb::module_& m, const char* name) {
  using B = ReduceBinding<Op>;
  nb::class_<Op> c(m, name);
  c.def(
       "__init__",
       [](Op* self, World& world, int64_t max_m, int64_t max_n, const std::string& strategy) {
         typename B::Options o;
         o.max_m = max_m;
         o.max_n = max_n;
         if (!strategy.empty()) o.strategy = B::parse(strategy);
         new (self) Op(world, o);
       },
       nb::arg("world"), nb::arg("max_m"), nb::arg("max_n"), nb::arg("strategy") = "",
       nb::keep_alive<1, 2>(), nb::call_guard<nb::gil_scoped_release>())
      .def("run", &reduce_run<Op>, nb::arg("world"), nb::arg("a").none(), nb::arg("b").none(),
           nb::arg("out").none(), nb::arg("strategy"), nb::arg("stream"))
      .def("abandon", &abandon_call<Op>, nb::arg("world"), nb::arg("stream"), kAbandonDoc);
  return c;
}

}  // namespace

void bind_tensor_parallel(nb::module_& m) {
  nb::class_<tp::AgGemm>(m, "AgGemm")
      .def(
          "__init__",
          [](tp::AgGemm* self, World& world, int64_t max_m, int64_t max_k, int64_t max_n,
             const std::string& strategy) {
            tp::AgGemmOptions o;
            o.max_m = max_m;
            o.max_k = max_k;
            o.max_n = max_n;
            if (!strategy.empty()) o.strategy = tp::parse_ag_gemm_strategy(strategy);
            new (self) tp::AgGemm(world, o);
          },
          nb::arg("world"), nb::arg("max_m"), nb::arg("max_k"), nb::arg("max_n") = 65536,
          nb::arg("strategy") = "", nb::keep_alive<1, 2>(),
          nb::call_guard<nb::gil_scoped_release>())
      .def(
          "run",
          [](tp::AgGemm& op, const World& world, nb::handle a, nb::handle b, nb::handle c,
             nb::handle gathered, const std::string& strategy, uintptr_t stream) {
            return ag_gemm_run(op, world, a, b, c, gathered, strategy, stream);
          },
          nb::arg("world"), nb::arg("a").none(), nb::arg("b").none(), nb::arg("out").none(),
          nb::arg("gathered_a").none(), nb::arg("strategy"), nb::arg("stream"))
      .def("all_gather", &ag_gather_run, nb::arg("world"), nb::arg("a").none(),
           nb::arg("out").none(), nb::arg("stream"),
           "allgather(a) into out [W * rows, cols] without a GEMM; returns how it gathered "
           "(push_gather, copy_engine, or local_copy on one rank).")
      .def("abandon", &abandon_call<tp::AgGemm>, nb::arg("world"), nb::arg("stream"), kAbandonDoc);

  bind_reduce_op<tp::GemmRs>(m, "GemmRs")
      .def("trace_report", &tp::GemmRs::trace_report,
           "With WEFT_TP_TRACE=1 at construction: the last eager call's steps on their streams "
           "(synchronize first).");
  bind_reduce_op<tp::GemmAr>(m, "GemmAr");
}

}  // namespace weft::python
