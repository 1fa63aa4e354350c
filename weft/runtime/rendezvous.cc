#include "weft/runtime/rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <thread>

#include "weft/runtime/error.h"

namespace weft {

namespace {

// Wire format. Every connection starts with a fixed 16-byte hello from the connecting rank; after
// that both sides exchange frames: a 16-byte header {op, round, payload length} and the payload.
// Integers are little-endian on the wire so the format does not depend on the hosts.
enum class Op : uint32_t {
  kWelcome = 1,  // rank 0 -> rank: every rank has arrived
  kReject = 2,   // rank 0 -> rank: your hello was refused; payload = reason
  kAbort = 3,    // rank 0 -> rank: rank 0 gave up; payload = 'T' (timeout) or 'E', then reason
  kGather = 4,   // rank -> rank 0: my all_gather part
  kBarrier = 5,  // rank -> rank 0: I reached the barrier
  kResult = 6,   // rank 0 -> rank: the round's result (all parts for all_gather, empty for barrier)
};

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

constexpr uint32_t kMagic = 0x54464557;  // "WEFT" as little-endian bytes
constexpr uint32_t kVersion = 1;
constexpr size_t kHelloBytes = 16;
constexpr size_t kHeaderBytes = 16;
// Rendezvous payloads are small (an NCCL unique id is 128 bytes); the cap only stops a corrupt
// length from turning into a huge allocation.
constexpr uint64_t kMaxPayload = uint64_t{1} << 32;

void put_u32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
void put_u64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
uint32_t get_u32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}
uint64_t get_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

std::string format_seconds(std::chrono::milliseconds ms) {
  if (ms.count() % 1000 == 0) return fmt::format("{} s", ms.count() / 1000);
  return fmt::format("{:g} s", static_cast<double>(ms.count()) / 1000.0);
}

// `t` + `d`, saturating at the clock's end (a timeout of hours, or milliseconds::max(), means
// "practically never" rather than an overflow into the past).
TimePoint later(TimePoint t, std::chrono::milliseconds d) {
  const auto room = std::chrono::duration_cast<std::chrono::milliseconds>(TimePoint::max() - t);
  return d >= room ? TimePoint::max() : t + std::chrono::duration_cast<Clock::duration>(d);
}

int remaining_ms(TimePoint deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return 0;
  // Round up so a poll never returns a hair early and spins.
  return static_cast<int>(std::min<int64_t>(left.count() + 1, 1 << 30));
}

// poll() that survives EINTR. Returns the number of ready descriptors, 0 once the deadline passed.
int poll_until(pollfd* fds, size_t n, TimePoint deadline) {
  while (true) {
    int rc = ::poll(fds, n, remaining_ms(deadline));
    if (rc >= 0) return rc;
    if (errno != EINTR) throw Error("poll", std::strerror(errno));
  }
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

void set_nodelay(int fd) {
  // Rendezvous messages are tiny request/response pairs; Nagle would add up to 40 ms to each.
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

enum class Io { kOk, kTimeout, kClosed };

// Sends all of [data, data+n) or reports why not. Connection errors count as kClosed: the message
// the caller builds ("rank 2 closed its connection") is the same either way.
Io write_all(int fd, const char* data, size_t n, TimePoint deadline, int* err) {
  while (n > 0) {
    ssize_t rc = ::send(fd, data, n, MSG_NOSIGNAL);
    if (rc > 0) {
      data += rc;
      n -= static_cast<size_t>(rc);
      continue;
    }
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      if (poll_until(&p, 1, deadline) == 0) return Io::kTimeout;
      continue;
    }
    *err = rc < 0 ? errno : EPIPE;
    return Io::kClosed;
  }
  return Io::kOk;
}

Io read_exact(int fd, char* data, size_t n, TimePoint deadline, int* err) {
  while (n > 0) {
    ssize_t rc = ::recv(fd, data, n, 0);
    if (rc > 0) {
      data += rc;
      n -= static_cast<size_t>(rc);
      continue;
    }
    if (rc == 0) {
      *err = 0;
      return Io::kClosed;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      pollfd p{fd, POLLIN, 0};
      if (poll_until(&p, 1, deadline) == 0) return Io::kTimeout;
      continue;
    }
    *err = errno;
    return Io::kClosed;
  }
  return Io::kOk;
}

std::string frame_header(Op op, uint32_t round, uint64_t length) {
  std::string h(kHeaderBytes, '\0');
  put_u32(h.data(), static_cast<uint32_t>(op));
  put_u32(h.data() + 4, round);
  put_u64(h.data() + 8, length);
  return h;
}

Io send_frame(int fd, Op op, uint32_t round, std::string_view payload, TimePoint deadline,
              int* err) {
  std::string header = frame_header(op, round, payload.size());
  Io io = write_all(fd, header.data(), header.size(), deadline, err);
  if (io != Io::kOk) return io;
  return write_all(fd, payload.data(), payload.size(), deadline, err);
}

// Best effort, never blocks: used on the way out of a failure, when the peer may be gone or stuck.
void send_nowait(int fd, Op op, uint32_t round, std::string_view payload) {
  std::string msg = frame_header(op, round, payload.size());
  msg.append(payload);
  while (::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno == EINTR) {
  }
}

// Closes connections so the peers still read what we last sent. close() with unread input makes
// the kernel send a reset, and a reset can make the peer drop our final message (the reason we
// gave up) unread. So: send FIN, discard input until each peer hangs up, briefly, then close.
void linger_close(std::vector<int>& fds) {
  for (int fd : fds) ::shutdown(fd, SHUT_WR);
  TimePoint until = Clock::now() + std::chrono::milliseconds(250);
  std::vector<int> open = fds;
  while (!open.empty()) {
    std::vector<pollfd> p;
    for (int fd : open) p.push_back({fd, POLLIN, 0});
    if (poll_until(p.data(), p.size(), until) == 0) break;
    for (const pollfd& q : p) {
      if (q.revents == 0) continue;
      char buf[4096];
      ssize_t rc;
      while ((rc = ::recv(q.fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
      }
      if (rc == 0 || (rc < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        std::erase(open, q.fd);
      }
    }
  }
  for (int& fd : fds) close_fd(fd);
}

struct Frame {
  Op op;
  uint32_t round;
  std::string payload;
};

Io read_frame(int fd, Frame* frame, TimePoint deadline, int* err) {
  char header[kHeaderBytes];
  Io io = read_exact(fd, header, sizeof(header), deadline, err);
  if (io != Io::kOk) return io;
  frame->op = static_cast<Op>(get_u32(header));
  frame->round = get_u32(header + 4);
  uint64_t length = get_u64(header + 8);
  if (length > kMaxPayload) {
    throw Error("Rendezvous", fmt::format("received a frame of {} bytes; the peer is not speaking "
                                          "weft's rendezvous protocol",
                                          length));
  }
  frame->payload.resize(length);
  return read_exact(fd, frame->payload.data(), length, deadline, err);
}

std::string errno_text(int err) { return err == 0 ? "connection closed" : std::strerror(err); }

std::string peer_name(const sockaddr_in& addr) {
  char text[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof(text));
  return fmt::format("{}:{}", text, ntohs(addr.sin_port));
}

const char* op_name(Op op) {
  switch (op) {
    case Op::kGather:
      return "all_gather";
    case Op::kBarrier:
      return "barrier";
    default:
      return "rendezvous";
  }
}

const char* call_name(Op op) {
  return op == Op::kGather ? "Rendezvous::all_gather" : "Rendezvous::barrier";
}

// How much longer than its own deadline a rank waits for rank 0's answer. Rank 0 started its clock
// at about the same time and, when it gives up, says why (e.g. "rank 2 of 4 never connected");
// that beats each rank reporting only its own timeout. Rank 0 also watches connected ranks, and one
// that hangs up first would be reported as having left instead of the real culprit.
std::chrono::milliseconds answer_grace(std::chrono::milliseconds timeout) {
  return std::clamp(timeout / 10, std::chrono::milliseconds(100), std::chrono::milliseconds(2000));
}

Op to_op(bool barrier) { return barrier ? Op::kBarrier : Op::kGather; }

}  // namespace

Rendezvous::Rendezvous(int rank, int world_size, std::string master_addr, int port,
                       std::chrono::milliseconds timeout)
    : rank_(rank),
      world_size_(world_size),
      master_addr_(std::move(master_addr)),
      port_(port),
      timeout_(timeout) {
  WEFT_CHECK_ARG(world_size >= 1, "world_size must be at least 1, got {}", world_size);
  WEFT_CHECK_ARG(rank >= 0 && rank < world_size, "rank {} is outside [0, {})", rank, world_size);
  WEFT_CHECK_ARG(timeout.count() > 0, "timeout must be positive, got {} ms", timeout.count());
  if (world_size == 1) return;  // nothing to meet: no sockets at all
  WEFT_CHECK_ARG(port >= 1 && port <= 65535, "port must be in [1, 65535], got {}", port);
  WEFT_CHECK_ARG(!master_addr_.empty(), "master_addr is empty");
  TimePoint deadline = later(Clock::now(), timeout_);
  try {
    if (rank == 0) {
      root_accept(deadline);
    } else {
      client_connect(deadline);
    }
  } catch (...) {
    close_all();  // the destructor does not run when a constructor throws
    throw;
  }
}

Rendezvous::~Rendezvous() { close_all(); }

void Rendezvous::close_all() {
  close_fd(listen_fd_);
  close_fd(server_fd_);
  for (int& fd : peer_fds_) close_fd(fd);
}

std::string Rendezvous::where() const { return fmt::format("{}:{}", master_addr_, port_); }

void Rendezvous::root_fail(const char* call, bool timeout, const std::string& detail,
                           int rejected_fd) {
  std::string payload = std::string(timeout ? "T" : "E") + detail;
  std::vector<int> fds;
  for (int& fd : peer_fds_) {
    if (fd < 0) continue;
    send_nowait(fd, Op::kAbort, rounds_, payload);
    fds.push_back(fd);
    fd = -1;
  }
  if (rejected_fd >= 0) fds.push_back(rejected_fd);
  linger_close(fds);
  close_all();
  broken_ = true;
  if (timeout) throw Timeout(call, detail);
  throw Error(call, detail);
}

void Rendezvous::root_accept(TimePoint deadline) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) throw Error("Rendezvous", fmt::format("socket: {}", std::strerror(errno)));
  // A previous job's connections in TIME_WAIT must not block this port.
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // Listen on every interface: master_addr is how the *other* ranks reach this host, and a host
  // name may resolve to any of its addresses (or to 127.0.1.1 on Debian-style /etc/hosts).
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    throw Error("Rendezvous",
                fmt::format("rank 0 could not listen on port {}: {}{}", port_, std::strerror(err),
                            err == EADDRINUSE ? " (another process or job holds it; pick another "
                                                "port, e.g. with WEFT_RENDEZVOUS_PORT)"
                                              : ""));
  }
  if (::listen(listen_fd_, SOMAXCONN) != 0) {
    throw Error("Rendezvous", fmt::format("listen on port {}: {}", port_, std::strerror(errno)));
  }

  // Connections that have not yet sent their whole hello. They are read concurrently so a silent
  // stranger (a port scanner, a health check) cannot stall the ranks behind it.
  struct Pending {
    int fd;
    std::string name;
    char hello[kHelloBytes] = {};
    size_t got = 0;
  };
  std::vector<Pending> pending;
  peer_fds_.assign(world_size_, -1);
  int connected = 0;

  auto reject = [&](Pending& p, const std::string& why) {
    send_nowait(p.fd, Op::kReject, 0, why);
    int rejected = p.fd;
    p.fd = -1;
    for (Pending& q : pending) close_fd(q.fd);
    root_fail("Rendezvous", false, why, rejected);
  };

  while (connected < world_size_ - 1) {
    std::vector<pollfd> fds;
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const Pending& p : pending) fds.push_back({p.fd, POLLIN, 0});
    std::vector<int> watched;  // ranks that said hello: watch them so an early exit is reported
    for (int r = 1; r < world_size_; ++r) {
      if (peer_fds_[r] >= 0) {
        fds.push_back({peer_fds_[r], POLLIN, 0});
        watched.push_back(r);
      }
    }
    if (poll_until(fds.data(), fds.size(), deadline) == 0) {
      std::vector<int> missing;
      for (int r = 1; r < world_size_; ++r) {
        if (peer_fds_[r] < 0) missing.push_back(r);
      }
      for (Pending& p : pending) close_fd(p.fd);
      root_fail("Rendezvous", true,
                fmt::format("rendezvous on {} timed out after {}: {} of {} never connected",
                            where(), format_seconds(timeout_), format_ranks(missing), world_size_));
    }

    // Ranks that already said hello must stay quiet until the welcome; readable means gone.
    for (size_t i = 0; i < watched.size(); ++i) {
      const pollfd& p = fds[1 + pending.size() + i];
      if (p.revents == 0) continue;
      char byte;
      ssize_t rc = ::recv(p.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (rc < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      for (Pending& q : pending) close_fd(q.fd);
      root_fail("Rendezvous", false,
                rc > 0 ? fmt::format("rank {} sent data before all {} ranks had connected",
                                     watched[i], world_size_)
                       : fmt::format("rank {} connected and then closed its connection before all "
                                     "{} ranks had arrived (did it exit?)",
                                     watched[i], world_size_));
    }

    // Read whatever hello bytes have arrived.
    for (size_t i = 0; i < pending.size(); ++i) {
      if (fds[1 + i].revents == 0) continue;
      Pending& p = pending[i];
      while (p.got < kHelloBytes) {
        ssize_t rc = ::recv(p.fd, p.hello + p.got, kHelloBytes - p.got, 0);
        if (rc > 0) {
          p.got += static_cast<size_t>(rc);
        } else if (rc < 0 && errno == EINTR) {
          continue;
        } else if (rc < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          break;
        } else {
          close_fd(p.fd);  // closed before saying anything: a probe, not a rank; ignore it
          break;
        }
      }
      if (p.fd < 0 || p.got < kHelloBytes) continue;
      uint32_t magic = get_u32(p.hello), version = get_u32(p.hello + 4);
      int32_t rank = static_cast<int32_t>(get_u32(p.hello + 8));
      int32_t world = static_cast<int32_t>(get_u32(p.hello + 12));
      if (magic != kMagic) {
        reject(p, fmt::format("a connection from {} to {} sent 0x{:08x} instead of weft's "
                              "rendezvous greeting: another program is using port {}",
                              p.name, where(), magic, port_));
      }
      if (version != kVersion) {
        reject(p, fmt::format("rank {} (from {}) speaks rendezvous protocol version {}, rank 0 "
                              "speaks {}: mixed weft versions in one job",
                              rank, p.name, version, kVersion));
      }
      if (world != world_size_) {
        reject(p, fmt::format("rank {} (from {}) has world_size {} but rank 0 has {}: the ranks "
                              "disagree about the job size (or two jobs share port {})",
                              rank, p.name, world, world_size_, port_));
      }
      if (rank < 1 || rank >= world_size_) {
        reject(p, fmt::format("a connection from {} claims rank {}, outside [1, {})", p.name, rank,
                              world_size_));
      }
      if (peer_fds_[rank] >= 0) {
        reject(p, fmt::format("rank {} connected twice (again from {}): two processes have the "
                              "same rank",
                              rank, p.name));
      }
      peer_fds_[rank] = p.fd;
      p.fd = -1;
      ++connected;
    }
    std::erase_if(pending, [](const Pending& p) { return p.fd < 0; });

    // New connections.
    if (fds[0].revents != 0) {
      while (true) {
        sockaddr_in from{};
        socklen_t len = sizeof(from);
        int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&from), &len,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          throw Error("Rendezvous",
                      fmt::format("accept on port {}: {}", port_, std::strerror(errno)));
        }
        set_nodelay(fd);
        pending.push_back(Pending{fd, peer_name(from), {}, 0});
      }
    }
  }
  for (Pending& p : pending) close_fd(p.fd);
  close_fd(listen_fd_);  // everyone is here; free the port

