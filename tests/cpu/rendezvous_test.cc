// Rendezvous over loopback. Rank 0 runs in the test process (so gtest assertions work); the other
// ranks are forked children that check their own results and report through their exit status
// (0 = as expected), printing what went wrong on stderr. Every wait is bounded.
#include "weft/runtime/rendezvous.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <thread>

#include "tests/cpu/child_process.h"
#include "weft/runtime/error.h"
#include "weft/runtime/launcher.h"

namespace weft {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using testing::Children;

bool has(const std::string& text, const std::string& needle) {
  return testing::contains(text, needle);
}

// In a child: runs fn, expects an exception of type E whose message contains every needle.
template <typename E>
int expect_throw_in_child(const std::function<void()>& fn, std::vector<std::string> needles) {
  try {
    fn();
  } catch (const E& e) {
    for (const std::string& n : needles) {
      if (!has(e.what(), n)) {
        std::fprintf(stderr, "child: message '%s' lacks '%s'\n", e.what(), n.c_str());
        return 2;
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "child: wrong exception type: %s\n", e.what());
    return 3;
  }
  std::fprintf(stderr, "child: no exception\n");
  return 4;
}

// Distinct payloads: empty ones, 1 MiB ones and short strings, different every round.
std::string payload(int rank, int round) {
  switch (rank % 4) {
    case 1:
      return "";
    case 2: {
      std::string big(1 << 20, '\0');
      for (size_t i = 0; i < big.size(); ++i)
        big[i] = static_cast<char>((i * 31 + rank + round) & 0xff);
      return big;
    }
    default:
      return fmt::format("rank {} round {}", rank, round);
  }
}

// Both sides of the all_gather test: three rounds with barriers in between.
int exercise(Rendezvous& rv) {
  for (int round = 0; round < 3; ++round) {
    std::vector<std::string> all = rv.all_gather(payload(rv.rank(), round));
    if (static_cast<int>(all.size()) != rv.world_size()) return 10;
    for (int r = 0; r < rv.world_size(); ++r) {
      if (all[r] != payload(r, round)) {
        std::fprintf(stderr, "rank %d: round %d: part of rank %d is wrong (%zu bytes)\n", rv.rank(),
                     round, r, all[r].size());
        return 11;
      }
    }
    rv.barrier();
  }
  return 0;
}

// Ranks 1 .. world-1 as child processes, each joining the rendezvous at `addr`:`port` and
// returning body(its Rendezvous) as its exit status.
void spawn_peers(Children& children, int world, const std::string& addr, int port,
                 const std::function<int(Rendezvous&)>& body) {
  for (int r = 1; r < world; ++r)
    children.spawn([&, r] {
      Rendezvous rv(r, world, addr, port, 10s);
      return body(rv);
    });
}

void run_world(int world, const std::string& client_addr, std::chrono::milliseconds root_delay) {
  int port = find_free_tcp_port();
  Children children;
  spawn_peers(children, world, client_addr, port, exercise);
  std::this_thread::sleep_for(root_delay);  // rank 0 may come up after the others
  {
    Rendezvous rv(0, world, "127.0.0.1", port, 10s);
    EXPECT_EQ(rv.rank(), 0);
    EXPECT_EQ(rv.world_size(), world);
    EXPECT_EQ(exercise(rv), 0);
  }
  for (int code : children.wait_all()) EXPECT_EQ(code, 0);
}

TEST(Rendezvous, SingleRankNeedsNoSockets) {
  Rendezvous rv(0, 1, "", 0);
  EXPECT_EQ(rv.all_gather("x"), std::vector<std::string>{"x"});
  EXPECT_EQ(rv.all_gather(""), std::vector<std::string>{""});
  rv.barrier();
}

TEST(Rendezvous, TwoRanksByHostName) { run_world(2, "localhost", 0ms); }
TEST(Rendezvous, FourRanksRootStartsLate) { run_world(4, "127.0.0.1", 300ms); }
TEST(Rendezvous, EightRanks) { run_world(8, "127.0.0.1", 0ms); }

TEST(Rendezvous, ArgumentsAreValidated) {
  EXPECT_THROW(Rendezvous(2, 2, "127.0.0.1", 1234), InvalidArgument);
  EXPECT_THROW(Rendezvous(-1, 2, "127.0.0.1", 1234), InvalidArgument);
  EXPECT_THROW(Rendezvous(0, 0, "127.0.0.1", 1234), InvalidArgument);
  EXPECT_THROW(Rendezvous(0, 2, "127.0.0.1", 0), InvalidArgument);
  EXPECT_THROW(Rendezvous(1, 2, "", 1234), InvalidArgument);
  EXPECT_THROW(Rendezvous(0, 2, "127.0.0.1", 1234, 0ms), InvalidArgument);
}

TEST(Rendezvous, RootTimesOutNamingMissingRank) {
  int port = find_free_tcp_port();
  Children children;
  children.spawn([&] {
    return expect_throw_in_child<Timeout>([&] { Rendezvous rv(1, 3, "127.0.0.1", port, 1s); },
                                          {"rank 2 of 3 never connected"});
  });
  auto start = Clock::now();
  try {
    Rendezvous rv(0, 3, "127.0.0.1", port, 1s);
    FAIL() << "rank 0 did not time out";
  } catch (const Timeout& e) {
    auto elapsed = Clock::now() - start;
    EXPECT_GE(elapsed, 900ms);
    EXPECT_LT(elapsed, 2s);
    EXPECT_TRUE(has(e.what(), fmt::format("rendezvous on 127.0.0.1:{} timed out after 1 s: rank 2 "
                                          "of 3 never connected",
                                          port)))
        << e.what();
  }
  EXPECT_EQ(children.wait_all(), std::vector<int>{0});
}

TEST(Rendezvous, RootTimeoutListsSeveralMissingRanks) {
  int port = find_free_tcp_port();
  try {
    Rendezvous rv(0, 6, "127.0.0.1", port, 300ms);
    FAIL() << "rank 0 did not time out";
  } catch (const Timeout& e) {
    EXPECT_TRUE(has(e.what(), "ranks 1-5 of 6 never connected")) << e.what();
    EXPECT_TRUE(has(e.what(), "0.3 s")) << e.what();
  }
}

TEST(Rendezvous, ClientTimesOutWhenNobodyListens) {
  int port = find_free_tcp_port();
  auto start = Clock::now();
  try {
    Rendezvous rv(1, 2, "127.0.0.1", port, 500ms);
    FAIL() << "no timeout";
  } catch (const Timeout& e) {
    EXPECT_LT(Clock::now() - start, 1500ms);
    EXPECT_TRUE(
        has(e.what(), fmt::format("could not reach rank 0 at 127.0.0.1:{} within 0.5 s", port)))
        << e.what();
    EXPECT_TRUE(has(e.what(), "Connection refused")) << e.what();
  }
}

TEST(Rendezvous, UnresolvableHostName) {
  // Error (or Timeout, where the resolver reports a temporary failure); either names the host.
  try {
    Rendezvous rv(1, 2, "no-such-host.invalid", 29999, 500ms);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "no-such-host.invalid")) << e.what();
  }
}

