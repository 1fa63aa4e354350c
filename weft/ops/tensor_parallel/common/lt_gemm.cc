#include "weft/ops/tensor_parallel/common/lt_gemm.h"

#include <cublasLt.h>

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <vector>

#include "weft/runtime/cuda_check.h"
#include "weft/runtime/error.h"
#include "weft/runtime/validate.h"

namespace weft::tp {
namespace {

[[noreturn]] void throw_cublas(const char* call, cublasStatus_t st) {
  throw Error(call, fmt::format("cuBLASLt returned {} ({})", static_cast<int>(st),
                                cublasLtGetStatusName(st)));
}

#define WEFT_TP_LT_CHECK(expr)                                 \
  do {                                                         \
    cublasStatus_t weft_st_ = (expr);                          \
    if (weft_st_ != CUBLAS_STATUS_SUCCESS) throw_cublas(#expr, weft_st_); \
  } while (0)

cudaDataType_t to_cuda(DType t) {
  switch (t) {
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kFP16: return CUDA_R_16F;
    case DType::kFP32: return CUDA_R_32F;
  }
  return CUDA_R_32F;
}

// A pointer's alignment as keys and cuBLASLt's preferences see it: the largest power of two up to
// kKeyAlignment bytes that divides the address.
// Hopper's algorithms need no more (TMA takes 16-byte aligned addresses), and a cap keeps buffers
// that differ only in a larger alignment on one key and so one algorithm: the same inputs give
// the same bits wherever they sit.
constexpr int kKeyAlignment = 16;
int alignment_of(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = kKeyAlignment;
  while (a > 1 && v % a != 0) a >>= 1;
  return a;
}

}  // namespace

struct LtGemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatrixLayout_t ls = nullptr;  // the addend's layout (keys with an addend)
  cublasLtMatmulAlgo_t algo{};
  std::vector<cublasLtMatmulAlgo_t> candidates;  // the heuristic's answers, best first
  bool settled = false;                          // algo is final (tuned, or never to be tuned)
  std::string how = "heuristic #0";
  ~Plan() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (ls) cublasLtMatrixLayoutDestroy(ls);
  }
  // C = A * B^T (+ S): the layout and pointer cuBLASLt's "C" gets, and beta.
  cublasLtMatrixLayout_t addend_layout() const { return ls ? ls : lc; }
  float beta() const { return ls ? 1.0f : 0.0f; }
};

LtAlgoChoice lt_algo_choice_from_env() {
  const char* env = std::getenv("WEFT_LT_TUNE");
  return env != nullptr && env[0] == '0' && env[1] == '\0' ? LtAlgoChoice::kHeuristic
                                                           : LtAlgoChoice::kTuned;
}

LtGemm::LtGemm(LtAlgoChoice choice, StreamWait wait, LtSplitK split_k)
    : choice_(choice), wait_(std::move(wait)), split_k_(split_k) {
  cublasLtHandle_t h = nullptr;
  WEFT_TP_LT_CHECK(cublasLtCreate(&h));
  handle_ = h;
  const cudaError_t err = cudaMalloc(&workspace_, kWorkspaceBytes);
  if (err != cudaSuccess) {
    cublasLtDestroy(h);
    handle_ = nullptr;
    WEFT_CUDA_CHECK(err);
  }
}

LtGemm::~LtGemm() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

