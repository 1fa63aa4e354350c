// launch(): ranks are /bin/sh -c scripts that read $RANK to decide what to do. Every test bounds
// its waits; ranks that would sleep for a minute must be stopped by the launcher long before.
#include "weft/runtime/launcher.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include "tests/cpu/child_process.h"
#include "weft/runtime/bootstrap.h"
#include "weft/runtime/error.h"

namespace weft {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

bool has(const std::string& text, const std::string& needle) {
  return testing::contains(text, needle);
}

LaunchOptions sh(int nprocs, const std::string& script) {
  LaunchOptions o;
  o.nprocs = nprocs;
  o.argv = {"/bin/sh", "-c", script};
  return o;
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "weft_launcher_test.XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string read(const std::string& name) const {
    std::ifstream in(path_ + "/" + name);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // Waits (bounded) until all the files exist.
  bool wait_for(const std::vector<std::string>& names, std::chrono::milliseconds bound) const {
    auto deadline = Clock::now() + bound;
    while (Clock::now() < deadline) {
      bool all = true;
      for (const std::string& n : names) all = all && fs::exists(path_ + "/" + n);
      if (all) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

 private:
  std::string path_;
};

// Forked children (for tests that must signal or kill the launcher itself).
using testing::spawn_child;
int wait_bounded(pid_t pid, std::chrono::milliseconds bound) {
  return testing::wait_child(pid, bound);
}

// A pid is gone once it no longer exists or is a zombie (its new parent may not reap it at once).
bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  size_t paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] == 'Z' ||
         line[paren + 2] == 'X';
}

TEST(Launcher, AllRanksSucceed) {
  LaunchResult r = launch(sh(3, "exit 0"));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.failed_rank, -1);
  EXPECT_EQ(r.message, "");
}

TEST(Launcher, FirstFailureStopsTheOthers) {
  auto start = Clock::now();
  LaunchResult r = launch(sh(3, R"(if [ "$RANK" = 1 ]; then sleep 0.2; exit 3; fi; sleep 60)"));
  auto elapsed = Clock::now() - start;
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.failed_rank, 1);
  EXPECT_EQ(r.message, "rank 1 exited with status 3");
  EXPECT_LT(elapsed, 2s);  // SIGTERM stops the sleepers at once; well under kill_grace + 1 s
}

