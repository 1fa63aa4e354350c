// Helpers shared by the multi-rank GPU tests of the tensor-parallel operators (GoogleTest; each
// test binary links weft_gpu_test_main and runs on every rank in the same order).
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "bench/common/cuda_resources.h"
#include "bench/common/timing.h"
#include "tests/gpu/test_world.h"
#include "tests/support/expect_error.h"
#include "weft/gemm/gemm.h"
#include "weft/ops/tensor_parallel/common/testing.h"
#include "weft/runtime/cuda_check.h"

namespace weft::tp::test {

using bench::DeviceMemory;
using bench::GraphExec;

inline World& world() { return ::weft::testing::test_world(); }

// Waits for `stream`; a device fault (a timed-out wait traps) becomes a failure on this rank with
// the fault report and the GEMM engine's hang record, instead of an exception.
inline std::string sync_error(cudaStream_t stream) {
  try {
    world().synchronize(stream);
    return "";
  } catch (const std::exception& e) {
    std::string hang = gemm::take_hang_report();
    return std::string(e.what()) + (hang.empty() ? "" : "\nGEMM hang record: " + hang);
  }
}

// Runs `body` (which may throw) on this rank and returns the error text ("" when it passed).
inline std::string capture_error(const std::function<void()>& body) {
  try {
    body();
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

// Every rank's 64-bit value, in rank order.
inline std::vector<uint64_t> all_gather_u64(uint64_t mine) {
  const auto all = world().rendezvous().all_gather(
      std::string_view(reinterpret_cast<const char*>(&mine), sizeof(mine)));
  std::vector<uint64_t> out(all.size());
  for (size_t r = 0; r < all.size(); ++r) std::memcpy(&out[r], all[r].data(), sizeof(uint64_t));
  return out;
}

inline const char* dtype_name(DType t) { return gemm::to_string(t); }

// Waits for the test stream; a device fault throws weft::Error(`call`, the fault report).
inline void sync_or_throw(const char* call = "device") {
  const std::string fault = sync_error(world().stream());
  if (!fault.empty()) throw Error(call, fault);
}

// Writes the transpose of the 16-bit row-major [n, k] matrix `nk` (contiguous) into `kn` as row-
// major [k, n] with leading dimension ldb >= n, the padding 0xFFFF (through the host; waits for
// the world's stream).
inline void write_transpose(const void* nk, int64_t n, int64_t k, void* kn, int64_t ldb) {
  std::vector<uint16_t> src(size_t(n * k)), dst(size_t(k * ldb), 0xFFFF);
  cudaStream_t s = world().stream();
  WEFT_CUDA_CHECK(cudaMemcpyAsync(src.data(), nk, src.size() * 2, cudaMemcpyDeviceToHost, s));
  sync_or_throw();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) dst[size_t(j * ldb + i)] = src[size_t(i * k + j)];
  WEFT_CUDA_CHECK(cudaMemcpyAsync(kn, dst.data(), dst.size() * 2, cudaMemcpyHostToDevice, s));
  sync_or_throw();  // dst is freed on return
}

// Throws when a forced strategy is not the one that ran (kAuto: any may run).
template <class Strategy>
void check_ran(Strategy ran, Strategy requested) {
  if (ran != requested && requested != Strategy::kAuto)
    throw Error("test", fmt::format("ran {} instead of {}", to_string(ran), to_string(requested)));
}

// "" or "<count> padding elements of <name> were written; ": the `pad` columns right of the `n`
// columns of a 16-bit matrix (`rows` rows of `ld` elements) must keep the 0xFF poison written
// before the call (synchronizes the test stream).
inline std::string padding_problem(const void* p, int64_t rows, int64_t n, int64_t pad, int64_t ld,
                                   const char* name) {
  if (pad == 0) return "";
  const uint64_t touched = ::weft::tp::testing::count_not_equal(
      static_cast<const char*>(p) + n * 2, rows, pad, ld, 0xFFFF, world().stream());
  return touched ? fmt::format("{} padding elements of {} were written; ", touched, name) : "";
}

// "" or "a second identical call differs in <count> elements; ": the outputs of two identical
// calls (16-bit, rows x n, leading dimension ld) must be bit-identical (synchronizes).
inline std::string repeat_problem(const void* out, const void* out2, int64_t ld, int64_t rows,
                                  int64_t n) {
  const uint64_t diff =
      ::weft::tp::testing::count_bit_differences(out, ld, out2, ld, rows, n, world().stream());
  return diff ? fmt::format("a second identical call differs in {} elements; ", diff) : "";
}

// For each strategy in `strategies`: run(c), with c = `base` but that strategy; each a job-wide
// verdict ("" = right).
template <class Case, class Strategies, class Run>
void expect_each_strategy(const Case& base, const Strategies& strategies, Run&& run) {
  for (auto s : strategies) {
    Case c = base;
    c.strategy = s;
    const std::string err = run(c);
    WEFT_EXPECT_ALL_RANKS(err.empty(), err);
  }
}

// `call` (an operator's run with bad arguments) must throw weft::InvalidArgument whose message
// contains `needle`: a job-wide verdict.
template <class Call>
void expect_invalid(Call&& call, const char* needle) {
  const std::string what = ::weft::testing::error_mismatch(std::forward<Call>(call), {needle});
  WEFT_EXPECT_ALL_RANKS(what.empty(), what);
}

// ---- calls that differ across ranks (death tests in child worlds, tests/gpu/test_world.h) ----

// What a mismatch child does differently on odd ranks, from WEFT_TEST_VARIANT: "<strategy>" asks
// for twice the rows (or columns), "<strategy>:fp16" for fp16 instead of bf16,
// "<strategy>:abandon" passes a host pointer as the output (a check of the rank's own fails, so it
// abandons the call), "<strategy>:abandon_ld" an output leading dimension below n (the shape check
// fails, before the rank has a plan).
struct MismatchVariant {
  std::string strategy;
  int64_t size_factor = 1;  // this rank's multiple of the shared dimension
  DType dtype = DType::kBF16;
  bool host_out = false;
  bool bad_ld = false;  // the output's leading dimension: n - 8 instead of n
};
inline MismatchVariant mismatch_variant(const World& world) {
  const char* v = std::getenv("WEFT_TEST_VARIANT");
  std::string s = v ? v : "";
  const size_t colon = s.find(':');
  const std::string kind = colon == std::string::npos ? "" : s.substr(colon + 1);
  const bool odd = world.rank() % 2 == 1;
  MismatchVariant m;
  m.strategy = s.substr(0, colon);
  if (kind.empty()) m.size_factor = odd ? 2 : 1;
  if (kind == "fp16" && odd) m.dtype = DType::kFP16;
  if (kind == "abandon") m.host_out = odd;
  if (kind == "abandon_ld") m.bad_ld = odd;
  return m;
}

// A child body's operands: A [a_rows, k] and B [n, k] (random, different on every rank) and an
// output of out_elems elements, all of `dtype`, on `world`'s stream; out(v) is the output on the
// device, or in host memory where `v` asks for it.
struct MismatchOperands {
  DeviceMemory a, b, dev_out;
  std::vector<uint16_t> host_out;
  void* out(const MismatchVariant& v) { return v.host_out ? host_out.data() : dev_out.data(); }
};
inline MismatchOperands mismatch_operands(World& world, int64_t a_rows, int64_t n, int64_t k,
                                          int64_t out_elems, DType dtype) {
  MismatchOperands o{DeviceMemory(size_t(a_rows * k * 2)), DeviceMemory(size_t(n * k * 2)),
                     DeviceMemory(size_t(out_elems * 2)), std::vector<uint16_t>(size_t(out_elems))};
  const uint64_t seed = 0x5eed + 2 * static_cast<uint64_t>(world.rank());
  ::weft::tp::testing::fill_matrix(o.a.data(), a_rows, k, k, dtype, seed, world.stream());
  ::weft::tp::testing::fill_matrix(o.b.data(), n, k, k, dtype, seed + 1, world.stream());
  return o;
}

// A child body's part: `call` (an operator call that differs across the ranks) on `world`'s
// stream, then a wait for it, which must fail. Prints what the host saw; returns 0 when the call
// failed, 3 when it completed. A rank whose own check rejected the call (weft::InvalidArgument)
// abandoned it: its stream must then be clean ("abandoned cleanly"), and it leaves at once, since
// its peers' CUDA contexts are gone and a collective teardown would wait for them.
template <class Call>
int run_mismatched_call(World& world, Call&& call) {
  try {
    call();
    world.synchronize(world.stream());
  } catch (const InvalidArgument& e) {
    std::printf("host saw: %s\n", e.what());
    try {
      world.synchronize(world.stream());
      std::printf("abandoned cleanly\n");
    } catch (const std::exception& after) {
      std::printf("the stream failed after the abandoned call: %s\n", after.what());
    }
    std::fflush(stdout);
    std::_Exit(0);
  } catch (const std::exception& e) {
    std::printf("host saw: %s\n", e.what());
    std::fflush(stdout);
    return 0;
  }
  std::printf("the call completed although the ranks asked for different calls\n");
  return 3;
}

// Child body `body` once per strategy with odd ranks passing a host pointer as the output
// ("<strategy>:abandon", the default `kind`) or an output leading dimension below n
// ("<strategy>:abandon_ld": the shape check, before a plan): each odd rank must reject its call
// with that check's error and find its stream clean after abandoning it; each even rank must fail
// at once with the mismatch naming an 'aborted' call (well before the children's 10 s wait
// timeout, which would report a timed-out barrier or flag).
inline void expect_abandon_fails_peers(const char* body,
                                       std::initializer_list<const char*> strategies,
                                       const char* kind = "abandon") {
  const bool odd = ::weft::testing::test_world().rank() % 2 == 1;
  for (const char* strategy : strategies) {
    auto [status, out] = ::weft::testing::run_child_body(
        body, std::chrono::seconds(120),
        {fmt::format("WEFT_TEST_VARIANT={}:{}", strategy, kind), "WEFT_WAIT_TIMEOUT_MS=10000"});
    const std::string rejected =
        std::string_view(kind) == "abandon_ld" ? "must be >= n" : "host memory";
    const bool ok =
        status == 0 && (odd ? out.find("abandoned cleanly") != std::string::npos &&
                                  out.find(rejected) != std::string::npos
                            : out.find("collective call mismatch") != std::string::npos &&
                                  out.find("'aborted' on rank") != std::string::npos);
    WEFT_EXPECT_ALL_RANKS(
        ok, fmt::format("{} {}:{}: child exit {}: {}", body, strategy, kind, status, out));
  }
}

// Runs child body `body` once per case (the body reads `variant` from WEFT_TEST_VARIANT,
// mismatch_variant): in every child the call must fail with the call-mismatch report naming
// signature word `field` ("(m is "): a job-wide verdict per case. The children's waits time out
// after 10 s, so a check that misses shows as a timeout, not a hang.
struct MismatchCase {
  const char* variant;
  const char* field;
};
inline void expect_mismatch_trap(const char* body, std::initializer_list<MismatchCase> cases) {
  for (const MismatchCase& c : cases) {
    auto [status, out] = ::weft::testing::run_child_body(
        body, std::chrono::seconds(120),
        {fmt::format("WEFT_TEST_VARIANT={}", c.variant), "WEFT_WAIT_TIMEOUT_MS=10000"});
    const bool ok = status == 0 && out.find("collective call mismatch") != std::string::npos &&
                    out.find(fmt::format("({} is ", c.field)) != std::string::npos;
    WEFT_EXPECT_ALL_RANKS(ok,
                          fmt::format("{} {}: child exit {}: {}", body, c.variant, status, out));
  }
}

// `call` must return without throwing on every rank: a job-wide verdict.
template <class Call>
void expect_no_throw(Call&& call) {
  std::string what;
  try {
    call();
  } catch (const std::exception& e) {
    what = e.what();
  }
  WEFT_EXPECT_ALL_RANKS(what.empty(), what);
}

// Enqueues `calls` calls back to back without host synchronization: call(cmp, i) runs the
// operator and enqueues its reference and the comparison, tagged i. Then throws weft::Error when
// the device faulted or a comparison failed; `describe_tag(tag)` says which call that was.
template <class Call, class Describe>
void check_back_to_back(size_t calls, Call&& call, Describe&& describe_tag) {
  ::weft::tp::testing::Comparator cmp;
  cmp.reset(world().stream());
  for (size_t i = 0; i < calls; ++i) call(cmp, i);
  sync_or_throw();
  const auto r = cmp.read(world().stream());
  if (!r.ok())
    throw Error("check", r.describe() + " (tag = call index; " + describe_tag(r.first_tag) + ")");
}

// Runs `call` (one operator call) eagerly first (kernel attributes, cuBLASLt plans, pointer
// checks), captures it into a CUDA graph and replays it `replays` times: before replay i,
// prepare(i) writes new inputs; after it, check(cmp, i) enqueues the reference and the comparison
// tagged i. Throws weft::Error when the device faulted or a comparison failed or did not cover
// `elements_per_replay` elements of every replay.
template <class Call, class Prepare, class Check>
void check_graph_replays(int replays, uint64_t elements_per_replay, Call&& call, Prepare&& prepare,
                         Check&& check) {
  cudaStream_t stream = world().stream();
  call();
  sync_or_throw("device (eager call)");
  GraphExec graph = ::weft::bench::capture_on_all_ranks(world(), stream, call);
  ::weft::tp::testing::Comparator cmp;
  cmp.reset(stream);
  for (int i = 1; i <= replays; ++i) {
    prepare(i);
    graph.launch(stream);
    check(cmp, i);
  }
  sync_or_throw();
  const auto r = cmp.read(stream);
  if (!r.ok() || r.checked != uint64_t(replays) * elements_per_replay)
    throw Error("check", fmt::format("{} (tag = replay)", r.describe()));
}

}  // namespace weft::tp::test
