// The `weft` command.
//
//   weft                       the main job on every local GPU: primitive self-check, then the
//                              primitive microbenchmarks (rows under bench/results/)
//   weft selftest              the primitive self-check only
//   weft bench primitives      the microbenchmarks only
//   weft bench gemm [...]      weft's GEMM beside cuBLASLt on one GPU
//   weft bench ag-gemm|gemm-rs|gemm-ar   the tensor-parallel fused operators
//   weft bench ep-dispatch|ep-combine    MoE expert-parallel dispatch and combine
//   weft run -n N -- prog ...  start N ranks of any program (torchrun-style environment)
//   weft info                  versions and the GPUs this machine shows
//
// selftest and bench start themselves on all local GPUs through `weft run` unless they already
// run under a launcher (weft run, torchrun, mpirun, srun); -n picks another rank count.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include "bench/gemm/gemm_bench.h"
#include "bench/primitives/primitive_bench.h"
#include "tools/checks/primitive_checks.h"
#include "weft/ops/expert_parallel/bench/ep_bench.h"
#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm_bench.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar_bench.h"
#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs_bench.h"
#include "weft/runtime/bootstrap.h"
#include "weft/runtime/launcher.h"
#include "weft/runtime/version.h"
#include "weft/runtime/world.h"
#include "weft_build_commit.h"  // generated at build time: WEFT_BUILD_COMMIT

