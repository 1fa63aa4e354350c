// Stand-alone driver of the expert-parallel benchmarks until `weft bench ep-dispatch|ep-combine`
// calls them:
//   weft run -n 4 -- weft_ep_bench [--op dispatch|combine|both] [--out FILE] [--commit SHA]
//                                  [--shapes "T,H,k[,E];..."] [--iters N] [--warmup N] [--quick]
//                                  [--sms N] [--send-sms N]
// Sizes the symmetric heap with ep_bench_heap_bytes() (WEFT_HEAP_BYTES still wins if larger).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "weft/ops/expert_parallel/bench/ep_bench.h"
#include "weft/runtime/bootstrap.h"
#include "weft/runtime/world.h"

int main(int argc, char** argv) {
  weft::bench::OpBenchOptions opt;
  std::string op = "both";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--op") op = value();
    else if (a == "--out") opt.out_path = value();
    else if (a == "--commit") opt.commit = value();
    else if (a == "--shapes") opt.shapes = value();
    else if (a == "--iters") opt.iters = std::stoi(value());
    else if (a == "--warmup") opt.warmup = std::stoi(value());
    else if (a == "--quick") opt.quick = true;
    else if (a == "--cold-l2") opt.cold_l2 = true;
    else if (a == "--sms") opt.sms = std::stoi(value());
    else if (a == "--send-sms") opt.send_sms = std::stoi(value());
    else {
      std::fprintf(stderr,
                   "usage: weft_ep_bench [--op dispatch|combine|both] [--out FILE] [--commit SHA] "
                   "[--shapes T,H,k[,E];...] [--iters N] [--warmup N] [--quick] [--cold-l2] [--sms N] [--send-sms N]\n");
      return 2;
    }
  }
  try {
    weft::WorldOptions wo = weft::world_options_from_env();
    wo.heap_bytes = std::max(wo.heap_bytes, weft::bench::ep_bench_heap_bytes(
                                                weft::discover_process_info().world_size, opt));
    wo.heap_bytes = (wo.heap_bytes + 4095) / 4096 * 4096;
    auto world = weft::World::create(wo);
    int rc = 0;
    if (op == "dispatch" || op == "both") rc |= weft::bench::run_ep_dispatch_bench(*world, opt);
    if (op == "combine" || op == "both") rc |= weft::bench::run_ep_combine_bench(*world, opt);
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
