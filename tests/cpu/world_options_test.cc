// WorldOptions from the environment: values, suffixes, and clear errors for bad input.
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "tests/support/expect_error.h"
#include "weft/runtime/world.h"

namespace weft {
namespace {

EnvLookup fake(std::map<std::string, std::string, std::less<>> vars) {
  return [vars](std::string_view name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(WorldOptions, DefaultsWithoutEnvironment) {
  const WorldOptions o = world_options_from_env({}, fake({}));
  EXPECT_EQ(o.heap_bytes, size_t(1) << 30);
  EXPECT_EQ(o.wait_timeout, std::chrono::seconds(30));
  EXPECT_EQ(effective_sync_timeout(o), std::chrono::seconds(120));
  WorldOptions forever = o;
  forever.wait_timeout = std::chrono::milliseconds(0);
  EXPECT_EQ(effective_sync_timeout(forever), std::chrono::milliseconds(0));
  WorldOptions slow = o;
  slow.wait_timeout = std::chrono::seconds(100);
  EXPECT_EQ(effective_sync_timeout(slow), std::chrono::seconds(200));
  EXPECT_TRUE(o.check_symmetric_allocations);
}

TEST(WorldOptions, ReadsEveryVariable) {
  EXPECT_EQ(world_options_from_env({}, fake({{"WEFT_HEAP_BYTES", "512M"}})).heap_bytes,
            size_t(512) << 20);
  EXPECT_EQ(world_options_from_env({}, fake({{"WEFT_HEAP_BYTES", "2G"}})).heap_bytes,
            size_t(2) << 30);
  EXPECT_EQ(world_options_from_env({}, fake({{"WEFT_HEAP_BYTES", "65536"}})).heap_bytes, 65536u);
  EXPECT_EQ(world_options_from_env({}, fake({{"WEFT_WAIT_TIMEOUT_MS", "250"}})).wait_timeout,
            std::chrono::milliseconds(250));
  EXPECT_EQ(world_options_from_env({}, fake({{"WEFT_WAIT_TIMEOUT_MS", "0"}})).wait_timeout,
            std::chrono::milliseconds(0));
  EXPECT_EQ(effective_sync_timeout(
                world_options_from_env({}, fake({{"WEFT_SYNC_TIMEOUT_MS", "5000"}}))),
            std::chrono::milliseconds(5000));
  EXPECT_EQ(effective_sync_timeout(world_options_from_env(
                {}, fake({{"WEFT_SYNC_TIMEOUT_MS", "0"}, {"WEFT_WAIT_TIMEOUT_MS", "250"}}))),
            std::chrono::milliseconds(0));
  EXPECT_FALSE(world_options_from_env({}, fake({{"WEFT_CHECK_SYMMETRY", "0"}}))
                   .check_symmetric_allocations);
  EXPECT_EQ(world_options_from_env({}, fake({{"WEFT_RENDEZVOUS_TIMEOUT_MS", "600000"}}))
                .rendezvous_timeout,
            std::chrono::minutes(10));
  EXPECT_EQ(
      world_options_from_env({}, fake({{"WEFT_RENDEZVOUS_TIMEOUT_MS", "0"}})).rendezvous_timeout,
      std::chrono::milliseconds::max());  // forever: the rendezvous' deadlines saturate
}

void expect_invalid(std::map<std::string, std::string, std::less<>> vars, const std::string& part) {
  SCOPED_TRACE(vars.begin()->first + "=" + vars.begin()->second);
  testing::expect_error([&] { world_options_from_env({}, fake(vars)); }, {part});
}

TEST(WorldOptions, RejectsBadValuesByName) {
  expect_invalid({{"WEFT_HEAP_BYTES", "lots"}}, "WEFT_HEAP_BYTES=lots");
  expect_invalid({{"WEFT_HEAP_BYTES", "-1G"}}, "WEFT_HEAP_BYTES=-1G");
  expect_invalid({{"WEFT_HEAP_BYTES", "4T"}}, "unknown suffix");
  expect_invalid({{"WEFT_WAIT_TIMEOUT_MS", "1s"}}, "WEFT_WAIT_TIMEOUT_MS=1s");
  expect_invalid({{"WEFT_WAIT_TIMEOUT_MS", "-5"}}, "WEFT_WAIT_TIMEOUT_MS=-5");
  expect_invalid({{"WEFT_SYNC_TIMEOUT_MS", "soon"}}, "WEFT_SYNC_TIMEOUT_MS=soon");
  expect_invalid({{"WEFT_CHECK_SYMMETRY", "yes"}}, "WEFT_CHECK_SYMMETRY");
  expect_invalid({{"WEFT_RENDEZVOUS_TIMEOUT_MS", "2m"}}, "WEFT_RENDEZVOUS_TIMEOUT_MS=2m");
  // Values that wrapped before: a byte count past 64 bits, a blank before a minus sign, timeouts
  // whose nanoseconds overflow.
  expect_invalid({{"WEFT_HEAP_BYTES", "17179869185G"}}, "does not fit in 64 bits");
  expect_invalid({{"WEFT_HEAP_BYTES", " -1073741824"}}, "is not a byte count");
  expect_invalid({{"WEFT_WAIT_TIMEOUT_MS", "18446744073710"}}, "WEFT_WAIT_TIMEOUT_MS");
  expect_invalid({{"WEFT_SYNC_TIMEOUT_MS", "10000000000000"}}, "WEFT_SYNC_TIMEOUT_MS");
  expect_invalid({{"WEFT_WAIT_TIMEOUT_MS", " 5"}}, "WEFT_WAIT_TIMEOUT_MS");
}

// An empty value counts as unset, as for the bootstrap variables.
TEST(WorldOptions, EmptyMeansUnset) {
  const WorldOptions o = world_options_from_env(
      {},
      fake({{"WEFT_HEAP_BYTES", ""}, {"WEFT_WAIT_TIMEOUT_MS", ""}, {"WEFT_CHECK_SYMMETRY", ""}}));
  EXPECT_EQ(o.heap_bytes, WorldOptions{}.heap_bytes);
  EXPECT_EQ(o.wait_timeout, WorldOptions{}.wait_timeout);
  EXPECT_EQ(o.check_symmetric_allocations, WorldOptions{}.check_symmetric_allocations);
}

}  // namespace
}  // namespace weft
