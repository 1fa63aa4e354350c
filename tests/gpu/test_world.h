// Shared main for multi-rank GPU tests. Every rank runs the same GoogleTest binary (start it with
// `weft run -n N -- <binary>`); tests reach the job through test_world(). A rank-local result is
// turned into a job-wide verdict with all_ranks_ok(), so every rank passes or fails a test together
// and no rank skips a collective step that the others perform.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "weft/runtime/world.h"

namespace weft::testing {

World& test_world();

// True on every rank iff `ok` is true on every rank. `detail` (this rank's explanation of a
// failure) is gathered, and the returned message lists the failing ranks with their details.
struct Verdict {
  bool ok;
  std::string message;
};
Verdict all_ranks_ok(bool ok, const std::string& detail = "");

// A seed shared by all ranks (rank 0 draws it from the clock; WEFT_TEST_SEED fixes it), so that a
// rank can regenerate the data its peers sent. Printed at start-up for reproduction.
uint64_t shared_seed();

// Multi-rank death tests: a call that must trap (which ends the CUDA context) runs in a world of
// its own, in children of every rank (weft::checks::run_child_world). Register the child's body
// at namespace scope, `WEFT_CHILD_BODY(name) { ... return exit code; }` (it gets the children's
// World; what it prints comes back), and run it from a test with run_child_body("name", limit):
// collective; returns this rank's child's exit status and output.
using ChildBody = int (*)(World&);
bool register_child_body(const char* name, ChildBody body);
std::pair<int, std::string> run_child_body(const char* name, std::chrono::seconds limit,
                                           const std::vector<std::string>& extra_env = {});

}  // namespace weft::testing

#define WEFT_CHILD_BODY(name)                                               \
  static int weft_child_body_##name(::weft::World&);                        \
  [[maybe_unused]] static const bool weft_child_registered_##name =         \
      ::weft::testing::register_child_body(#name, &weft_child_body_##name); \
  static int weft_child_body_##name(::weft::World& world)

// EXPECT that a condition holds on every rank (collective). The condition is evaluated before
// the explanation.
#define WEFT_EXPECT_ALL_RANKS(condition, explanation)                            \
  do {                                                                           \
    const bool weft_ok_ = (condition);                                           \
    auto weft_verdict_ = ::weft::testing::all_ranks_ok(weft_ok_, (explanation)); \
    EXPECT_TRUE(weft_verdict_.ok) << weft_verdict_.message;                      \
  } while (0)
