// Device-side vocabulary: the cooperative groups a primitive runs on and signal comparison.
// (Scopes, semantics, comparisons and signal_t are plain types in context.h.)
#pragma once

#include <cstdint>

#include <nccl_device.h>

#include "weft/device/context.h"

namespace weft::dev {

// Cooperative groups. weft reuses NCCL's device-API groups so the same object drives weft
// primitives and NCCL sessions (barriers, GIN). Every thread of the group calls a group primitive.
using Thread = ncclCoopThread;  // one thread
using Warp = ncclCoopWarp;      // the 32 lanes of a warp
using Block = ncclCoopCta;      // all threads of a 1-D thread block (thread_rank() is threadIdx.x)

__device__ __forceinline__ bool compare(Cmp cmp, uint64_t observed, uint64_t expected) {
  switch (cmp) {
    case Cmp::eq: return observed == expected;
    case Cmp::ne: return observed != expected;
    case Cmp::ge: return observed >= expected;
    case Cmp::gt: return observed > expected;
    case Cmp::le: return observed <= expected;
    case Cmp::lt: return observed < expected;
  }
  return false;
}

}  // namespace weft::dev
