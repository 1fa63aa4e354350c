#include "weft/runtime/cuda_check.h"

#include <cstring>
#include <mutex>

namespace weft::detail {
namespace {
const char* base_name(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash ? slash + 1 : file;
}

struct FaultSourceSlot {
  std::mutex mutex;
  const void* owner = nullptr;
  FaultSource source = nullptr;
};
FaultSourceSlot& fault_source() {
  static FaultSourceSlot slot;
  return slot;
}
}  // namespace

void register_fault_source(const void* owner, FaultSource source) noexcept {
  FaultSourceSlot& s = fault_source();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.owner = owner;
  s.source = source;
}

void unregister_fault_source(const void* owner) noexcept {
  FaultSourceSlot& s = fault_source();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.owner == owner) s.owner = nullptr, s.source = nullptr;
}

std::optional<std::string> current_device_fault() {
  FaultSourceSlot& s = fault_source();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.source ? s.source(s.owner) : std::nullopt;
}

void throw_cuda_error(const char* call, cudaError_t err, const char* file, int line) {
  const std::optional<std::string> fault = current_device_fault();
  throw Error(call, fmt::format("{} ({}) at {}:{}{}{}", cudaGetErrorString(err),
                                cudaGetErrorName(err), base_name(file), line,
                                fault ? "; device fault: " : "", fault ? *fault : ""));
}

void throw_cu_error(const char* call, CUresult err, const char* file, int line) {
  // The driver's own cuGetErrorString would need libcuda linked; the number is unambiguous.
  throw Error(call, fmt::format("CUDA driver error {} at {}:{}", static_cast<int>(err),
                                base_name(file), line));
}

void throw_nccl_error(const char* call, ncclResult_t err, const char* file, int line) {
  const char* last = ncclGetLastError(nullptr);
  throw Error(call, fmt::format("{}{}{} at {}:{}", ncclGetErrorString(err),
                                last && *last ? ": " : "", last ? last : "", base_name(file),
                                line));
}

}  // namespace weft::detail