TEST(Rendezvous, DuplicateRankIsRejected) {
  int port = find_free_tcp_port();
  Children children;
  for (int i = 0; i < 2; ++i) {
    children.spawn([&] {
      // One copy is refused, the other hears that rank 0 gave up; both learn why.
      return expect_throw_in_child<Error>([&] { Rendezvous rv(1, 3, "127.0.0.1", port, 5s); },
                                          {"rank 1 connected twice"});
    });
  }
  auto start = Clock::now();
  try {
    Rendezvous rv(0, 3, "127.0.0.1", port, 5s);
    FAIL() << "duplicate accepted";
  } catch (const Timeout& e) {
    FAIL() << "timed out instead of rejecting: " << e.what();
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "rank 1 connected twice")) << e.what();
    EXPECT_LT(Clock::now() - start, 3s);
  }
  EXPECT_EQ(children.wait_all(), (std::vector<int>{0, 0}));
}

TEST(Rendezvous, WrongWorldSizeIsRejected) {
  int port = find_free_tcp_port();
  Children children;
  children.spawn([&] {
    return expect_throw_in_child<Error>([&] { Rendezvous rv(1, 3, "127.0.0.1", port, 5s); },
                                        {"refused rank 1", "world_size 3 but rank 0 has 2"});
  });
  try {
    Rendezvous rv(0, 2, "127.0.0.1", port, 5s);
    FAIL() << "wrong world size accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "world_size 3 but rank 0 has 2")) << e.what();
  }
  EXPECT_EQ(children.wait_all(), std::vector<int>{0});
}

TEST(Rendezvous, StrangerIsRejected) {
  int port = find_free_tcp_port();
  Children children;
  children.spawn([&] {
    auto deadline = Clock::now() + 5s;
    while (Clock::now() < deadline) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(port));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
        const char request[] = "GET / HTTP/1.1\r\n\r\n";
        ssize_t sent = ::send(fd, request, sizeof(request) - 1, MSG_NOSIGNAL);
        char buf[256];
        while (::recv(fd, buf, sizeof(buf), 0) > 0) {
        }
        ::close(fd);
        return sent > 0 ? 0 : 1;
      }
      ::close(fd);
      std::this_thread::sleep_for(20ms);
    }
    return 5;
  });
  try {
    Rendezvous rv(0, 2, "127.0.0.1", port, 5s);
    FAIL() << "stranger accepted";
  } catch (const Timeout& e) {
    FAIL() << "timed out: " << e.what();
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "instead of weft's rendezvous greeting")) << e.what();
  }
  EXPECT_EQ(children.wait_all(), std::vector<int>{0});
}

