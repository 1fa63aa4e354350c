#include "weft/runtime/launcher.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <optional>
#include <set>

#include "weft/runtime/error.h"

extern char** environ;

namespace weft {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---- Signals ---------------------------------------------------------------------------------
// The handlers only note the signal and write a byte to a self-pipe, so the main loop's poll()
// wakes at once for a child's exit (SIGCHLD) or a request to stop (SIGINT/SIGTERM/SIGHUP).

std::atomic<bool> g_launch_active{false};
int g_wake_pipe[2] = {-1, -1};
volatile sig_atomic_t g_stop_signal = 0;  // the first SIGINT/SIGTERM/SIGHUP received
volatile sig_atomic_t g_stop_count = 0;   // how many of them

constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP};

void on_signal(int sig) {
  int saved_errno = errno;
  if (sig != SIGCHLD) {
    if (g_stop_signal == 0) g_stop_signal = sig;
    g_stop_count = g_stop_count + 1;
  }
  char byte = 0;
  ssize_t ignored = ::write(g_wake_pipe[1], &byte, 1);  // a full pipe already means "wake up"
  (void)ignored;
  errno = saved_errno;
}

// Installs the handlers for the duration of one launch() and restores the caller's afterwards.
class SignalScope {
 public:
  SignalScope() {
    if (::pipe2(g_wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      throw Error("launch", fmt::format("pipe2: {}", std::strerror(errno)));
    }
    g_stop_signal = 0;
    g_stop_count = 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < std::size(kForwarded); ++i) {
      ::sigaction(kForwarded[i], &sa, &old_[i]);
    }
    // Also replaces a caller's SIG_IGN for SIGCHLD, which would auto-reap the ranks and leave
    // waitpid() nothing to report.
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    ::sigaction(SIGCHLD, &sa, &old_chld_);
    // A reader of our output that went away (`weft run ... | head`) must not kill the launcher
    // before it stops the ranks: writes then fail with EPIPE, which stops the job (write_fully).
    // (The ranks get the default disposition back before exec.)
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    ::sigaction(SIGPIPE, &ign, &old_pipe_);
  }
  ~SignalScope() {
    for (size_t i = 0; i < std::size(kForwarded); ++i)
      ::sigaction(kForwarded[i], &old_[i], nullptr);
    ::sigaction(SIGCHLD, &old_chld_, nullptr);
    ::sigaction(SIGPIPE, &old_pipe_, nullptr);
    ::close(g_wake_pipe[0]);
    ::close(g_wake_pipe[1]);
    g_wake_pipe[0] = g_wake_pipe[1] = -1;
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  struct sigaction old_[std::size(kForwarded)]{};
  struct sigaction old_chld_ {};
  struct sigaction old_pipe_ {};
};

void drain_wake_pipe() {
  char buf[256];
  while (::read(g_wake_pipe[0], buf, sizeof(buf)) > 0) {
  }
}

// ---- Small helpers -----------------------------------------------------------------------------


std::string signal_text(int sig) {
  const char* desc = ::sigdescr_np(sig);
  return fmt::format("signal {} ({})", sig, desc ? desc : "unknown signal");
}

void write_fully(int fd, std::string_view text) {
  while (!text.empty()) {
    ssize_t rc = ::write(fd, text.data(), text.size());
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 && errno == EPIPE) {
      // Whoever read our output is gone (`weft run ... | head`): stop the job as SIGPIPE would
      // stop a plain program, but through the usual path (the ranks get SIGPIPE, then SIGKILL).
      if (g_stop_signal == 0) {  // once: a second stop request would skip the kill grace
        g_stop_signal = SIGPIPE;
        g_stop_count = g_stop_count + 1;
      }
      return;
    }
    if (rc <= 0) return;  // our own stdout is gone; nothing sensible to do about it
    text.remove_prefix(static_cast<size_t>(rc));
  }
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// The directories execvp would search, from the PATH the ranks will see.
std::vector<std::string> exec_candidates(const std::string& program, const std::string& path) {
  if (program.find('/') != std::string::npos) return {program};
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t colon = path.find(':', start);
    std::string dir = path.substr(start, colon == std::string::npos ? colon : colon - start);
    out.push_back(dir.empty() ? program : dir + "/" + program);  // "" means the current directory
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return out;
}

// ---- Ranks -------------------------------------------------------------------------------------

struct Stream {
  int fd = -1;
  int target = -1;  // our fd the tagged lines go to
  std::string partial;
};

struct Rank {
  pid_t pid = -1;
  bool running = false;
  int exec_fd = -1;  // read end of a close-on-exec pipe: data means exec failed (the errno)
  Stream out, err;
};

// Everything a child needs, built before fork(): between fork and exec the child may only make
// async-signal-safe calls (the parent may have other threads holding malloc's lock).
struct ChildPlan {
  std::vector<std::string> env_storage;
  std::vector<char*> envp;
  std::vector<char*> argv;
  std::vector<std::string> candidates;
  std::string exec_error_prefix;  // "weft run: rank N: could not execute 'prog': "
  int out_w = -1, err_w = -1, exec_w = -1;
};

[[noreturn]] void run_child(const ChildPlan& plan, pid_t parent) {
  // Own process group: stopping the rank with kill(-pgid) also stops whatever it started.
  ::setpgid(0, 0);
  // Die with the launcher (SIGKILL cannot be caught), unless it is already gone.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);

  // The program should start as if from a shell: default dispositions (Python, for one, ignores
  // SIGPIPE, and ignored signals survive exec) and nothing blocked.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGPIPE, SIGQUIT})
    ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  // stdin from /dev/null: the ranks are not in the terminal's foreground group, so a read from
  // the terminal would stop them (SIGTTIN) and hang the job.
  int devnull = ::open("/dev/null", O_RDONLY);
  if (devnull >= 0) {
    ::dup2(devnull, STDIN_FILENO);
    if (devnull != STDIN_FILENO) ::close(devnull);
  }
  if (plan.out_w >= 0) ::dup2(plan.out_w, STDOUT_FILENO);
  if (plan.err_w >= 0) ::dup2(plan.err_w, STDERR_FILENO);

  // Search like execvp, keeping the most telling error: EACCES from any candidate beats ENOENT.
  int error = ENOENT;
  for (const std::string& path : plan.candidates) {
    ::execve(path.c_str(), plan.argv.data(), plan.envp.data());
    if (errno == EACCES) {
      error = EACCES;
    } else if (errno != ENOENT && errno != ENOTDIR) {
      error = errno;
      break;
    }
  }
  // One write() of the whole line, so failing ranks' messages do not interleave. The buffer is
  // on the stack: no allocation after fork.
  const char* desc = ::strerrordesc_np(error);  // static table, no locale: safe here
  if (desc == nullptr) desc = "unknown error";
  char line[1024];
  size_t n = std::min(plan.exec_error_prefix.size(), sizeof(line) - 128);
  std::memcpy(line, plan.exec_error_prefix.data(), n);
  size_t d = std::min(std::strlen(desc), sizeof(line) - n - 1);
  std::memcpy(line + n, desc, d);
  line[n + d] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, line, n + d + 1);
  ignored = ::write(plan.exec_w, &error, sizeof(error));
  (void)ignored;
  ::_exit(127);
}