  for (int r = 1; r < world_size_; ++r) {
    int err = 0;
    Io io = send_frame(peer_fds_[r], Op::kWelcome, 0, {}, deadline, &err);
    if (io == Io::kTimeout) {
      root_fail("Rendezvous", true,
                fmt::format("rendezvous on {} timed out after {} sending the welcome to rank {}",
                            where(), format_seconds(timeout_), r));
    }
    if (io == Io::kClosed) {
      root_fail("Rendezvous", false,
                fmt::format("rank {} closed its connection before the rendezvous completed ({})", r,
                            errno_text(err)));
    }
  }
}

void Rendezvous::client_connect(TimePoint deadline) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  std::string port_text = std::to_string(port_);
  std::string last_error = "no attempt finished";
  auto backoff = std::chrono::milliseconds(10);

  while (server_fd_ < 0) {
    addrinfo* list = nullptr;
    int gai = ::getaddrinfo(master_addr_.c_str(), port_text.c_str(), &hints, &list);
    if (gai != 0) {
      // A name that does not exist will not start to exist; a DNS hiccup (EAI_AGAIN) might pass.
      if (gai != EAI_AGAIN) {
        throw Error("Rendezvous", fmt::format("could not resolve rank 0's address '{}': {}",
                                              master_addr_, ::gai_strerror(gai)));
      }
      last_error = ::gai_strerror(gai);
    }
    for (addrinfo* ai = list; ai != nullptr && server_fd_ < 0; ai = ai->ai_next) {
      int fd =
          ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) {
        last_error = std::strerror(errno);
        continue;
      }
      int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
      int err = rc == 0 ? 0 : errno;
      if (rc != 0 && (err == EINPROGRESS || err == EINTR)) {
        // EINTR: the connection attempt goes on in the background; wait for it like EINPROGRESS.
        pollfd p{fd, POLLOUT, 0};
        if (poll_until(&p, 1, deadline) == 0) {
          err = ETIMEDOUT;
        } else {
          socklen_t len = sizeof(err);
          ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        }
      }
      if (err == 0) {
        // Linux lets a socket connect to itself when the target port is a free ephemeral port
        // (TCP simultaneous open). That is not rank 0; it would also keep rank 0 from binding.
        sockaddr_in local{}, remote{};
        socklen_t llen = sizeof(local), rlen = sizeof(remote);
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen);
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &rlen);
        if (local.sin_port == remote.sin_port && local.sin_addr.s_addr == remote.sin_addr.s_addr) {
          err = ECONNREFUSED;
        }
      }
      if (err == 0) {
        server_fd_ = fd;
      } else {
        last_error = std::strerror(err);
        ::close(fd);
      }
    }
    if (list != nullptr) ::freeaddrinfo(list);
    if (server_fd_ >= 0) break;
    // Rank 0 may simply not be up yet: retry with a growing pause until the deadline.
    auto now = Clock::now();
    if (now >= deadline) {
      throw Timeout("Rendezvous",
                    fmt::format("rank {} could not reach rank 0 at {} within {} "
                                "(last error: {})",
                                rank_, where(), format_seconds(timeout_), last_error));
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
  set_nodelay(server_fd_);

  char hello[kHelloBytes];
  put_u32(hello, kMagic);
  put_u32(hello + 4, kVersion);
  put_u32(hello + 8, static_cast<uint32_t>(rank_));
  put_u32(hello + 12, static_cast<uint32_t>(world_size_));
  int err = 0;
  Io io = write_all(server_fd_, hello, sizeof(hello), deadline, &err);
  Frame frame;
  if (io == Io::kOk)
    io = read_frame(server_fd_, &frame, later(deadline, answer_grace(timeout_)), &err);
  if (io == Io::kTimeout) {
    throw Timeout("Rendezvous",
                  fmt::format("rank {} connected to rank 0 at {} but not all {} ranks arrived "
                              "within {}",
                              rank_, where(), world_size_, format_seconds(timeout_)));
  }
  if (io == Io::kClosed) {
    throw Error("Rendezvous", fmt::format("rank 0 at {} closed the connection before all ranks "
                                          "arrived ({}; did rank 0 fail?)",
                                          where(), errno_text(err)));
  }
  switch (frame.op) {
    case Op::kWelcome:
      return;
    case Op::kReject:
      throw Error("Rendezvous",
                  fmt::format("rank 0 at {} refused rank {}: {}", where(), rank_, frame.payload));
    case Op::kAbort:
      if (!frame.payload.empty() && frame.payload[0] == 'T') {
        throw Timeout("Rendezvous",
                      fmt::format("rank 0 at {} gave up: {}", where(), frame.payload.substr(1)));
      }
      throw Error("Rendezvous", fmt::format("rank 0 at {} gave up: {}", where(),
                                            frame.payload.substr(frame.payload.empty() ? 0 : 1)));
    default:
      throw Error("Rendezvous", fmt::format("rank 0 at {} answered the hello with unexpected "
                                            "message type {}",
                                            where(), static_cast<uint32_t>(frame.op)));
  }
}

