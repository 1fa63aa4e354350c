// cuBLASLt in weft's row-major GEMM convention, for the decomposed strategies and the baselines:
//
//   C[m, n] (ldc) = A[m, k] (lda) * B[n, k]^T (ldb) [+ S[m, n] (lds)]
//                                                        A, B bf16/fp16; C (and S) the same or fp32
//
// (or, with BLayout::kKN, B given as row-major [k, n]: cuBLAS reads it untransposed.)
//
// In cuBLASLt's column-major view row-major C[m,n] is C^T[n,m] = B[n,k] * A^T: cuBLAS's "A" is our
// B (k x n column-major, op T), its "B" is our A (k x m column-major, op N). One handle and one
// 32 MiB workspace per object. The algorithm is chosen once per (shape, leading dimensions, types,
// pointer alignments up to 16 bytes) and cached, so an object's repeated calls launch the same
// kernel (bit-identical results, also for operands moved to other 16-byte aligned addresses);
// after that first call a call never allocates and is capturable in a CUDA graph. Two ways to
// choose it:
//   kHeuristic  cuBLASLt's first heuristic answer for these preferences (the benchmarks' "cuBLAS
//               alone" baselines: the kernel a default cuBLASLt call picks).
//   kTuned      the first call of a key times the heuristic's best kTuneCandidates answers on the
//               call's own operands and stream and keeps the fastest, unless it beats the first
//               answer by less than kTuneMargin. That call waits on the host for everything
//               queued on the stream before it (through the wait hook given at construction,
//               e.g. World::synchronize with its deadline) and creates and destroys timing
//               events. At the decomposed strategies' chunk shapes cuBLAS's first answer can be
//               5-8% slower than its best (docs/perf.md). A key first seen under stream capture
//               keeps the first answer (nothing can be timed then). Another object, e.g. on
//               another rank or in another process, may pick another algorithm.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "weft/ops/tensor_parallel/common/tp_common.h"

namespace weft::tp {

enum class LtAlgoChoice { kHeuristic, kTuned };

// Which split-K algorithms cuBLASLt may offer. At small M x N and long K its heuristic likes
// splitting K, and a split may sum the slices' partial products in the *output* type (or in place
// in the output): 16-bit partial sums, rounded once per slice. kFp32 keeps split-K only where the
// slices are summed in fp32 (CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE), so a result is rounded once.
// (On 4x H200 an operator's tuned 200 x 100 x 512 fp16 GEMM left 0.4-0.8% of its elements out of
// the tests' tolerance, max |error| 0.012, in two of two runs without the mask, and none in four of
// four with it; which candidate the tuning had kept was not recorded: docs/perf.md, twenty-fourth
// pass.)
enum class LtSplitK {
  kAny,   // whatever a default cuBLASLt call may pick (the benchmarks' baselines)
  kFp32,  // one rounding (weft's operators)
};

// kTuned unless the environment sets WEFT_LT_TUNE=0 (the operators' choice).
LtAlgoChoice lt_algo_choice_from_env();

class LtGemm {
 public:
  // Waits for the work queued on a stream (kTuned's first call of a key); throws on a device error
  // or a deadline. Empty: cudaStreamSynchronize.
  using StreamWait = std::function<void(cudaStream_t)>;

  // Creates the cuBLASLt handle and a workspace on the current device.
  explicit LtGemm(LtAlgoChoice choice = LtAlgoChoice::kHeuristic, StreamWait wait = {},
                  LtSplitK split_k = LtSplitK::kAny);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Enqueues C = A * B^T on `stream`, or C = A * B^T + S with an addend S (same type as C, lds of
  // 0 meaning n). S may be C itself, but such a key is never tuned (timing candidates would add
  // to C repeatedly): pass a separate S to have it tuned. lda/ldb/ldc of 0 mean k, k, n. Throws
  // weft::Error on a cuBLAS failure (with the status name) and weft::InvalidArgument on bad
  // shapes. With b_layout kKN, B is row-major [k, n] and ldb (0: n) >= n.
  void gemm(const void* a, int64_t lda, const void* b, int64_t ldb, void* c, int64_t ldc, int64_t m,
            int64_t n, int64_t k, DType ab, DType c_type, cudaStream_t stream,
            const void* addend = nullptr, int64_t lds = 0, BLayout b_layout = BLayout::kNK);

  // The cached algorithm of a shape without an addend, for reports: "" before its first call,
  // else cuBLASLt's tile / stages / cluster ids and how it was chosen ("heuristic #0", "tuned: #3
  // of 8, 92.1 us against 99.0 for #0").
  std::string describe(int64_t m, int64_t n, int64_t k, DType ab, DType c_type) const;

  LtAlgoChoice choice() const { return choice_; }
  // Algorithms chosen so far (one per key), for tests.
  size_t cached_choices() const { return plans_.size(); }

  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;
  static constexpr int kTuneCandidates = 8;
  // A candidate replaces the first answer only when at least this much faster: timings of short
  // GEMMs can be set by the host's enqueue rate, where candidates differ by noise.
  static constexpr double kTuneMargin = 0.02;

 private:
  struct Plan;
  // m, n, k, lda, ldb, ldc, A/B type, C type, alignments of A, B, C; lds and S's alignment (0
  // and 0 without an addend; -1 for an addend that is C itself); B's layout.
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int,
                         int, int64_t, int, int>;
  Plan& plan_for(const Key& key);
  // Times the plan's candidates on the call's operands and keeps the fastest.
  void tune(Plan& plan, const void* a, const void* b, void* c, const void* addend,
            cudaStream_t stream);

  LtAlgoChoice choice_;
  StreamWait wait_;
  LtSplitK split_k_;
  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace weft::tp