class Job {
 public:
  Job(const LaunchOptions& options, int port, int rendezvous_port)
      : options_(options), port_(port), rendezvous_port_(rendezvous_port) {
    ranks_.resize(options.nprocs);
  }
  ~Job() {
    // Reached with ranks alive if something threw, or if stop_all gave up on a rank stuck in the
    // kernel (SIGKILL pending, e.g. while the driver tears down a hung context): kill them, and
    // reap what exits within a second rather than block on one that never does.
    for (Rank& r : ranks_) {
      if (r.running) {
        ::kill(-r.pid, SIGKILL);
        ::kill(r.pid, SIGKILL);
        for (int i = 0; i < 100 && ::waitpid(r.pid, nullptr, WNOHANG) == 0; ++i) ::usleep(10000);
      }
      close_fd(r.exec_fd);
      close_fd(r.out.fd);
      close_fd(r.err.fd);
    }
  }

  LaunchResult run();

 private:
  void start(int rank);
  ChildPlan plan_for(int rank) const;
  void pump(milliseconds wait);  // waits for an event up to `wait`, then forwards output
  void read_stream(int rank, Stream& s, bool final);
  void reap();  // collects exited ranks; records the first failure
  void signal_running(int sig);
  void stop_all(int first_signal);
  void drain_output();
  std::vector<int> running_ranks() const;

