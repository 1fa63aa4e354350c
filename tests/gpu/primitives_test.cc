// Every device primitive on every rank: one GoogleTest case per self-check (tools/checks), with the
// full 100,000-round message-passing litmus test. Start with `weft run -n N -- weft_primitives_test`.
#include <gtest/gtest.h>

#include "tests/gpu/test_world.h"
#include "tools/checks/primitive_checks.h"

namespace weft::checks {
namespace {

class Primitives : public ::testing::TestWithParam<Check> {};

TEST_P(Primitives, HoldOnEveryRank) {
  World& world = testing::test_world();
  CheckOptions options;
  options.seed = testing::shared_seed();
  options.litmus_rounds = 100000;
  const CheckResult local = GetParam().run(world, options);
  if (!local.skipped.empty()) GTEST_SKIP() << local.skipped;  // the same on every rank
  WEFT_EXPECT_ALL_RANKS(local.ok, local.detail);
}

INSTANTIATE_TEST_SUITE_P(Weft, Primitives, ::testing::ValuesIn(primitive_checks()),
                         [](const ::testing::TestParamInfo<Check>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace weft::checks
