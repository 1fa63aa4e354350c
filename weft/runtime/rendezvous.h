// A tiny TCP rendezvous for the host side of start-up: ships the NCCL unique id and gives
// host-side barriers and all-gathers before (or without) a communicator. Host-only, no CUDA.
//
// Star through rank 0: rank 0 listens on `port`, every other rank connects once and keeps its
// connection for all later rounds. Every wait has the deadline `timeout` (per operation), so a
// missing or dead rank turns into a weft::Timeout / weft::Error that names it instead of a hang.
// When rank 0 gives up on a round it tells the ranks still connected why, so they report the
// same cause.
//
// Collective: every rank must make the same sequence of all_gather/barrier calls. Not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace weft {

class Rendezvous {
 public:
  // Returns once all `world_size` ranks have connected (a barrier). IPv4; `master_addr` may be a
  // host name or a dotted address. Throws weft::Timeout when the deadline passes, weft::Error on
  // any other failure (a bad or duplicate peer, a closed connection, a busy port on rank 0).
  Rendezvous(int rank, int world_size, std::string master_addr, int port,
             std::chrono::milliseconds timeout = std::chrono::seconds(120));
  ~Rendezvous();  // closes the sockets

  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;

  // Every rank contributes `mine` (any bytes, empty included); result[r] is rank r's contribution.
  std::vector<std::string> all_gather(std::string_view mine);
  // Returns once every rank has called barrier().
  void barrier();
  // Runs `checks` (validation that reads this rank's own GPU, inputs or environment) and shares
  // the outcome in one all_gather round, so that ranks never part ways: when the checks throw on
  // any rank, every rank throws — the failing rank its own exception, the others one of the same
  // kind (weft::InvalidArgument, weft::Timeout or weft::Error) naming the failing ranks and
  // quoting the first one's message. Call it before a collective step (a symmetric allocation, a
  // device barrier) that a rank rejecting its arguments alone would leave its peers waiting at.
  // Collective, like all_gather.
  void agree(const std::function<void()>& checks);

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  // A round failed (a peer died, timed out or made another call): no later round can succeed.
  bool broken() const { return broken_; }

 private:
  using TimePoint = std::chrono::steady_clock::time_point;
  enum class Kind { kGather, kBarrier };

  void root_accept(TimePoint deadline);
  void client_connect(TimePoint deadline);
  std::vector<std::string> round(Kind kind, std::string_view mine);
  std::vector<std::string> root_round(Kind kind, std::string_view mine, TimePoint deadline);
  std::vector<std::string> client_round(Kind kind, std::string_view mine, TimePoint deadline);
  // Rank 0 gives up: tells every connected rank why, closes everything and throws. `rejected_fd`,
  // if any, is a refused connection that was already told why and needs closing the same way.
  [[noreturn]] void root_fail(const char* call, bool timeout, const std::string& detail,
                              int rejected_fd = -1);
  void close_all();
  std::string where() const;  // "ADDR:PORT"

  int rank_, world_size_;
  std::string master_addr_;
  int port_;
  std::chrono::milliseconds timeout_;
  uint32_t rounds_ = 0;        // all_gather/barrier rounds started so far
  bool broken_ = false;        // a round failed; the connections are closed
  int listen_fd_ = -1;         // rank 0 only, closed once everyone has connected
  int server_fd_ = -1;         // other ranks: the connection to rank 0
  std::vector<int> peer_fds_;  // rank 0 only: peer_fds_[r] is rank r's connection (-1 for 0)
};

}  // namespace weft
