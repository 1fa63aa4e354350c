// The host's text for device fault reports (describe_fault), checked without a GPU.
#include <gtest/gtest.h>

#include <string>

#include "weft/runtime/cuda_errors.h"
#include "weft/runtime/error.h"
#include "weft/runtime/world.h"

namespace weft {
namespace {

dev::FaultReport call_mismatch(int field, uint64_t mine, uint64_t theirs) {
  dev::FaultReport f{};
  f.kind = dev::FaultReport::call_mismatch;
  f.rank = 2;
  f.peer_or_index = 3;
  f.field = field;
  f.expected = mine;
  f.observed = theirs;
  return f;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A call mismatch names both ranks, the word that differs and both values: dimensions as numbers
// (16962 is "BB" in ASCII: still a number), the operation and dtype words as their names.
TEST(DescribeFault, CallMismatchNamesTheWordAndBothValues) {
  const std::string m = describe_fault(call_mismatch(dev::CallSignature::m, 8192, 16962));
  EXPECT_TRUE(contains(m, "rank 2: collective call mismatch: rank 3")) << m;
  EXPECT_TRUE(contains(m, "(m is 8192 on this rank, 16962 on rank 3)")) << m;
  const std::string op = describe_fault(call_mismatch(
      dev::CallSignature::op, dev::call_op_word("gemm_rs"), dev::call_op_word("ag_gemm")));
  EXPECT_TRUE(contains(op, "(operation is 'gemm_rs' on this rank, 'ag_gemm' on rank 3)")) << op;
  const std::string dtype = describe_fault(call_mismatch(
      dev::CallSignature::dtype, dev::call_op_word("bf16"), dev::call_op_word("fp16")));
  EXPECT_TRUE(contains(dtype, "(dtype is 'bf16' on this rank, 'fp16' on rank 3)")) << dtype;
  const std::string variant = describe_fault(call_mismatch(
      dev::CallSignature::variant, dev::call_op_word("ce_chunk"), dev::call_op_word("push")));
  EXPECT_TRUE(contains(variant, "(variant is 'ce_chunk' on this rank, 'push' on rank 3)"))
      << variant;
  // An operation word that is not text comes out as its number.
  const std::string raw = describe_fault(call_mismatch(dev::CallSignature::op, 7, 0x0100));
  EXPECT_TRUE(contains(raw, "(operation is 7 on this rank, 256 on rank 3)")) << raw;
}

TEST(DescribeFault, CallOpWordPacksUpToEightCharacters) {
  static_assert(dev::call_op_word("ab") == 0x6261ull);
  static_assert(dev::call_op_word("abcdefghij") == dev::call_op_word("abcdefgh"));
  static_assert(dev::call_op_word("") == 0);
}

// A CUDA error check consults every registered fault source (each live World's report, the GEMM
// engine's hang record), the newest first, and joins the reports that are ready; unregistering
// removes only that owner.
TEST(DescribeFault, FaultSourceRegistry) {
  static const int owner_a = 0, owner_b = 0;
  EXPECT_FALSE(detail::current_device_fault().has_value());
  detail::register_fault_source(
      &owner_a, [](const void*) -> std::optional<std::string> { return std::string("report a"); });
  EXPECT_EQ(detail::current_device_fault().value_or(""), "report a");
  detail::unregister_fault_source(&owner_b);  // not registered: nothing changes
  EXPECT_EQ(detail::current_device_fault().value_or(""), "report a");
  detail::register_fault_source(&owner_b, [](const void*) -> std::optional<std::string> {
    return std::nullopt;  // registered, nothing ready: a's report still counts
  });
  EXPECT_EQ(detail::current_device_fault().value_or(""), "report a");
  static const int owner_c = 0;
  detail::register_fault_source(
      &owner_c, [](const void*) -> std::optional<std::string> { return std::string("report c"); });
  EXPECT_EQ(detail::current_device_fault().value_or(""), "report c; report a");
  detail::unregister_fault_source(&owner_c);
  detail::unregister_fault_source(&owner_a);
  EXPECT_FALSE(detail::current_device_fault().has_value());
  detail::unregister_fault_source(&owner_b);
  EXPECT_FALSE(detail::current_device_fault().has_value());
}

// A wait that gave up because a peer had says so, keeping what it waited for; World appends the
// peers' own accounts. Without the flag the text is the timeout's, as before.
TEST(DescribeFault, AWaitThatGaveUpForAPeerSaysSo) {
  dev::FaultReport f{};
  f.kind = dev::FaultReport::wait_timeout;
  f.rank = 0;
  f.waited_ns = 3'500'000'000ull;
  f.address = 0x1000;
  f.heap_offset = 8;
  f.expected = 5;
  f.cmp = static_cast<int>(dev::Cmp::ge);
  f.peer_gave_up = 1;
  const std::string gave_up = describe_fault(f);
  EXPECT_TRUE(contains(gave_up,
                       "rank 0: wait gave up because a rank on this host gave up, "
                       "after 3500 ms on signal 0x1000 (symmetric heap offset 8): "
                       "expected value >= 5, observed 0"))
      << gave_up;
  f.peer_gave_up = 0;
  const std::string timed_out = describe_fault(f);
  EXPECT_TRUE(contains(timed_out, "rank 0: wait timed out after 3500 ms on signal 0x1000"))
      << timed_out;
  f.kind = dev::FaultReport::barrier_timeout;
  f.peer_gave_up = 1;
  f.peer_or_index = 2;
  f.late_rank = 1;
  const std::string barrier = describe_fault(f);
  EXPECT_TRUE(contains(barrier,
                       "rank 0: device barrier 2 gave up because a rank on this "
                       "host gave up, after 3500 ms waiting for rank 1"))
      << barrier;
}

// The registry tells every registered owner when a CUDA error ends the context, and only them;
// which errors end it is the runtime's own list.
TEST(DescribeFault, ContextLostReachesRegisteredOwners) {
  static int owner = 0;
  static std::string told;
  detail::register_fault_source(
      &owner, [](const void*) -> std::optional<std::string> { return std::nullopt; },
      [](const void* o, const std::string& what) {
        if (o == &owner) told = what;
      });
  detail::report_context_lost("cudaStreamSynchronize: unspecified launch failure");
  EXPECT_EQ(told, "cudaStreamSynchronize: unspecified launch failure");
  detail::unregister_fault_source(&owner);
  told.clear();
  detail::report_context_lost("again");
  EXPECT_TRUE(told.empty());
  EXPECT_TRUE(detail::ends_context(cudaErrorLaunchFailure));
  EXPECT_TRUE(detail::ends_context(cudaErrorIllegalAddress));
  EXPECT_FALSE(detail::ends_context(cudaErrorInvalidValue));
  EXPECT_FALSE(detail::ends_context(cudaErrorNotReady));
}

}  // namespace
}  // namespace weft