std::vector<std::string> Rendezvous::all_gather(std::string_view mine) {
  return round(Kind::kGather, mine);
}

void Rendezvous::barrier() { round(Kind::kBarrier, {}); }

void Rendezvous::agree(const std::function<void()>& checks) {
  // What a rank sends: empty when its checks passed, else one letter for the kind ('A'
  // InvalidArgument, 'T' Timeout, 'E' any other error), the failing call, '\n' and the detail.
  std::exception_ptr own;
  std::string mine;
  try {
    checks();
  } catch (const Error& e) {
    own = std::current_exception();
    const char kind = dynamic_cast<const InvalidArgument*>(&e) ? 'A'
                      : dynamic_cast<const Timeout*>(&e)       ? 'T'
                                                               : 'E';
    mine = kind + e.call() + "\n" + e.detail();
  } catch (const std::exception& e) {
    own = std::current_exception();
    mine = std::string("E(checks)\n") + e.what();
  }
  const std::vector<std::string> all = all_gather(mine);
  if (own) std::rethrow_exception(own);
  std::vector<int> failed;
  for (int r = 0; r < world_size_; ++r)
    if (!all[size_t(r)].empty()) failed.push_back(r);
  if (failed.empty()) return;
  const std::string& first = all[size_t(failed[0])];
  const size_t nl = first.find('\n');
  const std::string call = first.substr(1, nl - 1), detail = first.substr(nl + 1);
  const std::string text = fmt::format("{} rejected what this rank accepted; rank {}: {}",
                                       format_ranks(failed), failed[0], detail);
  switch (first[0]) {
    case 'A':
      throw InvalidArgument(call, text);
    case 'T':
      throw Timeout(call, text);
    default:
      throw Error(call, text);
  }
}

