// Shared main for multi-rank GPU tests. Every rank runs the same GoogleTest binary (start it with
// `weft run -n N -- <binary>`); tests reach the job through test_world(). A rank-local result is
// turned into a job-wide verdict with all_ranks_ok(), so every rank passes or fails a test together
// and no rank skips a collective step that the others perform.
#pragma once

#include <string>

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

}  // namespace weft::testing

// EXPECT that a condition holds on every rank (collective). The condition is evaluated before
// the explanation.
#define WEFT_EXPECT_ALL_RANKS(condition, explanation)                            \
  do {                                                                           \
    const bool weft_ok_ = (condition);                                           \
    auto weft_verdict_ = ::weft::testing::all_ranks_ok(weft_ok_, (explanation)); \
    EXPECT_TRUE(weft_verdict_.ok) << weft_verdict_.message;                      \
  } while (0)