TEST(Rendezvous, SilentProbeDoesNotBlockRealRanks) {
  int port = find_free_tcp_port();
  Children children;
  children.spawn([&] {  // connects and says nothing for a while
    for (int attempt = 0; attempt < 200; ++attempt) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(port));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
        std::this_thread::sleep_for(1500ms);
        ::close(fd);
        return 0;
      }
      ::close(fd);
      std::this_thread::sleep_for(10ms);
    }
    return 5;
  });
  children.spawn([&] {
    std::this_thread::sleep_for(200ms);  // after the probe
    Rendezvous rv(1, 2, "127.0.0.1", port, 5s);
    return rv.all_gather("one") == std::vector<std::string>{"zero", "one"} ? 0 : 1;
  });
  auto start = Clock::now();
  Rendezvous rv(0, 2, "127.0.0.1", port, 5s);
  EXPECT_EQ(rv.all_gather("zero"), (std::vector<std::string>{"zero", "one"}));
  EXPECT_LT(Clock::now() - start, 1400ms);  // did not wait for the probe to hang up
  EXPECT_EQ(children.wait_all(), (std::vector<int>{0, 0}));
}

TEST(Rendezvous, PeerClosingMidRoundIsNamed) {
  int port = find_free_tcp_port();
  Children children;
  children.spawn([&] {
    Rendezvous rv(1, 3, "127.0.0.1", port, 5s);
    return 0;  // leaves without joining the round
  });
  children.spawn([&] {
    Rendezvous rv(2, 3, "127.0.0.1", port, 5s);
    return expect_throw_in_child<Error>([&] { rv.all_gather("two"); },
                                        {"rank 1 closed its connection during all_gather round 1"});
  });
  Rendezvous rv(0, 3, "127.0.0.1", port, 5s);
  try {
    rv.all_gather("zero");
    FAIL() << "no error";
  } catch (const Timeout& e) {
    FAIL() << "timed out: " << e.what();
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "rank 1 closed its connection during all_gather round 1"))
        << e.what();
  }
  EXPECT_THROW(rv.barrier(), Error);  // unusable after the failure
  EXPECT_EQ(children.wait_all(), (std::vector<int>{0, 0}));
}

TEST(Rendezvous, MissingPartTimesOut) {
  int port = find_free_tcp_port();
  Children children;
  children.spawn([&] {
    Rendezvous rv(1, 3, "127.0.0.1", port, 1s);
    return expect_throw_in_child<Timeout>([&] { rv.all_gather("one"); },
                                          {"rank 2 of 3 never sent their part"});
  });
  children.spawn([&] {
    Rendezvous rv(2, 3, "127.0.0.1", port, 1s);
    std::this_thread::sleep_for(1500ms);  // busy elsewhere: never joins the round in time
    return 0;
  });
  Rendezvous rv(0, 3, "127.0.0.1", port, 1s);
  auto start = Clock::now();
  try {
    rv.all_gather("zero");
    FAIL() << "no timeout";
  } catch (const Timeout& e) {
    EXPECT_LT(Clock::now() - start, 1800ms);
    EXPECT_TRUE(has(e.what(), fmt::format("all_gather round 1 on 127.0.0.1:{} timed out after 1 s: "
                                          "rank 2 of 3 never sent their part",
                                          port)))
        << e.what();
  }
  EXPECT_EQ(children.wait_all(), (std::vector<int>{0, 0}));
}

TEST(Rendezvous, MismatchedCallsAreReported) {
  int port = find_free_tcp_port();
  Children children;
  children.spawn([&] {
    Rendezvous rv(1, 2, "127.0.0.1", port, 5s);
    return expect_throw_in_child<Error>([&] { rv.barrier(); },
                                        {"rank 1 called barrier (round 1) while rank 0 called "
                                         "all_gather (round 1)"});
  });
  Rendezvous rv(0, 2, "127.0.0.1", port, 5s);
  try {
    rv.all_gather("zero");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "rank 1 called barrier (round 1) while rank 0 called all_gather"))
        << e.what();
  }
  EXPECT_EQ(children.wait_all(), std::vector<int>{0});
}