std::vector<std::string> Rendezvous::round(Kind kind, std::string_view mine) {
  Op op = to_op(kind == Kind::kBarrier);
  if (broken_) {
    throw Error(call_name(op), fmt::format("{} on {}: the rendezvous is unusable after an earlier "
                                           "failure",
                                           op_name(op), where()));
  }
  ++rounds_;
  if (world_size_ == 1) {
    if (op == Op::kBarrier) return {};
    return {std::string(mine)};
  }
  WEFT_CHECK_ARG(mine.size() <= kMaxPayload, "all_gather part of {} bytes exceeds the {} limit",
                 mine.size(), kMaxPayload);
  TimePoint deadline = later(Clock::now(), timeout_);
  try {
    // A failed round leaves the peers out of step; no later round could be trusted.
    if (rank_ == 0) return root_round(kind, mine, deadline);
    return client_round(kind, mine, deadline);
  } catch (...) {
    close_all();
    broken_ = true;
    throw;
  }
}

std::vector<std::string> Rendezvous::root_round(Kind kind, std::string_view mine,
                                                TimePoint deadline) {
  Op op = to_op(kind == Kind::kBarrier);
  const char* call = call_name(op);
  std::vector<std::string> parts(world_size_);
  parts[0] = std::string(mine);

  // Each rank's frame is read incrementally and all ranks concurrently: a rank sending a large
  // part must not wait behind a rank that has not reached this round yet.
  struct Inbox {
    char header[kHeaderBytes];
    size_t header_got = 0;
    size_t payload_got = 0;
    bool done = false;
  };
  std::vector<Inbox> inbox(world_size_);
  int outstanding = world_size_ - 1;

  while (outstanding > 0) {
    std::vector<pollfd> fds;
    std::vector<int> ranks;
    for (int r = 1; r < world_size_; ++r) {
      if (!inbox[r].done) {
        fds.push_back({peer_fds_[r], POLLIN, 0});
        ranks.push_back(r);
      }
    }
    if (poll_until(fds.data(), fds.size(), deadline) == 0) {
      root_fail(
          call, true,
          fmt::format("{} round {} on {} timed out after {}: {} of {} never {}", op_name(op),
                      rounds_, where(), format_seconds(timeout_), format_ranks(ranks), world_size_,
                      op == Op::kGather ? "sent their part" : "reached the barrier"));
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      int r = ranks[i];
      Inbox& in = inbox[r];
      while (!in.done) {
        char* dst;
        size_t want;
        if (in.header_got < kHeaderBytes) {
          dst = in.header + in.header_got;
          want = kHeaderBytes - in.header_got;
        } else {
          dst = parts[r].data() + in.payload_got;
          want = parts[r].size() - in.payload_got;
        }
        // want > 0 here: a frame is marked done as soon as its last byte (or header) arrives.
        ssize_t rc = ::recv(peer_fds_[r], dst, want, 0);
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (rc <= 0) {
          root_fail(call, false,
                    fmt::format("rank {} closed its connection during {} round {} ({}; did it "
                                "exit or crash?)",
                                r, op_name(op), rounds_, errno_text(rc == 0 ? 0 : errno)));
        }
        if (in.header_got < kHeaderBytes) {
          in.header_got += static_cast<size_t>(rc);
          if (in.header_got < kHeaderBytes) continue;
          Op their_op = static_cast<Op>(get_u32(in.header));
          uint32_t their_round = get_u32(in.header + 4);
          uint64_t length = get_u64(in.header + 8);
          if (their_op != op || their_round != rounds_) {
            root_fail(call, false,
                      fmt::format("rank {} called {} (round {}) while rank 0 called {} (round "
                                  "{}): every rank must make the same rendezvous calls in the "
                                  "same order",
                                  r, op_name(their_op), their_round, op_name(op), rounds_));
          }
          if (length > kMaxPayload || (op == Op::kBarrier && length != 0)) {
            root_fail(call, false,
                      fmt::format("rank {} sent a malformed {} message ({} bytes)", r, op_name(op),
                                  length));
          }
          parts[r].resize(length);
        } else {
          in.payload_got += static_cast<size_t>(rc);
        }
        if (in.header_got == kHeaderBytes && in.payload_got == parts[r].size()) {
          in.done = true;
          --outstanding;
        }
      }
    }
  }

  std::string result;
  if (op == Op::kGather) {
    size_t total = 0;
    for (const std::string& p : parts) total += 8 + p.size();
    result.reserve(total);
    char len[8];
    for (const std::string& p : parts) {
      put_u64(len, p.size());
      result.append(len, sizeof(len));
      result.append(p);
    }
  }
  for (int r = 1; r < world_size_; ++r) {
    int err = 0;
    Io io = send_frame(peer_fds_[r], Op::kResult, rounds_, result, deadline, &err);
    if (io == Io::kTimeout) {
      root_fail(call, true,
                fmt::format("{} round {} on {} timed out after {} sending the result to rank {}",
                            op_name(op), rounds_, where(), format_seconds(timeout_), r));
    }
    if (io == Io::kClosed) {
      root_fail(call, false,
                fmt::format("rank {} closed its connection during {} round {} ({}; did it exit "
                            "or crash?)",
                            r, op_name(op), rounds_, errno_text(err)));
    }
  }
  if (op == Op::kBarrier) return {};
  return parts;
}

