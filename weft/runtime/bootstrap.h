// Process discovery: who am I (rank, world size, node-local rank) and where is rank 0's rendezvous
// server, read from whichever launcher started this process. Host-only, no CUDA.
//
// Sources, first match wins:
//   "weft"     weft's own launcher (`weft run`): WEFT_LAUNCHED=1 plus the torchrun variables;
//              MASTER_PORT is left free for the program (torch's TCPStore binds it) and
//              WEFT_RENDEZVOUS_PORT names the port the launcher reserved for weft's rendezvous.
//   "torchrun" RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. torch's
//              TCPStore already listens on MASTER_PORT, so rendezvous_port = MASTER_PORT + 1.
//   "openmpi"  OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}.
//   "slurm"    SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_STEP_TASKS_PER_NODE (the
//              step's layout) or else SLURM_NTASKS_PER_NODE.
//   "single"   none of the above: rank 0 of 1.
// For openmpi/slurm the address comes from WEFT_MASTER_ADDR or MASTER_ADDR (127.0.0.1 when the
// whole job is on one node) and the port from WEFT_MASTER_PORT or MASTER_PORT, else (one node only)
// a port derived from the job id that all ranks share. WEFT_RENDEZVOUS_PORT overrides the port for
// every source. A variable set to the empty string counts as unset.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace weft {

// Looks up one environment variable; std::nullopt when unset. Injectable so tests (and embedders
// that keep their own environment) need not touch the real process environment.
using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;

// Reads the real process environment (getenv).
EnvLookup process_environment();

struct ProcessInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string master_addr = "127.0.0.1";  // host of rank 0's rendezvous server
  int rendezvous_port = 0;                // TCP port weft's rendezvous binds on rank 0 (0: none)
  std::string source = "single";          // "weft", "torchrun", "openmpi", "slurm", "single"
};

// Throws weft::InvalidArgument naming the variable and its value when the environment is
// inconsistent: non-numeric or negative numbers, rank >= world_size, local_rank >= local_size,
// a launcher's variables only partly set, or a multi-node job without a master address.
ProcessInfo discover_process_info(const EnvLookup& env = process_environment());

}  // namespace weft
