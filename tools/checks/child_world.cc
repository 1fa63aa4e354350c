#include "tools/checks/child_world.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "weft/runtime/error.h"
#include "weft/runtime/launcher.h"

extern char** environ;

namespace weft::checks {

// Runs `argv` with extra environment; returns its exit status and everything it printed.
std::pair<int, std::string> spawn_and_capture(const std::string& exe,
                                              const std::vector<std::string>& extra_env,
                                              std::chrono::seconds limit) {
  int pipefd[2];
  WEFT_CHECK(pipe(pipefd) == 0, "pipe failed: {}", std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 2);
  posix_spawn_file_actions_addclose(&actions, pipefd[0]);
  // The child's environment: ours, with the extra variables replacing any of the same name.
  std::vector<std::string> env_strings = extra_env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('=') + 1);
    bool replaced = false;
    for (const auto& x : extra_env) replaced |= x.compare(0, name.size(), name) == 0;
    if (!replaced) env_strings.push_back(entry);
  }
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe_copy = exe;
  char* argv[] = {exe_copy.data(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(pipefd[1]);
  if (rc != 0) {
    close(pipefd[0]);
    throw Error("posix_spawn", fmt::format("{}: {}", exe, std::strerror(rc)));
  }
  // Read until EOF or the limit; the child is killed if it overstays.
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
  int status = 0;
  bool exited = false;
  char chunk[4096];
  while (true) {
    const ssize_t n = read(pipefd[0], chunk, sizeof(chunk));
    if (n > 0) {
      out.append(chunk, n);
      continue;
    }
    if (!exited && waitpid(pid, &status, WNOHANG) == pid) exited = true;
    if (n == 0 && exited) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      if (!exited) waitpid(pid, &status, 0);
      close(pipefd[0]);
      return {-1, out + "\n[killed: no exit within the limit]"};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  close(pipefd[0]);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

// "CUDA_VISIBLE_DEVICES=<this rank's GPU>": a child process sees that GPU alone.
std::string visible_device_of(const World& w) {
  std::string device = std::to_string(w.device());
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES")) {
    std::vector<std::string> ids;
    std::string cur;
    for (const char* c = visible;; ++c) {
      if (*c == ',' || *c == 0) {
        ids.push_back(cur);
        cur.clear();
        if (!*c) break;
      } else
        cur += *c;
    }
    if (w.device() < static_cast<int>(ids.size())) device = ids[w.device()];
  }
  return "CUDA_VISIBLE_DEVICES=" + device;
}

std::pair<int, std::string> run_child_world(World& w, const std::vector<std::string>& extra_env,
                                            std::chrono::seconds limit) {
  int port = w.rank() == 0 ? find_free_tcp_port() : 0;
  const auto all = w.rendezvous().all_gather(
      std::string_view(reinterpret_cast<const char*>(&port), sizeof(port)));
  std::memcpy(&port, all[0].data(), sizeof(port));
  std::vector<std::string> env = {"WEFT_LAUNCHED=1",
                                  fmt::format("RANK={}", w.rank()),
                                  fmt::format("WORLD_SIZE={}", w.size()),
                                  fmt::format("LOCAL_RANK={}", w.process().local_rank),
                                  fmt::format("LOCAL_WORLD_SIZE={}", w.process().local_size),
                                  "MASTER_ADDR=127.0.0.1",
                                  fmt::format("MASTER_PORT={}", port),
                                  fmt::format("WEFT_RENDEZVOUS_PORT={}", port)};
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  return spawn_and_capture("/proc/self/exe", env, limit);
}

}  // namespace weft::checks
