#include "tests/gpu/test_world.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "tools/checks/child_world.h"
#include "tools/checks/primitive_checks.h"

namespace weft::testing {
namespace {
std::unique_ptr<World> g_world;
uint64_t g_seed = 0;

constexpr const char* kChildBodyVariable = "WEFT_TEST_CHILD_BODY";

std::map<std::string, ChildBody>& child_bodies() {
  static std::map<std::string, ChildBody> bodies;
  return bodies;
}

// When this process is a child started by run_child_body: its body's exit code, else -1.
int run_child_body_if_requested() {
  const char* name = std::getenv(kChildBodyVariable);
  if (name == nullptr) return -1;
  const auto it = child_bodies().find(name);
  if (it == child_bodies().end()) {
    std::printf("no child body named '%s' in this test binary\n", name);
    return 6;
  }
  try {
    auto world = World::create(world_options_from_env());
    return it->second(*world);
  } catch (const std::exception& e) {
    std::printf("child body '%s' threw: %s\n", name, e.what());
    return 5;
  }
}
}  // namespace

bool register_child_body(const char* name, ChildBody body) {
  return child_bodies().emplace(name, body).second;
}

std::pair<int, std::string> run_child_body(const char* name, std::chrono::seconds limit,
                                           const std::vector<std::string>& extra_env) {
  std::vector<std::string> env = {fmt::format("{}={}", kChildBodyVariable, name)};
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  return checks::run_child_world(test_world(), env, limit);
}

World& test_world() { return *g_world; }
uint64_t shared_seed() { return g_seed; }

Verdict all_ranks_ok(bool ok, const std::string& detail) {
  World& w = test_world();
  const std::string mine = std::string(ok ? "1" : "0") + detail;
  const auto all = w.rendezvous().all_gather(mine);
  Verdict v{true, ""};
  for (int r = 0; r < w.size(); ++r) {
    if (all[r].empty() || all[r][0] != '1') {
      v.ok = false;
      v.message += fmt::format("rank {}: {}\n", r, all[r].empty() ? "" : all[r].substr(1));
    }
  }
  return v;
}

}  // namespace weft::testing

int main(int argc, char** argv) {
  // The wait-timeout check re-runs this binary as a child that must trap.
  if (const int child = weft::checks::run_wait_timeout_child_if_requested(); child >= 0) return child;
  if (const int child = weft::checks::run_barrier_timeout_child_if_requested(); child >= 0)
    return child;
  if (const int child = weft::checks::run_peer_abort_child_if_requested(); child >= 0) return child;
  if (const int child = weft::testing::run_child_body_if_requested(); child >= 0) return child;
  ::testing::InitGoogleTest(&argc, argv);
  namespace wt = weft::testing;
  try {
    weft::WorldOptions options = weft::world_options_from_env();
    options.exit_on_sync_timeout = true;  // a stuck stream would block every destructor after it
    wt::g_world = weft::World::create(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  weft::World& w = *wt::g_world;

  // One seed for the whole job.
  uint64_t seed = static_cast<uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  if (const char* s = std::getenv("WEFT_TEST_SEED")) seed = std::strtoull(s, nullptr, 0);
  const auto seeds = w.rendezvous().all_gather(
      std::string_view(reinterpret_cast<const char*>(&seed), sizeof(seed)));
  std::memcpy(&wt::g_seed, seeds[0].data(), sizeof(uint64_t));
  if (w.rank() == 0)
    std::printf("[weft] %d ranks, seed %llu (set WEFT_TEST_SEED to repeat)\n", w.size(),
                static_cast<unsigned long long>(wt::g_seed));

  // Only rank 0 prints the progress; every rank still prints its own failures.
  if (w.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    struct FailurePrinter : ::testing::EmptyTestEventListener {
      int rank;
      explicit FailurePrinter(int r) : rank(r) {}
      void OnTestPartResult(const ::testing::TestPartResult& r) override {
        if (r.failed())
          std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank, r.file_name() ? r.file_name() : "?",
                       r.line_number(), r.summary());
      }
    };
    listeners.Append(new FailurePrinter(w.rank()));
  }

  const int local = RUN_ALL_TESTS();
  // The job fails if any rank failed.
  const auto verdict = wt::all_ranks_ok(local == 0, "");
  const int rc = verdict.ok ? 0 : 1;
  if (w.rank() == 0 && !verdict.ok) std::fprintf(stderr, "[weft] failing ranks:\n%s", verdict.message.c_str());
  wt::g_world.reset();
  return rc;
}