LtGemm::Plan& LtGemm::plan_for(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;
  const auto [m, n, k, lda, ldb, ldc, ab_i, c_i, align_a, align_b, align_c, lds, align_s, bl] = key;
  const bool b_kn = bl == int(BLayout::kKN);
  const DType ab = static_cast<DType>(ab_i), ct = static_cast<DType>(c_i);
  auto plan = std::make_unique<Plan>();
  WEFT_TP_LT_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Our row-major B [n, k] is cuBLAS's column-major "A" k x n, read transposed; a row-major
  // [k, n] B is n x k column-major, read as it is.
  const cublasOperation_t ta = b_kn ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
  WEFT_TP_LT_CHECK(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  WEFT_TP_LT_CHECK(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  WEFT_TP_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->la, to_cuda(ab), uint64_t(b_kn ? n : k),
                                              uint64_t(b_kn ? k : n), ldb));
  WEFT_TP_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->lb, to_cuda(ab), uint64_t(k), uint64_t(m), lda));
  WEFT_TP_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->lc, to_cuda(ct), uint64_t(n), uint64_t(m), ldc));
  if (lds > 0)
    WEFT_TP_LT_CHECK(
        cublasLtMatrixLayoutCreate(&plan->ls, to_cuda(ct), uint64_t(n), uint64_t(m), lds));

  cublasLtMatmulPreference_t pref = nullptr;
  WEFT_TP_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  struct PrefGuard {
    cublasLtMatmulPreference_t p;
    ~PrefGuard() { cublasLtMatmulPreferenceDestroy(p); }
  } guard{pref};
  const size_t ws = kWorkspaceBytes;
  WEFT_TP_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  if (split_k_ == LtSplitK::kFp32) {
    // (Algorithms that do not split K have no reduction scheme and pass any mask.)
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    WEFT_TP_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes)));
  }
  // cuBLAS's "A" is our B, its "B" is our A.
  const uint32_t al_a = uint32_t(align_b), al_b = uint32_t(align_a);
  // (align_s is -1 for an addend that is C itself: C's alignment then.)
  const uint32_t al_c = uint32_t(lds > 0 && align_s > 0 ? std::min(align_s, align_c) : align_c),
                 al_d = uint32_t(align_c);
  WEFT_TP_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  WEFT_TP_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  WEFT_TP_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  WEFT_TP_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));
  cublasLtMatmulHeuristicResult_t result[kTuneCandidates] = {};
  int found = 0;
  const int wanted = choice_ == LtAlgoChoice::kTuned ? kTuneCandidates : 1;
  WEFT_TP_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(handle_), plan->op,
                                                  plan->la, plan->lb, plan->addend_layout(),
                                                  plan->lc, pref, wanted, result, &found));
  WEFT_CHECK(found > 0,
             "cuBLASLt has no algorithm for m={} n={} k={} lda={} ldb={} ldc={} ({} -> {})", m, n,
             k, lda, ldb, ldc, to_string(ab), to_string(ct));
  plan->algo = result[0].algo;
  for (int i = 0; i < found; ++i) plan->candidates.push_back(result[i].algo);
  plan->settled = found == 1;
  Plan& ref = *plan;
  plans_.emplace(key, std::move(plan));
  return ref;
}

void LtGemm::gemm(const void* a, int64_t lda, const void* b, int64_t ldb, void* c, int64_t ldc,
                  int64_t m, int64_t n, int64_t k, DType ab, DType c_type, cudaStream_t stream,
                  const void* addend, int64_t lds, BLayout b_layout) {
  WEFT_CHECK_ARG(m >= 1 && n >= 1 && k >= 1, "cuBLASLt GEMM needs m, n, k >= 1 (m={} n={} k={})", m,
                 n, k);
  WEFT_CHECK_ARG(ab == DType::kBF16 || ab == DType::kFP16, "A/B must be bf16 or fp16, got {}",
                 to_string(ab));
  WEFT_CHECK_ARG(c_type == ab || c_type == DType::kFP32, "C must be {} or fp32, got {}",
                 to_string(ab), to_string(c_type));
  const bool b_kn = b_layout == BLayout::kKN;
  lda = lda ? lda : k;
  ldb = b_ld(ldb, n, k, b_layout);
  ldc = ldc ? ldc : n;
  lds = addend == nullptr ? 0 : (lds ? lds : n);
  WEFT_CHECK_ARG(lda >= k && ldb >= (b_kn ? n : k) && ldc >= n && (addend == nullptr || lds >= n),
                 "leading dimensions too small: lda={} ldb={} (K={}, B {}), ldc={} lds={} (N={})",
                 lda, ldb, k, to_string(b_layout), ldc, lds, n);
  const bool in_place = addend != nullptr && addend == c;
  WEFT_CHECK_ARG(!in_place || lds == ldc,
                 "an addend that is C itself must have C's leading dimension (lds={}, ldc={})", lds,
                 ldc);
  // Separate keys for an addend in place and a separate one: only the latter is ever tuned.
  const int addend_alignment = addend == nullptr ? 0 : (in_place ? -1 : alignment_of(addend));
  const Key key{m,
                n,
                k,
                lda,
                ldb,
                ldc,
                int(ab),
                int(c_type),
                alignment_of(a),
                alignment_of(b),
                alignment_of(c),
                lds,
                addend_alignment,
                int(b_layout)};
  Plan& p = plan_for(key);
  if (!p.settled) {
    if (stream_capturing(stream, "LtGemm::gemm")) {
      p.how = "heuristic #0 (first call captured: not tuned)";
    } else if (in_place) {
      p.how = "heuristic #0 (adds to C in place: not tuned)";  // timing would add repeatedly
    } else {
      tune(p, a, b, c, addend, stream);
    }
    p.settled = true;
  }
  const float alpha = 1.0f, beta = p.beta();
  WEFT_TP_LT_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), p.op, &alpha, b, p.la, a,
                                  p.lb, &beta, addend ? addend : c, p.addend_layout(), c, p.lc,
                                  &p.algo, workspace_, kWorkspaceBytes, stream));
}

