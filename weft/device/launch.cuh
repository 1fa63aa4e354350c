// The device side of programmatic dependent launch (weft/runtime/pdl.h): a kernel launched with
// launch_dependent() calls wait_prior_grid() before it touches global memory that the kernel
// before it on the stream (or anything earlier) writes or reads.
#pragma once

#include <cuda_runtime.h>

namespace weft::dev {

// Returns once the grid this one was launched after has completed and its memory operations are
// visible (griddepcontrol.wait; a no-op for a grid launched the ordinary way, and below sm_90).
__device__ __forceinline__ void wait_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cudaGridDependencySynchronize();
#endif
}

}  // namespace weft::dev
