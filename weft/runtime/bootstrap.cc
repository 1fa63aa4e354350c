#include "weft/runtime/bootstrap.h"

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <vector>

#include "weft/runtime/error.h"

namespace weft {
namespace {

constexpr const char* kCall = "discover_process_info";

[[noreturn]] void invalid(std::string detail) { throw InvalidArgument(kCall, std::move(detail)); }

// Looks variables up and treats "" as unset: `export RANK=` is how shells and job scripts usually
// "clear" a variable, and an empty value never carries information.
class Env {
 public:
  explicit Env(const EnvLookup& lookup) : lookup_(lookup) {}

  std::optional<std::string> get(std::string_view name) const {
    std::optional<std::string> value = lookup_(name);
    if (value && value->empty()) return std::nullopt;
    return value;
  }
  bool has(std::string_view name) const { return get(name).has_value(); }

  // The first of `names` that is set, with its name.
  std::optional<std::pair<std::string_view, std::string>> first_of(
      std::initializer_list<std::string_view> names) const {
    for (std::string_view name : names) {
      if (auto value = get(name)) return std::make_pair(name, *value);
    }
    return std::nullopt;
  }

 private:
  const EnvLookup& lookup_;
};

int parse_int(std::string_view name, const std::string& value, int min_value, int max_value) {
  int result = 0;
  const char* first = value.data();
  const char* last = value.data() + value.size();
  auto [ptr, ec] = std::from_chars(first, last, result);
  if (ec == std::errc::result_out_of_range)
    invalid(fmt::format("{}='{}' is out of range", name, value));
  if (ec != std::errc() || ptr != last) {
    invalid(fmt::format("{}='{}' is not a decimal integer", name, value));
  }
  if (result < min_value) {
    invalid(fmt::format("{}='{}' must be at least {}", name, value, min_value));
  }
  if (result > max_value) {
    invalid(fmt::format("{}='{}' must be at most {}", name, value, max_value));
  }
  return result;
}

int parse_count(std::string_view name, const std::string& value) {
  return parse_int(name, value, 1, std::numeric_limits<int>::max());
}
int parse_index(std::string_view name, const std::string& value) {
  return parse_int(name, value, 0, std::numeric_limits<int>::max());
}
int parse_port(std::string_view name, const std::string& value) {
  return parse_int(name, value, 1, 65535);
}

std::string join_names(const std::vector<std::string_view>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ", ";
    out += names[i];
  }
  return out;
}

// Reads a group of variables that a launcher always sets together. Returns nullopt when none is
// set; throws when only some are, since a half-configured environment (a stale RANK exported in a
// shell, a wrapper that forgot LOCAL_WORLD_SIZE) would otherwise make ranks disagree silently.
std::optional<std::vector<std::string>> read_group(const Env& env, std::string_view launcher,
                                                   std::initializer_list<std::string_view> names) {
  std::vector<std::string> values;
  std::vector<std::string_view> set_names, missing;
  for (std::string_view name : names) {
    if (auto value = env.get(name)) {
      values.push_back(*value);
      set_names.push_back(name);
    } else {
      values.emplace_back();
      missing.push_back(name);
    }
  }
  if (set_names.empty()) return std::nullopt;
  if (!missing.empty()) {
    std::string set_desc;
    for (size_t i = 0; i < set_names.size(); ++i) {
      if (i > 0) set_desc += ", ";
      set_desc += fmt::format("{}='{}'", set_names[i], *env.get(set_names[i]));
    }
    invalid(fmt::format(
        "{} {} set but {} {} not; {} sets all of {} (unset the stray variables or set the rest)",
        set_desc, set_names.size() == 1 ? "is" : "are", join_names(missing),
        missing.size() == 1 ? "is" : "are", launcher, join_names(std::vector(names))));
  }
  return values;
}

// The variable names a source uses, so errors name what the user actually has to fix.
struct Names {
  std::string_view rank, world_size, local_rank, local_size;
};

void validate(const ProcessInfo& info, const Names& n) {
  if (info.rank >= info.world_size) {
    invalid(
        fmt::format("{}={} must be below {}={}", n.rank, info.rank, n.world_size, info.world_size));
  }
  if (info.local_rank >= info.local_size) {
    invalid(fmt::format("{}={} must be below {}={}", n.local_rank, info.local_rank, n.local_size,
                        info.local_size));
  }
  if (info.local_size > info.world_size) {
    invalid(fmt::format("{}={} exceeds {}={}", n.local_size, info.local_size, n.world_size,
                        info.world_size));
  }
}

// Slurm's tasks-per-node lists look like "4(x2),3": 4 tasks on each of the first two nodes, then 3.
// Returns the count of node `node` (nullopt past the end), so uneven steps get the right local
// size.
std::optional<int> tasks_on_node(std::string_view name, const std::string& value, int node) {
  std::string_view rest = value;
  int index = 0;
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    std::string count_text(item), repeat_text = "1";
    if (size_t paren = item.find("(x"); paren != std::string_view::npos) {
      if (item.back() != ')') invalid(fmt::format("{}='{}' is malformed", name, value));
      count_text = std::string(item.substr(0, paren));
      repeat_text = std::string(item.substr(paren + 2, item.size() - paren - 3));
    }
    int count = 0, repeat = 0;
    auto parse = [&](const std::string& text, int& out) {
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
      if (ec != std::errc() || ptr != text.data() + text.size() || out < 1) {
        invalid(fmt::format("{}='{}' is malformed (expected a list like '4(x2),3')", name, value));
      }
    };
    parse(count_text, count);
    parse(repeat_text, repeat);
    if (node < index + repeat) return count;
    index += repeat;
  }
  return std::nullopt;
}

