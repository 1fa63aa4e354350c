#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"

#include <algorithm>
#include <cstdlib>

#include "weft/ops/tensor_parallel/common/lt_gemm.h"
#include "weft/ops/tensor_parallel/common/op_setup.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar_kernel.h"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/pdl.h"
#include "weft/runtime/validate.h"

namespace weft::tp {
namespace {

constexpr const char* kCtor = "GemmAr";
constexpr const char* kRun = "GemmAr::run";
constexpr const char* kPlan = "GemmAr::plan";

bool is_two_shot(GemmArStrategy s) {
  return s == GemmArStrategy::kTwoShot || s == GemmArStrategy::kTwoShotWeft;
}
bool uses_weft(GemmArStrategy s) {
  return s == GemmArStrategy::kOneShotWeft || s == GemmArStrategy::kTwoShotWeft;
}

}  // namespace

PushWorkspace::PushWorkspace(World& world, int64_t max_share_elems)
    : slot_(round_up(std::max<int64_t>(1, max_share_elems), 8)) {
  const size_t W = static_cast<size_t>(world.size());
  rx_ = world.alloc<uint16_t>(2 * W * static_cast<size_t>(slot_));
  flags_ = world.alloc_signals(W * kArMaxSlices);
  sig_slots_ = world.alloc<dev::CallSignature>(2 * W);
  prepare_pdl();
  state_ = static_cast<ArState*>(alloc_zeroed_device_state(sizeof(ArState)));
}

PushWorkspace::~PushWorkspace() {
  if (state_) cudaFree(state_);
}

void PushWorkspace::attach(ArParams& p, const char* what,
                           const dev::CallSignature& signature) const {
  WEFT_CHECK(p.chunk % 8 == 0 && p.chunk <= slot_ && p.slices <= kArMaxSlices,
             "{}: a share of {} elements in {} items does not fit its {}-element slots and {} "
             "flags",
             what, p.chunk, p.slices, slot_, kArMaxSlices);
  p.rx = rx_.data();
  p.rx_slot = slot_;
  p.flags = flags_.data();
  p.max_slices = kArMaxSlices;
  p.state = state_;
  p.sig_slots = sig_slots_.data();
  p.signature = signature;
}

void PushWorkspace::abandon(const dev::Context& ctx, cudaStream_t stream) const noexcept {
  ArParams p;
  p.flags = flags_.data();
  p.max_slices = kArMaxSlices;
  p.state = state_;
  p.sig_slots = sig_slots_.data();
  p.signature = abandoned_call();
  launch_allreduce_abandon(ctx, p, stream);
}

GemmAr::GemmAr(World& world, const GemmArOptions& options)
    : world_(world), options_(options), rank_(world.rank()), world_size_(world.size()) {
  check_single_node(world, "GEMM-AR reaches peers by load/store", kCtor);
  // First, before any check that could throw on some ranks only.
  world.check_same_settings(
      fmt::format("strategy {}, oneshot_max_bytes {}, max_blocks {}, max_m {}, "
                  "max_n {}, WEFT_GEMM_AR_STRATEGY {}",
                  to_string(options.strategy), options.oneshot_max_bytes, options.max_blocks,
                  options.max_m, options.max_n, env_setting("WEFT_GEMM_AR_STRATEGY")),
      kCtor);
  WEFT_CHECK_ARG_AT(kCtor, options.max_m >= 1 && options.max_n >= 1,
                    "max_m and max_n must be >= 1, got {} and {}", options.max_m, options.max_n);
  WEFT_CHECK_ARG_AT(kCtor, options.max_blocks >= 0 && options.max_blocks <= kArMaxBlocks,
                    "max_blocks must be in [0, {}], got {}", kArMaxBlocks, options.max_blocks);
  env_strategy_ = gemm_ar_strategy_from_env();
  ctx_ = world.context();
  sms_ = world.min_sm_count();  // the same plan on every rank

  capacity_ = round_up(options.max_m * options.max_n, 8);
  chunk_cap_ = round_up(ceil_div(capacity_, world_size_), 8);
  rx_ = world.alloc<uint16_t>(static_cast<size_t>(2 * world_size_ * capacity_));
  rx2_ = world.alloc<uint16_t>(static_cast<size_t>(2 * world_size_ * chunk_cap_));
  flags_ = world.alloc_signals(static_cast<size_t>(2 * world_size_ * kArMaxSlices));
  sig_slots_ = world.alloc<dev::CallSignature>(static_cast<size_t>(2 * world_size_));
  try {
    WEFT_CUDA_CHECK(cudaMalloc(&partial_, static_cast<size_t>(capacity_ * 2)));
    state_ = alloc_zeroed_device_state(sizeof(ArState));
    lt_ = make_operator_lt_gemm(world);
    prepare_pdl();
    checker_ = std::make_unique<DevicePointerChecker>(world.device(), kRememberedPointers);
  } catch (...) {
    if (partial_) cudaFree(partial_);
    if (state_) cudaFree(state_);
    throw;
  }
}

GemmAr::~GemmAr() {
  // Peers write into our slots only during calls we also make, and each call waits for every
  // peer's data, so once our last call is done nobody writes into them any more.
  last_call_.wait();
  if (partial_) cudaFree(partial_);
  if (state_) cudaFree(state_);
}

GemmArPlan GemmAr::plan(const GemmArArgs& args) const {
  validate_gemm_ar_shape(args, options_.max_m * options_.max_n, kPlan);
  return plan_checked(args);
}

GemmArPlan GemmAr::plan_checked(const GemmArArgs& args) const {
  GemmArProblem p;
  p.m = args.m;
  p.n = args.n;
  p.k = args.k;
  p.dtype = args.dtype;
  p.world = world_size_;
  p.sms = sms_;
  return plan_gemm_ar(p, requested_strategy(args.strategy, options_.strategy, env_strategy_),
                      options_);
}

void GemmAr::attach(ArParams& p) const {
  p.rx = rx_.data();
  p.rx_slot = capacity_;
  p.rx2 = rx2_.data();
  p.rx2_half = world_size_ * chunk_cap_;
  p.flags = flags_.data();
  p.max_slices = kArMaxSlices;
  p.state = static_cast<ArState*>(state_);
  p.sig_slots = sig_slots_.data();
}

// GEMM-AR has one exchange (the all-reduce kernel's), whatever the plan.
void GemmAr::abandon(cudaStream_t stream) noexcept {
  try {
    abandon_fence_.before_call(world_, stream);
  } catch (...) {  // best effort, as the rest
  }
  ArParams p;
  attach(p);
  p.signature = abandoned_call();
  launch_allreduce_abandon(ctx_, p, stream);
  (void)last_call_.mark(stream, false);
  abandon_fence_.abandoned();
}

GemmArPlan GemmAr::run(const GemmArArgs& args, cudaStream_t stream) {
  GemmArPlan plan;
  checks_or_abandon(  // the shape and the plan
      world_, stream,
      [&] {
        validate_gemm_ar_args(args, options_.max_m * options_.max_n, kRun);
        plan = plan_checked(args);
      },
      [&] { abandon(stream); });
  const int64_t eb = element_bytes(args.dtype);
  const int64_t lda = args.lda ? args.lda : args.k;
  const int64_t ldb = args.ldb ? args.ldb : args.k;
  const int64_t ldo = args.ldo ? args.ldo : args.n;
  bool capturing = false;
  // This rank's own checks; should one fail here only, the peers learn it at their first flag.
  checks_or_abandon(
      world_, stream,
      [&] {
        capturing =
            check_operand_pointers(*checker_, stream, args.a, args.b, args.out, "out", kRun);
        const size_t out_bytes = static_cast<size_t>(((args.m - 1) * ldo + args.n) * eb);
        WEFT_CHECK_ARG_AT(kRun,
                          !ranges_overlap(args.out, out_bytes, rx_.data(), rx_.bytes()) &&
                              !ranges_overlap(args.out, out_bytes, rx2_.data(), rx2_.bytes()),
                          "out ({}) overlaps the GEMM-AR receive buffers",
                          static_cast<const void*>(args.out));
      },
      [&] { abandon(stream); });
  abandon_fence_.before_call(world_, stream);  // after an abandoned call only
  const LastCall::Scope mark_end = last_call_.at_scope_exit(stream, capturing);
  AbortIfUnwound abort_if_failing(world_, capturing, kRun);  // armed at the exchange
  // The partial product, contiguous [m, n]. Nothing the peers wait for is queued yet, and a
  // failure here can be this rank's alone (cuBLASLt's algorithm search and tuning see this rank's
  // own K, strides and alignments): abandon the call then, as for a failed check.
  checks_or_abandon(
      world_, stream,
      [&] {
        if (uses_weft(plan.strategy)) {
          gemm::gemm(gemm_args(args.a, lda, args.b, ldb, partial_, args.n, args.m, args.n, args.k,
                               args.dtype),
                     stream);
        } else {
          lt_->gemm(args.a, lda, args.b, ldb, partial_, args.n, args.m, args.n, args.k, args.dtype,
                    args.dtype, stream);
        }
      },
      [&] { abandon(stream); });

  const int64_t total = args.m * args.n;
  const bool two_shot = is_two_shot(plan.strategy);
  const int64_t share = two_shot ? round_up(ceil_div(total, world_size_), 8) : round_up(total, 8);
  ArParams p = ar_params(partial_, args.out, ldo, args.n, total, share, plan.slice_elems,
                         plan.slices, args.dtype);
  p.two_shot = two_shot ? 1 : 0;
  attach(p);
  // K is each rank's own (its slice of the sum) and so is the GEMM engine (oneshot and
  // oneshot_weft exchange the same); the all-reduce and its work split must agree.
  p.signature = tp_call_signature("gemm_ar", two_shot ? "twoshot" : "oneshot", args.dtype, args.m,
                                  args.n, 0, static_cast<uint64_t>(plan.slice_elems));
  abort_if_failing.arm();
  launch_allreduce(ctx_, p, plan.blocks, stream);
  return plan;
}

}  // namespace weft::tp