  const LaunchOptions& options_;
  int port_;             // MASTER_PORT: free for the program (torch's TCPStore takes it)
  int rendezvous_port_;  // WEFT_RENDEZVOUS_PORT: weft's own rendezvous
  std::vector<Rank> ranks_;
  std::optional<LaunchResult> failure_;
  bool stopping_ = false;  // exits after this point are our doing, not failures
};

ChildPlan Job::plan_for(int rank) const {
  ChildPlan plan;
  std::vector<std::pair<std::string, std::string>> ours = {
      {"WEFT_LAUNCHED", "1"},
      {"RANK", std::to_string(rank)},
      {"WORLD_SIZE", std::to_string(options_.nprocs)},
      {"LOCAL_RANK", std::to_string(rank)},
      {"LOCAL_WORLD_SIZE", std::to_string(options_.nprocs)},
      {"GROUP_RANK", "0"},
      {"MASTER_ADDR", options_.master_addr},
      {"MASTER_PORT", std::to_string(port_)},
      {"WEFT_RENDEZVOUS_PORT", std::to_string(rendezvous_port_)},
  };
  ours.insert(ours.end(), options_.extra_env.begin(), options_.extra_env.end());
  std::set<std::string> overridden;
  for (const auto& [key, value] : ours) overridden.insert(key);
  std::string path = "/bin:/usr/bin";  // what execvp assumes without PATH
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    std::string key(entry.substr(0, entry.find('=')));
    if (key == "PATH") path = std::string(entry.substr(5));
    if (!overridden.count(key)) plan.env_storage.emplace_back(entry);
  }
  for (const auto& [key, value] : ours) {
    if (key == "PATH") path = value;
    // Later entries win (extra_env after ours), so drop an earlier entry for the same key.
    std::erase_if(plan.env_storage, [&](const std::string& s) {
      return s.size() > key.size() && s.compare(0, key.size(), key) == 0 && s[key.size()] == '=';
    });
    plan.env_storage.push_back(key + "=" + value);
  }
  for (std::string& s : plan.env_storage) plan.envp.push_back(s.data());
  plan.envp.push_back(nullptr);
  for (const std::string& a : options_.argv) plan.argv.push_back(const_cast<char*>(a.c_str()));
  plan.argv.push_back(nullptr);
  plan.candidates = exec_candidates(options_.argv[0], path);
  plan.exec_error_prefix =
      fmt::format("weft run: rank {}: could not execute '{}': ", rank, options_.argv[0]);
  return plan;
}

