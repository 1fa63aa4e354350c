#include "weft/ops/tensor_parallel/common/tp_common.h"

#include <algorithm>
#include <atomic>
#include <cmath>

namespace weft::tp {

MachineModel machine_model_for(int sms) {
  MachineModel mm;
  if (sms > 0) {
    // Throughput scales with the SMs (the measured figure is for 132).
    mm.gemm_tflops = mm.gemm_tflops * sms / 132.0;
    mm.sms = sms;
  }
  return mm;
}

double estimate_gemm_us(const MachineModel& mm, int64_t m, int64_t n, int64_t k, int64_t tiles,
                        int sms) {
  const double flops = 2.0 * double(m) * double(n) * double(k);
  double us = flops / (mm.gemm_tflops * 1e6);
  if (tiles > 0 && sms > 0) {
    const double waves = double(tiles) / sms;
    us *= std::ceil(waves) / waves;
  }
  return us;
}

double transfer_us(double bytes, double gbps) { return gbps > 0 ? bytes / (gbps * 1e3) : 0.0; }

int next_barrier_index(int barrier_count) {
  static std::atomic<int> counter{0};
  const int span = std::max(1, std::min(48, barrier_count));
  const int i = counter.fetch_add(1) % span;
  return barrier_count - 1 - i;
}

}  // namespace weft::tp
