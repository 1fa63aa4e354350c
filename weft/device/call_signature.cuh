// Call signatures: the ranks of one collective call check that they were asked for the same call
// (operation, protocol, dtype, shared dimensions) before any of them acts on a peer's data.
//
// A call whose ranks disagree - one rank with another M, another strategy forced by its
// environment, calls made in another order - would otherwise exchange data in layouts the peers
// do not expect: a wrong result without an error, or a wait that times out far from the cause.
// With signatures, every rank that has a disagreeing peer (so every rank of such a call) traps
// with FaultReport::call_mismatch naming the peer and the word that differs.
//
// Protocol (slots: a symmetric array of [2][world] CallSignature):
//   1. publish_call_signature: before a release that the peers acquire (barrier_all, a notify of
//      a flag they wait for), store this call's signature into every peer's slot [parity][rank].
//   2. check_call_signature: after acquiring peer q's release, compare slot [parity][q] (in this
//      rank's memory) with this rank's signature.
// `parity` alternates between consecutive calls that use the same slots (an epoch's or a call
// counter's low bit). A peer writes [parity] again only two calls later, which needs this rank's
// release of the call in between: so the caller must check before it releases its next call.
#pragma once

#include "weft/device/fault.cuh"
#include "weft/device/identity.cuh"
#include "weft/device/memory.cuh"

namespace weft::dev {

// Thread `lane` (< ctx.world_size; the caller spreads the peers over its threads) stores `sig`
// into peer `lane`'s slot [parity][ctx.rank]; the own rank's lane does nothing. Plain stores:
// the caller's release (after the group synchronizes) publishes them.
__device__ __forceinline__ void publish_call_signature(const Context& ctx, CallSignature* slots,
                                                       int parity, const CallSignature& sig,
                                                       int lane) {
  if (lane >= ctx.world_size || lane == ctx.rank) return;
  CallSignature* dst =
      symm_at_span(ctx, slots + parity * ctx.world_size + ctx.rank, sizeof(CallSignature), lane);
  static_assert(sizeof(CallSignature) % 16 == 0, "signatures are stored in 16-byte pieces");
  const uint4* src = reinterpret_cast<const uint4*>(&sig);
#pragma unroll
  for (int i = 0; i < int(sizeof(CallSignature) / 16); ++i)
    reinterpret_cast<uint4*>(dst)[i] = src[i];
}

// Compares peer `peer`'s signature (slot [parity][peer] in this rank's memory, published before a
// release this thread has acquired) with `sig`; traps with FaultReport::call_mismatch at the
// first word that differs.
__device__ __forceinline__ void check_call_signature(const Context& ctx, const CallSignature* slots,
                                                     int parity, int peer,
                                                     const CallSignature& sig) {
  if (peer == ctx.rank) return;
  const CallSignature* theirs = slots + parity * ctx.world_size + peer;
  // Every word's load first (relaxed, sys: the peer wrote them), then the compares: one memory
  // round trip, not one per word.
  unsigned long long w[CallSignature::kFields];
#pragma unroll
  for (int f = 0; f < CallSignature::kFields; ++f) w[f] = ld(&theirs->word[f]);
#pragma unroll
  for (int f = 0; f < CallSignature::kFields; ++f)
    if (w[f] != sig.word[f]) detail::call_mismatch(ctx, theirs, peer, f, sig.word[f], w[f]);
}

}  // namespace weft::dev
