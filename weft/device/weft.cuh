// weft device primitives: include this one header in a kernel file.
//
//   identity.cuh  rank(), world_size(), symm_at()
//   memory.cuh    ld/st/atomics with scope and semantic, fences, proxy fences
//   signal.cuh    wait (cmp, scope, timeout), notify (set/add, local or peer), tagged words
//   copy.cuh      put/get (thread, warp, block; blocking and _nbi), put with signal, quiet
//   tma.cuh       TMA bulk copies, put/get to peers through shared memory (sm_90)
//   barrier.cuh   barrier_all / sync_all across this node's ranks
//   call_signature.cuh  a collective call's ranks check they were asked for the same call
//   tile.cuh      tile-centric layer: tile notify/wait, tile push/pull, rank copy
//   hash.cuh      mix64: deterministic pseudo-random values any rank can regenerate
//   launch.cuh    wait_prior_grid: the device side of programmatic dependent launch
#pragma once

#include "weft/device/barrier.cuh"
#include "weft/device/call_signature.cuh"
#include "weft/device/copy.cuh"
#include "weft/device/hash.cuh"
#include "weft/device/identity.cuh"
#include "weft/device/launch.cuh"
#include "weft/device/memory.cuh"
#include "weft/device/signal.cuh"
#include "weft/device/tile.cuh"
#include "weft/device/tma.cuh"
