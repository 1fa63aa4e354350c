// Flag wait / signal raise used by the GEMM overlap hooks: the weft/device primitives' semantics
// (64-bit monotonic epochs, system-scope acquire/release), written out here because the GEMM
// engine sits below weft/device (it takes no dev::Context) and its wgmma kernels must not contain
// a call (record_and_trap is inlined, with no printf).
#pragma once

#include <cstdint>

#include "weft/gemm/detail/params.h"
#include "weft/gemm/detail/ptx.cuh"

namespace weft::gemm::detail {

__device__ __forceinline__ uint64_t ld_acquire_sys_u64(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release_sys_u64(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void red_add_release_sys_u64(uint64_t* p, uint64_t v) {
  asm volatile("red.release.sys.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void fence_acq_rel_sys() {
  asm volatile("fence.acq_rel.sys;" ::: "memory");
}

// Writes `hang` (host-mapped memory, readable after the trap) and traps. No printf: see
// HangRecord.
__device__ __forceinline__ void record_and_trap(HangRecord* hang, int what, uint64_t addr,
                                                uint64_t expected, uint64_t seen,
                                                uint64_t waited_ns, bool gave_up = false) {
  if (hang != nullptr) {
    volatile HangRecord* h = hang;
    h->block = int32_t(blockIdx.x);
    h->thread = int32_t(threadIdx.x);
    h->what = what;
    h->gave_up = gave_up ? 1 : 0;
    h->flag_addr = addr;
    h->expected = expected;
    h->seen = seen;
    h->waited_ns = waited_ns;
    __threadfence_system();
    h->magic = kHangMagic;
    __threadfence_system();
  }
  __trap();
}

// Spin (one thread) until *flag >= expected, with system-scope acquire semantics. When
// timeout_ns != 0 and the flag has not reached `expected` in time, record the address, the
// expected and the last seen value in `hang` and trap: a missing flag never hangs silently. When
// `give_up` (host-mapped: weft's abort board) reads non-zero, the wait ends the same way at once,
// its record saying so: the flag's writer, or a rank it waits for, has given up. The word is read
// every 64 missed tries (one PCIe round trip per ~16 us of waiting), never on the fast path.
__device__ __forceinline__ void wait_flag_geq(const uint64_t* flag, uint64_t expected,
                                              uint64_t timeout_ns, const volatile uint32_t* give_up,
                                              HangRecord* hang, int what) {
  uint64_t seen = ld_acquire_sys_u64(flag);
  if (seen >= expected) return;
  const uint64_t start = globaltimer_ns();
  uint32_t backoff = 32;
#pragma unroll 1
  for (uint32_t spin = 1;; ++spin) {
    __nanosleep(backoff);
    if (backoff < 256) backoff <<= 1;
    seen = ld_acquire_sys_u64(flag);
    if (seen >= expected) return;
    const uint64_t waited = globaltimer_ns() - start;
    const bool peer = (spin & 63) == 0 && give_up != nullptr && *give_up != 0u;
    if (peer || (timeout_ns != 0 && waited > timeout_ns))
      record_and_trap(hang, what, reinterpret_cast<uint64_t>(flag), expected, seen, waited, peer);
  }
}

// GPU-scope flags of the stream-K fixup (both sides are CTAs of the same kernel).
__device__ __forceinline__ uint32_t ld_acquire_gpu_u32(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release_gpu_u32(uint32_t* p, uint32_t v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void st_relaxed_gpu_u32(uint32_t* p, uint32_t v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void fence_acq_rel_gpu() {
  asm volatile("fence.acq_rel.gpu;" ::: "memory");
}

// Spin (one thread) until *flag == value (gpu-scope acquire). A peer CTA of the same grid
// raises it; it cannot take longer than that CTA's share of the GEMM, so after `timeout_ns`
// something is broken: record and trap rather than hang.
__device__ __forceinline__ void wait_flag_eq_gpu(const uint32_t* flag, uint32_t value,
                                                 uint64_t timeout_ns, HangRecord* hang,
                                                 int what) {
  uint32_t seen = ld_acquire_gpu_u32(flag);
  if (seen == value) return;
  const uint64_t start = globaltimer_ns();
  while (true) {
    __nanosleep(64);
    seen = ld_acquire_gpu_u32(flag);
    if (seen == value) return;
    const uint64_t waited = globaltimer_ns() - start;
    if (waited > timeout_ns)
      record_and_trap(hang, what, reinterpret_cast<uint64_t>(flag), value, seen, waited);
  }
}

}  // namespace weft::gemm::detail
