// Options every operator benchmark takes (`weft bench <op>`): where rows go, the commit they are
// of, and how much to run. Each operator exposes `int run_<op>_bench(World&, const
// OpBenchOptions&)` (collective; returns non-zero when a result failed its check).
#pragma once

#include <string>

namespace weft::bench {

struct OpBenchOptions {
  std::string out_path;  // JSON-lines file to append rows to ("" = print only)
  std::string commit;    // short git hash recorded in each row
  std::string shapes;    // "M,N,K;M,N,K" overrides the default shapes ("" = the list)
  int iters = 20;
  int warmup = 5;
  bool quick = false;    // fewer shapes / iterations (smoke runs)
  // Operators that take an SM budget (EP throughput mode): SMs and, of them, senders; 0 = the
  // operator's default. The benchmark's SM sweep (without --quick) runs beside it regardless.
  int sms = 0;
  int send_sms = 0;
  // Evict the L2 before every timed run (TimingOptions::flush_l2): inputs then come from HBM, as a
  // model layer's weights do after the layers before it ran. Rows record it as "l2": "cold".
  bool cold_l2 = false;
};

}  // namespace weft::bench
