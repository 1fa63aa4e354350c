// discover_process_info against fake environments: every source, their priority, and each
// validation error (which must name the offending variable).
#include "weft/runtime/bootstrap.h"

#include <gtest/gtest.h>

#include <map>

#include "tests/support/expect_error.h"
#include "weft/runtime/error.h"

namespace weft {
namespace {

using Vars = std::map<std::string, std::string, std::less<>>;

EnvLookup fake(Vars vars) {
  return [vars = std::move(vars)](std::string_view name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

Vars torchrun(int rank = 1, int world = 4) {
  return {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank)},
          {"LOCAL_WORLD_SIZE", std::to_string(world)},
          {"MASTER_ADDR", "node0"},
          {"MASTER_PORT", "29500"}};
}

Vars openmpi(int rank = 2, int world = 4, int local_rank = 2, int local_size = 4) {
  return {{"OMPI_COMM_WORLD_RANK", std::to_string(rank)},
          {"OMPI_COMM_WORLD_SIZE", std::to_string(world)},
          {"OMPI_COMM_WORLD_LOCAL_RANK", std::to_string(local_rank)},
          {"OMPI_COMM_WORLD_LOCAL_SIZE", std::to_string(local_size)}};
}

Vars slurm(int rank = 3, int world = 4, int local_rank = 3) {
  return {{"SLURM_PROCID", std::to_string(rank)},
          {"SLURM_NTASKS", std::to_string(world)},
          {"SLURM_LOCALID", std::to_string(local_rank)},
          {"SLURM_STEP_TASKS_PER_NODE", std::to_string(world)},
          {"SLURM_JOB_ID", "12345"},
          {"SLURM_STEP_ID", "0"}};
}

Vars merge(Vars a, const Vars& b) {
  for (const auto& [k, v] : b) a[k] = v;
  return a;
}

// Expects InvalidArgument whose message contains every one of `needles`.
void expect_invalid(const Vars& vars, std::initializer_list<std::string_view> needles) {
  testing::expect_error([&] { discover_process_info(fake(vars)); }, needles);
}

TEST(Bootstrap, SingleProcessWhenNothingIsSet) {
  ProcessInfo info = discover_process_info(fake({}));
  EXPECT_EQ(info.source, "single");
  EXPECT_EQ(info.rank, 0);
  EXPECT_EQ(info.world_size, 1);
  EXPECT_EQ(info.local_rank, 0);
  EXPECT_EQ(info.local_size, 1);
  EXPECT_EQ(info.master_addr, "127.0.0.1");
  EXPECT_EQ(info.rendezvous_port, 0);
}

TEST(Bootstrap, SingleProcessHonoursRendezvousPortOverride) {
  ProcessInfo info = discover_process_info(fake({{"WEFT_RENDEZVOUS_PORT", "31000"}}));
  EXPECT_EQ(info.source, "single");
  EXPECT_EQ(info.rendezvous_port, 31000);
}

TEST(Bootstrap, WeftLauncher) {
  ProcessInfo info = discover_process_info(fake(merge(torchrun(2, 4), {{"WEFT_LAUNCHED", "1"}})));
  EXPECT_EQ(info.source, "weft");
  EXPECT_EQ(info.rank, 2);
  EXPECT_EQ(info.world_size, 4);
  EXPECT_EQ(info.local_rank, 2);
  EXPECT_EQ(info.local_size, 4);
  EXPECT_EQ(info.master_addr, "node0");
  EXPECT_EQ(info.rendezvous_port, 29500);  // the launcher reserved MASTER_PORT for weft
}

TEST(Bootstrap, WeftLaunchedZeroMeansNotLaunched) {
  ProcessInfo info = discover_process_info(fake(merge(torchrun(), {{"WEFT_LAUNCHED", "0"}})));
  EXPECT_EQ(info.source, "torchrun");
}

TEST(Bootstrap, WeftLaunchedBadValue) {
  expect_invalid(merge(torchrun(), {{"WEFT_LAUNCHED", "yes"}}), {"WEFT_LAUNCHED", "yes"});
}

TEST(Bootstrap, WeftLaunchedMissingVariables) {
  Vars vars = merge(torchrun(), {{"WEFT_LAUNCHED", "1"}});
  vars.erase("LOCAL_WORLD_SIZE");
  vars.erase("MASTER_PORT");
  expect_invalid(vars, {"WEFT_LAUNCHED=1", "LOCAL_WORLD_SIZE", "MASTER_PORT"});
}

TEST(Bootstrap, Torchrun) {
  ProcessInfo info = discover_process_info(fake(torchrun(1, 4)));
  EXPECT_EQ(info.source, "torchrun");
  EXPECT_EQ(info.rank, 1);
  EXPECT_EQ(info.world_size, 4);
  EXPECT_EQ(info.local_rank, 1);
  EXPECT_EQ(info.local_size, 4);
  EXPECT_EQ(info.master_addr, "node0");
  EXPECT_EQ(info.rendezvous_port, 29501);  // torch's TCPStore owns MASTER_PORT
}

TEST(Bootstrap, TorchrunMultiNode) {
  Vars vars = torchrun();
  vars["RANK"] = "13";
  vars["WORLD_SIZE"] = "16";
  vars["LOCAL_RANK"] = "5";
  vars["LOCAL_WORLD_SIZE"] = "8";
  ProcessInfo info = discover_process_info(fake(vars));
  EXPECT_EQ(info.rank, 13);
  EXPECT_EQ(info.local_rank, 5);
  EXPECT_EQ(info.local_size, 8);
}

TEST(Bootstrap, TorchrunPartiallySet) {
  expect_invalid({{"RANK", "1"}}, {"RANK='1'", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  Vars vars = torchrun();
  vars.erase("LOCAL_WORLD_SIZE");
  expect_invalid(vars, {"LOCAL_WORLD_SIZE", "torchrun"});
  vars = torchrun();
  vars.erase("MASTER_ADDR");
  expect_invalid(vars, {"MASTER_ADDR"});
  vars = torchrun();
  vars.erase("MASTER_PORT");
  expect_invalid(vars, {"MASTER_PORT"});
}

TEST(Bootstrap, TorchrunWithoutMasterPortButOverride) {
  Vars vars = torchrun();
  vars.erase("MASTER_PORT");
  vars["WEFT_RENDEZVOUS_PORT"] = "30001";
  EXPECT_EQ(discover_process_info(fake(vars)).rendezvous_port, 30001);
}

TEST(Bootstrap, TorchrunMasterPortAtTheTop) {
  Vars vars = torchrun();
  vars["MASTER_PORT"] = "65535";
  expect_invalid(vars, {"MASTER_PORT", "65535", "WEFT_RENDEZVOUS_PORT"});
  vars["WEFT_RENDEZVOUS_PORT"] = "30002";
  EXPECT_EQ(discover_process_info(fake(vars)).rendezvous_port, 30002);
}

TEST(Bootstrap, NumbersAreValidated) {
  Vars vars = torchrun();
  vars["RANK"] = "abc";
  expect_invalid(vars, {"RANK", "abc", "not a decimal integer"});
  vars["RANK"] = "-1";
  expect_invalid(vars, {"RANK", "-1", "at least 0"});
  vars["RANK"] = "1x";
  expect_invalid(vars, {"RANK", "1x"});
  vars["RANK"] = " 1";
  expect_invalid(vars, {"RANK", " 1"});
  vars["RANK"] = "99999999999999999999";
  expect_invalid(vars, {"RANK", "out of range"});
  vars = torchrun();
  vars["WORLD_SIZE"] = "0";
  expect_invalid(vars, {"WORLD_SIZE", "at least 1"});
  vars = torchrun();
  vars["MASTER_PORT"] = "70000";
  expect_invalid(vars, {"MASTER_PORT", "70000", "at most 65535"});
  vars = torchrun();
  vars["MASTER_PORT"] = "0";
  expect_invalid(vars, {"MASTER_PORT", "at least 1"});
}

TEST(Bootstrap, RankRelations) {
  Vars vars = torchrun(1, 4);
  vars["RANK"] = "4";
  expect_invalid(vars, {"RANK=4", "WORLD_SIZE=4"});
  vars = torchrun(1, 4);
  vars["LOCAL_RANK"] = "4";
  expect_invalid(vars, {"LOCAL_RANK=4", "LOCAL_WORLD_SIZE=4"});
  vars = torchrun(1, 4);
  vars["LOCAL_WORLD_SIZE"] = "8";
  expect_invalid(vars, {"LOCAL_WORLD_SIZE=8", "exceeds", "WORLD_SIZE=4"});
}

TEST(Bootstrap, EmptyValuesCountAsUnset) {
  Vars vars = torchrun();
  for (auto& [k, v] : vars) v = "";
  EXPECT_EQ(discover_process_info(fake(vars)).source, "single");
}

TEST(Bootstrap, RendezvousPortOverrideAppliesToEverySource) {
  Vars extra = {{"WEFT_RENDEZVOUS_PORT", "31337"}};
  EXPECT_EQ(discover_process_info(fake(merge(merge(torchrun(), {{"WEFT_LAUNCHED", "1"}}), extra)))
                .rendezvous_port,
            31337);
  EXPECT_EQ(discover_process_info(fake(merge(torchrun(), extra))).rendezvous_port, 31337);
  EXPECT_EQ(discover_process_info(fake(merge(openmpi(), extra))).rendezvous_port, 31337);
  EXPECT_EQ(discover_process_info(fake(merge(slurm(), extra))).rendezvous_port, 31337);
  expect_invalid(merge(torchrun(), {{"WEFT_RENDEZVOUS_PORT", "x"}}), {"WEFT_RENDEZVOUS_PORT", "x"});
}

TEST(Bootstrap, OpenMpiSingleNode) {
  Vars vars = merge(openmpi(2, 4), {{"OMPI_MCA_orte_ess_jobid", "4242"}});
  ProcessInfo info = discover_process_info(fake(vars));
  EXPECT_EQ(info.source, "openmpi");
  EXPECT_EQ(info.rank, 2);
  EXPECT_EQ(info.world_size, 4);
  EXPECT_EQ(info.local_rank, 2);
  EXPECT_EQ(info.local_size, 4);
  EXPECT_EQ(info.master_addr, "127.0.0.1");
  EXPECT_GE(info.rendezvous_port, 20000);
  EXPECT_LT(info.rendezvous_port, 40000);
  // Every rank derives the same port from the shared job id ...
  Vars other = merge(openmpi(0, 4, 0, 4), {{"OMPI_MCA_orte_ess_jobid", "4242"}});
  EXPECT_EQ(discover_process_info(fake(other)).rendezvous_port, info.rendezvous_port);
  // ... and another job (very likely) a different one.
  other["OMPI_MCA_orte_ess_jobid"] = "4243";
  EXPECT_NE(discover_process_info(fake(other)).rendezvous_port, info.rendezvous_port);
}

TEST(Bootstrap, OpenMpiJobIdSources) {
  for (const char* var : {"OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid"}) {
    ProcessInfo info = discover_process_info(fake(merge(openmpi(), {{var, "job-7"}})));
    EXPECT_GE(info.rendezvous_port, 20000) << var;
    EXPECT_LT(info.rendezvous_port, 40000) << var;
  }
  expect_invalid(openmpi(), {"WEFT_MASTER_PORT", "job id"});
}

TEST(Bootstrap, OpenMpiExplicitAddressAndPort) {
  Vars vars = merge(openmpi(5, 16, 1, 4), {{"MASTER_ADDR", "head"}, {"MASTER_PORT", "29400"}});
  ProcessInfo info = discover_process_info(fake(vars));
  EXPECT_EQ(info.master_addr, "head");
  EXPECT_EQ(info.rendezvous_port, 29400);  // no torch store here: MASTER_PORT is ours
  vars["WEFT_MASTER_ADDR"] = "head-ib";
  vars["WEFT_MASTER_PORT"] = "29411";
  info = discover_process_info(fake(vars));
  EXPECT_EQ(info.master_addr, "head-ib");  // WEFT_* wins over the generic names
  EXPECT_EQ(info.rendezvous_port, 29411);
}

TEST(Bootstrap, OpenMpiMultiNodeNeedsAddressAndPort) {
  Vars vars = merge(openmpi(5, 16, 1, 4), {{"OMPI_MCA_orte_ess_jobid", "1"}});
  expect_invalid(vars, {"WEFT_MASTER_ADDR", "several nodes"});
  vars["WEFT_MASTER_ADDR"] = "head";
  expect_invalid(vars, {"WEFT_MASTER_PORT", "several nodes"});
  vars["WEFT_RENDEZVOUS_PORT"] = "29999";
  EXPECT_EQ(discover_process_info(fake(vars)).rendezvous_port, 29999);
}

TEST(Bootstrap, OpenMpiValidation) {
  Vars vars = openmpi();
  vars.erase("OMPI_COMM_WORLD_LOCAL_SIZE");
  expect_invalid(vars, {"OMPI_COMM_WORLD_LOCAL_SIZE", "Open MPI"});
  vars = merge(openmpi(4, 4, 0, 4), {{"PMIX_NAMESPACE", "x"}});
  expect_invalid(vars, {"OMPI_COMM_WORLD_RANK=4", "OMPI_COMM_WORLD_SIZE=4"});
  vars = merge(openmpi(1, 4, 4, 4), {{"PMIX_NAMESPACE", "x"}});
  expect_invalid(vars, {"OMPI_COMM_WORLD_LOCAL_RANK=4"});
  vars = merge(openmpi(), {{"PMIX_NAMESPACE", "x"}});
  vars["OMPI_COMM_WORLD_SIZE"] = "four";
  expect_invalid(vars, {"OMPI_COMM_WORLD_SIZE", "four"});
}

TEST(Bootstrap, SlurmSingleNode) {
  ProcessInfo info = discover_process_info(fake(slurm(3, 4, 3)));
  EXPECT_EQ(info.source, "slurm");
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.world_size, 4);
  EXPECT_EQ(info.local_rank, 3);
  EXPECT_EQ(info.local_size, 4);
  EXPECT_EQ(info.master_addr, "127.0.0.1");
  EXPECT_GE(info.rendezvous_port, 20000);
  EXPECT_LT(info.rendezvous_port, 40000);
  EXPECT_EQ(discover_process_info(fake(slurm(0, 4, 0))).rendezvous_port, info.rendezvous_port);
  Vars other_step = slurm(3, 4, 3);
  other_step["SLURM_STEP_ID"] = "1";
  EXPECT_NE(discover_process_info(fake(other_step)).rendezvous_port, info.rendezvous_port);
}

TEST(Bootstrap, SlurmTasksPerNode) {
  Vars vars = slurm(5, 8, 1);
  vars.erase("SLURM_STEP_TASKS_PER_NODE");
  vars["SLURM_NTASKS_PER_NODE"] = "4";
  vars["WEFT_MASTER_ADDR"] = "n0";
  vars["WEFT_MASTER_PORT"] = "29000";
  EXPECT_EQ(discover_process_info(fake(vars)).local_size, 4);
  // SLURM_STEP_TASKS_PER_NODE (the step's layout) comes first: SLURM_NTASKS_PER_NODE may be the
  // job's request, inherited by a step of 2 tasks on each of 4 nodes.
  vars["SLURM_STEP_TASKS_PER_NODE"] = "2(x4)";
  EXPECT_EQ(discover_process_info(fake(vars)).local_size, 2);
  // Uneven steps: the count for this node (SLURM_NODEID), not just the first number.
  vars.erase("SLURM_NTASKS_PER_NODE");
  vars["SLURM_STEP_TASKS_PER_NODE"] = "3(x2),2";
  vars["SLURM_NTASKS"] = "8";
  vars["SLURM_PROCID"] = "7";
  vars["SLURM_NODEID"] = "2";
  vars["SLURM_LOCALID"] = "1";
  EXPECT_EQ(discover_process_info(fake(vars)).local_size, 2);
  vars["SLURM_NODEID"] = "1";
  EXPECT_EQ(discover_process_info(fake(vars)).local_size, 3);
  vars.erase("SLURM_NODEID");
  EXPECT_EQ(discover_process_info(fake(vars)).local_size, 3);
  vars["SLURM_STEP_TASKS_PER_NODE"] = "3(x2";
  expect_invalid(vars, {"SLURM_STEP_TASKS_PER_NODE", "3(x2"});
  vars["SLURM_STEP_TASKS_PER_NODE"] = "3,1";
  vars["SLURM_NODEID"] = "5";
  expect_invalid(vars, {"SLURM_STEP_TASKS_PER_NODE", "SLURM_NODEID=5"});
}

TEST(Bootstrap, SlurmValidation) {
  Vars vars = slurm();
  vars.erase("SLURM_NTASKS");
  expect_invalid(vars, {"SLURM_PROCID", "SLURM_NTASKS"});
  vars = slurm();
  vars.erase("SLURM_STEP_TASKS_PER_NODE");
  expect_invalid(vars, {"SLURM_STEP_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE"});
  vars = slurm(4, 4, 0);
  expect_invalid(vars, {"SLURM_PROCID=4", "SLURM_NTASKS=4"});
  vars = slurm(1, 4, 1);
  vars["SLURM_STEP_TASKS_PER_NODE"] = "1";
  expect_invalid(vars, {"SLURM_LOCALID=1", "SLURM_STEP_TASKS_PER_NODE=1"});
  vars = slurm();
  vars["SLURM_LOCALID"] = "-2";
  expect_invalid(vars, {"SLURM_LOCALID", "-2"});
}

TEST(Bootstrap, SlurmMultiNode) {
  Vars vars = slurm(5, 8, 1);
  vars["SLURM_STEP_TASKS_PER_NODE"] = "4(x2)";
  vars["SLURM_NODEID"] = "1";
  expect_invalid(vars, {"WEFT_MASTER_ADDR", "scontrol"});
  vars["MASTER_ADDR"] = "n0";
  expect_invalid(vars, {"WEFT_MASTER_PORT"});
  vars["MASTER_PORT"] = "29555";
  ProcessInfo info = discover_process_info(fake(vars));
  EXPECT_EQ(info.master_addr, "n0");
  EXPECT_EQ(info.rendezvous_port, 29555);
  EXPECT_EQ(info.local_size, 4);
}

TEST(Bootstrap, SlurmWithoutJobId) {
  Vars vars = slurm();
  vars.erase("SLURM_JOB_ID");
  expect_invalid(vars, {"WEFT_MASTER_PORT"});
}

TEST(Bootstrap, Priority) {
  Vars all =
      merge(merge(merge(torchrun(1, 4), openmpi(2, 4)), slurm(3, 4, 3)), {{"WEFT_LAUNCHED", "1"}});
  EXPECT_EQ(discover_process_info(fake(all)).source, "weft");
  all.erase("WEFT_LAUNCHED");
  EXPECT_EQ(discover_process_info(fake(all)).source, "torchrun");
  for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}) all.erase(v);
  ProcessInfo info = discover_process_info(fake(all));
  EXPECT_EQ(info.source, "openmpi");
  EXPECT_EQ(info.rank, 2);
  EXPECT_EQ(info.rendezvous_port, 29500);  // MASTER_PORT still set from the torchrun vars
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                        "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"}) {
    all.erase(v);
  }
  info = discover_process_info(fake(all));
  EXPECT_EQ(info.source, "slurm");
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.master_addr, "node0");  // MASTER_ADDR is honoured for Slurm too
}

TEST(Bootstrap, ProcessEnvironmentReadsGetenv) {
  ::setenv("WEFT_BOOTSTRAP_TEST_VAR", "hello", 1);
  EnvLookup env = process_environment();
  EXPECT_EQ(env("WEFT_BOOTSTRAP_TEST_VAR"), "hello");
  ::unsetenv("WEFT_BOOTSTRAP_TEST_VAR");
  EXPECT_EQ(env("WEFT_BOOTSTRAP_TEST_VAR"), std::nullopt);
}

}  // namespace
}  // namespace weft
