// Running this program again in child processes, for checks and tests of calls that must trap: a
// trapped kernel ends its CUDA context, so such a call runs in a child and the parent reads what
// the child printed.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "weft/runtime/world.h"

namespace weft::checks {

// Runs `exe` with this process's environment plus `extra_env` ("NAME=value", replacing a variable
// of the same name); returns its exit status (128 + signal when killed by one, -1 when killed
// for overstaying `limit`) and everything it printed on stdout and stderr.
std::pair<int, std::string> spawn_and_capture(const std::string& exe,
                                              const std::vector<std::string>& extra_env,
                                              std::chrono::seconds limit);

// "CUDA_VISIBLE_DEVICES=<this rank's GPU>": a child process sees that GPU alone.
std::string visible_device_of(const World& w);

// Collective: every rank of `w` starts this program (/proc/self/exe) again with `extra_env`, and
// the children form a world of their own on the same GPUs (the job's ranks and sizes, a fresh
// rendezvous port that rank 0 picks). Returns this rank's child's status and output.
std::pair<int, std::string> run_child_world(World& w, const std::vector<std::string>& extra_env,
                                            std::chrono::seconds limit);

}  // namespace weft::checks
