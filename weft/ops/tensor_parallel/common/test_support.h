// Helpers shared by the multi-rank GPU tests of the tensor-parallel operators (GoogleTest; each
// test binary links weft_gpu_test_main and runs on every rank in the same order).
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench/common/cuda_resources.h"
#include "tests/gpu/test_world.h"
#include "weft/gemm/gemm.h"
#include "weft/ops/tensor_parallel/common/testing.h"
#include "weft/runtime/cuda_check.h"

namespace weft::tp::test {

using bench::DeviceMemory;
using bench::GraphExec;

// WEFT_EXPECT_ALL_RANKS(ok, detail) names its parameter `ok`, which the preprocessor also
// substitutes into the macro's `weft_verdict_.ok`: route every check through a local named `ok`.
#define TP_EXPECT_ALL_RANKS(cond, detail)  \
  do {                                     \
    const bool ok = (cond);                \
    WEFT_EXPECT_ALL_RANKS(ok, (detail));   \
  } while (0)

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

}  // namespace weft::tp::test