void Job::start(int rank) {
  Rank& r = ranks_[rank];
  ChildPlan plan = plan_for(rank);
  int exec_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
  // Close-on-exec everywhere: no rank may inherit another rank's pipes (it would hold them open).
  if (::pipe2(exec_pipe, O_CLOEXEC) != 0 ||
      (options_.tag_output &&
       (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0))) {
    const int err = errno;
    for (int fd : {exec_pipe[0], exec_pipe[1], out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]})
      if (fd >= 0) ::close(fd);  // the pipes made before the one that failed
    throw Error("launch", fmt::format("pipe2 for rank {}: {}", rank, std::strerror(err)));
  }
  plan.exec_w = exec_pipe[1];
  plan.out_w = out_pipe[1];
  plan.err_w = err_pipe[1];
  r.exec_fd = exec_pipe[0];
  r.out = Stream{out_pipe[0], STDOUT_FILENO, {}};
  r.err = Stream{err_pipe[0], STDERR_FILENO, {}};

  // Block the signals we handle across fork(): until the child has reset them to the default, our
  // handler would run in the child and swallow a SIGTERM meant to stop it. Blocked, the signal
  // stays pending and takes its default effect once run_child() unblocks it. SIGPIPE too (the
  // stop signal when our stdout is gone): we ignore it, and an ignored signal is discarded when
  // sent unless it is blocked.
  sigset_t handled, saved_mask;
  sigemptyset(&handled);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGPIPE}) sigaddset(&handled, sig);
  ::pthread_sigmask(SIG_BLOCK, &handled, &saved_mask);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  int fork_errno = errno;
  if (pid != 0) ::pthread_sigmask(SIG_SETMASK, &saved_mask, nullptr);
  if (pid < 0) {
    int err = fork_errno;
    for (int fd : {exec_pipe[1], out_pipe[1], err_pipe[1]}) {
      if (fd >= 0) ::close(fd);
    }
    throw Error("launch", fmt::format("fork for rank {}: {}", rank, std::strerror(err)));
  }
  if (pid == 0) run_child(plan, parent);
  // Also from the parent, so kill(-pid) works even before the child has run setpgid itself.
  ::setpgid(pid, pid);
  r.pid = pid;
  r.running = true;
  for (int fd : {exec_pipe[1], out_pipe[1], err_pipe[1]}) {
    if (fd >= 0) ::close(fd);
  }
  for (int fd : {r.exec_fd, r.out.fd, r.err.fd}) {
    if (fd >= 0) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
}

void Job::read_stream(int rank, Stream& s, bool final) {
  char buf[65536];
  // Until the end, one buffer per call: a rank that writes without pause keeps its pipe full, and
  // the launcher must get back to its deadline, signals and exited ranks between reads.
  for (bool more = true; more && s.fd >= 0; more = final) {
    ssize_t n = ::read(s.fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;  // EAGAIN: nothing more for now
    if (n == 0) {
      close_fd(s.fd);
      break;
    }
    s.partial.append(buf, static_cast<size_t>(n));
    // Emit whole lines, each with one write(), so lines of different ranks never interleave.
    std::string prefix = fmt::format("[rank {}] ", rank);
    std::string batch;
    size_t begin = 0;
    for (size_t nl; (nl = s.partial.find('\n', begin)) != std::string::npos; begin = nl + 1) {
      batch += prefix;
      batch.append(s.partial, begin, nl + 1 - begin);
    }
    s.partial.erase(0, begin);
    // A runaway line without a newline must not grow without bound.
    if (s.partial.size() > 65536) {
      batch += prefix + s.partial + "\n";
      s.partial.clear();
    }
    write_fully(s.target, batch);
  }
  if (final && !s.partial.empty()) {
    write_fully(s.target, fmt::format("[rank {}] {}\n", rank, s.partial));
    s.partial.clear();
  }
}

void Job::pump(milliseconds wait) {
  std::vector<pollfd> fds{{g_wake_pipe[0], POLLIN, 0}};
  for (Rank& r : ranks_) {
    if (r.out.fd >= 0) fds.push_back({r.out.fd, POLLIN, 0});
    if (r.err.fd >= 0) fds.push_back({r.err.fd, POLLIN, 0});
  }
  int rc = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait.count(), 0)));
  if (rc < 0 && errno != EINTR)
    throw Error("launch", fmt::format("poll: {}", std::strerror(errno)));
  drain_wake_pipe();
  for (size_t i = 0; i < ranks_.size(); ++i) {
    read_stream(static_cast<int>(i), ranks_[i].out, false);
    read_stream(static_cast<int>(i), ranks_[i].err, false);
  }
}

