// Host side of TMA: tensor-map encoding through the driver entry point (libcuda is looked up at
// run time by the CUDA runtime, never linked, so binaries load on machines without a driver).
#pragma once

#include <cstdint>

#include <cuda.h>

namespace weft::gemm::detail {

enum class TmaElem { kBF16, kFP16, kFP32 };

// 2-D row-major tensor [rows, cols] with leading dimension `ld` elements, boxes of
// [box_rows, box_cols] with 128-byte swizzle (box_cols * elem_size must be 128). Out-of-bounds
// box elements are zero-filled on load and dropped on store. Throws weft::Error on failure.
CUtensorMap make_tma_2d_sw128(TmaElem elem, const void* base, int64_t rows, int64_t cols,
                              int64_t ld, int box_rows, int box_cols);

}  // namespace weft::gemm::detail
