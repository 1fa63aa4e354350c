// The abort board across processes, without a GPU: rank 0 runs in the test process, the other
// ranks are forked children that check what they see and report through their exit status. The
// GPU's half (marking in the fault path, waits that give up) is checked by the primitive suite's
// peer_abort check.
#include "weft/runtime/abort_board.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "tests/cpu/child_process.h"
#include "weft/runtime/error.h"
#include "weft/runtime/launcher.h"

namespace weft {
namespace {

using namespace std::chrono_literals;
using testing::Children;

// Shared-memory objects this process created and did not remove.
std::vector<std::string> leftover_pages() {
  std::vector<std::string> out;
  const std::string prefix = fmt::format("weft-abort-{}-", static_cast<long>(::getpid()));
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d))
      if (std::string(e->d_name).rfind(prefix, 0) == 0) out.push_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

// Runs a world of `keys.size()` ranks over loopback; rank r joins with host key keys[r] and runs
// body(r, its Rendezvous, its board or null, why). Children report through their exit status.
void run_world(const std::vector<std::string>& keys,
               const std::function<int(int, Rendezvous&, AbortBoard*, const std::string&)>& body) {
  const int world = static_cast<int>(keys.size());
  const int port = find_free_tcp_port();
  Children children;
  for (int r = 1; r < world; ++r)
    children.spawn([&, r] {
      Rendezvous rv(r, world, "127.0.0.1", port, 10s);
      std::string why;
      auto board = AbortBoard::create(rv, keys[r], &why);
      return body(r, rv, board.get(), why);
    });
  {
    Rendezvous rv(0, world, "127.0.0.1", port, 10s);
    std::string why;
    auto board = AbortBoard::create(rv, keys[0], &why);
    EXPECT_EQ(body(0, rv, board.get(), why), 0);
  }
  for (int code : children.wait_all()) EXPECT_EQ(code, 0);
}

// A host mark and a device mark (written as the GPU's fault path writes it) reach every other
// rank with their accounts; the first host mark stays; no rank counts itself; the page's name is
// gone once the board is up.
TEST(AbortBoard, PeersSeeEachMarkWithItsAccount) {
  run_world(
      {"h", "h", "h"}, [](int rank, Rendezvous& rv, AbortBoard* board, const std::string& why) {
        if (board == nullptr) {
          std::fprintf(stderr, "rank %d: no board: %s\n", rank, why.c_str());
          return 1;
        }
        if (board->slot() != rank || board->page()->slots != 3) return 2;
        if (rank == 0 && !leftover_pages().empty()) return 3;
        if (rank == 1) {  // what a faulting kernel leaves
          dev::FaultReport* f = board->own_report();
          f->kind = dev::FaultReport::bad_symm_at;
          f->rank = 1;
          f->peer_or_index = 7;
          f->ready = 1;
          *board->own_mark() = AbortBoard::kDevice;
          *board->any_word() = 1;
        }
        if (rank == 2) {
          board->mark_host("rank 2: gave up first");
          board->mark_host("rank 2: and again");
        }
        rv.barrier();  // every mark is made
        const auto accounts = board->accounts(/*include_own=*/false);
        auto is_device = [](const AbortBoard::Account& a) {
          return a.rank == 1 && a.mark == AbortBoard::kDevice && a.report &&
                 a.report->kind == dev::FaultReport::bad_symm_at && a.report->peer_or_index == 7;
        };
        auto is_host = [](const AbortBoard::Account& a) {
          return a.rank == 2 && a.mark == AbortBoard::kHost &&
                 a.reason == "rank 2: gave up first" && !a.report;
        };
        // With its own mark included, a marked rank sees itself too.
        if (rank == 2) {
          const auto all = board->accounts(/*include_own=*/true);
          if (all.size() != 2 || !is_host(all[1]) || !board->any()) return 7;
        }
        switch (rank) {
          case 0:
            return accounts.size() == 2 && is_device(accounts[0]) && is_host(accounts[1]) &&
                           !board->marked() && board->any_peer()
                       ? 0
                       : 4;
          case 1:
            return accounts.size() == 1 && is_host(accounts[0]) && board->marked() ? 0 : 5;
          default:
            return accounts.size() == 1 && is_device(accounts[0]) && board->marked() ? 0 : 6;
        }
      });
}

// Ranks on different hosts get different boards: a mark reaches only its own host's ranks.
TEST(AbortBoard, EachHostHasItsOwnBoard) {
  run_world({"a", "a", "b", "b"}, [](int rank, Rendezvous& rv, AbortBoard* board,
                                     const std::string&) {
    if (board == nullptr) return 1;
    if (board->slot() != rank % 2 || board->page()->world_rank[rank % 2] != rank) return 2;
    if (rank == 3) board->mark_host("rank 3: gone");
    rv.barrier();  // rank 3 has marked
    const auto accounts = board->accounts(/*include_own=*/false);
    if (rank == 2)
      return accounts.size() == 1 && accounts[0].rank == 3 && accounts[0].reason == "rank 3: gone"
                 ? 0
                 : 3;
    if (rank < 2) return accounts.empty() && !board->any_peer() ? 0 : 4;
    return 0;
  });
}

// A rank alone on its host gets no board (nobody to tell) and says why; the others still share one.
TEST(AbortBoard, ARankAloneOnItsHostHasNone) {
  run_world({"a", "b", "b"}, [](int rank, Rendezvous&, AbortBoard* board, const std::string& why) {
    if (rank == 0)
      return board == nullptr && why.find("no other rank on this host") != std::string::npos ? 0
                                                                                             : 1;
    return board != nullptr && board->page()->slots == 2 ? 0 : 2;
  });
}

}  // namespace
}  // namespace weft