TEST(Launcher, InstantFailureStopsRanksThatAreStillStarting) {
  // Rank 0 fails while later ranks may still be between fork() and exec(); the SIGTERM must
  // reach them too instead of being swallowed (which would cost the whole kill_grace).
  auto start = Clock::now();
  LaunchResult r = launch(sh(8, R"(if [ "$RANK" = 0 ]; then exit 1; fi; sleep 60)"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.failed_rank, 0);
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST(Launcher, StoppedRanksLeaveNothingBehindInTheirGroup) {
  // The stop must also reach what a rank started when the rank's own process dies of the SIGTERM
  // and its child does not: in the wild, a shell that forks just as the SIGTERM comes keeps the
  // signal pending to itself (it blocks signals around fork()) and the child never gets it; here
  // the child ignores SIGTERM. Left alive, it would also hold ctest's output pipe open for 60 s.
  TempDir dir;
  LaunchOptions o = sh(2, R"(
    if [ "$RANK" = 1 ]; then
      i=0; while [ ! -e "$OUT_DIR/child" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
      exit 3
    fi
    sh -c 'trap "" TERM; echo $$ > "$OUT_DIR/child.tmp"; mv "$OUT_DIR/child.tmp" "$OUT_DIR/child"
           exec sleep 60' </dev/null >/dev/null 2>&1 &
    wait)");
  o.extra_env = {{"OUT_DIR", dir.path()}};
  auto start = Clock::now();
  LaunchResult r = launch(o);
  EXPECT_LT(Clock::now() - start, 2s);  // no kill grace either: the rank itself died of SIGTERM
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.failed_rank, 1);
  ASSERT_TRUE(dir.wait_for({"child"}, 1s));
  pid_t child = std::atoi(dir.read("child").c_str());
  ASSERT_GT(child, 0);
  auto deadline = Clock::now() + 2s;  // SIGKILLed; its new parent reaps it
  while (!process_gone(child) && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(process_gone(child)) << "rank 0's child " << child << " outlived the job";
  if (!process_gone(child)) ::kill(child, SIGKILL);
}

TEST(Launcher, RanksIgnoringSigtermAreKilledAfterTheGrace) {
  LaunchOptions o =
      sh(2, R"(if [ "$RANK" = 1 ]; then sleep 0.3; exit 2; fi; trap "" TERM; sleep 60)");
  o.kill_grace = 500ms;
  auto start = Clock::now();
  LaunchResult r = launch(o);
  auto elapsed = Clock::now() - start;
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.failed_rank, 1);
  EXPECT_GE(elapsed, 750ms);  // 0.3 s + the grace
  EXPECT_LT(elapsed, 2s);
}

TEST(Launcher, RankKilledBySignal) {
  LaunchResult r =
      launch(sh(3, R"(if [ "$RANK" = 1 ]; then ulimit -c 0; kill -SEGV $$; fi; sleep 60)"));
  EXPECT_EQ(r.exit_code, 128 + SIGSEGV);
  EXPECT_EQ(r.failed_rank, 1);
  EXPECT_EQ(r.message, "rank 1 killed by signal 11 (Segmentation fault)");
}

TEST(Launcher, TimeoutNamesTheHangingRank) {
  LaunchOptions o = sh(3, R"(if [ "$RANK" = 2 ]; then sleep 60; fi; exit 0)");
  o.timeout = 2s;
  auto start = Clock::now();
  LaunchResult r = launch(o);
  auto elapsed = Clock::now() - start;
  EXPECT_EQ(r.exit_code, 124);
  EXPECT_EQ(r.failed_rank, 2);
  EXPECT_EQ(r.message, "timed out after 2 s; rank 2 still running");
  EXPECT_GE(elapsed, 1900ms);
  EXPECT_LT(elapsed, 3500ms);
}

TEST(Launcher, TimeoutWithSeveralHangingRanks) {
  LaunchOptions o = sh(3, R"(if [ "$RANK" = 0 ]; then exit 0; fi; sleep 60)");
  o.timeout = 1s;
  LaunchResult r = launch(o);
  EXPECT_EQ(r.exit_code, 124);
  EXPECT_EQ(r.failed_rank, -1);
  EXPECT_EQ(r.message, "timed out after 1 s; ranks 1, 2 still running");
}

TEST(Launcher, ProgramNotFound) {
  LaunchOptions o;
  o.nprocs = 2;
  o.argv = {"weft-no-such-program-xyz", "--flag"};
  LaunchResult r = launch(o);
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_GE(r.failed_rank, 0);
  EXPECT_TRUE(has(r.message, "could not execute 'weft-no-such-program-xyz'")) << r.message;
  EXPECT_TRUE(has(r.message, "No such file or directory")) << r.message;

  o.argv = {"/nonexistent/dir/prog"};
  r = launch(o);
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_TRUE(has(r.message, "'/nonexistent/dir/prog'")) << r.message;
}

TEST(Launcher, ProgramNotExecutable) {
  TempDir dir;
  std::string path = dir.path() + "/not_executable";
  std::ofstream(path) << "#!/bin/sh\nexit 0\n";
  ::chmod(path.c_str(), 0644);
  LaunchOptions o;
  o.argv = {path};
  LaunchResult r = launch(o);
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_EQ(r.failed_rank, 0);
  EXPECT_TRUE(has(r.message, "Permission denied")) << r.message;
}

TEST(Launcher, EnvironmentOfTheRanks) {
  TempDir dir;
  LaunchOptions o = sh(4, R"(
    if read -r line; then exit 9; fi  # stdin must be /dev/null, not the terminal
    echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK" \
         "$MASTER_ADDR $MASTER_PORT $WEFT_LAUNCHED $WEFT_TEST_EXTRA" > "$OUT_DIR/$RANK"
    for v in RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT WEFT_LAUNCHED \
             WEFT_RENDEZVOUS_PORT; do
      eval "echo $v=\$$v"
    done > "$OUT_DIR/env.$RANK")");
  o.extra_env = {{"OUT_DIR", dir.path()}, {"WEFT_TEST_EXTRA", "extra"}};
  ::setenv("RANK", "77", 1);  // a stale value in the launcher's own environment must not leak
  LaunchResult r = launch(o);
  ::unsetenv("RANK");
  ASSERT_EQ(r.exit_code, 0) << r.message;
  std::string port;
  for (int rank = 0; rank < 4; ++rank) {
    std::istringstream in(dir.read(std::to_string(rank)));
    std::string rk, ws, lr, lws, gr, addr, p, launched, extra;
    in >> rk >> ws >> lr >> lws >> gr >> addr >> p >> launched >> extra;
    EXPECT_EQ(rk, std::to_string(rank));
    EXPECT_EQ(ws, "4");
    EXPECT_EQ(lr, std::to_string(rank));
    EXPECT_EQ(lws, "4");
    EXPECT_EQ(gr, "0");
    EXPECT_EQ(addr, "127.0.0.1");
    EXPECT_EQ(launched, "1");
    EXPECT_EQ(extra, "extra");
    if (rank == 0) port = p;
    EXPECT_EQ(p, port);  // one reserved port for the whole job
    int port_number = std::atoi(p.c_str());
    EXPECT_GT(port_number, 0);
    EXPECT_LE(port_number, 65535);

    // What weft's bootstrap makes of that environment inside the rank.
    std::map<std::string, std::string, std::less<>> vars;
    std::istringstream env(dir.read("env." + std::to_string(rank)));
    for (std::string line; std::getline(env, line);) {
      vars[line.substr(0, line.find('='))] = line.substr(line.find('=') + 1);
    }
    ProcessInfo info =
        discover_process_info([&](std::string_view name) -> std::optional<std::string> {
          auto it = vars.find(name);
          if (it == vars.end()) return std::nullopt;
          return it->second;
        });
    EXPECT_EQ(info.source, "weft");
    EXPECT_EQ(info.rank, rank);
    EXPECT_EQ(info.world_size, 4);
    // weft's rendezvous has its own port, so a torch program can still bind MASTER_PORT.
    EXPECT_EQ(std::to_string(info.rendezvous_port), vars["WEFT_RENDEZVOUS_PORT"]);
    EXPECT_NE(info.rendezvous_port, port_number);
  }
}

TEST(Launcher, ExplicitPortAndAddress) {
  TempDir dir;
  LaunchOptions o = sh(2, R"(echo "$MASTER_ADDR:$MASTER_PORT" > "$OUT_DIR/$RANK")");
  o.port = 23456;
  o.master_addr = "10.1.2.3";
  o.extra_env = {{"OUT_DIR", dir.path()}};
  ASSERT_EQ(launch(o).exit_code, 0);
  EXPECT_EQ(dir.read("0"), "10.1.2.3:23456\n");
  EXPECT_EQ(dir.read("1"), "10.1.2.3:23456\n");
}

// Redirects this process's stdout and stderr to files while alive.
class CaptureOutput {
 public:
  explicit CaptureOutput(const std::string& dir)
      : out_path_(dir + "/out"), err_path_(dir + "/err") {
    std::fflush(nullptr);
    saved_out_ = ::dup(STDOUT_FILENO);
    saved_err_ = ::dup(STDERR_FILENO);
    int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, STDOUT_FILENO);
    ::dup2(err, STDERR_FILENO);
    ::close(out);
    ::close(err);
  }
  ~CaptureOutput() { restore(); }
  void restore() {
    if (saved_out_ < 0) return;
    std::fflush(nullptr);
    ::dup2(saved_out_, STDOUT_FILENO);
    ::dup2(saved_err_, STDERR_FILENO);
    ::close(saved_out_);
    ::close(saved_err_);
    saved_out_ = saved_err_ = -1;
  }

 private:
  std::string out_path_, err_path_;
  int saved_out_ = -1, saved_err_ = -1;
};

TEST(Launcher, TagOutputPrefixesEveryLine) {
  TempDir dir;
  LaunchOptions o = sh(2, R"(echo "hello from $RANK"; echo "second $RANK"; echo "err $RANK" >&2; )"
                          R"(printf "partial $RANK")");
  o.tag_output = true;
  LaunchResult r;
  {
    CaptureOutput capture(dir.path());
    r = launch(o);
  }
  ASSERT_EQ(r.exit_code, 0) << r.message;
  std::string out = dir.read("out"), err = dir.read("err");
  // Ranks interleave line by line; each rank's own lines keep their order.
  auto lines_of = [](const std::string& text, int rank) {
    std::vector<std::string> mine;
    std::string prefix = fmt::format("[rank {}] ", rank);
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind(prefix, 0) == 0) mine.push_back(line);
    }
    return mine;
  };
  for (int rank = 0; rank < 2; ++rank) {
    std::string p = fmt::format("[rank {}] ", rank);
    EXPECT_EQ(lines_of(out, rank),
              (std::vector<std::string>{fmt::format("{}hello from {}", p, rank),
                                        fmt::format("{}second {}", p, rank),
                                        fmt::format("{}partial {}", p, rank)}))  // flushed at end
        << out;
    EXPECT_EQ(lines_of(err, rank), std::vector<std::string>{fmt::format("{}err {}", p, rank)})
        << err;
  }
  EXPECT_EQ(out.back(), '\n');
  // Nothing untagged.
  std::istringstream lines(out + err);
  for (std::string line; std::getline(lines, line);) {
    EXPECT_TRUE(line.rfind("[rank ", 0) == 0) << "untagged line: " << line;
  }
}