std::vector<std::string> Rendezvous::client_round(Kind kind, std::string_view mine,
                                                  TimePoint deadline) {
  Op op = to_op(kind == Kind::kBarrier);
  const char* call = call_name(op);
  int err = 0;
  Frame frame;
  Io io = send_frame(server_fd_, op, rounds_, mine, deadline, &err);
  if (io == Io::kClosed) {
    // Rank 0 may have aborted while we were still sending; its reason is worth a short wait.
    Io reason = read_frame(server_fd_, &frame, Clock::now() + std::chrono::milliseconds(200), &err);
    if (reason == Io::kOk && frame.op == Op::kAbort) io = Io::kOk;
  } else if (io == Io::kOk) {
    io = read_frame(server_fd_, &frame, later(deadline, answer_grace(timeout_)), &err);
  }
  if (io == Io::kTimeout) {
    throw Timeout(call, fmt::format("{} round {} timed out after {} waiting for rank 0 at {} "
                                    "(some rank has not reached this round)",
                                    op_name(op), rounds_, format_seconds(timeout_), where()));
  }
  if (io == Io::kClosed) {
    throw Error(call, fmt::format("rank 0 at {} closed the connection during {} round {} ({}; "
                                  "did rank 0 fail?)",
                                  where(), op_name(op), rounds_, errno_text(err)));
  }
  if (frame.op == Op::kAbort) {
    std::string why = frame.payload.empty() ? "" : frame.payload.substr(1);
    std::string detail = fmt::format("rank 0 at {} gave up: {}", where(), why);
    if (!frame.payload.empty() && frame.payload[0] == 'T') throw Timeout(call, detail);
    throw Error(call, detail);
  }
  if (frame.op != Op::kResult || frame.round != rounds_) {
    throw Error(call, fmt::format("rank 0 at {} answered {} round {} with message type {} for "
                                  "round {}",
                                  where(), op_name(op), rounds_, static_cast<uint32_t>(frame.op),
                                  frame.round));
  }
  if (op == Op::kBarrier) return {};

  std::vector<std::string> parts;
  parts.reserve(world_size_);
  std::string_view rest = frame.payload;
  for (int r = 0; r < world_size_; ++r) {
    if (rest.size() < 8) break;
    uint64_t length = get_u64(rest.data());
    rest.remove_prefix(8);
    if (length > rest.size()) break;
    parts.emplace_back(rest.substr(0, length));
    rest.remove_prefix(length);
  }
  if (static_cast<int>(parts.size()) != world_size_ || !rest.empty()) {
    throw Error(call, fmt::format("rank 0 at {} sent a malformed result for {} round {}", where(),
                                  op_name(op), rounds_));
  }
  return parts;
}

}  // namespace weft
