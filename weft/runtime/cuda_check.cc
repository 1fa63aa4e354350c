#include "weft/runtime/cuda_check.h"

#include <cstring>

namespace weft::detail {
namespace {
const char* base_name(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash ? slash + 1 : file;
}
}  // namespace

void throw_cuda_error(const char* call, cudaError_t err, const char* file, int line) {
  const std::optional<std::string> fault = current_device_fault();
  const std::string detail =
      fmt::format("{} ({}) at {}:{}{}{}", cudaGetErrorString(err), cudaGetErrorName(err),
                  base_name(file), line, fault ? "; device fault: " : "", fault ? *fault : "");
  if (ends_context(err)) report_context_lost(fmt::format("{}: {}", call, detail));
  throw Error(call, detail);
}

// The driver's codes for the errors that end a context are the runtime's (ends_context).
static_assert(static_cast<int>(CUDA_ERROR_ILLEGAL_ADDRESS) == cudaErrorIllegalAddress &&
              static_cast<int>(CUDA_ERROR_LAUNCH_FAILED) == cudaErrorLaunchFailure &&
              static_cast<int>(CUDA_ERROR_ASSERT) == cudaErrorAssert &&
              static_cast<int>(CUDA_ERROR_ECC_UNCORRECTABLE) == cudaErrorECCUncorrectable);

void throw_cu_error(const char* call, CUresult err, const char* file, int line) {
  // The driver's own cuGetErrorString would need libcuda linked; the number is unambiguous.
  const std::string detail =
      fmt::format("CUDA driver error {} at {}:{}", static_cast<int>(err), base_name(file), line);
  if (ends_context(static_cast<cudaError_t>(err)))
    report_context_lost(fmt::format("{}: {}", call, detail));
  throw Error(call, detail);
}

void throw_nccl_error(const char* call, ncclResult_t err, const char* file, int line) {
  const char* last = ncclGetLastError(nullptr);
  throw Error(call, fmt::format("{}{}{} at {}:{}", ncclGetErrorString(err),
                                last && *last ? ": " : "", last ? last : "", base_name(file),
                                line));
}

}  // namespace weft::detail
