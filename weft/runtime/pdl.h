// Programmatic dependent launch (PDL, compute capability 9.0 and up): a kernel started with
// launch_dependent() is scheduled as the kernel before it on the stream finishes, without the gap
// of an ordinary launch (~1-2 us). It must call weft::dev::wait_prior_grid()
// (weft/device/launch.cuh) before it touches global memory the earlier kernel, or anything before
// it, writes or reads. On older GPUs, or after an operation that is not a kernel, the launch is an
// ordinary one.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "weft/runtime/cuda_check.h"

namespace weft {

// Whether the current device supports PDL. Asked once per device, with calls that are legal while
// a stream is being captured; prepare_pdl() asks ahead (operators call it in their constructors).
bool pdl_supported();
inline void prepare_pdl() { (void)pdl_supported(); }

// Launches kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of the
// previous kernel on `stream` where the current device supports it; throws on a launch error.
template <class... KernelArgs, class... Args>
void launch_dependent(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_supported() ? 1 : 0;
  WEFT_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace weft
