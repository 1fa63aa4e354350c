// Device-side input generation and result checks for the expert-parallel operator, shared by the
// multi-rank test (CUDA-graph replays, where the host cannot look at every replay) and the
// benchmarks (a timed result must verify). Everything is recomputed on the device from the
// generator in ep_test_data.h; the fp8 reference uses the same hardware conversion as the kernel,
// so every comparison is exact. Include from one .cu file per binary.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>
#include <string>

#include <fmt/format.h>

#include "weft/ops/expert_parallel/ep_config.h"
#include "weft/ops/expert_parallel/ep_numerics.h"
#include "weft/ops/expert_parallel/testing/ep_test_data.h"
#include "weft/runtime/cuda_check.h"

namespace weft::ops::ep_testing {

// First mismatch and how many there were (device memory, zeroed by the caller).
struct Mismatch {
  unsigned long long count;
  unsigned int claimed;
  int what;
  long long a, b, c;
  unsigned long long got, want;
};

enum MismatchWhat : int {
  kCount = 1,        // a: local expert, got/want counts
  kOffset = 2,       // a: local expert
  kSourceRows = 3,   // a: source rank
  kSource = 4,       // a: row; got = packed (rank, token, slot); want = expected local expert
  kOrder = 5,        // a: row
  kWeight = 6,       // a: row
  kData = 7,         // a: row, b: channel
  kScale = 8,        // a: row, b: group
  kCombine = 9,      // a: token, b: channel
  kReady = 10,       // a: local expert
};

inline std::string describe(const Mismatch& m) {
  if (m.count == 0) return "";
  static const char* names[] = {"?",           "expert count", "expert offset", "source rows",
                                "row source",  "row order",    "row weight",    "row data",
                                "row scale",   "combine output", "ready flag"};
  const char* what = m.what >= 1 && m.what <= 10 ? names[m.what] : "?";
  return fmt::format("{} mismatches; first: {} at ({}, {}, {}): got {:#x}, want {:#x}", m.count,
                     what, m.a, m.b, m.c, m.got, m.want);
}

namespace {

__device__ void record(Mismatch* m, int what, long long a, long long b, long long c,
                       unsigned long long got, unsigned long long want) {
  atomicAdd(&m->count, 1ull);
  if (atomicCAS(&m->claimed, 0u, 1u) == 0u) {
    m->what = what;
    m->a = a;
    m->b = b;
    m->c = c;
    m->got = got;
    m->want = want;
  }
}

// The problem's tag may advance on the device (one per graph replay): tag = P.tag + *tag_offset.
__device__ Problem at_replay(Problem P, const uint64_t* tag_offset) {
  if (tag_offset != nullptr) P.tag += *tag_offset;
  return resolved(P);
}

__global__ void fill_inputs_kernel(Problem P, const uint64_t* tag_offset, int rank, int T,
                                   uint16_t* x, void* topk, int idx64, float* w) {
  P = at_replay(P, tag_offset);
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t n = static_cast<size_t>(T) * P.hidden;
  for (size_t i = tid; i < n; i += stride)
    x[i] = x_bits(P, rank, static_cast<int>(i / P.hidden), static_cast<int>(i % P.hidden));
  long long ids[kEpMaxTopk];
  for (size_t t = tid; t < static_cast<size_t>(T); t += stride) {
    experts_of(P, rank, static_cast<int>(t), ids);
    for (int s = 0; s < P.topk; ++s) {
      const size_t i = t * P.topk + s;
      if (idx64)
        static_cast<long long*>(topk)[i] = ids[s];
      else
        static_cast<int*>(topk)[i] = static_cast<int>(ids[s]);
      w[i] = weight(P, rank, static_cast<int>(t), s);
    }
  }
}

__device__ int local_expert_of_row(const int32_t* offsets, int el, int row) {
  int lo = 0, hi = el;  // offsets[lo] <= row < offsets[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid] <= row) lo = mid;
    else hi = mid;
  }
  return lo;
}

// y[row] = the test's expert output for the pair dispatched into that row.
__global__ void fill_expert_out_kernel(Problem P, const uint64_t* tag_offset, int me,
                                       const int32_t* offsets, const EpPairSource* sources,
                                       uint16_t* y) {
  P = at_replay(P, tag_offset);
  const int el = P.experts / P.world;
  const int total = offsets[el];
  for (int row = blockIdx.x; row < total; row += gridDim.x) {
    const int e = me * el + local_expert_of_row(offsets, el, row);
    const EpPairSource s = sources[row];
    for (int c = threadIdx.x; c < P.hidden; c += blockDim.x)
      y[static_cast<size_t>(row) * P.hidden + c] = y_bits(P, e, s.rank, s.token, s.slot, c);
  }
}

// expected[0, el): pairs per local expert; expected[el + s]: tokens from source s.
__global__ void expected_counts_kernel(Problem P, const uint64_t* tag_offset, TokenCounts tc,
                                       int me, int* expected) {
  P = at_replay(P, tag_offset);
  const int el = P.experts / P.world;
  long long ids[kEpMaxTopk];
  for (int r = 0; r < P.world; ++r)
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < tc.T[r]; t += gridDim.x * blockDim.x) {
      experts_of(P, r, t, ids);
      bool any = false;
      for (int s = 0; s < P.topk; ++s) {
        const long long e = ids[s];
        if (e < 0 || e >= P.experts || e / el != me) continue;
        atomicAdd(expected + (e - me * el), 1);
        any = true;
      }
      if (any) atomicAdd(expected + el + r, 1);
    }
}

