// The engine of `weft run -n N -- program args...`: starts N ranks of a program on this node with
// the torchrun-style environment weft's bootstrap reads, watches them, and stops the whole job as
// soon as one rank fails, hangs past the time limit, or the launcher is interrupted.
//
// Host-only and CUDA-free on purpose: the launcher forks, and a CUDA context does not survive
// fork(), so nothing in this process may have touched the GPU.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace weft {

struct LaunchOptions {
  int nprocs = 1;
  std::vector<std::string> argv;          // program (searched in PATH) and its arguments
  std::chrono::seconds timeout{0};        // 0 = none; wall-clock limit for the whole job
  std::string master_addr = "127.0.0.1";  // MASTER_ADDR given to the ranks
  int port = 0;                           // MASTER_PORT for the program; 0 = pick a free one
  // Prefix each output line with "[rank N] ". The ranks' output then passes through the
  // launcher, which blocks while its own stdout does (a paused pager holds the job's timeout
  // too); a reader that goes away stops the job as SIGPIPE would.
  bool tag_output = false;
  std::chrono::milliseconds kill_grace{3000};                  // SIGTERM, then SIGKILL after this
  std::vector<std::pair<std::string, std::string>> extra_env;  // set last; may override ours
};

struct LaunchResult {
  // 0 on success; else the failing rank's exit code, 128+signal (rank killed by a signal, or the
  // launcher interrupted), 124 on timeout, 127 when a rank's program could not be started.
  int exit_code = 0;
  // The rank that failed; -1 on success, when the launcher was interrupted, or when several ranks
  // were still running at the timeout (the message names them).
  int failed_rank = -1;
  // One line, e.g. "rank 1 exited with status 3", "rank 2 killed by signal 11 (Segmentation
  // fault)", "timed out after 5 s; ranks 2, 3 still running". Empty on success.
  std::string message;
};

// Runs the job to completion; returns when every rank has exited or been stopped. Each rank runs in
// its own process group (stopping a rank stops its children too), with stdin from /dev/null and
// the environment: WEFT_LAUNCHED=1, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (= nprocs),
// GROUP_RANK=0, MASTER_ADDR, MASTER_PORT, then extra_env. SIGINT/SIGTERM/SIGHUP received while
// it runs are forwarded to the ranks. A rank dies with the launcher (PR_SET_PDEATHSIG) even if the
// launcher is SIGKILLed, but processes a rank started do not: kill the launcher with SIGTERM,
// which stops whole process groups. Throws weft::InvalidArgument on bad options, weft::Error when
// the launcher itself cannot work (fork, pipe). Not reentrant: one launch per process at once.
LaunchResult launch(const LaunchOptions& options);

// A TCP port that is free on every interface right now (the kernel picks it). Another process can
// take it before it is used; the rendezvous then fails with a clear "port in use" error.
int find_free_tcp_port();

}  // namespace weft
