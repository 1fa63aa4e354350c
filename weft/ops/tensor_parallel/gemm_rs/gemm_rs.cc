#include "weft/ops/tensor_parallel/gemm_rs/gemm_rs.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "weft/ops/tensor_parallel/common/kernels.h"
#include "weft/ops/tensor_parallel/common/lt_gemm.h"
#include "weft/ops/tensor_parallel/common/op_setup.h"
#include "weft/ops/tensor_parallel/common/peer_copy.h"
#include "weft/ops/tensor_parallel/common/side_stream.h"
#include "weft/ops/tensor_parallel/common/tile_order.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar.h"
#include "weft/ops/tensor_parallel/gemm_ar/gemm_ar_kernel.h"
#include "weft/runtime/copy_engine.h"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/pdl.h"
#include "weft/runtime/validate.h"

namespace weft::tp {
namespace {

constexpr const char* kCtor = "GemmRs";
constexpr const char* kRun = "GemmRs::run";
constexpr const char* kPlan = "GemmRs::plan";

enum : int { kEvFork = 0, kEvReady = 1, kEvDone = 2, kEvChunk = 3, kNumEvents = 4 };

// The smallest block_m of any GEMM configuration with hooks (flags per m-block are sized by it).
constexpr int64_t kMinBlockM = 128;

}  // namespace

GemmRs::GemmRs(World& world, const GemmRsOptions& options)
    : world_(world), options_(options), rank_(world.rank()), world_size_(world.size()) {
  check_single_node(world, "GEMM-RS reaches peers by load/store and copy engine", kCtor);
  // First, before any check that could throw on some ranks only.
  barrier_index_ = agree_on_settings(
      world,
      fmt::format("strategy {}, col_chunks {}, fused_min_waves {}, gemm_config '{}', "
                  "push_reduce_max_bytes {}, max_m {}, max_n {}, WEFT_GEMM_RS_STRATEGY {}, "
                  "WEFT_GEMM_RS_COL_CHUNKS {}",
                  to_string(options.strategy), options.col_chunks, options.fused_min_waves,
                  options.gemm_config, options.push_reduce_max_bytes, options.max_m, options.max_n,
                  env_setting("WEFT_GEMM_RS_STRATEGY"), env_setting("WEFT_GEMM_RS_COL_CHUNKS")),
      options.barrier_index, kCtor);
  WEFT_CHECK_ARG_AT(kCtor, options.max_m >= world.size() && options.max_n >= 1,
                    "max_m must be >= the world size ({}) and max_n >= 1, got {} and {}",
                    world.size(), options.max_m, options.max_n);
  check_fused_options(options.fused_min_waves, options.gemm_config, kCtor);
  WEFT_CHECK_ARG_AT(kCtor, options.push_reduce_max_bytes >= 0,
                    "push_reduce_max_bytes must be >= 0 (0 disables push_reduce), got {}",
                    options.push_reduce_max_bytes);
  env_strategy_ = gemm_rs_strategy_from_env();
  WEFT_CHECK_ARG_AT(kCtor, options.col_chunks >= 0 && options.col_chunks <= 64,
                    "col_chunks must be in [0, 64] (0: the planner's choice), got {}",
                    options.col_chunks);
  if (const char* v = std::getenv("WEFT_GEMM_RS_COL_CHUNKS"); v && *v) {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    WEFT_CHECK_ARG_AT(kCtor, *end == '\0' && n >= 1 && n <= 64,
                      "WEFT_GEMM_RS_COL_CHUNKS must be an integer in [1, 64], got '{}'", v);
    env_col_chunks_ = static_cast<int>(n);
  }
  ctx_ = world.context();
  prepare_pdl();                // the reduction is a programmatic dependent launch
  sms_ = world.min_sm_count();  // the same plan on every rank
  model_ = machine_model_for(sms_, world.min_memory_gbps());

  const int64_t max_mr = ceil_div(options.max_m, world_size_);
  slot_stride_ = gemm_rs_slot_elems(options, world_size_);
  max_mblocks_ = ceil_div(options.max_m, kMinBlockM);
  mblocks_per_chunk_ = ceil_div(max_mr, kMinBlockM);
  recv_ = world.alloc<uint16_t>(static_cast<size_t>(world_size_ * slot_stride_));
  tile_flags_ = world.alloc_signals(static_cast<size_t>(max_mblocks_));
  recv_flags_ = world.alloc_signals(static_cast<size_t>(world_size_));
  recv_tile_flags_ = world.alloc_signals(static_cast<size_t>(world_size_ * mblocks_per_chunk_));
  const int64_t push_elems =
      std::min(options.max_m * options.max_n, options.push_reduce_max_bytes / 2);
  push_ = std::make_unique<PushWorkspace>(world, ceil_div(push_elems, world_size_));
  call_check_ = std::make_unique<CallCheck>(world);

  order_capacity_ = ceil_div(options.max_m, kMinBlockM) * ceil_div(options.max_n, 64);
  try {
    WEFT_CUDA_CHECK(cudaMalloc(&partial_, static_cast<size_t>(options.max_m * options.max_n * 2)));
    WEFT_CUDA_CHECK(cudaMalloc(&order_, static_cast<size_t>(order_capacity_) * sizeof(int32_t)));
    lt_ = make_operator_lt_gemm(world);
    side_ = std::make_unique<SideStream>(kNumEvents);
    timeline_ = std::make_unique<StreamTimeline>(tp_trace_from_env());
    checker_ = std::make_unique<DevicePointerChecker>(world.device(), kRememberedPointers);
  } catch (...) {
    if (partial_) cudaFree(partial_);
    if (order_) cudaFree(order_);
    throw;
  }
}

GemmRs::~GemmRs() {
  last_call_.wait();
  side_.reset();
  if (partial_) cudaFree(partial_);
  if (order_) cudaFree(order_);
}

std::string GemmRs::trace_report() const { return timeline_->report(); }

std::string GemmRs::describe_gemm(int64_t m, int64_t n, int64_t k, DType dtype) const {
  return lt_->describe(m, n, k, dtype, dtype);
}

GemmRsPlan GemmRs::plan(const GemmRsArgs& args) const {
  validate_gemm_rs_shape(args, world_size_, options_.max_m, options_.max_n, kPlan);
  return plan_checked(args);
}

GemmRsPlan GemmRs::plan_checked(const GemmRsArgs& args) const {
  GemmRsProblem p;
  p.m = args.m;
  p.n = args.n;
  p.k = args.k;
  p.dtype = args.dtype;
  p.b_layout = args.b_layout;
  p.world = world_size_;
  p.sms = sms_;
  GemmRsOptions o = options_;
  if (o.col_chunks == 0) o.col_chunks = env_col_chunks_;
  return plan_gemm_rs(p, requested_strategy(args.strategy, options_.strategy, env_strategy_), o,
                      model_);
}

namespace {

// What the ranks of a GEMM-RS call must agree on (checked on the device before the call
// completes): the rows and columns exchanged and how. decomposed, decomposed_cols and fused_ce
// exchange the same thing (each destination's rows into its slot by copy engine, then one flag),
// so they share a protocol; fused_push's GEMM stores tiles into the peers' slots and counts them
// per m-block (its tile); push_reduce's kernel splits the partial into work items; gather_inputs
// sends K slices, whose K must then agree. Elsewhere K is each rank's own.
dev::CallSignature gemm_rs_signature(const GemmRsPlan& plan, const GemmRsArgs& args) {
  const char* protocol = "ce_chunk";
  int64_t k = 0;
  uint64_t options = 0;
  switch (plan.strategy) {
    case GemmRsStrategy::kFusedPush:
      protocol = "sm_tiles";
      options = static_cast<uint64_t>(plan.config.block_m) |
                static_cast<uint64_t>(plan.config.block_n) << 16;
      break;
    case GemmRsStrategy::kPushReduce:
      protocol = "push";
      options = static_cast<uint64_t>(plan.push_slice_elems);
      break;
    case GemmRsStrategy::kGatherInputs:
      protocol = "k_slices";
      k = args.k;
      break;
    default:
      break;
  }
  return tp_call_signature("gemm_rs", protocol, args.dtype, args.m, args.n, k, options);
}

}  // namespace

// Both exchanges, as AgGemm::abandon.
void GemmRs::abandon(cudaStream_t stream) noexcept {
  abandon_exchanges(world_, ctx_, abandon_fence_, last_call_, *push_, *call_check_, barrier_index_,
                    stream);
}

GemmRsPlan GemmRs::run(const GemmRsArgs& args, cudaStream_t stream) {
  GemmRsPlan plan;
  checks_or_abandon(  // the shape and the plan
      world_, stream,
      [&] {
        validate_gemm_rs_args(args, world_size_, options_.max_m, options_.max_n, kRun);
        plan = plan_checked(args);
      },
      [&] { abandon(stream); });
  const int64_t eb = element_bytes(args.dtype);
  const int64_t lda = args.lda ? args.lda : args.k;
  const int64_t ldb = b_ld(args.ldb, args.n, args.k, args.b_layout);
  const BLayout bl = args.b_layout;
  const int64_t ldo = args.ldo ? args.ldo : args.n;
  const int64_t mr = args.m / world_size_;
  const dev::CallSignature signature = gemm_rs_signature(plan, args);
  bool capturing = false;
  // This rank's own checks; should one fail here only, the peers learn it where they compare
  // signatures (the prologue's barrier or the push kernel's first flag).
  checks_or_abandon(
      world_, stream,
      [&] {
        capturing =
            check_operand_pointers(*checker_, stream, args.a, args.b, args.out, "out", kRun);
        const size_t out_bytes = static_cast<size_t>(((mr - 1) * ldo + args.n) * eb);
        WEFT_CHECK_ARG_AT(
            kRun,
            !ranges_overlap(args.out, out_bytes, recv_.data(), recv_.bytes()) &&
                !ranges_overlap(args.out, out_bytes, push_->rx().data(), push_->rx().bytes()),
            "out ({}) overlaps a GEMM-RS receive buffer", static_cast<const void*>(args.out));
      },
      [&] { abandon(stream); });
  abandon_fence_.before_call(world_, stream);  // after an abandoned call only
  const LastCall::Scope mark_end = last_call_.at_scope_exit(stream, capturing);
  AbortIfUnwound abort_if_failing(world_, capturing, kRun);  // armed at the first exchange
  StreamTimeline& tl = *timeline_;
  tl.begin(stream);
  if (plan.strategy == GemmRsStrategy::kPushReduce) {
    // One GEMM into the contiguous partial product, then GEMM-AR's two-shot kernel without its
    // second half (epoch-based: no prologue, no barrier).
    // (Nothing the peers wait for is queued yet; a failure of this rank's GEMM alone, e.g.
    // cuBLASLt finding no algorithm for its own strides, abandons the call like a failed check.)
    checks_or_abandon(
        world_, stream,
        [&] {
          lt_->gemm(args.a, lda, args.b, ldb, partial_, args.n, args.m, args.n, args.k, args.dtype,
                    args.dtype, stream, nullptr, 0, bl);
        },
        [&] { abandon(stream); });
    ArParams p = ar_params(partial_, args.out, ldo, args.n, args.m * args.n, mr * args.n,
                           plan.push_slice_elems, plan.push_slices, args.dtype);
    p.two_shot = 1;
    p.scatter_only = 1;
    push_->attach(p, "push_reduce", signature);
    abort_if_failing.arm();
    launch_allreduce(ctx_, p, plan.push_blocks, stream);
    tl.mark("end", stream);
    return plan;
  }
  const GemmRsStrategy strategy = plan.strategy;
  cudaStream_t side = side_->get();
  char* partial = static_cast<char*>(partial_);
  char* recv = reinterpret_cast<char*>(recv_.data());
  const char* a = static_cast<const char*>(args.a);
  const int64_t chunk_bytes = mr * args.n * eb;

  // Prologue: re-arm every flag this call may use, tile order (fused_ce), barrier.
  PrologueParams pp;
  pp.rearm[0] = {tile_flags_.data(), static_cast<int32_t>(max_mblocks_), 0, 0};
  pp.rearm[1] = {recv_flags_.data(), world_size_, 0, 0};
  pp.rearm[2] = {recv_tile_flags_.data(), static_cast<int32_t>(world_size_ * mblocks_per_chunk_),
                 0, 0};
  pp.n_rearm = 3;
  pp.barrier = world_size_ > 1 ? 1 : 0;
  pp.barrier_index = barrier_index_;
  call_check_->attach(pp, signature);
  gemm::TileGrid grid{};
  bool use_order = false;
  if (strategy == GemmRsStrategy::kFusedCopyEngine) {
    grid = gemm::tile_grid(plan.config, args.m, args.n);
    WEFT_CHECK(grid.tiles_m <= max_mblocks_,
               "GEMM config {} has {} m-blocks, more than the {} flags sized for block_m >= {}",
               plan.config.to_string(), grid.tiles_m, max_mblocks_, kMinBlockM);
    if (grid.num_units <= order_capacity_) {
      pp.order = gemm_rs_tile_order(grid, mr, world_size_, rank_, plan.config.raster_group);
      use_order = pp.order.valid();
      if (use_order) pp.order_out = order_;
    }
    if (!use_order) plan.reason += "; no tile order (grid too large)";
  }

  if (strategy == GemmRsStrategy::kGatherInputs) {
    // The prologue on the caller's stream: the sends need the barrier at once, and a one-block
    // kernel queued beside a full-GPU GEMM starts only when the GEMM frees an SM.
    abort_if_failing.arm();
    launch_prologue(ctx_, pp, stream);
    tl.mark("prologue", stream);
    SideStream::Fork fork(*side_, kEvReady, kEvDone, stream);
    // Step s (side stream, after the barrier): this rank's K slice of rank (r - s)'s rows, its A
    // rows then all of B, into that rank's receive area s - 1, then its flag there. The caller's
    // stream sums the K slices in the order r, r+1, ...: slice r + s once step s has landed,
    // each GEMM adding the previous result (alternating between two halves of the partial
    // buffer; the last writes out).
    const int64_t k = args.k;
    const int64_t step_bytes = (mr + args.n) * k * eb;
    for (int s = 1; s < world_size_; ++s) {
      const int dest = (rank_ - s + world_size_) % world_size_;
      char* dst = recv + (s - 1) * step_bytes;
      copy_rows_to_peer(world_, dst, k * eb, a + dest * mr * lda * eb, lda * eb, mr, k * eb, dest,
                        side);
      copy_rows_to_peer(world_, dst + mr * k * eb, k * eb, args.b, ldb * eb, args.n, k * eb, dest,
                        side);
      stream_write_signal(world_, recv_flags_.data() + rank_, dest, 1, side);
      tl.mark("sent", side);
    }
    auto sum_after = [&](int s) -> std::pair<void*, int64_t> {
      if (s == world_size_ - 1) return {args.out, ldo};
      return {partial + ((world_size_ - 1 - s) % 2) * chunk_bytes, args.n};
    };
    auto [c0, ld0] = sum_after(0);
    lt_->gemm(a + rank_ * mr * lda * eb, lda, args.b, ldb, c0, ld0, mr, args.n, k, args.dtype,
              args.dtype, stream);
    tl.mark("own slice", stream);
    for (int s = 1; s < world_size_; ++s) {
      const int q = (rank_ + s) % world_size_;
      const char* src = recv + (s - 1) * step_bytes;
      stream_wait_signal(recv_flags_.data() + q, 1, stream);
      auto [prev, ld_prev] = sum_after(s - 1);
      auto [cs, lds] = sum_after(s);
      lt_->gemm(src, k, src + mr * k * eb, k, cs, lds, mr, args.n, k, args.dtype, args.dtype,
                stream, prev, ld_prev);
      tl.mark("slice gemm", stream);
    }
    fork.join();
    tl.mark("end", stream);
    return plan;
  }

  SideStream::Fork fork(*side_, kEvFork, kEvDone, stream);
  abort_if_failing.arm();
  launch_prologue(ctx_, pp, side);
  tl.mark("prologue", side);
  side_->record(kEvReady, side);

  ReduceParams rp;
  rp.out = args.out;
  rp.ldo = ldo;
  rp.slots = recv;
  rp.slot_stride = slot_stride_;
  rp.rows = mr;
  rp.cols = args.n;
  rp.rank = rank_;
  rp.world = world_size_;
  rp.dtype = args.dtype;

  auto weft_gemm = [&](const char* a_rows, int64_t rows, void* c, const gemm::Config* cfg,
                       const gemm::Hooks* hooks) {
    gemm::gemm(gemm_args(a_rows, lda, args.b, ldb, c, args.n, rows, args.n, args.k, args.dtype),
               stream, cfg, hooks);
  };

  // Copy-engine strategies: chunk q of the partial product goes to this rank's slot on rank q,
  // then its flag; the reduction reads the own chunk in place and waits for one flag per source.
  auto send_chunk = [&](int q) {
    copy_to_peer(world_, recv + rank_ * slot_stride_ * eb, partial + q * chunk_bytes,
                 static_cast<size_t>(chunk_bytes), q, side);
    stream_write_signal(world_, recv_flags_.data() + rank_, q, 1, side);
    tl.mark("sent", side);
  };
  auto reduce_copied_chunks = [&] {
    rp.own = partial + rank_ * chunk_bytes;
    rp.ld_own = args.n;
    rp.flags = recv_flags_.data();
    rp.flags_per_src = 1;
    rp.flags_used = 1;
    rp.expected = 1;
  };

  if (strategy == GemmRsStrategy::kFusedCopyEngine) {
    side_->wait(kEvReady, stream);
    gemm::Hooks h;
    h.tile_order = use_order ? order_ : nullptr;
    h.signals = tile_flags_.data();
    h.signal_mode = gemm::SignalMode::kPerRowChunk;
    h.signal_op = gemm::SignalOp::kAdd;
    h.signal_rows = plan.config.block_m;
    h.signal_value = 1;
    h.timeout_ns = ctx_.wait_timeout_ns;
    weft_gemm(a, args.m, partial, &plan.config, &h);
    tl.mark("gemm", stream);
    // Side stream: each destination's rows leave as soon as all their m-blocks are complete.
    for (int s = 1; s < world_size_; ++s) {
      const int q = (rank_ + s) % world_size_;
      const int64_t mb0 = (q * mr) / plan.config.block_m;
      const int64_t mb1 = ((q + 1) * mr - 1) / plan.config.block_m;
      for (int64_t mb = mb0; mb <= mb1; ++mb)
        stream_wait_signal(tile_flags_.data() + mb, static_cast<uint64_t>(grid.tiles_n), side);
      send_chunk(q);
    }
    reduce_copied_chunks();
  } else if (strategy == GemmRsStrategy::kFusedPush) {
    side_->wait(kEvReady, stream);  // peers' slots are free and our flags re-armed
    const gemm::TileGrid g = gemm::tile_grid(plan.config, mr, args.n);
    WEFT_CHECK(g.tiles_m <= mblocks_per_chunk_,
               "GEMM config {} has {} m-blocks per chunk, more than the {} flags sized for "
               "block_m >= {}",
               plan.config.to_string(), g.tiles_m, mblocks_per_chunk_, kMinBlockM);
    for (int s = 1; s < world_size_; ++s) {
      const int q = (rank_ + s) % world_size_;
      const int lsa_q = world_.lsa_rank_of(q);
      gemm::Hooks h;
      h.direct_store = true;
      h.signals = recv_tile_flags_.peer(lsa_q) + rank_ * mblocks_per_chunk_;
      h.signal_mode = gemm::SignalMode::kPerRowChunk;
      h.signal_op = gemm::SignalOp::kAdd;
      h.signal_rows = plan.config.block_m;
      h.signal_value = 1;
      h.timeout_ns = ctx_.wait_timeout_ns;
      weft_gemm(a + q * mr * lda * eb, mr, recv_.peer(lsa_q) + rank_ * slot_stride_,
                &plan.config, &h);
    }
    weft_gemm(a + rank_ * mr * lda * eb, mr, partial, &plan.config, nullptr);
    rp.own = partial;
    rp.ld_own = args.n;
    rp.flags = recv_tile_flags_.data();
    rp.flags_per_src = static_cast<int32_t>(mblocks_per_chunk_);
    rp.flags_used = g.tiles_m;
    rp.expected = static_cast<uint64_t>(g.tiles_n);
  } else if (strategy == GemmRsStrategy::kDecomposedCols) {
    // cuBLAS per column block over all rows; after each block, every peer's rows of it go to
    // that peer's slot (pitched copies, rank+1's first), the flags after the last block's.
    const int64_t w = plan.col_width;
    for (int j = 0; j < plan.col_chunks; ++j) {
      const int64_t n0 = j * w, nj = std::min(w, args.n - n0);
      // (columns n0.. of the product: rows n0.. of an [n, k] B, columns n0.. of a [k, n] one)
      const int64_t b_offset = bl == BLayout::kNK ? n0 * ldb : n0;
      lt_->gemm(a, lda, static_cast<const char*>(args.b) + b_offset * eb, ldb, partial + n0 * eb,
                args.n, args.m, nj, args.k, args.dtype, args.dtype, stream, nullptr, 0, bl);
      tl.mark("column gemm", stream);
      side_->link(kEvChunk, stream, side);
      const bool last = j + 1 == plan.col_chunks;
      for (int s = 1; s < world_size_; ++s) {
        const int q = (rank_ + s) % world_size_;
        copy_rows_to_peer(world_, recv + (rank_ * slot_stride_ + n0) * eb, args.n * eb,
                          partial + (q * mr * args.n + n0) * eb, args.n * eb, mr, nj * eb, q, side);
        if (last) stream_write_signal(world_, recv_flags_.data() + rank_, q, 1, side);
      }
      tl.mark("sent", side);
    }
    side_->wait(kEvReady, stream);
    reduce_copied_chunks();
  } else {
    // Decomposed: cuBLAS per destination chunk (rank+1's first), each sent when computed.
    for (int s = 1; s < world_size_; ++s) {
      const int q = (rank_ + s) % world_size_;
      lt_->gemm(a + q * mr * lda * eb, lda, args.b, ldb, partial + q * chunk_bytes, args.n, mr,
                args.n, args.k, args.dtype, args.dtype, stream, nullptr, 0, bl);
      tl.mark("chunk gemm", stream);
      side_->link(kEvChunk, stream, side);
      send_chunk(q);
    }
    // The reduction's flag waits must follow the re-arm. With two or more chunk GEMMs before it
    // the own chunk waits for it (the prologue's one-block kernel and barrier ran beside the
    // second chunk: long done), so that the reduction directly follows the own chunk's GEMM as
    // its programmatic dependent; with one (two ranks) the barrier and the ranks' skew could still
    // be pending, and the reduction waits instead.
    const bool ready_before_own = world_size_ >= 3;
    if (ready_before_own) side_->wait(kEvReady, stream);
    lt_->gemm(a + rank_ * mr * lda * eb, lda, args.b, ldb, partial + rank_ * chunk_bytes, args.n,
              mr, args.n, args.k, args.dtype, args.dtype, stream, nullptr, 0, bl);
    tl.mark("own gemm", stream);
    if (!ready_before_own) side_->wait(kEvReady, stream);
    reduce_copied_chunks();
  }
  launch_fixed_order_reduce(ctx_, rp, sms_, stream);
  tl.mark("reduction", stream);
  fork.join();
  tl.mark("end", stream);
  return plan;
}

}  // namespace weft::tp
