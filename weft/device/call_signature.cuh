// Call signatures: the ranks of one collective call check that they were asked for the same call
// (operation, protocol, dtype, shared dimensions) before the call completes: before anyone uses
// a peer's data (check right after the acquire) or before the kernel ends (compare after work
// that stays within the rank's own buffers).
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
//   2. check_call_signature: after acquiring peer q's release, compare the digest word of slot
//      [parity][q] (in this rank's memory) with this rank's (one load; the whole signature is
//      read only when they differ, to name the word); or load_call_digest there and
//      compare_call_signature later, with work between that touches only this rank's own
//      buffers within its own sizes (a mismatch still traps before the kernel completes).
// The signature's digest word must be call_digest of the others (weft/device/context.h).
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

namespace detail {
// A digest differed: the peer's whole signature names the first word that differs (the digest
// itself when only it does).
[[noreturn]] WEFT_FAULT_PATH void call_digest_differs(const Context& ctx,
                                                      const CallSignature* theirs, int peer,
                                                      const CallSignature& mine) {
  int f = 0;
  while (f < CallSignature::digest && ld(&theirs->word[f]) == mine.word[f]) ++f;
  call_mismatch(ctx, theirs, peer, f, mine.word[f], ld(&theirs->word[f]));
}
}  // namespace detail

// Peer `peer`'s digest word (slot [parity][peer] in this rank's memory), loaded after acquiring the
// peer's release (relaxed, sys: the peer wrote it). Nothing waits for the load until
// compare_call_signature reads it, so work placed between the two overlaps its round trip.
__device__ __forceinline__ unsigned long long load_call_digest(const Context& ctx,
                                                               const CallSignature* slots,
                                                               int parity, int peer) {
  return ld(&slots[parity * ctx.world_size + peer].word[CallSignature::digest]);
}

// Traps with FaultReport::call_mismatch when `theirs` (peer `peer`'s digest, from
// load_call_digest) is not `mine`'s, naming the first word of the peer's signature that differs.
__device__ __forceinline__ void compare_call_signature(const Context& ctx,
                                                       const CallSignature* slots, int parity,
                                                       int peer, unsigned long long theirs,
                                                       const CallSignature& mine) {
  if (theirs != mine.word[CallSignature::digest])
    detail::call_digest_differs(ctx, slots + parity * ctx.world_size + peer, peer, mine);
}

// Both at once, after acquiring peer `peer`'s release (nothing to do for the own rank).
__device__ __forceinline__ void check_call_signature(const Context& ctx, const CallSignature* slots,
                                                     int parity, int peer,
                                                     const CallSignature& mine) {
  if (peer == ctx.rank) return;
  compare_call_signature(ctx, slots, parity, peer, load_call_digest(ctx, slots, parity, peer),
                         mine);
}

}  // namespace weft::dev
