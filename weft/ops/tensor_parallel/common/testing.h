// Support for the tensor-parallel tests and benchmarks (not part of the operators): deterministic
// input data, on-device comparison against fp32 references (so that many results, e.g. one per
// CUDA graph replay, are checked without a host round trip each), bitwise checks, and the
// NCCL + cuBLAS references the operators are measured and checked against.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <cuda_runtime.h>

#include "weft/ops/tensor_parallel/common/lt_gemm.h"
#include "weft/ops/tensor_parallel/common/tp_common.h"
#include "weft/runtime/world.h"

namespace weft::tp::testing {

// Element (row, col) of the matrix `seed`: uniform in [-1, 1), rounded to `t`. Any rank can
// regenerate any rank's data from the seed.
void fill_matrix(void* p, int64_t rows, int64_t cols, int64_t ld, DType t, uint64_t seed,
                 cudaStream_t stream);

// Seed of the matrix `tag` of rank `rank` in round `round` of a test run with `base` seed.
uint64_t matrix_seed(uint64_t base, uint64_t tag, int rank, uint64_t round = 0);

// |x - ref| <= atol + rtol * |ref| per element (NaN always fails).
struct Tolerance {
  double atol = 0, rtol = 0;
};
// A GEMM with fp32 accumulation over k of fill_matrix data, rounded once to `t`.
Tolerance gemm_tolerance(DType t, int64_t k);
// A sum over `world` ranks of such GEMMs, each partial rounded to `t` before the sum.
Tolerance reduced_gemm_tolerance(DType t, int64_t k, int world);

// Accumulates comparison results on the device; read() synchronizes and reports.
class Comparator {
 public:
  Comparator();
  ~Comparator();
  Comparator(const Comparator&) = delete;
  Comparator& operator=(const Comparator&) = delete;

  void reset(cudaStream_t stream);
  // Enqueue: out (dtype t, leading dimension ld) against ref (fp32, ld_ref), rows x cols. `tag`
  // (e.g. the replay number) is recorded with the first failing element.
  void compare(const void* out, int64_t ld, DType t, const float* ref, int64_t ld_ref, int64_t rows,
               int64_t cols, Tolerance tol, uint32_t tag, cudaStream_t stream);

  struct Result {
    uint64_t checked = 0, bad = 0;
    uint32_t first_tag = 0;
    int64_t first_row = -1, first_col = -1;
    float first_value = 0, first_ref = 0;
    float max_abs_err = 0;
    bool ok() const { return bad == 0 && checked > 0; }
    std::string describe() const;
  };
  Result read(cudaStream_t stream);

 private:
  void* record_ = nullptr;  // device
};

// Elements whose bits differ between two 16-bit matrices (synchronizes `stream`).
uint64_t count_bit_differences(const void* x, int64_t ldx, const void* y, int64_t ldy,
                               int64_t rows, int64_t cols, cudaStream_t stream);

// Elements of a 16-bit matrix whose bits are not `bits` (synchronizes `stream`): e.g. padding
// that must keep the poison written before a call.
uint64_t count_not_equal(const void* p, int64_t rows, int64_t cols, int64_t ld, uint16_t bits,
                         cudaStream_t stream);

// Position-sensitive hash of a 16-bit matrix's bits (synchronizes `stream`): equal on two ranks
// exactly when (with overwhelming probability) their matrices are bit-identical.
uint64_t checksum(const void* p, int64_t rows, int64_t cols, int64_t ld, cudaStream_t stream);

// Holds all but `free_sms` of the device's SMs for about `ns` nanoseconds with a kernel on `stream`
// (one block per SM, kept there by its shared memory), so that work queued meanwhile on other
// streams runs on the `free_sms` left: a slow rank, for tests of ranks that run at different
// speeds.
void occupy_sms(int free_sms, uint64_t ns, cudaStream_t stream);

// Rows of a 16-bit matrix from device memory to the host as floats (small matrices, debugging).
std::string describe_row(const void* p, int64_t ld, DType t, int64_t row, int64_t cols,
                         int64_t max_cols, cudaStream_t stream);

// NCCL + cuBLAS references, and the "NCCL then cuBLAS" baselines.
class Reference {
 public:
  explicit Reference(World& world);
  LtGemm& lt() { return lt_; }

  // gathered = allgather(a_local) (NCCL, `t`), ref = gathered * b^T (cuBLASLt, fp32 out).
  // a_local contiguous [m_local, k]; gathered [W * m_local, k]; ref [W * m_local, n].
  void ag_gemm(const void* a_local, int64_t m_local, int64_t k, const void* b, int64_t n, DType t,
               void* gathered, float* ref, cudaStream_t stream);
  // partial = a * b^T (fp32), ref = reduce_scatter(partial) (NCCL, fp32): rows [r m/W, (r+1) m/W).
  void gemm_rs(const void* a, int64_t m, int64_t k, const void* b, int64_t n, DType t,
               float* partial, float* ref, cudaStream_t stream);
  // ref = all_reduce(a * b^T) (fp32).
  void gemm_ar(const void* a, int64_t m, int64_t k, const void* b, int64_t n, DType t, float* ref,
               cudaStream_t stream);

 private:
  World& world_;
  LtGemm lt_;
};

}  // namespace weft::tp::testing
