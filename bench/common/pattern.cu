#include "bench/common/pattern.h"

#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include "bench/common/cuda_resources.h"
#include "weft/device/hash.cuh"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/world.h"

namespace weft::bench {
namespace {

__host__ __device__ __forceinline__ uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

struct Seed {
  uint32_t lo, hi;
};

Seed split_seed(uint64_t seed) {
  return Seed{static_cast<uint32_t>(seed), fmix32(static_cast<uint32_t>(seed >> 32) ^ 0x6a09e667u)};
}

// Word i of the pattern: (i * odd + lo) is a bijection of the low 32 bits of i, and fmix32 is a
// bijection, so words at different offsets (below 16 GiB apart) differ; zero is remapped.
__device__ __forceinline__ uint32_t pattern_word(Seed s, uint64_t i) {
  uint32_t x = static_cast<uint32_t>(i) * 0x9e3779b1u + s.lo;
  x ^= static_cast<uint32_t>(i >> 32) * 0x7f4a7c15u ^ s.hi;
  x = fmix32(x);
  return x != 0 ? x : 0x5eedu;
}

constexpr int kThreads = 256;

int grid_for(size_t items) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (sms <= 0) sms = 132;
  const size_t want = (items + kThreads - 1) / kThreads;
  return static_cast<int>(want < size_t(sms) * 8 ? (want > 0 ? want : 1) : size_t(sms) * 8);
}

// Words [0, nwords) as 16-byte vectors where possible, then the partial tail word.
__global__ void fill_kernel(uint32_t* dst, size_t bytes, Seed s, bool vec16) {
  const size_t nwords = bytes / 4;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  const size_t tid = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  size_t done = 0;
  if (vec16) {
    const size_t nvec = nwords / 4;
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (size_t v = tid; v < nvec; v += stride) {
      const uint64_t w = v * 4;
      d[v] = make_uint4(pattern_word(s, w), pattern_word(s, w + 1), pattern_word(s, w + 2),
                        pattern_word(s, w + 3));
    }
    done = nvec * 4;
  }
  for (size_t w = done + tid; w < nwords; w += stride) dst[w] = pattern_word(s, w);
  if (tid == 0 && bytes % 4 != 0) {
    const uint32_t last = pattern_word(s, nwords);
    unsigned char* tail = reinterpret_cast<unsigned char*>(dst + nwords);
    for (size_t b = 0; b < bytes % 4; ++b) tail[b] = static_cast<unsigned char>(last >> (8 * b));
  }
}

struct CheckResult {
  unsigned long long mismatches;
  unsigned long long first_bad_word;
};

__device__ __forceinline__ void note(uint64_t& bad, uint64_t& first, uint64_t w, bool wrong) {
  if (wrong) {
    ++bad;
    if (w < first) first = w;
  }
}

__global__ void check_kernel(const uint32_t* data, size_t bytes, Seed s, bool vec16,
                             CheckResult* out) {
  const size_t nwords = bytes / 4;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  const size_t tid = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  uint64_t bad = 0, first = ~0ull;
  size_t done = 0;
  if (vec16) {
    const size_t nvec = nwords / 4;
    const uint4* d = reinterpret_cast<const uint4*>(data);
    for (size_t v = tid; v < nvec; v += stride) {
      const uint4 x = d[v];
      const uint64_t w = v * 4;
      note(bad, first, w, x.x != pattern_word(s, w));
      note(bad, first, w + 1, x.y != pattern_word(s, w + 1));
      note(bad, first, w + 2, x.z != pattern_word(s, w + 2));
      note(bad, first, w + 3, x.w != pattern_word(s, w + 3));
    }
    done = nvec * 4;
  }
  for (size_t w = done + tid; w < nwords; w += stride) note(bad, first, w, data[w] != pattern_word(s, w));
  if (tid == 0 && bytes % 4 != 0) {
    const uint32_t last = pattern_word(s, nwords);
    const unsigned char* tail = reinterpret_cast<const unsigned char*>(data + nwords);
    bool wrong = false;
    for (size_t b = 0; b < bytes % 4; ++b)
      wrong |= tail[b] != static_cast<unsigned char>(last >> (8 * b));
    note(bad, first, nwords, wrong);
  }
  // Warp reduction, then one atomic per warp.
  for (int o = 16; o > 0; o >>= 1) {
    bad += __shfl_xor_sync(0xffffffffu, bad, o);
    const uint64_t f = __shfl_xor_sync(0xffffffffu, first, o);
    first = f < first ? f : first;
  }
  if ((threadIdx.x & 31) == 0 && bad != 0) {
    atomicAdd(&out->mismatches, static_cast<unsigned long long>(bad));
    atomicMin(&out->first_bad_word, static_cast<unsigned long long>(first));
  }
}

void check_alignment(const void* p, const char* what) {
  WEFT_CHECK_ARG(reinterpret_cast<uintptr_t>(p) % 4 == 0, "{} {} must be 4-byte aligned", what, p);
}

}  // namespace

void fill_pattern(void* dst, size_t bytes, uint64_t seed, cudaStream_t stream) {
  if (bytes == 0) return;
  check_alignment(dst, "fill_pattern destination");
  const bool vec16 = reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  fill_kernel<<<grid_for(bytes / 16 + 1), kThreads, 0, stream>>>(static_cast<uint32_t*>(dst), bytes,
                                                                  split_seed(seed), vec16);
  WEFT_CHECK_LAUNCH();
}

PatternCheck check_pattern(const void* data, size_t bytes, uint64_t seed, cudaStream_t stream) {
  PatternCheck result;
  if (bytes == 0) return result;
  check_alignment(data, "check_pattern data");
  const bool vec16 = reinterpret_cast<uintptr_t>(data) % 16 == 0;
  DeviceMemory out(sizeof(CheckResult));
  const CheckResult init{0ull, ~0ull};
  WEFT_CUDA_CHECK(cudaMemcpyAsync(out.data(), &init, sizeof(init), cudaMemcpyHostToDevice, stream));
  check_kernel<<<grid_for(bytes / 16 + 1), kThreads, 0, stream>>>(
      static_cast<const uint32_t*>(data), bytes, split_seed(seed), vec16, out.as<CheckResult>());
  WEFT_CHECK_LAUNCH();
  CheckResult host{};
  WEFT_CUDA_CHECK(cudaMemcpyAsync(&host, out.data(), sizeof(host), cudaMemcpyDeviceToHost, stream));
  WEFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  result.mismatched_words = host.mismatches;
  result.first_bad_byte = host.mismatches ? host.first_bad_word * 4 : ~0ull;
  return result;
}

std::string PatternCheck::describe() const {
  if (ok()) return "ok";
  return fmt::format("{} mismatched 4-byte words, first at byte offset {}", mismatched_words,
                     first_bad_byte);
}

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c) {
  return dev::mix64(dev::mix64(dev::mix64(a) ^ b) ^ c);
}

uint64_t shared_nonce(World& world) {
  uint64_t mine = 0;
  if (world.rank() == 0)
    mine = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
           static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  const auto all =
      world.rendezvous().all_gather(std::string_view(reinterpret_cast<const char*>(&mine), sizeof(mine)));
  uint64_t nonce = 0;
  WEFT_CHECK(!all.empty() && all[0].size() == sizeof(nonce), "shared_nonce: bad all_gather reply");
  std::memcpy(&nonce, all[0].data(), sizeof(nonce));
  return nonce;
}

}  // namespace weft::bench