// 64-bit FNV-1a: a fixed, portable hash, so every rank (whatever its libstdc++) derives the same
// port from the same job id; std::hash promises no such thing.
uint64_t fnv1a(std::string_view text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::optional<std::string> slurm_job_id(const Env& env) {
  auto job = env.get("SLURM_JOB_ID");
  if (!job) return std::nullopt;
  // Two steps of one job may run at once; the step id keeps their ports apart.
  return fmt::format("slurm:{}.{}", *job, env.get("SLURM_STEP_ID").value_or("-"));
}

std::optional<std::string> mpi_job_id(const Env& env) {
  if (auto id =
          env.first_of({"OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid"})) {
    return fmt::format("{}:{}", id->first, id->second);
  }
  return std::nullopt;
}

const char* launcher_name(const std::string& source) {
  return source == "slurm" ? "Slurm" : "Open MPI";
}

// Address and port for launchers (Open MPI, Slurm) that do not provide a rendezvous of their own.
void resolve_master(const Env& env, ProcessInfo& info) {
  const bool one_node = info.local_size == info.world_size;
  if (auto addr = env.first_of({"WEFT_MASTER_ADDR", "MASTER_ADDR"})) {
    info.master_addr = addr->second;
  } else if (one_node) {
    info.master_addr = "127.0.0.1";
  } else {
    invalid(fmt::format(
        "{} job spans several nodes ({} ranks, {} on this node) but no rendezvous address is set: "
        "set WEFT_MASTER_ADDR to the host name or IP address of rank 0's node{}",
        launcher_name(info.source), info.world_size, info.local_size,
        info.source == "slurm" ? " (e.g. WEFT_MASTER_ADDR=$(scontrol show hostnames "
                                 "\"$SLURM_JOB_NODELIST\" | head -n 1))"
                               : ""));
  }

  if (env.has("WEFT_RENDEZVOUS_PORT")) return;  // discover_process_info applies it
  if (auto port = env.first_of({"WEFT_MASTER_PORT", "MASTER_PORT"})) {
    info.rendezvous_port = parse_port(port->first, port->second);
    return;
  }
  if (!one_node) {
    invalid(
        fmt::format("{} job spans several nodes but no rendezvous port is set: set "
                    "WEFT_MASTER_PORT (or WEFT_RENDEZVOUS_PORT) to a free TCP port on rank "
                    "0's node",
                    launcher_name(info.source)));
  }
  std::optional<std::string> job = info.source == "slurm" ? slurm_job_id(env) : mpi_job_id(env);
  if (!job) job = info.source == "slurm" ? env.get("PMIX_NAMESPACE") : slurm_job_id(env);
  if (!job) {
    invalid(
        fmt::format("{} job has no WEFT_MASTER_PORT/MASTER_PORT and no job id to derive a "
                    "port from: set WEFT_MASTER_PORT to a free TCP port",
                    launcher_name(info.source)));
  }
  // The same port on every rank, different for each job. [20000, 40000) keeps clear of
  // well-known ports; a clash with a busy port shows up as a clear bind error on rank 0.
  info.rendezvous_port = 20000 + static_cast<int>(fnv1a(*job) % 20000);
}

std::optional<ProcessInfo> from_weft(const Env& env) {
  auto launched = env.get("WEFT_LAUNCHED");
  if (!launched || *launched == "0") return std::nullopt;
  if (*launched != "1") invalid(fmt::format("WEFT_LAUNCHED='{}' must be 1 or 0", *launched));
  std::vector<std::string_view> missing;
  for (std::string_view name :
       {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
    if (!env.has(name)) missing.push_back(name);
  }
  if (!missing.empty()) {
    invalid(fmt::format("WEFT_LAUNCHED=1 but {} {} not set (weft's launcher sets them all)",
                        join_names(missing), missing.size() == 1 ? "is" : "are"));
  }
  ProcessInfo info;
  info.source = "weft";
  info.rank = parse_index("RANK", *env.get("RANK"));
  info.world_size = parse_count("WORLD_SIZE", *env.get("WORLD_SIZE"));
  info.local_rank = parse_index("LOCAL_RANK", *env.get("LOCAL_RANK"));
  info.local_size = parse_count("LOCAL_WORLD_SIZE", *env.get("LOCAL_WORLD_SIZE"));
  info.master_addr = *env.get("MASTER_ADDR");
  info.rendezvous_port = parse_port("MASTER_PORT", *env.get("MASTER_PORT"));
  validate(info, {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  return info;
}

std::optional<ProcessInfo> from_torchrun(const Env& env) {
  // MASTER_ADDR alone does not mean torchrun: MPI and Slurm users set it for weft too.
  auto values =
      read_group(env, "torchrun", {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  if (!values) return std::nullopt;
  auto master_addr = env.get("MASTER_ADDR");
  if (!master_addr) {
    invalid(
        "RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE are set but MASTER_ADDR is not; "
        "torchrun sets all of them plus MASTER_ADDR and MASTER_PORT");
  }
  ProcessInfo info;
  info.source = "torchrun";
  info.rank = parse_index("RANK", (*values)[0]);
  info.world_size = parse_count("WORLD_SIZE", (*values)[1]);
  info.local_rank = parse_index("LOCAL_RANK", (*values)[2]);
  info.local_size = parse_count("LOCAL_WORLD_SIZE", (*values)[3]);
  info.master_addr = *master_addr;
  validate(info, {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  // MASTER_PORT is only needed when nothing overrides weft's port.
  if (auto port = env.get("MASTER_PORT")) {
    int master_port = parse_port("MASTER_PORT", *port);
    if (master_port == 65535 && !env.has("WEFT_RENDEZVOUS_PORT")) {
      invalid(
          "MASTER_PORT='65535' leaves no room for weft's rendezvous on MASTER_PORT+1; set "
          "WEFT_RENDEZVOUS_PORT");
    }
    info.rendezvous_port = master_port + 1;
  } else if (!env.has("WEFT_RENDEZVOUS_PORT")) {
    invalid(
        "RANK and WORLD_SIZE are set but MASTER_PORT is not; torchrun sets all of RANK, "
        "WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT");
  }
  return info;
}

std::optional<ProcessInfo> from_openmpi(const Env& env) {
  auto values = read_group(env, "Open MPI",
                           {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                            "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"});
  if (!values) return std::nullopt;
  ProcessInfo info;
  info.source = "openmpi";
  info.rank = parse_index("OMPI_COMM_WORLD_RANK", (*values)[0]);
  info.world_size = parse_count("OMPI_COMM_WORLD_SIZE", (*values)[1]);
  info.local_rank = parse_index("OMPI_COMM_WORLD_LOCAL_RANK", (*values)[2]);
  info.local_size = parse_count("OMPI_COMM_WORLD_LOCAL_SIZE", (*values)[3]);
  validate(info, {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                  "OMPI_COMM_WORLD_LOCAL_SIZE"});
  resolve_master(env, info);
  return info;
}

std::optional<ProcessInfo> from_slurm(const Env& env) {
  auto procid = env.get("SLURM_PROCID");
  if (!procid) return std::nullopt;
  std::vector<std::string_view> missing;
  if (!env.has("SLURM_NTASKS")) missing.push_back("SLURM_NTASKS");
  if (!env.has("SLURM_LOCALID")) missing.push_back("SLURM_LOCALID");
  // The step's own layout first: SLURM_NTASKS_PER_NODE may be the job's request (sbatch
  // --ntasks-per-node), inherited by a step whose tasks are laid out otherwise.
  auto per_node = env.first_of({"SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"});
  if (!per_node) missing.push_back("SLURM_STEP_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE");
  if (!missing.empty()) {
    invalid(fmt::format("SLURM_PROCID='{}' is set but {} {} not (run the ranks with srun)", *procid,
                        join_names(missing), missing.size() == 1 ? "is" : "are"));
  }
  ProcessInfo info;
  info.source = "slurm";
  info.rank = parse_index("SLURM_PROCID", *procid);
  info.world_size = parse_count("SLURM_NTASKS", *env.get("SLURM_NTASKS"));
  info.local_rank = parse_index("SLURM_LOCALID", *env.get("SLURM_LOCALID"));
  int node = 0;
  if (auto node_id = env.get("SLURM_NODEID")) node = parse_index("SLURM_NODEID", *node_id);
  std::optional<int> local = tasks_on_node(per_node->first, per_node->second, node);
  if (!local) {
    invalid(fmt::format("{}='{}' lists no task count for SLURM_NODEID={}", per_node->first,
                        per_node->second, node));
  }
  info.local_size = *local;
  validate(info, {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", per_node->first});
  resolve_master(env, info);
  return info;
}

}  // namespace

EnvLookup process_environment() {
  return [](std::string_view name) -> std::optional<std::string> {
    const char* value = std::getenv(std::string(name).c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

ProcessInfo discover_process_info(const EnvLookup& lookup) {
  WEFT_CHECK_ARG(static_cast<bool>(lookup), "the environment lookup function is empty");
  Env env(lookup);
  std::optional<ProcessInfo> info = from_weft(env);
  if (!info) info = from_torchrun(env);
  if (!info) info = from_openmpi(env);
  if (!info) info = from_slurm(env);
  if (!info) info = ProcessInfo{};  // a plain single process: rank 0 of 1, no rendezvous needed
  if (auto port = env.get("WEFT_RENDEZVOUS_PORT")) {
    info->rendezvous_port = parse_port("WEFT_RENDEZVOUS_PORT", *port);
  }
  return *info;
}

}  // namespace weft