void LtGemm::tune(Plan& p, const void* a, const void* b, void* c, const void* addend,
                  cudaStream_t stream) {
  // Rounds over every candidate in turn, so that clock drift (the GPUs run at their power cap)
  // spreads over all of them; two launches per sample; each candidate's median sample decides.
  constexpr int kRounds = 3, kPerSample = 2;
  const int n = static_cast<int>(p.candidates.size());
  const auto handle = static_cast<cublasLtHandle_t>(handle_);
  const float alpha = 1.0f, beta = p.beta();
  auto launch = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(handle, p.op, &alpha, b, p.la, a, p.lb, &beta, addend ? addend : c,
                          p.addend_layout(), c, p.lc, &algo, workspace_, kWorkspaceBytes, stream);
  };
  std::vector<bool> usable(static_cast<size_t>(n), true);
  bool any_failed = false;
  for (int i = 0; i < n; ++i) {
    usable[size_t(i)] = launch(p.candidates[size_t(i)]) == CUBLAS_STATUS_SUCCESS;
    any_failed |= !usable[size_t(i)];
  }
  // A candidate cuBLASLt refused may leave the runtime's last error set: clear it here, so the
  // caller's next launch check does not report it against its own kernel.
  if (any_failed) (void)cudaGetLastError();
  std::vector<cudaEvent_t> events(static_cast<size_t>(2 * n * kRounds), nullptr);
  struct EventGuard {
    std::vector<cudaEvent_t>& e;
    ~EventGuard() {
      for (cudaEvent_t ev : e)
        if (ev) cudaEventDestroy(ev);
    }
  } guard{events};
  for (cudaEvent_t& e : events) WEFT_CUDA_CHECK(cudaEventCreate(&e));
  for (int r = 0; r < kRounds; ++r)
    for (int i = 0; i < n; ++i) {
      if (!usable[size_t(i)]) continue;
      const size_t e = size_t(2 * (r * n + i));
      WEFT_CUDA_CHECK(cudaEventRecord(events[e], stream));
      for (int j = 0; j < kPerSample; ++j) WEFT_TP_LT_CHECK(launch(p.candidates[size_t(i)]));
      WEFT_CUDA_CHECK(cudaEventRecord(events[e + 1], stream));
    }
  if (wait_)
    wait_(stream);
  else
    WEFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> median(static_cast<size_t>(n), 0.0f);
  int best = -1;
  for (int i = 0; i < n; ++i) {
    if (!usable[size_t(i)]) continue;
    float ms[kRounds];
    for (int r = 0; r < kRounds; ++r) {
      const size_t e = size_t(2 * (r * n + i));
      WEFT_CUDA_CHECK(cudaEventElapsedTime(&ms[r], events[e], events[e + 1]));
    }
    std::sort(ms, ms + kRounds);
    median[size_t(i)] = ms[kRounds / 2] * 1000.0f / kPerSample;
    if (best < 0 || median[size_t(i)] < median[size_t(best)]) best = i;
  }
  WEFT_CHECK(best >= 0, "cuBLASLt launched none of its {} algorithms", n);
  if (!usable[0]) {
    p.how = fmt::format("tuned: #{} of {}, {:.1f} us (#0 failed to launch)", best, n,
                        median[size_t(best)]);
  } else if (best != 0 && median[size_t(best)] > (1.0 - kTuneMargin) * median[0]) {
    p.how = fmt::format("tuned: kept #0 of {}, {:.1f} us (#{}, {:.1f} us, is within {:.0f}%)", n,
                        median[0], best, median[size_t(best)], kTuneMargin * 100);
    best = 0;
  } else {
    p.how = fmt::format("tuned: #{} of {}, {:.1f} us against {:.1f} for #0", best, n,
                        median[size_t(best)], median[0]);
  }
  p.algo = p.candidates[size_t(best)];
}

std::string LtGemm::describe(int64_t m, int64_t n, int64_t k, DType ab, DType c_type) const {
  for (const auto& [key, plan] : plans_) {
    if (std::get<0>(key) != m || std::get<1>(key) != n || std::get<2>(key) != k ||
        std::get<6>(key) != int(ab) || std::get<7>(key) != int(c_type) ||
        std::get<11>(key) != 0 ||                // plain GEMMs only, not those with an addend ...
        std::get<13>(key) != int(BLayout::kNK))  // ... nor with a [k, n] B
      continue;
    int tile = 0, stages = 0;
    uint16_t cluster = 0;
    size_t written = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&plan->algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                         sizeof(tile), &written);
    cublasLtMatmulAlgoConfigGetAttribute(&plan->algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages,
                                         sizeof(stages), &written);
    cublasLtMatmulAlgoConfigGetAttribute(&plan->algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                         &cluster, sizeof(cluster), &written);
    int split_k = 1;
    uint32_t scheme = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&plan->algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split_k,
                                         sizeof(split_k), &written);
    cublasLtMatmulAlgoConfigGetAttribute(&plan->algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                                         &scheme, sizeof(scheme), &written);
    const std::string split =
        split_k > 1 ? fmt::format(" split-K {} (reduction scheme {})", split_k, scheme) : "";
    return fmt::format("tile {} stages {} cluster {}{}, {}", tile, stages, int(cluster), split,
                       plan->how);
  }
  return "";
}

}  // namespace weft::tp