struct DispatchView {
  const void* x;
  const float* scales;
  const EpPairSource* sources;
  const int32_t* counts;   // [el]
  const int32_t* offsets;  // [el + 1]
  const int32_t* source_rows;
  const uint64_t* ready;   // may be null
  uint64_t ready_at_least; // with ready: every flag must be >= this (from *ready_epoch if set)
  const uint64_t* ready_epoch;  // device epoch the flags must reach (e.g. the hook epoch); may be null
};

// One block per received row (grid-stride), plus block 0 checking the counts.
__global__ void check_dispatch_kernel(Problem P, const uint64_t* tag_offset, TokenCounts tc,
                                      int me, int fp8, DispatchView v, const int* expected,
                                      Mismatch* m) {
  P = at_replay(P, tag_offset);
  const int W = P.world, el = P.experts / W, k = P.topk, H = P.hidden;
  if (blockIdx.x == 0) {
    for (int e = threadIdx.x; e < el; e += blockDim.x) {
      if (v.counts[e] != expected[e]) record(m, kCount, e, 0, 0, v.counts[e], expected[e]);
      if (v.offsets[e + 1] - v.offsets[e] != expected[e] || (e == 0 && v.offsets[0] != 0))
        record(m, kOffset, e, 0, 0, v.offsets[e], 0);
      if (v.ready != nullptr) {
        const uint64_t want = v.ready_epoch != nullptr ? *v.ready_epoch : v.ready_at_least;
        if (v.ready[e] < want) record(m, kReady, e, 0, 0, v.ready[e], want);
      }
    }
    for (int s = threadIdx.x; s < W; s += blockDim.x)
      if (v.source_rows[s] != expected[el + s])
        record(m, kSourceRows, s, 0, 0, v.source_rows[s], expected[el + s]);
  }
  __shared__ long long ids[kEpMaxTopk];
  __shared__ float inv[512];
  __shared__ int ok;
  const int total = v.offsets[el];
  for (int row = blockIdx.x; row < total; row += gridDim.x) {
    const int le = local_expert_of_row(v.offsets, el, row);
    const EpPairSource s = v.sources[row];
    __syncthreads();
    if (threadIdx.x == 0) {
      ok = s.rank >= 0 && s.rank < W && s.token >= 0 && s.token < tc.T[s.rank] && s.slot >= 0 &&
           s.slot < k;
      if (ok) {
        experts_of(P, s.rank, s.token, ids);
        if (ids[s.slot] != static_cast<long long>(me) * el + le) ok = 0;
      }
      if (!ok)
        record(m, kSource, row, le, 0,
               (static_cast<unsigned long long>(s.rank) << 48) ^
                   (static_cast<unsigned long long>(s.token) << 16) ^ s.slot,
               static_cast<unsigned long long>(me) * el + le);
      if (ok && row > v.offsets[le]) {
        const EpPairSource q = v.sources[row - 1];
        const bool before = q.rank < s.rank || (q.rank == s.rank && q.token < s.token) ||
                            (q.rank == s.rank && q.token == s.token && q.slot < s.slot);
        if (!before) record(m, kOrder, row, 0, 0, 0, 0);
      }
      if (ok) {
        const float w = weight(P, s.rank, s.token, s.slot);
        if (ep::float_to_bits(w) != ep::float_to_bits(s.weight))
          record(m, kWeight, row, 0, 0, ep::float_to_bits(s.weight), ep::float_to_bits(w));
      }
    }
    __syncthreads();
    if (!ok) continue;
    if (fp8) {
      for (int g = threadIdx.x; g < H / 128; g += blockDim.x) {
        float amax = 0.f;
        for (int c = 0; c < 128; ++c)
          amax = fmaxf(amax, fabsf(ep::bf16_to_float(x_bits(P, s.rank, s.token, g * 128 + c))));
        inv[g % 512] = ep::fp8_inv_scale(amax);
        const float want = ep::fp8_scale(amax);
        const float got = v.scales[static_cast<size_t>(row) * (H / 128) + g];
        if (ep::float_to_bits(got) != ep::float_to_bits(want))
          record(m, kScale, row, g, 0, ep::float_to_bits(got), ep::float_to_bits(want));
      }
      __syncthreads();
      const uint8_t* q = static_cast<const uint8_t*>(v.x) + static_cast<size_t>(row) * H;
      for (int c = threadIdx.x; c < H; c += blockDim.x) {
        const float xv = ep::bf16_to_float(x_bits(P, s.rank, s.token, c));
        uint8_t want = static_cast<uint8_t>(
            __nv_cvt_float2_to_fp8x2(make_float2(xv * inv[(c / 128) % 512], 0.f), __NV_SATFINITE,
                                     __NV_E4M3) &
            0xff);
        if (want == 0x7f) want = 0xff;  // the dispatch codes NaN 0xff (ep_numerics.h)
        if (q[c] != want) record(m, kData, row, c, 0, q[c], want);
      }
    } else {
      const uint16_t* x = static_cast<const uint16_t*>(v.x) + static_cast<size_t>(row) * H;
      for (int c = threadIdx.x; c < H; c += blockDim.x) {
        const uint16_t want = x_bits(P, s.rank, s.token, c);
        if (x[c] != want) record(m, kData, row, c, 0, x[c], want);
      }
    }
  }
}

