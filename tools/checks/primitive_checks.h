// The primitive self-checks: each exercises one group of weft's device primitives across all ranks
// with random data (from a seed every rank shares) and poisoned outputs, and reports a rank-local
// verdict. They are collective: every rank runs every check, in the same order. `weft selftest`
// runs them as a quick check of a machine; tests/gpu/primitives_test.cc runs them as the test
// suite (with the full 100,000-round litmus test).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "weft/runtime/world.h"

namespace weft::checks {

struct CheckOptions {
  uint64_t seed = 1;
  int litmus_rounds = 100000;  // message-passing rounds per ordered pair of ranks
  int rounds = 200;            // rounds of the put-with-signal and barrier checks
};

struct CheckResult {
  bool ok = true;
  std::string detail;   // what went wrong on this rank (empty when ok)
  std::string skipped;  // why the check did not run here (e.g. it needs two ranks); empty if it ran
};

struct Check {
  const char* name;
  const char* what;
  CheckResult (*run)(World&, const CheckOptions&);
};

// Every check, in the order they run.
const std::vector<Check>& primitive_checks();

// The wait-timeout check runs a kernel whose wait can never succeed in a child process (a trapped
// kernel ends its CUDA context). Programs that run the checks call this first thing in main():
// when the process is such a child it runs the child's part and returns its exit code, else -1.
int run_wait_timeout_child_if_requested();
// The same for the barrier-timeout check, whose children form a world of their own.
int run_barrier_timeout_child_if_requested();
// The same for the peer_abort check's children.
int run_peer_abort_child_if_requested();

}  // namespace weft::checks