void Job::reap() {
  for (size_t i = 0; i < ranks_.size(); ++i) {
    Rank& r = ranks_[i];
    if (!r.running) continue;
    if (stopping_) {
      // A stopped rank's own process may be gone while processes it started live on in its group:
      // one that ignores the stop signal, or one forked just as the signal came (a shell blocks
      // signals around fork(), so the signal stays pending in the shell alone, which dies of it
      // once unblocked; fork() does not pass pending signals on). The final SIGKILL only reaches
      // ranks still running, so kill the group as the rank ends. Look first without reaping
      // (WNOWAIT): an unreaped rank keeps its pid, and so its group's id, from being reused.
      siginfo_t info{};
      if (::waitid(P_PID, static_cast<id_t>(r.pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          info.si_pid == r.pid) {
        ::kill(-r.pid, SIGKILL);
      }
    }
    int status = 0;
    pid_t rc = ::waitpid(r.pid, &status, WNOHANG);
    if (rc == 0 || (rc < 0 && errno == EINTR)) continue;
    r.running = false;
    int exec_errno = 0;
    bool exec_failed = ::read(r.exec_fd, &exec_errno, sizeof(exec_errno)) ==
                       static_cast<ssize_t>(sizeof(exec_errno));
    close_fd(r.exec_fd);
    if (stopping_ || failure_) continue;
    int rank = static_cast<int>(i);
    if (rc < 0) {
      failure_ = LaunchResult{
          1, rank, fmt::format("rank {} vanished: waitpid: {}", rank, std::strerror(errno))};
    } else if (exec_failed) {
      failure_ = LaunchResult{127, rank,
                              fmt::format("rank {} could not execute '{}': {}", rank,
                                          options_.argv[0], std::strerror(exec_errno))};
    } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
      failure_ =
          LaunchResult{WEXITSTATUS(status), rank,
                       fmt::format("rank {} exited with status {}", rank, WEXITSTATUS(status))};
    } else if (WIFSIGNALED(status)) {
      int sig = WTERMSIG(status);
      failure_ = LaunchResult{128 + sig, rank,
                              fmt::format("rank {} killed by {}", rank, signal_text(sig))};
    }
  }
}

std::vector<int> Job::running_ranks() const {
  std::vector<int> out;
  for (size_t i = 0; i < ranks_.size(); ++i) {
    if (ranks_[i].running) out.push_back(static_cast<int>(i));
  }
  return out;
}

void Job::signal_running(int sig) {
  for (Rank& r : ranks_) {
    if (!r.running) continue;
    // The whole process group; fall back to the pid if the group does not exist (yet).
    if (::kill(-r.pid, sig) != 0) ::kill(r.pid, sig);
  }
}

void Job::stop_all(int first_signal) {
  stopping_ = true;
  reap();
  if (running_ranks().empty()) return;
  signal_running(first_signal);
  int stops_seen = g_stop_count;
  auto kill_at = Clock::now() + options_.kill_grace;
  while (!running_ranks().empty() && Clock::now() < kill_at) {
    auto left = std::chrono::duration_cast<milliseconds>(kill_at - Clock::now());
    pump(std::min(left + milliseconds(1), milliseconds(50)));
    reap();
    if (g_stop_count != stops_seen) break;  // asked twice to stop: do not wait out the grace
  }
  signal_running(SIGKILL);
  // SIGKILL cannot be caught; a process still around after this is stuck in the kernel, and
  // waiting longer would only turn a failure report into a hang.
  auto give_up = Clock::now() + std::chrono::seconds(5);
  while (!running_ranks().empty() && Clock::now() < give_up) {
    pump(milliseconds(20));
    reap();
  }
}

void Job::drain_output() {
  // Data written before a rank exited is already in its pipe. Do not wait for end-of-file: a rank's
  // leftover background process may hold the pipe open forever.
  for (size_t i = 0; i < ranks_.size(); ++i) {
    read_stream(static_cast<int>(i), ranks_[i].out, true);
    read_stream(static_cast<int>(i), ranks_[i].err, true);
    close_fd(ranks_[i].out.fd);
    close_fd(ranks_[i].err.fd);
  }
}

LaunchResult Job::run() {
  auto start_time = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (options_.timeout.count() > 0) deadline = start_time + options_.timeout;
  try {
    for (int rank = 0; rank < options_.nprocs; ++rank) start(rank);
  } catch (...) {
    stop_all(SIGTERM);
    throw;
  }

  std::optional<LaunchResult> outcome;
  int first_signal = SIGTERM;
  while (!running_ranks().empty()) {
    milliseconds wait(100);  // a safety net; SIGCHLD normally wakes the poll at once
    if (deadline) {
      auto left = std::chrono::duration_cast<milliseconds>(*deadline - Clock::now());
      wait = std::clamp(left + milliseconds(1), milliseconds(0), wait);
    }
    pump(wait);
    reap();
    if (failure_) {
      outcome = failure_;
      break;
    }
    if (g_stop_signal != 0) {
      int sig = g_stop_signal;
      first_signal = sig;  // forward what we got: a rank may handle SIGINT differently
      outcome = LaunchResult{128 + sig, -1,
                             fmt::format("launcher received {}; stopped {}", signal_text(sig),
                                         format_ranks(running_ranks()))};
      break;
    }
    if (deadline && Clock::now() >= *deadline && !running_ranks().empty()) {
      std::vector<int> hung = running_ranks();
      outcome = LaunchResult{124, hung.size() == 1 ? hung[0] : -1,
                             fmt::format("timed out after {} s; {} still running",
                                         options_.timeout.count(), format_ranks(hung))};
      break;
    }
  }
  stop_all(first_signal);
  drain_output();
  return outcome.value_or(LaunchResult{0, -1, ""});
}

}  // namespace