namespace {

// The operator benchmarks `weft bench <name>` runs: each is collective over the world and says
// how much symmetric heap it needs.
struct OpBench {
  const char* name;
  const char* what;
  int (*run)(weft::World&, const weft::bench::OpBenchOptions&);
  size_t (*heap_bytes)(int world_size, const weft::bench::OpBenchOptions&);
  const char* default_out;
  const char* shape_format;  // what --shapes takes, one shape
};

const std::vector<OpBench>& op_benches() {
  static const std::vector<OpBench> benches = {
      {"ag-gemm", "AllGather+GEMM beside NCCL all-gather then cuBLAS",
       weft::bench::run_ag_gemm_bench, weft::bench::ag_gemm_bench_heap_bytes,
       "bench/results/ag_gemm.jsonl", "M,N,K"},
      {"gemm-rs", "GEMM+ReduceScatter beside cuBLAS then NCCL reduce-scatter",
       weft::bench::run_gemm_rs_bench, weft::bench::gemm_rs_bench_heap_bytes,
       "bench/results/gemm_rs.jsonl", "M,N,K"},
      {"gemm-ar", "GEMM+AllReduce (decode) beside cuBLAS then NCCL all-reduce",
       weft::bench::run_gemm_ar_bench, weft::bench::gemm_ar_bench_heap_bytes,
       "bench/results/gemm_ar.jsonl", "M,N,K"},
      {"ep-dispatch", "MoE expert-parallel dispatch beside NCCL all-to-all of the same bytes",
       weft::bench::run_ep_dispatch_bench, weft::bench::ep_bench_heap_bytes,
       "bench/results/ep.jsonl", "T,H,k,E"},
      {"ep-combine", "MoE expert-parallel combine beside NCCL all-to-all of the same bytes",
       weft::bench::run_ep_combine_bench, weft::bench::ep_bench_heap_bytes,
       "bench/results/ep.jsonl", "T,H,k,E"},
  };
  return benches;
}

// Counts GPUs in a child process, so that this process stays free of CUDA and may still start
// ranks (a CUDA context does not survive fork).
int count_gpus_without_cuda_here() {
  const pid_t pid = fork();
  if (pid < 0) return 0;
  if (pid == 0) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    _exit(n > 250 ? 250 : n);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return 0;
  return WEXITSTATUS(status);
}

bool under_a_launcher() {
  const auto info = weft::discover_process_info();
  return info.source != "single";
}

// Re-runs this program with `args` on `nprocs` ranks through weft's launcher.
int relaunch(int nprocs, const std::vector<std::string>& args, int timeout_s) {
  if (nprocs <= 0) nprocs = count_gpus_without_cuda_here();
  if (nprocs <= 0) {
    std::fprintf(stderr, "weft: no GPU found (cudaGetDeviceCount returned 0 or failed)\n");
    return 2;
  }
  weft::LaunchOptions opt;
  opt.nprocs = nprocs;
  opt.argv = {"/proc/self/exe"};
  opt.argv.insert(opt.argv.end(), args.begin(), args.end());
  opt.timeout = std::chrono::seconds(timeout_s);
  std::printf("weft: starting %d rank(s)\n", nprocs);
  std::fflush(stdout);
  const auto result = weft::launch(opt);
  if (result.exit_code != 0) std::fprintf(stderr, "weft: %s\n", result.message.c_str());
  return result.exit_code;
}

// The commit result rows name: WEFT_COMMIT if set, else the one this binary was built from
// (with "-dirty" when the tree had uncommitted changes). Not the repository the binary runs in:
// that may be another checkout, or none.
std::string git_commit() {
  if (const char* c = std::getenv("WEFT_COMMIT"); c != nullptr && *c != '\0') return c;
  return WEFT_BUILD_COMMIT;
}

int run_selftest(weft::World& world, int litmus_rounds, uint64_t seed) {
  using namespace weft::checks;
  CheckOptions options;
  options.seed = seed;
  options.litmus_rounds = litmus_rounds;
  int failed = 0, skipped = 0;
  std::string table;
  for (const Check& check : primitive_checks()) {
    const auto start = std::chrono::steady_clock::now();
    CheckResult local;
    try {
      local = check.run(world, options);
    } catch (const std::exception& e) {
      // A throwing check may leave peers waiting; their waits time out. Report and stop.
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    const auto all = world.rendezvous().all_gather((local.ok ? "1" : "0") + local.detail);
    bool ok = true;
    std::string why;
    for (int r = 0; r < world.size(); ++r)
      if (all[r][0] != '1') {
        ok = false;
        why += fmt::format("\n      rank {}: {}", r, all[r].substr(1));
      }
    failed += !ok;
    skipped += ok && !local.skipped.empty();
    // A skip is the same on every rank (it depends on the world's size only).
    const char* verdict = !ok ? "FAIL" : local.skipped.empty() ? "PASS" : "SKIP";
    if (ok && !local.skipped.empty()) why = fmt::format(" ({})", local.skipped);
    table +=
        fmt::format("  {:<20} {:<6} {:>9.1f} ms  {}{}\n", check.name, verdict, ms, check.what, why);
  }
  if (world.rank() == 0) {
    std::printf("\nweft selftest: %d rank(s), seed %llu, litmus %d rounds per pair\n", world.size(),
                static_cast<unsigned long long>(seed), litmus_rounds);
    std::printf("%s", table.c_str());
    std::printf("%s\n",
                failed    ? fmt::format("{} check(s) FAILED", failed).c_str()
                : skipped ? fmt::format("every check that ran passed ({} skipped)", skipped).c_str()
                          : "all checks passed");
  }
  return failed ? 1 : 0;
}

uint64_t job_seed(weft::World& world) {
  uint64_t seed = static_cast<uint64_t>(std::time(nullptr));
  const auto all = world.rendezvous().all_gather(
      std::string_view(reinterpret_cast<const char*>(&seed), sizeof(seed)));
  std::memcpy(&seed, all[0].data(), sizeof(seed));
  return seed;
}

}  // namespace

int main(int argc, char** argv) {
  if (const int child = weft::checks::run_wait_timeout_child_if_requested(); child >= 0)
    return child;
  if (const int child = weft::checks::run_barrier_timeout_child_if_requested(); child >= 0)
    return child;
  if (const int child = weft::checks::run_peer_abort_child_if_requested(); child >= 0) return child;

  CLI::App app{"weft: kernels that overlap computation with communication across GPUs"};
  app.require_subcommand(0, 1);
  int nprocs = 0;
  int timeout_s = 1800;

  // weft run
  auto* run = app.add_subcommand("run", "start N ranks of a program (one per GPU)");
  weft::LaunchOptions launch;
  int run_timeout = 0;
  run->add_option("-n,--nprocs", launch.nprocs, "number of ranks")
      ->required()
      ->check(CLI::Range(1, 1024));
  run->add_option("--timeout", run_timeout, "stop every rank after this many seconds (0: never)");
  run->add_option("--port", launch.port, "rendezvous port (default: a free one)");
  run->add_flag("--tag-output", launch.tag_output, "prefix each output line with [rank N]");
  run->add_option("program", launch.argv, "program and its arguments (after --)")->required();

  // weft selftest
  auto* selftest = app.add_subcommand("selftest", "check every device primitive on all local GPUs");
  int litmus_rounds = 20000;
  selftest->add_option("-n,--nprocs", nprocs, "ranks (default: every local GPU)")
      ->check(CLI::Range(0, 1024));
  selftest->add_option("--litmus-rounds", litmus_rounds, "message-passing rounds per pair");

  // weft bench primitives
  auto* bench = app.add_subcommand("bench", "benchmarks");
  bench->require_subcommand(1);
  auto* bench_prim =
      bench->add_subcommand("primitives", "put bandwidth, signal and barrier latency");
  weft::bench::PrimitiveBenchOptions bench_opt;
  bench_opt.out_path = "bench/results/primitives.jsonl";
  for (auto* cmd : {bench_prim}) {
    cmd->add_option("-n,--nprocs", nprocs, "ranks (default: every local GPU)")
        ->check(CLI::Range(0, 1024));
    cmd->add_option("--out", bench_opt.out_path, "append JSON-lines result rows here ('' = none)");
    cmd->add_option("--bytes", bench_opt.bytes, "bytes per bandwidth transfer");
    cmd->add_option("--iters", bench_opt.iters, "timed iterations per measurement");
    cmd->add_flag("--quick", bench_opt.quick, "fewer sizes and iterations");
    cmd->add_option("--only", bench_opt.parts,
                    "parts to run: put-one, put-all, signal, barrier, gates, scatter, scatter-ll "
                    "(default all)")
        ->delimiter(',')
        ->check(CLI::IsMember(std::vector<std::string>(std::begin(weft::bench::kPrimitiveParts),
                                                       std::end(weft::bench::kPrimitiveParts))));
  }

  // weft bench <operator>: collective benchmarks of the fused operators.
  weft::bench::OpBenchOptions op_opt;
  struct OpCommand {
    CLI::App* cmd;
    CLI::Option* out;  // unset: the bench's default file; '' = no rows
    const OpBench* bench;
  };
  std::vector<OpCommand> op_cmds;
  for (const OpBench& b : op_benches()) {
    auto* cmd = bench->add_subcommand(b.name, b.what);
    cmd->add_option("-n,--nprocs", nprocs, "ranks (default: every local GPU)")
        ->check(CLI::Range(0, 1024));
    auto* out = cmd->add_option(
        "--out", op_opt.out_path,
        fmt::format("append result rows here ('' = none; default {})", b.default_out));
    cmd->add_option("--shapes", op_opt.shapes,
                    fmt::format("{0};{0};... (default: the issue's shapes)", b.shape_format));
    cmd->add_option("--iters", op_opt.iters, "timed iterations per measurement");
    cmd->add_flag("--quick", op_opt.quick, "fewer shapes and iterations");
    cmd->add_flag(
        "--cold-l2", op_opt.cold_l2,
        "evict the L2 before every timed run (inputs from HBM; rows say \"l2\": \"cold\")");
    cmd->add_option("--sms", op_opt.sms,
                    "ep-dispatch/ep-combine: SMs of the data kernels (0 = the operator's default)");
    cmd->add_option("--send-sms", op_opt.send_sms,
                    "ep-dispatch/ep-combine throughput mode: of --sms, the sending SMs (0 = default)");
    op_cmds.push_back({cmd, out, &b});
  }

  // weft bench gemm: one GPU, no launcher; options pass through to the GEMM benchmark.
  auto* bench_gemm = bench->add_subcommand("gemm", "weft's GEMM beside cuBLASLt on one GPU");
  bench_gemm->allow_extras();
  bench_gemm->footer(
      "Options pass through: --check --sweep --grouped --no-dense --iters N --warmup N "
      "--shapes M,N,K;... --config CFG --cublas-algos N --out FILE (default "
      "bench/results/gemm.jsonl) --commit SHA");

  // weft info
  auto* info = app.add_subcommand("info", "versions and visible GPUs");

  // The main job (no subcommand): selftest, then the microbenchmarks.
  app.add_option("-n,--nprocs", nprocs, "ranks for the main job (default: every local GPU)")
      ->check(CLI::Range(0, 1024));
  app.add_option("--timeout", timeout_s, "stop every rank after this many seconds")
      ->check(CLI::NonNegativeNumber);
  // The main job's options may also follow a subcommand (`weft selftest --timeout 60`).
  for (CLI::App* sub : {selftest, bench, bench_prim}) sub->fallthrough();
  for (const OpCommand& c : op_cmds) c.cmd->fallthrough();

  CLI11_PARSE(app, argc, argv);

  try {
    if (*run) {
      launch.timeout = std::chrono::seconds(run_timeout);
      const auto result = weft::launch(launch);
      if (result.exit_code != 0) std::fprintf(stderr, "weft run: %s\n", result.message.c_str());
      return result.exit_code;
    }
    if (*bench_gemm) {
      // Defaults first; the user's options, later on the command line, win.
      // --check: a row is written only after the shape's output matched cuBLASLt's fp32 result.
      std::vector<std::string> args = {"weft bench gemm", "--commit", git_commit(),
                                       "--check",         "--out",    "bench/results/gemm.jsonl"};
      for (const std::string& a : bench_gemm->remaining()) args.push_back(a);
      std::vector<char*> cargs;
      for (auto& a : args) cargs.push_back(a.data());
      return weft::bench::run_gemm_bench(static_cast<int>(cargs.size()), cargs.data());
    }
    if (*info) {
      int nccl = 0, runtime = 0, driver = 0;
      ncclGetVersion(&nccl);
      cudaRuntimeGetVersion(&runtime);
      cudaDriverGetVersion(&driver);
      std::printf(
          "weft %s (%s): NCCL %d.%d.%d (built against %d.%d.%d), CUDA runtime %d, driver %d\n",
          weft::kVersion, WEFT_BUILD_COMMIT, nccl / 10000, nccl / 100 % 100, nccl % 100, NCCL_MAJOR,
          NCCL_MINOR, NCCL_PATCH, runtime, driver);
      int n = 0;
      if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
      if (n == 0) std::printf("  no GPU visible\n");
      for (int d = 0; d < n; ++d) {
        cudaDeviceProp p{};
        cudaGetDeviceProperties(&p, d);
        std::printf("  GPU %d: %s, sm_%d%d, %d SMs, %.0f GiB\n", d, p.name, p.major, p.minor,
                    p.multiProcessorCount, p.totalGlobalMem / double(1 << 30));
      }
      return 0;
    }

    const bool do_selftest = *selftest || app.get_subcommands().empty();
    const bool do_bench = *bench || app.get_subcommands().empty();
    if (!under_a_launcher()) {
      std::vector<std::string> args(argv + 1, argv + argc);
      return relaunch(nprocs, args, timeout_s);
    }

    const OpBench* op_bench = nullptr;
    for (const OpCommand& c : op_cmds)
      if (*c.cmd) {
        op_bench = c.bench;
        if (c.out->count() == 0) op_opt.out_path = c.bench->default_out;
      }
    const bool primitives = do_bench && op_bench == nullptr;

    // This process is one rank. Size the heap for what the benchmarks move.
    auto options = weft::world_options_from_env();
    options.exit_on_sync_timeout = true;  // a stuck stream would block every destructor after it
    const int world_size = weft::discover_process_info().world_size;
    if (primitives)
      options.heap_bytes = std::max(
          options.heap_bytes, weft::bench::primitive_bench_heap_bytes(world_size, bench_opt.bytes));
    if (op_bench)
      options.heap_bytes = std::max(options.heap_bytes, op_bench->heap_bytes(world_size, op_opt));
    auto world = weft::World::create(options);
    if (op_bench) {
      op_opt.commit = git_commit();
      if (world->rank() == 0 && !op_opt.out_path.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(std::filesystem::path(op_opt.out_path).parent_path(),
                                            ec);
      }
      return op_bench->run(*world, op_opt);
    }
    int rc = 0;
    const uint64_t seed = job_seed(*world);
    if (do_selftest) rc |= run_selftest(*world, litmus_rounds, seed);
    if (primitives && rc == 0) {
      bench_opt.commit = git_commit();
      if (world->rank() == 0 && !bench_opt.out_path.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(std::filesystem::path(bench_opt.out_path).parent_path(),
                                            ec);
      }
      rc |= weft::bench::run_primitive_benchmarks(*world, bench_opt);
    }
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
