// bf16 / fp16 <-> fp32 helpers for the reduction kernels: 8 elements (one 16-byte vector) at a
// time, accumulated in fp32 in a fixed order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace weft::tp {

template <class T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }

template <class T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// acc[j] += element j of the 8 values in v.
template <class T>
__device__ __forceinline__ void add8(float (&acc)[8], const uint4& v) {
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] += to_f<T>(e[j]);
}

// 8 fp32 values rounded to T, packed into one 16-byte vector.
template <class T>
__device__ __forceinline__ uint4 pack8(const float (&acc)[8]) {
  uint4 out;
  T* e = reinterpret_cast<T*>(&out);
#pragma unroll
  for (int j = 0; j < 8; ++j) e[j] = from_f<T>(acc[j]);
  return out;
}

}  // namespace weft::tp
