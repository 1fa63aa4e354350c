// A record a kernel fills for the host in host-mapped memory (pinned, and mapped into the GPU's
// address space): the first writer claims it (compare-and-swap of `claimed` from 0), fills its
// fields and sets `ready` last (with system fences around), so the host reads it without a copy,
// even after the kernel failed. `Record` is a plain struct with an `unsigned int claimed` and a
// `volatile int ready` member, e.g. ExpertParallel's ep::EpError.
#pragma once

#include <atomic>
#include <cstring>
#include <optional>

#include <cuda_runtime.h>

#include "weft/runtime/cuda_check.h"

namespace weft {

// Allocates a zeroed Record in host-mapped memory: `host` is set first (free it with
// cudaFreeHost, also when this throws after that), then `device`, the address kernels write to.
template <class Record>
void alloc_mapped_record(Record*& host, Record*& device) {
  WEFT_CUDA_CHECK(
      cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(Record), cudaHostAllocMapped));
  std::memset(static_cast<void*>(host), 0, sizeof(Record));
  WEFT_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&device), host, 0));
}

// The record a kernel published in `host` (nullopt when none or when `host` is null), which is
// then zeroed again so that later calls can report.
template <class Record>
std::optional<Record> take_mapped_record(Record* host) {
  if (host == nullptr || host->ready == 0) return std::nullopt;
  std::atomic_thread_fence(std::memory_order_acquire);
  const Record record = *host;
  // Re-arm for later calls: every field but the claim first, then the claim. A kernel may claim
  // the record as soon as it reads 0 there; fields zeroed after that could erase its `ready`
  // and leave the record claimed but never ready, silencing every later report.
  Record blank{};
  blank.claimed = record.claimed;  // (unchanged while claimed: no kernel writes the record)
  std::memcpy(static_cast<void*>(host), &blank, sizeof(Record));
  std::atomic_thread_fence(std::memory_order_seq_cst);
  *static_cast<volatile unsigned int*>(&host->claimed) = 0u;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return record;
}

}  // namespace weft