// One block per token of this rank: recompute the combine output exactly.
__global__ void check_combine_kernel(Problem P, const uint64_t* tag_offset, int me, int T,
                                     const uint16_t* out, Mismatch* m) {
  P = at_replay(P, tag_offset);
  const int W = P.world, el = P.experts / W, k = P.topk, H = P.hidden;
  __shared__ long long ids[kEpMaxTopk];
  __shared__ float w[kEpMaxTopk];
  for (int t = blockIdx.x; t < T; t += gridDim.x) {
    __syncthreads();
    if (threadIdx.x == 0) {
      experts_of(P, me, t, ids);
      for (int s = 0; s < k; ++s) {
        if (ids[s] < 0 || ids[s] >= P.experts) ids[s] = -1;
        w[s] = weight(P, me, t, s);
      }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
      float sum = 0.f;
      for (int d = 0; d < W; ++d) {
        bool any = false;
        float acc = 0.f;
        for (int s = 0; s < k; ++s) {
          if (ids[s] < 0 || ids[s] / el != d) continue;
          any = true;
          acc = __fmaf_rn(w[s], ep::bf16_to_float(y_bits(P, static_cast<int>(ids[s]), me, t, s, c)),
                          acc);
        }
        if (any) sum += ep::bf16_to_float(ep::float_to_bf16_rne(acc));
      }
      const uint16_t want = ep::float_to_bf16_rne(sum);
      const uint16_t got = out[static_cast<size_t>(t) * H + c];
      if (got != want) record(m, kCombine, t, c, 0, got, want);
    }
  }
}

__global__ void increment_kernel(uint64_t* counter) { *counter += 1; }

}  // namespace

// Enqueue helpers (all asynchronous on `stream`).
inline void fill_inputs(const Problem& P, const uint64_t* tag_offset, int rank, int T, void* x,
                        void* topk, bool idx64, float* w, cudaStream_t stream) {
  if (T == 0) return;
  fill_inputs_kernel<<<264, 256, 0, stream>>>(P, tag_offset, rank, T, static_cast<uint16_t*>(x),
                                              topk, idx64 ? 1 : 0, w);
  WEFT_CHECK_LAUNCH();
}

inline void fill_expert_out(const Problem& P, const uint64_t* tag_offset, int me,
                            const int32_t* offsets, const EpPairSource* sources, void* y,
                            cudaStream_t stream) {
  fill_expert_out_kernel<<<264, 256, 0, stream>>>(P, tag_offset, me, offsets, sources,
                                                  static_cast<uint16_t*>(y));
  WEFT_CHECK_LAUNCH();
}

// `expected` must hold el + W ints of scratch; `m` a zeroed Mismatch.
inline void check_dispatch(const Problem& P, const uint64_t* tag_offset, const TokenCounts& tc,
                           int me, bool fp8, const DispatchView& v, int* expected, Mismatch* m,
                           cudaStream_t stream) {
  const int el = P.experts / P.world;
  WEFT_CUDA_CHECK(cudaMemsetAsync(expected, 0, sizeof(int) * (el + P.world), stream));
  expected_counts_kernel<<<32, 256, 0, stream>>>(P, tag_offset, tc, me, expected);
  WEFT_CHECK_LAUNCH();
  check_dispatch_kernel<<<264, 256, 0, stream>>>(P, tag_offset, tc, me, fp8 ? 1 : 0, v, expected, m);
  WEFT_CHECK_LAUNCH();
}

inline void check_combine(const Problem& P, const uint64_t* tag_offset, int me, int T,
                          const void* out, Mismatch* m, cudaStream_t stream) {
  if (T == 0) return;
  check_combine_kernel<<<264, 256, 0, stream>>>(P, tag_offset, me, T,
                                                static_cast<const uint16_t*>(out), m);
  WEFT_CHECK_LAUNCH();
}

inline void increment(uint64_t* counter, cudaStream_t stream) {
  increment_kernel<<<1, 1, 0, stream>>>(counter);
  WEFT_CHECK_LAUNCH();
}

}  // namespace weft::ops::ep_testing
