#include "weft/gemm/detail/tma_host.h"

#include <mutex>

#include <cuda_runtime_api.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000

#include "weft/runtime/error.h"

namespace weft::gemm::detail {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  static cudaError_t err = cudaSuccess;
  static cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSuccess;
  std::call_once(once, [] {
    void* p = nullptr;
    err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                           &status);
    if (err == cudaSuccess && status == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  });
  if (fn == nullptr) {
    throw ::weft::Error("cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)",
                        ::fmt::format("{} (query status {}); a CUDA driver >= 12.0 is required",
                                      cudaGetErrorString(err), int(status)));
  }
  return fn;
}

}  // namespace

CUtensorMap make_tma_2d_sw128(TmaElem elem, const void* base, int64_t rows, int64_t cols,
                              int64_t ld, int box_rows, int box_cols) {
  CUtensorMapDataType dt;
  int64_t esize;
  switch (elem) {
    case TmaElem::kBF16: dt = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16; esize = 2; break;
    case TmaElem::kFP16: dt = CU_TENSOR_MAP_DATA_TYPE_FLOAT16; esize = 2; break;
    default: dt = CU_TENSOR_MAP_DATA_TYPE_FLOAT32; esize = 4; break;
  }
  WEFT_CHECK(box_cols * esize == 128, "TMA box inner extent must be 128 bytes, got {}",
             box_cols * esize);
  WEFT_CHECK(box_rows >= 1 && box_rows <= 256, "TMA box rows {} not in [1, 256]", box_rows);
  WEFT_CHECK((reinterpret_cast<uintptr_t>(base) & 15) == 0,
             "TMA global address {} is not 16-byte aligned", base);
  WEFT_CHECK((ld * esize) % 16 == 0, "TMA row stride {} bytes is not a multiple of 16",
             ld * esize);
  CUtensorMap map{};
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld * esize)};  // bytes, dims 1..rank-1
  const cuuint32_t box[2] = {cuuint32_t(box_cols), cuuint32_t(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode_fn()(&map, dt, 2, const_cast<void*>(base), dims, strides, box,
                                 elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                 CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw ::weft::Error(
        "cuTensorMapEncodeTiled",
        ::fmt::format("CUresult {} for tensor [{} x {}] ld {} elem {} bytes box [{} x {}] at {}",
                      int(r), rows, cols, ld, esize, box_rows, box_cols, base));
  }
  return map;
}

}  // namespace weft::gemm::detail