TEST(Rendezvous, RootGoneIsReportedByClients) {
  int port = find_free_tcp_port();
  Children children;
  children.spawn([&] {
    Rendezvous rv(0, 2, "127.0.0.1", port, 5s);
    return 0;  // rank 0 leaves before the first round
  });
  Rendezvous rv(1, 2, "127.0.0.1", port, 5s);
  try {
    rv.all_gather("one");
    FAIL() << "no error";
  } catch (const Timeout& e) {
    FAIL() << "timed out: " << e.what();
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), fmt::format("rank 0 at 127.0.0.1:{} closed the connection", port)))
        << e.what();
  }
  EXPECT_EQ(children.wait_all(), std::vector<int>{0});
}

// agree(): what one rank's checks reject, every rank throws, with the same kind of error; the
// rendezvous stays usable for the next round.
int agree_as(Rendezvous& rv, int failing_rank, char kind) {
  auto checks = [&] {
    if (rv.rank() != failing_rank) return;
    if (kind == 'A') throw InvalidArgument("Op::Op", "needs 200000 bytes of shared memory");
    if (kind == 'T') throw Timeout("Op::Op", "the probe took too long");
    throw std::runtime_error("plain failure");
  };
  try {
    rv.agree(checks);
    std::fprintf(stderr, "rank %d: agree did not throw\n", rv.rank());
    return 20;
  } catch (const std::exception& e) {
    const std::string what = e.what();
    const bool own = rv.rank() == failing_rank;
    bool kind_ok = false;
    if (kind == 'A') kind_ok = dynamic_cast<const InvalidArgument*>(&e) != nullptr;
    if (kind == 'T') kind_ok = dynamic_cast<const Timeout*>(&e) != nullptr;
    if (kind == 'E')
      kind_ok = own ? dynamic_cast<const Error*>(&e) == nullptr
                    : dynamic_cast<const Error*>(&e) != nullptr &&
                          dynamic_cast<const InvalidArgument*>(&e) == nullptr;
    const std::string expected = kind == 'A'   ? "needs 200000 bytes of shared memory"
                                 : kind == 'T' ? "the probe took too long"
                                               : "plain failure";
    const bool names_rank =
        own || has(what, fmt::format("rank {} rejected what this rank accepted", failing_rank));
    if (!kind_ok || !has(what, expected) || !names_rank) {
      std::fprintf(stderr, "rank %d: kind %c: unexpected error '%s'\n", rv.rank(), kind,
                   what.c_str());
      return 21;
    }
  }
  try {
    rv.agree([] {});  // all pass: returns on every rank
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: agree after a failure threw '%s'\n", rv.rank(), e.what());
    return 22;
  }
  return 0;
}

int exercise_agree(Rendezvous& rv) {
  for (const auto& [failing, kind] : {std::pair{2, 'A'}, std::pair{0, 'T'}, std::pair{1, 'E'}})
    if (const int code = agree_as(rv, failing, kind); code != 0) return code;
  return 0;
}

TEST(Rendezvous, AgreeSharesOneRanksRejection) {
  int port = find_free_tcp_port();
  Children children;
  spawn_peers(children, 3, "127.0.0.1", port, exercise_agree);
  Rendezvous rv(0, 3, "127.0.0.1", port, 10s);
  EXPECT_EQ(exercise_agree(rv), 0);
  EXPECT_EQ(children.wait_all(), (std::vector<int>{0, 0}));
}

TEST(Rendezvous, AgreeNamesEveryFailingRank) {
  int port = find_free_tcp_port();
  Children children;
  spawn_peers(children, 3, "127.0.0.1", port, [](Rendezvous& rv) {
    const std::string reason = fmt::format("rank {}'s reason", rv.rank());
    return expect_throw_in_child<InvalidArgument>(
        [&] { rv.agree([&] { throw InvalidArgument("Op::Op", reason); }); }, {reason});
  });
  Rendezvous rv(0, 3, "127.0.0.1", port, 10s);
  try {
    rv.agree([] {});
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_TRUE(
        has(e.what(), "ranks 1, 2 rejected what this rank accepted; rank 1: rank 1's reason"))
        << e.what();
    EXPECT_EQ(e.call(), "Op::Op");
  }
  EXPECT_EQ(children.wait_all(), (std::vector<int>{0, 0}));
}

TEST(Rendezvous, AgreeOnOneRankRunsTheChecks) {
  Rendezvous rv(0, 1, "", 0);
  EXPECT_NO_THROW(rv.agree([] {}));
  EXPECT_THROW(rv.agree([] { throw InvalidArgument("Op::Op", "bad"); }), InvalidArgument);
}

}  // namespace
}  // namespace weft