TEST(Launcher, TagOutputOfAFailingRankIsKept) {
  TempDir dir;
  LaunchOptions o = sh(2, R"(if [ "$RANK" = 1 ]; then echo "dying" >&2; exit 5; fi; sleep 60)");
  o.tag_output = true;
  LaunchResult r;
  auto start = Clock::now();
  {
    CaptureOutput capture(dir.path());
    r = launch(o);
  }
  EXPECT_LT(Clock::now() - start, 2s);
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_TRUE(has(dir.read("err"), "[rank 1] dying\n")) << dir.read("err");
}

TEST(Launcher, TagOutputOfARankThatNeverPausesStillTimesOut) {
  // Rank 0 writes without pause into a launcher whose own output drains slowly, so its pipe is
  // full again whenever the launcher comes back to read; the launcher must still get back to its
  // deadline between reads. Run in a child (bounded, killed if it overstays; the ranks die with
  // it) whose stdout is a pipe a thread reads 4 KiB at a time.
  pid_t launcher = spawn_child([] {
    int out[2];
    if (::pipe(out) != 0 || ::dup2(out[1], 1) < 0) return 97;
    std::thread([fd = out[0]] {
      char buf[4096];
      while (::read(fd, buf, sizeof(buf)) > 0) std::this_thread::sleep_for(200us);
    }).detach();
    LaunchOptions o = sh(2, R"(if [ "$RANK" = 0 ]; then exec yes spam; fi; exec sleep 60)");
    o.tag_output = true;
    o.timeout = 1s;
    return launch(o).exit_code == 124 ? 0 : 1;
  });
  EXPECT_EQ(wait_bounded(launcher, 20s), 0) << "-1: the launcher overstayed its 1 s timeout";
}