LaunchResult launch(const LaunchOptions& options) {
  WEFT_CHECK_ARG(options.nprocs >= 1, "nprocs must be at least 1, got {}", options.nprocs);
  WEFT_CHECK_ARG(!options.argv.empty() && !options.argv[0].empty(),
                 "no program to run (argv is empty)");
  WEFT_CHECK_ARG(options.timeout.count() >= 0, "timeout must not be negative, got {} s",
                 options.timeout.count());
  WEFT_CHECK_ARG(options.kill_grace.count() >= 0, "kill_grace must not be negative, got {} ms",
                 options.kill_grace.count());
  WEFT_CHECK_ARG(options.port >= 0 && options.port <= 65535, "port must be in [0, 65535], got {}",
                 options.port);
  WEFT_CHECK_ARG(!options.master_addr.empty(), "master_addr is empty");
  for (const auto& [key, value] : options.extra_env) {
    WEFT_CHECK_ARG(!key.empty() && key.find('=') == std::string::npos,
                   "extra_env name '{}' is empty or contains '='", key);
  }
  if (g_launch_active.exchange(true)) {
    throw Error("launch", "another launch() is already running in this process");
  }
  struct Release {
    ~Release() { g_launch_active = false; }
  } release;

  // Two ports: MASTER_PORT for the program (a torch program's init_process_group binds it on rank
  // 0), and a different one for weft's own rendezvous.
  const int port = options.port != 0 ? options.port : find_free_tcp_port();
  int rendezvous_port = find_free_tcp_port();
  for (int tries = 0; rendezvous_port == port && tries < 16; ++tries)
    rendezvous_port = find_free_tcp_port();
  // Our buffered output belongs before the ranks' output.
  std::fflush(nullptr);
  SignalScope signals;
  Job job(options, port, rendezvous_port);
  return job.run();
}

int find_free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error("find_free_tcp_port", fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);  // free on every interface, as the rendezvous binds
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int err = errno;
    ::close(fd);
    throw Error("find_free_tcp_port", fmt::format("bind: {}", std::strerror(err)));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace weft
