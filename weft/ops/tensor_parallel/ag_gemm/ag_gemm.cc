#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm.h"

#include <algorithm>

#include "weft/ops/tensor_parallel/ag_gemm/ag_gemm_push.h"
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
#include "weft/runtime/validate.h"

namespace weft::tp {
namespace {

constexpr const char* kCtor = "AgGemm";
constexpr const char* kRun = "AgGemm::run";
constexpr const char* kPlan = "AgGemm::plan";
constexpr const char* kGather = "AgGemm::all_gather";

// Side-stream events.
enum : int { kEvFork = 0, kEvReady = 1, kEvDone = 2, kNumEvents = 3 };

}  // namespace

AgGemm::AgGemm(World& world, const AgGemmOptions& options)
    : world_(world),
      options_(options),
      rank_(world.rank()),
      world_size_(world.size()) {
  // Checked identically on every rank before the first collective allocation.
  check_single_node(world, "AG-GEMM reaches peers by load/store and copy engine", kCtor);
  // First, before any check that could throw on some ranks only.
  barrier_index_ = agree_on_settings(
      world,
      fmt::format("strategy {}, fused_min_waves {}, push_sms {}, chunks_per_rank {}, "
                  "gemm_config '{}', push_gather_max_bytes {}, max_m {}, max_k {}, max_n {}, "
                  "WEFT_AG_GEMM_STRATEGY {}",
                  to_string(options.strategy), options.fused_min_waves, options.push_sms,
                  options.chunks_per_rank, options.gemm_config, options.push_gather_max_bytes,
                  options.max_m, options.max_k, options.max_n,
                  env_setting("WEFT_AG_GEMM_STRATEGY")),
      options.barrier_index, kCtor);
  WEFT_CHECK_ARG_AT(kCtor, options.max_m >= 1 && options.max_k >= 8 && options.max_n >= 1,
                    "max_m, max_k and max_n must be positive (max_k >= 8), got {} {} {}",
                    options.max_m, options.max_k, options.max_n);
  WEFT_CHECK_ARG_AT(kCtor,
                    options.chunks_per_rank >= 1 && options.chunks_per_rank <= kAgMaxChunksPerRank,
                    "chunks_per_rank must be in [1, {}], got {} (a value that does not divide a "
                    "call's m_local falls back to 1 for that call)",
                    kAgMaxChunksPerRank, options.chunks_per_rank);
  check_fused_options(options.fused_min_waves, options.gemm_config, kCtor);
  WEFT_CHECK_ARG_AT(kCtor, options.push_gather_max_bytes >= 0,
                    "push_gather_max_bytes must be >= 0 (0 disables push_gather), got {}",
                    options.push_gather_max_bytes);
  env_strategy_ = ag_gemm_strategy_from_env();
  ctx_ = world.context();
  sms_ = world.min_sm_count();  // the same plan on every rank
  WEFT_CHECK_ARG_AT(kCtor, options.push_sms >= 1 && options.push_sms < sms_,
                    "push_sms must be in [1, {}] (the fused GEMM keeps the other SMs of the {} "
                    "every rank has), got {}",
                    sms_ - 1, sms_, options.push_sms);
  model_ = machine_model_for(sms_, world.min_memory_gbps());

  gather_ = world.alloc<uint16_t>(static_cast<size_t>(options.max_m * options.max_k));
  flags_ = world.alloc_signals(static_cast<size_t>(world_size_) * kAgMaxChunksPerRank);
  const int64_t push_elems =
      std::min(options.max_m * options.max_k, options.push_gather_max_bytes / 2);
  push_ = std::make_unique<PushWorkspace>(world, ceil_div(push_elems, world_size_));
  call_check_ = std::make_unique<CallCheck>(world);

  // Tile order: enough unit ids for the smallest hook tile (128 x 64) on max_m x max_n.
  order_capacity_ = ceil_div(options.max_m, 128) * ceil_div(options.max_n, 64);
  WEFT_CUDA_CHECK(cudaMalloc(&order_, static_cast<size_t>(order_capacity_) * sizeof(int32_t)));
  try {
    lt_ = make_operator_lt_gemm(world);
    side_ = std::make_unique<SideStream>(kNumEvents);
    checker_ = std::make_unique<DevicePointerChecker>(world.device(), kRememberedPointers);
    prepare_ag_push_kernel();
  } catch (...) {
    cudaFree(order_);
    throw;
  }
}

AgGemm::~AgGemm() {
  last_call_.wait();
  side_.reset();  // waits for the side stream
  if (order_) cudaFree(order_);
}

void* AgGemm::input_slot(int64_t m_local, int64_t k) const {
  WEFT_CHECK_ARG_AT(
      "AgGemm::input_slot",
      m_local >= 1 && k >= 1 && m_local * world_size_ * k <= static_cast<int64_t>(gather_.size()),
      "m_local = {}, k = {} does not fit the workspace", m_local, k);
  return gather_.data() + rank_ * m_local * k;
}

const void* AgGemm::gathered_a() const { return gather_.data(); }

void AgGemm::copy_gathered_a(void* dst, int64_t ld_dst, int64_t rows, int64_t cols,
                             cudaStream_t stream) {
  WEFT_CHECK_ARG_AT("AgGemm::copy_gathered_a",
                    rows >= 0 && cols >= 1 && ld_dst >= cols &&
                        rows * cols <= static_cast<int64_t>(gather_.size()),
                    "{} x {} elements (leading dimension {}) do not fit the gathered A's {}", rows,
                    cols, ld_dst, gather_.size());
  if (rows == 0) return;
  const size_t row_bytes = static_cast<size_t>(cols) * 2;
  WEFT_CUDA_CHECK(cudaMemcpy2DAsync(dst, static_cast<size_t>(ld_dst) * 2, gather_.data(), row_bytes,
                                    row_bytes, static_cast<size_t>(rows), cudaMemcpyDeviceToDevice,
                                    stream));
  WEFT_CUDA_CHECK(last_call_.mark(stream, stream_capturing(stream, "AgGemm::copy_gathered_a")));
}

AgGemmPlan AgGemm::plan(const AgGemmArgs& args) const {
  validate_ag_gemm_shape(args, world_size_, static_cast<int64_t>(gather_.size()), kPlan);
  return plan_checked(args);
}

AgGemmPlan AgGemm::plan_checked(const AgGemmArgs& args) const {
  AgGemmProblem p;
  p.m_local = args.m_local;
  p.n = args.n;
  p.k = args.k;
  p.dtype = args.dtype;
  p.b_layout = args.b_layout;
  p.world = world_size_;
  p.sms = sms_;
  return plan_ag_gemm(p, requested_strategy(args.strategy, options_.strategy, env_strategy_),
                      options_, model_);
}

void AgGemm::send_chunks_copy_engine(const AgGemmArgs& a, int chunks, cudaStream_t side) {
  const int64_t eb = element_bytes(a.dtype);
  const int64_t lda = a.lda ? a.lda : a.k;
  const int64_t row_bytes = a.k * eb;
  const int64_t sub = a.m_local / chunks;
  char* gather = reinterpret_cast<char*>(gather_.data());
  const char* src = static_cast<const char*>(a.a);
  // Ring schedule: at step s every rank sends to rank - s (one peer at a time per copy engine,
  // the pattern that reaches the one-peer rate), so each receives from rank + s.
  for (int s = 1; s < world_size_; ++s) {
    const int q = (rank_ - s + world_size_) % world_size_;
    for (int j = 0; j < chunks; ++j) {
      const int64_t r0 = j * sub;
      char* dst = gather + (rank_ * a.m_local + r0) * row_bytes;
      copy_rows_to_peer(world_, dst, row_bytes, src + r0 * lda * eb, lda * eb, sub, row_bytes, q,
                        side);
      stream_write_signal(world_, flags_.data() + rank_ * chunks + j, q, 1, side);
    }
  }
}

bool AgGemm::check_a_against_workspace(const void* a, int64_t lda, int64_t m_local, int64_t k,
                                       DType dtype, const char* where) const {
  const void* slot = gather_.data() + rank_ * m_local * k;
  const bool zero_copy = a == slot && lda == k;
  const size_t a_bytes = static_cast<size_t>(((m_local - 1) * lda + k) * element_bytes(dtype));
  WEFT_CHECK_ARG_AT(where,
                    zero_copy || !ranges_overlap(a, a_bytes, gather_.data(), gather_.bytes()),
                    "A ({}) lies in the AG-GEMM workspace but is not input_slot({}, {}) = {} "
                    "with lda = k",
                    a, m_local, k, slot);
  return zero_copy;
}

namespace {

// What the ranks of an AG-GEMM call (`op`: "ag_gemm" for run(), "gather" for all_gather()) must
// agree on (checked on the device before the call completes): the rows exchanged (m_local x k)
// and how. fused_ce and the decomposed strategies gather by copy engine, a flag set to 1 per
// chunk (`chunks_per_rank` of them; 1 in decomposed), so they share a protocol; fused_push's SMs
// count each chunk's flag up to its push SMs; push_gather's kernel splits the rows into work
// items. N is each rank's own.
dev::CallSignature ag_gemm_signature(const char* op, const AgGemmPlan& plan, int64_t m_local,
                                     int64_t k, DType dtype) {
  const char* protocol = "ce_ring";
  uint64_t options = static_cast<uint64_t>(plan.chunks_per_rank);
  if (plan.strategy == AgGemmStrategy::kFusedPush) {
    protocol = "sm_push";
    options |= static_cast<uint64_t>(plan.push_sms) << 16;
  } else if (plan.strategy == AgGemmStrategy::kPushGather) {
    protocol = "push";
    options = static_cast<uint64_t>(plan.push_slice_elems);
  }
  return tp_call_signature(op, protocol, dtype, m_local, 0, k, options);
}

}  // namespace

void AgGemm::push_gather(const void* a, int64_t lda, int64_t m_local, int64_t k, DType dtype,
                         const AgGemmPlan& plan, const dev::CallSignature& signature,
                         cudaStream_t stream) {
  ArParams p = ar_params(a, gather_.data(), k, k, m_local * world_size_ * k, m_local * k,
                         plan.push_slice_elems, plan.push_slices, dtype);
  p.gather_only = 1;
  p.src_ld = lda;
  push_->attach(p, "push_gather", signature);
  launch_allreduce(ctx_, p, plan.push_blocks, stream);
}

// Both exchanges, whatever the plan (where there is one): the peers are in one of them, and a
// peer that abandons too, perhaps at another check (a shape where this rank failed a pointer),
// steps both on alike, so ranks that all fail, however, stay in step.
void AgGemm::abandon(cudaStream_t stream) noexcept {
  abandon_exchanges(world_, ctx_, abandon_fence_, last_call_, *push_, *call_check_, barrier_index_,
                    stream);
}

PrologueParams AgGemm::ready_flags_prologue(int chunks, const dev::CallSignature& signature) const {
  PrologueParams pp;
  pp.rearm[0].flags = flags_.data();
  pp.rearm[0].count = world_size_ * chunks;
  pp.rearm[0].ready_begin = rank_ * chunks;
  pp.rearm[0].ready_end = (rank_ + 1) * chunks;
  pp.n_rearm = 1;
  pp.barrier = world_size_ > 1 ? 1 : 0;
  pp.barrier_index = barrier_index_;
  call_check_->attach(pp, signature);
  return pp;
}

const char* AgGemm::all_gather(const AgGatherArgs& args, cudaStream_t stream) {
  checks_or_abandon(  // the shape
      world_, stream,
      [&] {
        validate_ag_gather_args(args, world_size_, static_cast<int64_t>(gather_.size()), kGather);
      },
      [&] { abandon(stream); });
  const int64_t eb = element_bytes(args.dtype);
  const int64_t lda = args.lda ? args.lda : args.k;
  // push_gather where run() would take it for these rows (whatever the GEMM); a request for
  // another strategy (options, environment) means the copy engines, and so does a request for
  // push_gather where it does not fit (as run() falls back).
  AgGemmProblem problem;
  problem.m_local = args.m_local;
  problem.k = args.k;
  problem.dtype = args.dtype;
  problem.world = world_size_;
  problem.sms = sms_;
  const AgGemmStrategy requested =
      requested_strategy(AgGemmStrategy::kAuto, options_.strategy, env_strategy_);
  const bool push =
      push_gather_fits(problem, options_) &&
      (requested == AgGemmStrategy::kAuto || requested == AgGemmStrategy::kPushGather);
  bool capturing = false, zero_copy = false;
  checks_or_abandon(  // this rank's own checks (see run())
      world_, stream,
      [&] {
        check_no_pending_cuda_error(kGather);
        capturing = stream_capturing(stream, kGather);
        checker_->check(args.a, "A", 16, kGather, capturing);
        zero_copy =
            check_a_against_workspace(args.a, lda, args.m_local, args.k, args.dtype, kGather);
      },
      [&] { abandon(stream); });
  abandon_fence_.before_call(world_, stream);  // after an abandoned call only
  const LastCall::Scope mark_end = last_call_.at_scope_exit(stream, capturing);
  AbortIfUnwound abort_if_failing(world_, capturing, kGather);
  abort_if_failing.arm();  // what follows is queued work the peers wait for
  char* gather = reinterpret_cast<char*>(gather_.data());
  char* own_rows = gather + rank_ * args.m_local * args.k * eb;
  if (world_size_ == 1) {
    if (!zero_copy)
      launch_copy_rows(own_rows, args.k * eb, args.a, lda * eb, args.m_local, args.k * eb, sms_,
                       stream);
    return "local_copy";
  }

  if (push) {
    AgGemmPlan plan;
    const PushSplit split = push_split(args.m_local * args.k, sms_);
    plan.push_blocks = split.blocks;
    plan.push_slice_elems = split.slice_elems;
    plan.push_slices = split.slices;
    plan.strategy = AgGemmStrategy::kPushGather;
    push_gather(args.a, lda, args.m_local, args.k, args.dtype, plan,
                ag_gemm_signature("gather", plan, args.m_local, args.k, args.dtype), stream);
    return "push_gather";
  }

  // Copy engines: the prologue re-arms this rank's ready flags and passes the device barrier
  // (side stream), the chunks go out in the ring schedule, the own rows are copied locally (a
  // copy kernel, as in run(), unless A is the input slot), and
  // the caller's stream waits for every peer's flag.
  AgGemmPlan copy_engines;  // decomposed's exchange: one chunk per rank by copy engine
  copy_engines.strategy = AgGemmStrategy::kDecomposedPerChunk;
  const PrologueParams pp = ready_flags_prologue(
      1, ag_gemm_signature("gather", copy_engines, args.m_local, args.k, args.dtype));
  cudaStream_t side = side_->get();
  SideStream::Fork fork(*side_, kEvFork, kEvDone, stream);
  launch_prologue(ctx_, pp, side);
  side_->record(kEvReady, side);
  AgGemmArgs sends;
  sends.a = args.a;
  sends.lda = lda;
  sends.m_local = args.m_local;
  sends.k = args.k;
  sends.dtype = args.dtype;
  send_chunks_copy_engine(sends, 1, side);
  if (!zero_copy)
    launch_copy_rows(own_rows, args.k * eb, args.a, lda * eb, args.m_local, args.k * eb, sms_,
                     stream);
  side_->wait(kEvReady, stream);  // the stream waits below must see re-armed flags
  for (int q = 0; q < world_size_; ++q)
    if (q != rank_) stream_wait_signal(flags_.data() + q, 1, stream);
  fork.join();
  return "copy_engine";
}

AgGemmPlan AgGemm::run(const AgGemmArgs& args, cudaStream_t stream) {
  AgGemmPlan plan;
  checks_or_abandon(  // the shape and the plan
      world_, stream,
      [&] {
        validate_ag_gemm_args(args, world_size_, static_cast<int64_t>(gather_.size()), kRun);
        plan = plan_checked(args);
      },
      [&] { abandon(stream); });
  const int64_t eb = element_bytes(args.dtype);
  const int64_t lda = args.lda ? args.lda : args.k;
  const int64_t ldb = b_ld(args.ldb, args.n, args.k, args.b_layout);
  const int64_t ldc = args.ldc ? args.ldc : args.n;
  const int64_t M = args.m_local * world_size_;
  const AgGemmStrategy strategy = plan.strategy;
  const dev::CallSignature signature =
      ag_gemm_signature("ag_gemm", plan, args.m_local, args.k, args.dtype);

  bool capturing = false, zero_copy = false;
  // This rank's own checks; should one fail here only, the peers learn it where they compare
  // signatures (the prologue's barrier or the push kernel's first flag).
  checks_or_abandon(
      world_, stream,
      [&] {
        capturing = check_operand_pointers(*checker_, stream, args.a, args.b, args.c, "C", kRun);
        // C and B must stay out of the workspace (peers write there during the call).
        zero_copy = check_a_against_workspace(args.a, lda, args.m_local, args.k, args.dtype, kRun);
        const size_t ws_bytes = gather_.bytes();
        const size_t c_bytes = static_cast<size_t>(((M - 1) * ldc + args.n) * eb);
        WEFT_CHECK_ARG_AT(
            kRun,
            !ranges_overlap(args.c, c_bytes, gather_.data(), ws_bytes) &&
                !ranges_overlap(args.c, c_bytes, push_->rx().data(), push_->rx().bytes()),
            "C ({}) overlaps the AG-GEMM workspace", static_cast<const void*>(args.c));
        const size_t b_bytes =
            static_cast<size_t>(b_span_bytes(args.n, args.k, ldb, args.b_layout, args.dtype));
        WEFT_CHECK_ARG_AT(kRun, !ranges_overlap(args.b, b_bytes, gather_.data(), ws_bytes),
                          "B ({}) overlaps the AG-GEMM workspace", args.b);
      },
      [&] { abandon(stream); });
  abandon_fence_.before_call(world_, stream);  // after an abandoned call only
  const LastCall::Scope mark_end = last_call_.at_scope_exit(stream, capturing);
  AbortIfUnwound abort_if_failing(world_, capturing, kRun);
  abort_if_failing.arm();  // what follows is queued work the peers wait for
  if (strategy == AgGemmStrategy::kPushGather) {
    // One kernel gathers A into the workspace (epoch-based: no prologue, no barrier), then one
    // GEMM over the gathered rows.
    push_gather(args.a, lda, args.m_local, args.k, args.dtype, plan, signature, stream);
    lt_->gemm(gather_.data(), args.k, args.b, ldb, args.c, ldc, M, args.n, args.k, args.dtype,
              args.dtype, stream, nullptr, 0, args.b_layout);
    return plan;
  }
  const bool fused =
      strategy == AgGemmStrategy::kFusedCopyEngine || strategy == AgGemmStrategy::kFusedPush;
  const int chunks = plan.chunks_per_rank;
  cudaStream_t side = side_->get();
  char* gather = reinterpret_cast<char*>(gather_.data());
  char* c = static_cast<char*>(args.c);

  // Prologue (side stream): re-arm this rank's ready flags (own chunks: always ready), write the
  // tile order, barrier with every rank.
  PrologueParams pp = ready_flags_prologue(chunks, signature);
  bool use_order = false;
  if (fused) {
    const gemm::TileGrid grid = gemm::tile_grid(plan.config, M, args.n);
    if (grid.num_units <= order_capacity_) {
      pp.order = ag_gemm_tile_order(grid, args.m_local, world_size_, rank_,
                                    plan.config.raster_group);
      use_order = pp.order.valid();
    }
    if (!use_order)
      plan.reason += grid.num_units > order_capacity_
                         ? "; no tile order (grid larger than max_n / max_m allow)"
                         : "; no tile order (more m-blocks or ranks than a tile order holds)";
    if (use_order) pp.order_out = order_;
  }

  SideStream::Fork fork(*side_, kEvFork, kEvDone, stream);
  launch_prologue(ctx_, pp, side);
  side_->record(kEvReady, side);

  // This rank's chunk into the workspace (fused: the GEMM reads A from there; decomposed: only
  // when the gathered A is wanted).
  const bool local_copy = !zero_copy && (fused || args.gather_a);
  if (local_copy && fused)
    launch_copy_rows(gather + rank_ * args.m_local * args.k * eb, args.k * eb, args.a, lda * eb,
                     args.m_local, args.k * eb, sms_, stream);

  if (fused) {
    const gemm::GemmArgs g =
        gemm_args(gather, args.k, args.b, ldb, args.c, ldc, M, args.n, args.k, args.dtype);
    gemm::Hooks h;
    h.tile_order = use_order ? order_ : nullptr;
    h.wait_flags = flags_.data();
    h.wait_chunk_rows = args.m_local / chunks;
    h.timeout_ns = ctx_.wait_timeout_ns;
    h.give_up = ctx_.abort_any;  // a rank on this host that gave up ends the chunk waits
    if (strategy == AgGemmStrategy::kFusedCopyEngine) {
      h.wait_expected = 1;
      send_chunks_copy_engine(args, chunks, side);
    } else {
      h.wait_expected = static_cast<uint64_t>(plan.push_sms);
      AgPushParams pp2;
      pp2.a = static_cast<const char*>(args.a);
      pp2.lda_bytes = lda * eb;
      pp2.row_bytes = args.k * eb;
      pp2.m_local = args.m_local;
      pp2.gather = gather;
      pp2.flags = flags_.data();
      pp2.chunks_per_rank = chunks;
      if (world_size_ > 1) launch_ag_push(ctx_, pp2, plan.push_sms, side);
    }
    side_->wait(kEvReady, stream);  // flags re-armed and order written before the GEMM reads them
    gemm::gemm(g, stream, &plan.config, &h);
  } else {
    // Decomposed: cuBLAS on the own chunk (in place) while the copy engines gather.
    send_chunks_copy_engine(args, 1, side);
    lt_->gemm(args.a, lda, args.b, ldb, c + rank_ * args.m_local * ldc * eb, ldc, args.m_local,
              args.n, args.k, args.dtype, args.dtype, stream, nullptr, 0, args.b_layout);
    side_->wait(kEvReady, stream);  // the stream waits below must see re-armed flags
    auto gemm_rows = [&](int first_rank, int ranks) {
      if (ranks <= 0) return;
      for (int q = first_rank; q < first_rank + ranks; ++q)
        stream_wait_signal(flags_.data() + q, 1, stream);
      lt_->gemm(gather + first_rank * args.m_local * args.k * eb, args.k, args.b, ldb,
                c + first_rank * args.m_local * ldc * eb, ldc, ranks * args.m_local, args.n, args.k,
                args.dtype, args.dtype, stream, nullptr, 0, args.b_layout);
    };
    if (strategy == AgGemmStrategy::kDecomposedPerChunk) {
      for (int s = 1; s < world_size_; ++s) gemm_rows((rank_ + s) % world_size_, 1);
    } else {
      gemm_rows(rank_ + 1, world_size_ - rank_ - 1);  // arrive first (ring order)
      gemm_rows(0, rank_);
    }
    if (local_copy)
      launch_copy_rows(gather + rank_ * args.m_local * args.k * eb, args.k * eb, args.a, lda * eb,
                       args.m_local, args.k * eb, sms_, stream);
  }
  fork.join();
  return plan;
}

}  // namespace weft::tp