TEST(Launcher, ForwardsSigtermToTheRanks) {
  TempDir dir;
  pid_t launcher = spawn_child([&] {
    LaunchOptions o = sh(2, R"(touch "$OUT_DIR/ready.$RANK"; exec sleep 60)");
    o.extra_env = {{"OUT_DIR", dir.path()}};
    LaunchResult r = launch(o);
    if (r.exit_code != 128 + SIGTERM || r.failed_rank != -1 ||
        !has(r.message, "launcher received signal 15 (Terminated)")) {
      std::fprintf(stderr, "child: unexpected result %d %d '%s'\n", r.exit_code, r.failed_rank,
                   r.message.c_str());
      return 1;
    }
    return 0;
  });
  // Ranks exist only after launch() installed its handlers, so the signal cannot arrive early.
  ASSERT_TRUE(dir.wait_for({"ready.0", "ready.1"}, 5s));
  auto start = Clock::now();
  ::kill(launcher, SIGTERM);
  EXPECT_EQ(wait_bounded(launcher, 5s), 0);
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST(Launcher, RanksDieWithTheLauncher) {
  TempDir dir;
  pid_t launcher = spawn_child([&] {
    LaunchOptions o = sh(
        2,
        R"(echo $$ > "$OUT_DIR/pid.$RANK.tmp"; mv "$OUT_DIR/pid.$RANK.tmp" "$OUT_DIR/pid.$RANK"; )"
        R"(exec sleep 60)");
    o.extra_env = {{"OUT_DIR", dir.path()}};
    launch(o);
    return 0;
  });
  ASSERT_TRUE(dir.wait_for({"pid.0", "pid.1"}, 5s));
  std::vector<pid_t> ranks = {std::atoi(dir.read("pid.0").c_str()),
                              std::atoi(dir.read("pid.1").c_str())};
  ::kill(launcher, SIGKILL);  // no chance to clean up: PR_SET_PDEATHSIG must do it
  EXPECT_EQ(wait_bounded(launcher, 5s), 128 + SIGKILL);
  auto deadline = Clock::now() + 3s;
  for (pid_t pid : ranks) {
    ASSERT_GT(pid, 0);
    while (!process_gone(pid) && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(process_gone(pid)) << "rank process " << pid << " outlived the launcher";
    if (!process_gone(pid)) ::kill(pid, SIGKILL);
  }
}

TEST(Launcher, OptionsAreValidated) {
  EXPECT_THROW(launch(sh(0, "true")), InvalidArgument);
  LaunchOptions o;
  EXPECT_THROW(launch(o), InvalidArgument);  // no program
  o = sh(1, "true");
  o.port = 70000;
  EXPECT_THROW(launch(o), InvalidArgument);
  o = sh(1, "true");
  o.kill_grace = -1ms;
  EXPECT_THROW(launch(o), InvalidArgument);
  o = sh(1, "true");
  o.extra_env = {{"A=B", "c"}};
  EXPECT_THROW(launch(o), InvalidArgument);
}

TEST(Launcher, FindFreeTcpPort) {
  int port = find_free_tcp_port();
  EXPECT_GT(port, 0);
  EXPECT_LE(port, 65535);
  // It is bindable right now.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::close(fd);
}

}  // namespace
}  // namespace weft
