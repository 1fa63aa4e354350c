#include "weft/runtime/pdl.h"

#include <atomic>

namespace weft {

bool pdl_supported() {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices] = {};  // 0 not asked, 1 no, 2 yes
  int device = 0;
  WEFT_CUDA_CHECK(cudaGetDevice(&device));  // (cudaStreamGetDevice is illegal during capture)
  if (device < 0 || device >= kDevices) return false;
  int v = known[device].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0;
    WEFT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    v = major >= 9 ? 2 : 1;
    known[device].store(v, std::memory_order_relaxed);
  }
  return v == 2;
}

}  // namespace weft
