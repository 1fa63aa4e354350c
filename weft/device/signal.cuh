// Signals: wait until a 64-bit signal satisfies a comparison, and notify (set or add) a signal on
// this or a peer rank; and tagged words (a value and its tag in one 64-bit store). Waits poll
// local memory only (writers push into the waiter's memory), load with acquire semantics (tagged
// words: relaxed, the value needs no other data), and give up after ctx.wait_timeout_ns with a
// message naming the rank, the signal's address and heap offset, the expected and the observed
// value — then trap, so a lost signal fails the kernel instead of hanging it.
#pragma once

#include "weft/device/identity.cuh"
#include "weft/device/memory.cuh"

namespace weft::dev {
namespace detail {

__device__ __forceinline__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The timed part of every wait, after a first try has missed: try_once() until it succeeds;
// once ctx.wait_timeout_ns (0 = never) has passed, or a rank on this host has marked the
// abort board, timed_out(waited_ns), which does not return (its report says which: the fault
// paths read the board again). The timer is read every 256 tries, the board (host memory, a PCIe
// round trip) every 2048.
template <class Try, class TimedOut>
__device__ __forceinline__ void spin_with_timeout(const Context& ctx, Try&& try_once,
                                                  TimedOut&& timed_out) {
  const uint64_t start = globaltimer_ns();
#pragma unroll 1
  for (uint32_t spin = 1;; ++spin) {
    if (try_once()) return;
    if ((spin & 255) != 0) continue;
    const uint64_t waited = globaltimer_ns() - start;
    if ((ctx.wait_timeout_ns != 0 && waited > ctx.wait_timeout_ns) ||
        ((spin & 2047) == 0 && board_marked(ctx)))
      timed_out(waited);
  }
}

// The loop of every signal wait: load() until done(value), then return that value; after
// ctx.wait_timeout_ns a fault report on `sig` (cmp and expected as the report prints them).
template <class Load, class Done>
__device__ __forceinline__ uint64_t spin_until(const Context& ctx, const signal_t* sig, Load&& load,
                                               Done&& done, Cmp cmp, uint64_t expected) {
  uint64_t seen = load();
  if (done(seen)) return seen;
  spin_with_timeout(
      ctx, [&] { return done(seen = load()); },
      [&](uint64_t waited) { wait_timed_out(ctx, sig, cmp, expected, seen, waited); });
  return seen;
}

}  // namespace detail

// ---- wait ---------------------------------------------------------------------------------------

// One thread spins until `*sig <cmp> expected`, then returns the value it saw. The load that saw
// it is an acquire at scope S, so this thread's later loads see what the notifier released.
template <Scope S = Scope::sys>
__device__ __forceinline__ uint64_t wait(const Context& ctx, const signal_t* sig, Cmp cmp,
                                         uint64_t expected) {
  return detail::spin_until(
      ctx, sig, [sig] { return ld<Sem::acquire, S>(sig); },
      [cmp, expected](uint64_t v) { return compare(cmp, v, expected); }, cmp, expected);
}

// Group form: one thread waits, then the group synchronizes, so every thread of the group may
// read the data the signal guards (the acquire plus the group barrier order their loads).
template <class Group, Scope S = Scope::sys>
__device__ __forceinline__ void wait(Group group, const Context& ctx, const signal_t* sig, Cmp cmp,
                                     uint64_t expected) {
  if (group.thread_rank() == 0) wait<S>(ctx, sig, cmp, expected);
  group.sync();
}

// Wait for n signals at once (Triton-distributed's dl.wait over a vector of flags): the threads
// of the group share the signals, then the group synchronizes.
template <class Group, Scope S = Scope::sys>
__device__ __forceinline__ void wait_all(Group group, const Context& ctx, const signal_t* sigs,
                                         int n, Cmp cmp, uint64_t expected) {
  for (int i = group.thread_rank(); i < n; i += group.size()) wait<S>(ctx, sigs + i, cmp, expected);
  group.sync();
}

#if __CUDA_ARCH__ >= 900 || !defined(__CUDA_ARCH__)
// Wait, then make the guarded data visible to the async proxy: use before TMA loads of data that
// another GPU or a copy engine wrote (DESIGN.md: acquire at .sys, fence.proxy.async.global, TMA).
// This is the C++ form of Triton-distributed's consume_token for TMA consumers.
// Every thread fences after the group sync, so whichever of them issues the TMA is ordered.
template <class Group>
__device__ __forceinline__ void wait_for_tma(Group group, const Context& ctx, const signal_t* sig,
                                             Cmp cmp, uint64_t expected) {
  if (group.thread_rank() == 0) wait<Scope::sys>(ctx, sig, cmp, expected);
  group.sync();
  fence_proxy_async_global();
}
#endif

// ---- tagged words -------------------------------------------------------------------------------
// A 32-bit value and a 32-bit tag (the low half of a call's epoch, say) in one 64-bit word,
// written by one 8-byte store: a reader that sees the tag sees the value with it (an aligned
// 8-byte strong access is single-copy atomic), so small messages — a few counts — need neither
// a fence nor a separate signal behind them: one trip over the link instead of two (NCCL's
// LL protocol, 8 bytes a word). The tag must differ from whatever the word held before (e.g.
// epochs 1, 2, ... in memory that starts zeroed, one buffer per epoch parity).

__host__ __device__ constexpr uint64_t tagged_word(uint32_t tag, uint32_t value) {
  return (static_cast<uint64_t>(tag) << 32) | value;
}

// Store a tagged word on `peer` (ctx.rank for the local one); `word` is this rank's address of a
// symmetric word. Relaxed: orders nothing else.
__device__ __forceinline__ void put_tagged(const Context& ctx, uint64_t* word, int peer,
                                           uint32_t tag, uint32_t value) {
  st<Sem::relaxed, Scope::sys>(symm_at(ctx, word, peer), tagged_word(tag, value));
}

// One thread spins until the local word carries `tag`, then returns its value. Times out like
// wait() (the report's expected value is tagged_word(tag, 0), compared on the high half).
__device__ __forceinline__ uint32_t wait_tagged(const Context& ctx, const uint64_t* word,
                                                uint32_t tag) {
  return static_cast<uint32_t>(detail::spin_until(
      ctx, word, [word] { return ld<Sem::relaxed, Scope::sys>(word); },
      [tag](uint64_t v) { return static_cast<uint32_t>(v >> 32) == tag; }, Cmp::eq,
      tagged_word(tag, 0)));
}

// ---- notify -------------------------------------------------------------------------------------

// Release this thread's earlier writes, then set or add `value` to the signal on `peer` (a world
// rank on this node; pass ctx.rank for the local signal). `sig` is this rank's address of a
// symmetric signal.
template <Scope S = Scope::sys>
__device__ __forceinline__ void notify(const Context& ctx, signal_t* sig, int peer, uint64_t value,
                                       SignalOp op = SignalOp::set) {
  signal_t* target = symm_at(ctx, sig, peer);
  if (op == SignalOp::set)
    st<Sem::release, S>(target, value);
  else
    red_add<Sem::release, S>(target, value);
}

// Group form: the group synchronizes (so the group's earlier writes happen before), then one
// thread releases and notifies. Write data, notify(group, ...) — the peer that acquires the signal
// sees every thread's data.
template <class Group, Scope S = Scope::sys>
__device__ __forceinline__ void notify(Group group, const Context& ctx, signal_t* sig, int peer,
                                       uint64_t value, SignalOp op = SignalOp::set) {
  group.sync();
  if (group.thread_rank() == 0) notify<S>(ctx, sig, peer, value, op);
}

// NVSHMEM-style names (Triton-distributed's libshmem_device): signal_op and signal_wait_until.
__device__ __forceinline__ void signal_op(const Context& ctx, signal_t* sig, uint64_t value,
                                          SignalOp op, int peer) {
  notify<Scope::sys>(ctx, sig, peer, value, op);
}

__device__ __forceinline__ uint64_t signal_wait_until(const Context& ctx, const signal_t* sig,
                                                      Cmp cmp, uint64_t expected) {
  return wait<Scope::sys>(ctx, sig, cmp, expected);
}

}  // namespace weft::dev
