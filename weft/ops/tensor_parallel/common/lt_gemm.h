// cuBLASLt in weft's row-major GEMM convention, for the decomposed strategies and the baselines:
//
//   C[m, n] (ldc) = A[m, k] (lda) * B[n, k]^T (ldb)      A, B bf16/fp16; C the same or fp32
//
// In cuBLASLt's column-major view row-major C[m,n] is C^T[n,m] = B[n,k] * A^T: cuBLAS's "A" is our
// B (k x n column-major, op T), its "B" is our A (k x m column-major, op N). One handle and one
// workspace per object; the heuristic's first algorithm is cached per (shape, leading dimensions,
// types, pointer alignments), so repeated calls launch the same kernel (bit-identical results)
// and a call never allocates: capturable in a CUDA graph.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include <cuda_runtime.h>

#include "weft/ops/tensor_parallel/common/tp_common.h"

namespace weft::tp {

class LtGemm {
 public:
  // Creates the cuBLASLt handle and a workspace on the current device.
  LtGemm();
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Enqueues C = A * B^T on `stream`. lda/ldb/ldc of 0 mean k, k, n. Throws weft::Error on a
  // cuBLAS failure (with the status name) and weft::InvalidArgument on bad shapes.
  void gemm(const void* a, int64_t lda, const void* b, int64_t ldb, void* c, int64_t ldc,
            int64_t m, int64_t n, int64_t k, DType ab, DType c_type, cudaStream_t stream);

  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;

 private:
  struct Plan;
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int,
                         int>;
  Plan& plan_for(const Key& key);

  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace weft::tp
