// Expecting an error: a call that must throw a weft error (weft::InvalidArgument unless said
// otherwise) whose message holds given words. Header-only, for GoogleTest tests (CPU and GPU).
//
//   expect_error([&] { validate_gemm_rs_args(a, 4, 1024, 1024, "t"); }, {"multiple of the world"});
//   expect_error<Error>([&] { a.free(x); }, {"not the start"});
//   const std::string problem = error_mismatch([&] { op.run(bad, s); }, {"workspace"});
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "weft/runtime/error.h"

namespace weft::testing {

// Which text of the error the words are looked for in: what() (the rank, the call and the
// detail) or detail() alone.
enum class ErrorText { what, detail };

// What is wrong with the way `call` failed; "" when nothing: it must throw E whose text contains
// every one of `needles`. Otherwise "accepted" (it returned) or "message lacks '<needle>': <text>"
// (the first needle missing). Exceptions of other types propagate.
template <class E = InvalidArgument, class Call>
std::string error_mismatch(Call&& call, std::initializer_list<std::string_view> needles,
                           ErrorText in = ErrorText::what) {
  try {
    std::forward<Call>(call)();
  } catch (const E& e) {
    const std::string text = in == ErrorText::what ? std::string(e.what()) : e.detail();
    for (std::string_view needle : needles)
      if (text.find(needle) == std::string::npos)
        return "message lacks '" + std::string(needle) + "': " + text;
    return "";
  }
  return "accepted";
}

// A (non-fatal) GoogleTest failure unless `call` throws E whose text contains every needle.
template <class E = InvalidArgument, class Call>
void expect_error(Call&& call, std::initializer_list<std::string_view> needles,
                  ErrorText in = ErrorText::what) {
  const std::string problem = error_mismatch<E>(std::forward<Call>(call), needles, in);
  EXPECT_TRUE(problem.empty()) << problem;
}

}  // namespace weft::testing
