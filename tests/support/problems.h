// A rank's problems in one GPU test, gathered into the one line of a job-wide verdict
// (WEFT_EXPECT_ALL_RANKS(pr.count == 0, pr.str())), and the "this call must be rejected" check
// that adds to them. Header-only; used by the expert-parallel and low-latency all-to-all tests.
#pragma once

#include <string>
#include <utility>

#include <fmt/format.h>

#include "weft/runtime/error.h"

namespace weft::testing {

// The first kShown problems are kept, the rest only counted.
template <int kShown>
struct ProblemList {
  std::string text;
  int count = 0;
  template <class... Args>
  void add(fmt::format_string<Args...> f, Args&&... args) {
    if (count++ < kShown) text += fmt::format(f, std::forward<Args>(args)...) + "; ";
  }
  void add_text(const std::string& s) {
    if (!s.empty()) add("{}", s);
  }
  std::string str() const {
    return count <= kShown ? text : text + fmt::format("... {} problems in all", count);
  }
};

// Runs `fn`, which must throw weft::InvalidArgument whose detail contains `needle`; anything else
// is a problem named `what`.
template <class Problems, class Fn>
void expect_invalid(Problems& pr, const std::string& what, const std::string& needle, Fn&& fn) {
  try {
    fn();
    pr.add("{}: no error", what);
  } catch (const InvalidArgument& e) {
    if (e.detail().find(needle) == std::string::npos)
      pr.add("{}: error '{}' lacks '{}'", what, e.detail(), needle);
  } catch (const std::exception& e) {
    pr.add("{}: not an InvalidArgument: {}", what, e.what());
  }
}

}  // namespace weft::testing
