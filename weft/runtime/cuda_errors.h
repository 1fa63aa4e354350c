// Which CUDA errors end the process's CUDA context. Header-only, so that the GEMM engine (which
// links only weft_core) classifies its errors the same way as the runtime.
#pragma once

#include <cuda_runtime.h>

namespace weft::detail {

// Errors after which "any further CUDA work will return the same error" (the runtime's own words):
// the context is gone, and with it every collective call this rank had queued.
inline bool ends_context(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorLaunchTimeout:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorNvlinkUncorrectable:
    case cudaErrorContained:
    case cudaErrorExternalDevice:
      return true;
    default:
      return false;
  }
}

}  // namespace weft::detail
