// Errors. Every failure weft reports is a weft::Error that names the rank it happened on (when a
// rank is known), the call that failed, and why. Argument validation throws the subclass
// weft::InvalidArgument so callers (and tests) can tell misuse apart from a failing system call.
#pragma once

#include <fmt/format.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace weft {

// The rank printed in error messages of this process: -1 until bootstrap learns it.
int current_rank();
void set_current_rank(int rank);

// "rank 2", "ranks 2, 3", "ranks 0-5, 7": for messages that name the ranks involved (runs of three
// or more collapse, so a 1000-rank job that never started still gives a one-line message).
std::string format_ranks(const std::vector<int>& ranks);

class Error : public std::runtime_error {
 public:
  // `call` is what failed (a function, a CUDA/NCCL call, a step); `detail` says why.
  Error(std::string call, std::string detail);
  const std::string& call() const { return call_; }
  const std::string& detail() const { return detail_; }
  int rank() const { return rank_; }

 private:
  std::string call_, detail_;
  int rank_;
};

class InvalidArgument : public Error {
 public:
  using Error::Error;
};

class Timeout : public Error {
 public:
  using Error::Error;
};

namespace detail {
// Where a failed CUDA call looks for the device's own account: a kernel that traps (a timed-out
// wait, a call mismatch) leaves a host-mapped fault report, and the next CUDA call anywhere in
// the process fails with a bare "unspecified launch failure". Every World registers its report
// while it lives, and the GEMM engine its hang record once it has one; the CUDA error checks
// (weft/runtime/cuda_check.h, the GEMM engine's) append every ready report's text, the newest
// source's first, joined by "; ". A source must not throw or make a checked CUDA call (a check
// that fails asks the sources again).
using FaultSource = std::optional<std::string> (*)(const void* owner);
// Told when a CUDA call fails with an error that ends the process's CUDA context (`what` is the
// error's text): a World then marks its rank on the host's abort board, so the peers waiting for
// it give up at once.
using ContextLost = void (*)(const void* owner, const std::string& what);
void register_fault_source(const void* owner, FaultSource source,
                           ContextLost lost = nullptr) noexcept;
void unregister_fault_source(const void* owner) noexcept;
std::optional<std::string> current_device_fault();
// Calls every registered ContextLost (weft/runtime/cuda_check.h decides which errors end a
// context).
void report_context_lost(const std::string& what) noexcept;

}  // namespace detail

}  // namespace weft

// Validate an argument: WEFT_CHECK_ARG(n > 0, "n must be positive, got {}", n);
#define WEFT_CHECK_ARG(cond, ...)                                                   \
  do {                                                                              \
    if (!(cond)) throw ::weft::InvalidArgument(__func__, ::fmt::format(__VA_ARGS__)); \
  } while (0)

// The same, naming the public call `where` ("AgGemm::run") instead of the helper that checks:
// WEFT_CHECK_ARG_AT(kRun, k % 8 == 0, "k must be a multiple of 8, got {}", k);
#define WEFT_CHECK_ARG_AT(where, cond, ...)                                          \
  do {                                                                               \
    if (!(cond)) throw ::weft::InvalidArgument((where), ::fmt::format(__VA_ARGS__)); \
  } while (0)

// Check an internal invariant or a system call that reports failure by a boolean.
#define WEFT_CHECK(cond, ...)                                                       \
  do {                                                                              \
    if (!(cond)) throw ::weft::Error(__func__, ::fmt::format(__VA_ARGS__));         \
  } while (0)
