// Helpers for CPU tests that fork: run a body in a child whose exit status reports the result, and
// wait for children with a bound (a child that overstays is killed), so no test can hang.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace weft::testing {

// Runs `body` in a forked child; its return value becomes the exit status (99 for an escaped
// exception, 98 if it never returned). Returns the child's pid (-1 if fork failed).
inline pid_t spawn_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 98;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: unexpected exception: %s\n", e.what());
      code = 99;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  return pid;
}

// Exit status of `pid` (128 + signal if killed by one); -1 after killing it when `deadline`
// passes; -2 if it is not our child.
inline int wait_child_until(pid_t pid, std::chrono::steady_clock::time_point deadline) {
  int status = 0;
  while (true) {
    const pid_t rc = ::waitpid(pid, &status, WNOHANG);
    if (rc == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (rc < 0) return -2;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

inline int wait_child(pid_t pid, std::chrono::milliseconds bound) {
  return wait_child_until(pid, std::chrono::steady_clock::now() + bound);
}

// Forked helper processes, killed if a test ends (or fails) while they still run.
class Children {
 public:
  ~Children() {
    for (pid_t pid : pids_) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }

  // Runs body() in a child; its return value is the exit status (99 for an escaped exception).
  void spawn(const std::function<int()>& body) {
    const pid_t pid = spawn_child(body);
    if (pid < 0) throw std::runtime_error("fork failed");
    pids_.push_back(pid);
  }

  // Exit statuses in spawn order; -1 for a child that had to be killed after `bound`.
  std::vector<int> wait_all(std::chrono::milliseconds bound = std::chrono::seconds(20)) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    std::vector<int> codes;
    for (pid_t pid : pids_) codes.push_back(wait_child_until(pid, deadline));
    pids_.clear();
    return codes;
  }

 private:
  std::vector<pid_t> pids_;
};

inline bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

}  // namespace weft::testing
