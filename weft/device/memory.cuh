// Memory-model building blocks: loads, stores and atomics with an explicit scope and semantic,
// and fences. Triton-distributed's ld/st(scope, semantic), ld_acquire, red_release,
// atomic_add/atomic_cas and fence map here (docs/primitives.md has the table).
//
// Loads, stores and read-modify-writes go through CCCL's cuda::atomic_ref, which emits
// `ld.acquire.sys`, `st.release.gpu`, `atom.add.acq_rel.sys`, ...; `red` and the proxy fences
// are single PTX instructions written here.
#pragma once

#include <type_traits>

#include <cuda/atomic>
#include <cuda/ptx>

#include "weft/device/types.cuh"

namespace weft::dev {
namespace detail {

template <Scope S>
inline constexpr cuda::thread_scope thread_scope_of =
    S == Scope::cta ? cuda::thread_scope_block
                    : (S == Scope::gpu ? cuda::thread_scope_device : cuda::thread_scope_system);

template <Sem M>
inline constexpr cuda::memory_order order_of =
    M == Sem::relaxed   ? cuda::memory_order_relaxed
    : M == Sem::acquire ? cuda::memory_order_acquire
    : M == Sem::release ? cuda::memory_order_release
                        : cuda::memory_order_acq_rel;

template <class T, Scope S>
__device__ __forceinline__ cuda::atomic_ref<T, thread_scope_of<S>> ref(T* p) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "weft atomics work on 4- and 8-byte values");
  return cuda::atomic_ref<T, thread_scope_of<S>>(*p);
}

}  // namespace detail

// Every scope defaults to Scope::sys: in a library whose words are read and written by other GPUs
// that is the only default that is never wrong (a release at gpu scope does not pair with a
// peer's acquire). Pass Scope::gpu or Scope::cta where only this GPU's (this block's) threads
// touch the word: cheaper for read-modify-writes.

// ---- loads and stores -------------------------------------------------------------------------

// ld<Sem::acquire, Scope::sys>(p): a load that later loads of this thread cannot pass, and that
// sees everything released before a matching store it reads from.
template <Sem M = Sem::relaxed, Scope S = Scope::sys, class T>
__device__ __forceinline__ T ld(const T* p) {
  static_assert(M == Sem::relaxed || M == Sem::acquire, "a load is relaxed or acquire");
  return detail::ref<T, S>(const_cast<T*>(p)).load(detail::order_of<M>);
}

template <Sem M = Sem::relaxed, Scope S = Scope::sys, class T>
__device__ __forceinline__ void st(T* p, T value) {
  static_assert(M == Sem::relaxed || M == Sem::release, "a store is relaxed or release");
  detail::ref<T, S>(p).store(value, detail::order_of<M>);
}

template <Scope S = Scope::sys, class T>
__device__ __forceinline__ T ld_acquire(const T* p) {
  return ld<Sem::acquire, S>(p);
}

template <Scope S = Scope::sys, class T>
__device__ __forceinline__ void st_release(T* p, T value) {
  st<Sem::release, S>(p, value);
}

// ---- read-modify-write ------------------------------------------------------------------------

// Returns the old value.
template <Sem M = Sem::relaxed, Scope S = Scope::sys, class T>
__device__ __forceinline__ T atomic_add(T* p, T value) {
  return detail::ref<T, S>(p).fetch_add(value, detail::order_of<M>);
}

// Compare-and-swap: if *p == expected, *p = desired. Returns the value seen before (equal to
// `expected` exactly when the swap happened).
template <Sem M = Sem::relaxed, Scope S = Scope::sys, class T>
__device__ __forceinline__ T atomic_cas(T* p, T expected, T desired) {
  detail::ref<T, S>(p).compare_exchange_strong(expected, desired, detail::order_of<M>,
                                               M == Sem::release || M == Sem::relaxed
                                                   ? cuda::memory_order_relaxed
                                                   : cuda::memory_order_acquire);
  return expected;
}

template <Sem M = Sem::relaxed, Scope S = Scope::sys, class T>
__device__ __forceinline__ T atomic_exchange(T* p, T value) {
  return detail::ref<T, S>(p).exchange(value, detail::order_of<M>);
}

// Reduction without a return value (`red`): cheaper than atomic_add when the old value is not
// needed, because the issuing thread does not wait for the answer. 32- and 64-bit unsigned adds.
template <Sem M = Sem::relaxed, Scope S = Scope::sys, class T>
__device__ __forceinline__ void red_add(T* p, T value) {
  static_assert(M == Sem::relaxed || M == Sem::release, "red is relaxed or release");
  static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8),
                "red_add works on 4- and 8-byte integers (a float would be added as its bits)");
#define WEFT_RED_(SEM, SCOPE)                                                              \
  if constexpr (sizeof(T) == 8)                                                             \
    asm volatile("red." SEM "." SCOPE ".add.u64 [%0], %1;" ::"l"(p), "l"((uint64_t)value) \
                 : "memory");                                                               \
  else                                                                                      \
    asm volatile("red." SEM "." SCOPE ".add.u32 [%0], %1;" ::"l"(p), "r"((uint32_t)value) \
                 : "memory")
  if constexpr (M == Sem::relaxed) {
    if constexpr (S == Scope::cta) WEFT_RED_("relaxed", "cta");
    else if constexpr (S == Scope::gpu) WEFT_RED_("relaxed", "gpu");
    else WEFT_RED_("relaxed", "sys");
  } else {
    if constexpr (S == Scope::cta) WEFT_RED_("release", "cta");
    else if constexpr (S == Scope::gpu) WEFT_RED_("release", "gpu");
    else WEFT_RED_("release", "sys");
  }
#undef WEFT_RED_
}

template <Scope S = Scope::sys, class T>
__device__ __forceinline__ void red_release(T* p, T value) {
  red_add<Sem::release, S>(p, value);
}

// ---- fences -----------------------------------------------------------------------------------

// fence<S>(): orders this thread's earlier memory operations before its later ones, as seen by
// every thread in scope S (fence.acq_rel.S). fence_sc<S>() is the sequentially consistent
// fence.sc.S (what __threadfence_system() is at sys scope).
template <Scope S = Scope::sys>
__device__ __forceinline__ void fence() {
  cuda::atomic_thread_fence(cuda::memory_order_acq_rel, detail::thread_scope_of<S>);
}

template <Scope S = Scope::sys>
__device__ __forceinline__ void fence_sc() {
  cuda::atomic_thread_fence(cuda::memory_order_seq_cst, detail::thread_scope_of<S>);
}

#if __CUDA_ARCH__ >= 900 || !defined(__CUDA_ARCH__)
// Between the generic proxy (ordinary loads/stores) and the async proxy (TMA, bulk copies):
// after acquiring a flag that says data in global memory is ready, and before a TMA load reads
// that data, call fence_proxy_async_global() (DESIGN.md: acquire at .sys, then this, then TMA).
__device__ __forceinline__ void fence_proxy_async_global() {
  cuda::ptx::fence_proxy_async(cuda::ptx::space_global);
}

// Before the async proxy (a TMA store, wgmma) reads shared memory written by ordinary stores.
__device__ __forceinline__ void fence_proxy_async_shared() {
  cuda::ptx::fence_proxy_async(cuda::ptx::space_shared);
}
#endif

}  // namespace weft::dev
