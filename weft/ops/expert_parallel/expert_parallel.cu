#include "weft/ops/expert_parallel/expert_parallel.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "weft/ops/expert_parallel/ep_kernels.cuh"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/mapped_record.h"
#include "weft/runtime/validate.h"

namespace weft::ops {
namespace {

constexpr const char* kCtor = "ExpertParallel";
constexpr const char* kDispatch = "ExpertParallel::dispatch";
constexpr const char* kCombine = "ExpertParallel::combine";

template <class Kernel>
void prepare_kernel(Kernel kernel, uint32_t smem_bytes, int grid, int sm_count,
                    bool must_be_resident, const char* name) {
  // The limit is per kernel and process, and other operators may launch this kernel with more:
  // only ever raise it.
  cudaFuncAttributes attr{};
  WEFT_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  if (static_cast<int>(smem_bytes) > attr.maxDynamicSharedSizeBytes)
    WEFT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes)));
  if (!must_be_resident) return;
  int per_sm = 0;
  WEFT_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, ep::kThreads, smem_bytes));
  WEFT_CHECK_ARG_AT(
      kCtor, static_cast<long long>(per_sm) * sm_count >= grid,
      "the {} kernel needs {} blocks resident at once (its blocks wait for each other's "
      "peers), but this GPU holds {} ({} SMs x {} per SM with {} bytes of shared "
      "memory); lower num_sms",
      name, grid, per_sm * sm_count, sm_count, per_sm, smem_bytes);
}

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// A kernel's static shared memory (its __shared__ variables).
template <class Kernel>
uint32_t static_smem(Kernel kernel) {
  cudaFuncAttributes attr{};
  WEFT_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  return static_cast<uint32_t>(attr.sharedSizeBytes);
}

uint32_t ll_dispatch_static_smem() {
  return std::max(static_smem(ep::ep_ll_dispatch_kernel<true>),
                  static_smem(ep::ep_ll_dispatch_kernel<false>));
}

// Pointers remembered as validated: a small ring, the usual case is the same few buffers every
// call.
constexpr size_t kRememberedPointers = 5;

}  // namespace

void ExpertParallel::check_this_gpu() {
  WEFT_CHECK_ARG_AT(
      kCtor, world_.lsa_size() == world_.size(),
      "expert parallelism reaches peers by load/store, so all {} ranks must be on one "
      "node; this node holds {} of them (the cross-node path is not written)",
      world_.size(), world_.lsa_size());
  const bool ll = plan_.config.mode == EpMode::low_latency;
  if (ll) {
    // (The plan sized the row buffers of the TMA receive for this GPU.) The scan's tables grow with
    // E, k and W (up to ~186 KB at E = 1024, k = 32, W = 32).
    const uint32_t need =
        std::max(plan_.smem(ep::EpKernel::ll_dispatch).bytes + ll_dispatch_static_smem(),
                 plan_.smem(ep::EpKernel::combine).bytes + static_smem(ep::ep_combine_kernel<2>));
    WEFT_CHECK_ARG_AT(kCtor, need <= smem_optin_,
                      "low-latency mode needs {} bytes of shared memory per block for "
                      "num_experts = {}, topk = {} and {} ranks; this GPU offers {}",
                      need, plan_.config.num_experts, plan_.config.topk, plan_.world, smem_optin_);
  } else {
    // The throughput data kernel moves rows by TMA through ~227 KiB of shared memory per block.
    const uint32_t need = plan_.smem(ep::EpKernel::tp_dispatch).bytes +
                          std::max(static_smem(ep::ep_tp_dispatch_kernel<true>),
                                   static_smem(ep::ep_tp_dispatch_kernel<false>));
    WEFT_CHECK_ARG_AT(kCtor, cc_major_ >= 9 && smem_optin_ >= need,
                      "throughput mode needs an sm_90 GPU with {} bytes of shared memory per "
                      "block (TMA row copies); this GPU is sm_{}x with {} bytes",
                      need, cc_major_, smem_optin_);
  }
  const int grid = plan_.grid;
  if (ll) {
    const uint32_t s = plan_.smem(ep::EpKernel::ll_dispatch).bytes;
    prepare_kernel(ep::ep_ll_dispatch_kernel<true>, s, grid, sm_count_, true, "dispatch");
    prepare_kernel(ep::ep_ll_dispatch_kernel<false>, s, grid, sm_count_, true, "dispatch");
  } else {
    prepare_kernel(ep::ep_layout_kernel, plan_.smem(ep::EpKernel::layout).bytes, 1, sm_count_,
                   false, "layout");
    const uint32_t s = plan_.smem(ep::EpKernel::tp_dispatch).bytes;
    prepare_kernel(ep::ep_tp_dispatch_kernel<true>, s, grid, sm_count_, true, "dispatch");
    prepare_kernel(ep::ep_tp_dispatch_kernel<false>, s, grid, sm_count_, true, "dispatch");
  }
  prepare_kernel(ep::ep_combine_kernel<2>, plan_.smem(ep::EpKernel::combine).bytes, grid,
                 sm_count_, true, "combine");
  const size_t need = plan_.symmetric_bytes();
  const size_t free_bytes = world_.heap().capacity() - world_.heap().bytes_in_use();
  WEFT_CHECK_ARG_AT(
      kCtor, need <= free_bytes,
      "this configuration ({} mode, max_tokens {}, hidden {}, {} ranks) needs {:.1f} MiB "
      "of symmetric heap, but {:.1f} MiB of {:.1f} MiB are free; create the World with "
      "a larger heap (WorldOptions::heap_bytes or WEFT_HEAP_BYTES, e.g. {}M)",
      to_string(plan_.config.mode), plan_.config.max_tokens, plan_.config.hidden, plan_.world,
      need / 1048576.0, free_bytes / 1048576.0, world_.heap().capacity() / 1048576.0,
      (world_.heap().bytes_in_use() + need) / 1048576 + 64);
}

ExpertParallel::ExpertParallel(World& world, const EpConfig& config)
    : world_(world), checker_(world.device(), kRememberedPointers) {
  // First, before any check that could throw on some ranks only: ranks built with different
  // configurations would read each other's staging with different layouts (a top-k of 8 and of 9
  // even size every symmetric buffer alike).
  world.check_same_settings(
      fmt::format("mode {}, num_experts {}, hidden {}, topk {}, max_tokens {}, num_sms {}, "
                  "send_sms {}, max_recv_pairs {}",
                  to_string(config.mode), config.num_experts, config.hidden, config.topk,
                  config.max_tokens, config.num_sms, config.send_sms, config.max_recv_pairs),
      kCtor);
  WEFT_CUDA_CHECK(
      cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, world.device()));
  int optin = 0;
  WEFT_CUDA_CHECK(
      cudaDeviceGetAttribute(&cc_major_, cudaDevAttrComputeCapabilityMajor, world.device()));
  WEFT_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, world.device()));
  smem_optin_ = static_cast<uint32_t>(optin);
  // The plan comes from the job's smallest SM count (World::min_sm_count, the same on every rank),
  // so every rank derives the same grids and symmetric sizes or rejects the configuration alike.
  // Only the low-latency row buffers follow this GPU (bulk copies, sm_90, and room beside the
  // dispatch kernel's static shared memory under its opt-in limit); they are local to the rank.
  // The checks below read this GPU's attributes (shared memory, compute capability, residency),
  // so on a node of mixed GPU models one rank may reject what another accepts: World::agree makes
  // every rank throw then, before the first collective allocation, instead of leaving the others
  // waiting at it.
  const uint32_t ll_static = ll_dispatch_static_smem();
  plan_ = plan_expert_parallel(
      config, world.size(), world.min_sm_count(),
      cc_major_ >= 9 && smem_optin_ > ll_static ? smem_optin_ - ll_static : 0u);
  // This rank's own memory comes first and inside the agreement too: a rank that cannot get it
  // (a GPU with less free memory than its peers) makes every rank throw here, before the
  // symmetric allocations, instead of leaving the others with an operator whose first call waits
  // for it.
  try {
    world.agree([&] {
      check_this_gpu();
      allocate_local();
    });
  } catch (...) {
    release_local();
    throw;
  }
  const bool ll = plan_.config.mode == EpMode::low_latency;

  // Symmetric buffers: same calls, same order on every rank. Low latency starts with every
  // staged fp8 byte and scale poisoned (kFp8Poison4: a receiver reads an fp8 row's arrival from
  // its bytes) and every metadata word 0 (a tag no epoch has: epoch_tag).
  // (The symmetric buffers free themselves when a later one throws; the local ones do not.)
  try {
    if (ll) {
      st_rows_ = world.alloc_filled<char>(plan_.st_rows_bytes, ep::kFp8Poison4 & 0xff);
      st_scales_ = world.alloc_filled<float>(plan_.st_scales_floats, ep::kScalePoison & 0xff);
      st_meta_ = world.alloc_filled<int32_t>(plan_.st_meta_ints, 0);
    } else {
      st_rows_ = world.alloc<char>(plan_.st_rows_bytes);
      st_scales_ = world.alloc<float>(plan_.st_scales_floats);
      st_meta_ = world.alloc<int32_t>(plan_.st_meta_ints);
    }
    st_counts_ = world.alloc_signals(plan_.st_count_words);  // zeroed: no stale tag
    cb_rows_ = world.alloc<char>(plan_.cb_rows_bytes);
    signals_ = world.alloc_signals(plan_.signal_count);
  } catch (...) {
    release_local();
    throw;
  }

  ctx_ = world.context();
}

// The rank-local buffers (one device allocation cut into pieces), the error record, the pinned
// counts, the events and the side stream. On a throw the caller releases what was allocated.
void ExpertParallel::allocate_local() {
  const EpConfig& c = plan_.config;
  const bool ll = c.mode == EpMode::low_latency;
  const size_t W = plan_.world, el = plan_.experts_local, T = c.max_tokens;
  const size_t cap = static_cast<size_t>(plan_.capacity);
  const size_t cols = static_cast<size_t>(c.num_experts) + W;
  const size_t chunks = static_cast<size_t>(plan_.max_chunks);
  struct Piece {
    void** ptr;
    size_t bytes;
  };
  const Piece pieces[] = {
      {&recv_x_, cap * plan_.row_stride},
      {reinterpret_cast<void**>(&recv_scales_), cap * plan_.scale_groups * sizeof(float)},
      {reinterpret_cast<void**>(&recv_src_), cap * sizeof(EpPairSource)},
      {reinterpret_cast<void**>(&counts_block_),
       ep::counts_block_ints(plan_.experts_local, plan_.world) * sizeof(int32_t)},
      {reinterpret_cast<void**>(&handle_rows_), plan_.handle_ints_total * sizeof(int32_t)},
      {reinterpret_cast<void**>(&home_dmask_), T * sizeof(uint32_t)},
      {reinterpret_cast<void**>(&ready_), el * sizeof(uint64_t)},
      {reinterpret_cast<void**>(&arrived_), el * sizeof(uint32_t)},
      {reinterpret_cast<void**>(&state_), sizeof(ep::EpState)},
      {reinterpret_cast<void**>(&lay_dslot_), ll ? 0 : T * W * sizeof(int32_t)},
      {reinterpret_cast<void**>(&lay_wrank_), ll ? 0 : T * c.topk * sizeof(int32_t)},
      {reinterpret_cast<void**>(&lay_chunk_hist_), ll ? 0 : chunks * cols * sizeof(int32_t)},
      {reinterpret_cast<void**>(&lay_chunk_base_), ll ? 0 : chunks * cols * sizeof(int32_t)},
      {reinterpret_cast<void**>(&lay_pos_base_), ll ? 0 : W * el * sizeof(int32_t)},
  };
  size_t total = 0;
  for (const Piece& p : pieces) total += align_up(p.bytes, 256);
  WEFT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&local_), total));
  WEFT_CUDA_CHECK(cudaMemset(local_, 0, total));
  size_t at = 0;
  for (const Piece& p : pieces) {
    *p.ptr = p.bytes > 0 ? local_ + at : nullptr;
    at += align_up(p.bytes, 256);
  }
  ep::EpState initial{};
  initial.dispatch_epoch = 1;
  initial.combine_epoch = 1;
  WEFT_CUDA_CHECK(cudaMemcpy(state_, &initial, sizeof(initial), cudaMemcpyHostToDevice));

  alloc_mapped_record(error_, error_dev_);
  WEFT_CUDA_CHECK(
      cudaMallocHost(reinterpret_cast<void**>(&host_counts_),
                     ep::counts_block_ints(plan_.experts_local, plan_.world) * sizeof(int32_t)));
  WEFT_CUDA_CHECK(cudaEventCreateWithFlags(&counts_event_, cudaEventDisableTiming));
  if (!ll) {
    WEFT_CUDA_CHECK(cudaEventCreateWithFlags(&fork_event_, cudaEventDisableTiming));
    WEFT_CUDA_CHECK(cudaStreamCreateWithFlags(&side_stream_, cudaStreamNonBlocking));
  }
  // The memsets and the state copy above ran on the legacy stream, which does not order the
  // first call on a non-blocking stream after them.
  WEFT_CUDA_CHECK(cudaDeviceSynchronize());
  // The low-latency fp8 receive order (receive_rows_early_ll), as measured: rows looked for
  // while the layout is derived gained 0.4 us on 2x H200 and lost 0.8 us on 4x H200 (fp8 T =
  // 128; docs/perf.md, twenty-second pass), so only 2 ranks take it by default.
  ll_layout_first_ = plan_.world > 2;
  if (const char* t = std::getenv("WEFT_EP_LL_LAYOUT_FIRST"); t != nullptr)
    ll_layout_first_ = std::strcmp(t, "1") == 0;
  if (const char* t = std::getenv("WEFT_EP_LL_PACK"); t != nullptr) ll_pack_ = std::atoi(t);
  if (const char* t = std::getenv("WEFT_EP_TRACE"); t != nullptr && std::strcmp(t, "1") == 0) {
    trace_blocks_ = std::max(plan_.grid, plan_.max_chunks);
    const size_t bytes = 2 * static_cast<size_t>(trace_blocks_) * ep::kTraceSlots * 8;
    WEFT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&trace_), bytes));
    WEFT_CUDA_CHECK(cudaMemset(trace_, 0, bytes));
  }
}

ExpertParallel::~ExpertParallel() {
  // Every kernel waits for all the writes peers make into this rank's buffers during that call
  // (rows, counts, flags, hellos), so once our last call finished nobody writes into them. (After
  // an fp8 mismatch, and into a combine this rank abandoned, which receives nothing, rows from the
  // peers land unwaited-for, but only while those peers' kernels run: each of them waits for its
  // own here, before the collective step of any operator built in this memory next.)
  last_call_.wait();
  release_local();
}

void ExpertParallel::release_local() noexcept {
  if (local_) cudaFree(local_);
  if (error_) cudaFreeHost(error_);
  if (host_counts_) cudaFreeHost(host_counts_);
  if (trace_) cudaFree(trace_);
  trace_ = nullptr;
  if (counts_event_) cudaEventDestroy(counts_event_);
  if (fork_event_) cudaEventDestroy(fork_event_);
  if (side_stream_) cudaStreamDestroy(side_stream_);
  fork_event_ = nullptr;
  side_stream_ = nullptr;
  local_ = nullptr;
  error_ = nullptr;
  error_dev_ = nullptr;
  host_counts_ = nullptr;
  counts_event_ = nullptr;
}

void ExpertParallel::check_errors() {
  const std::optional<ep::EpError> e = take_mapped_record(error_);
  if (e) throw InvalidArgument("ExpertParallel::check_errors", describe_ep_error(*e, plan_));
}

// A report an earlier kernel left on this rank is thrown by the next dispatch()/combine() only
// after that call is enqueued: only this rank knows of it, and its peers are entering the same
// collective call, so throwing before enqueuing would leave them waiting for this rank.
void ExpertParallel::throw_earlier_error(const std::optional<ep::EpError>& e, const char* call) {
  if (!e) return;
  throw InvalidArgument(call, fmt::format("{} (reported by this call, which was enqueued "
                                          "nonetheless so that the peers' calls complete)",
                                          describe_ep_error(*e, plan_)));
}

uint64_t* ExpertParallel::arm_trace(int which, bool capturing, cudaStream_t stream) {
  if (trace_ == nullptr || capturing) return nullptr;
  const size_t slots = static_cast<size_t>(trace_blocks_) * ep::kTraceSlots;
  uint64_t* t = trace_ + which * slots;
  WEFT_CUDA_CHECK(cudaMemsetAsync(t, 0, slots * sizeof(uint64_t), stream));
  return t;
}

EpHook ExpertParallel::hook() const {
  EpHook h;
  h.expert_ready = ready_;
  h.epoch = state_ != nullptr ? &state_->hook_epoch : nullptr;
  return h;
}

EpDispatchResult ExpertParallel::last_result() const {
  EpDispatchResult r;
  r.x = recv_x_;
  r.scales = last_fp8_ ? recv_scales_ : nullptr;
  r.sources = recv_src_;
  r.expert_counts = counts_block_ + ep::cb_expert_counts(plan_.experts_local);
  r.expert_offsets = counts_block_ + ep::cb_expert_offsets(plan_.experts_local);
  r.source_rows = counts_block_ + ep::cb_source_rows(plan_.experts_local);
  r.capacity = plan_.capacity;
  r.fp8 = last_fp8_;
  r.hook = hook();
  return r;
}

EpReceiveBuffers ExpertParallel::receive_buffers() const {
  EpReceiveBuffers b;
  b.rows = recv_x_;
  b.row_bytes = plan_.row_stride;
  b.scales = recv_scales_;
  b.sources = recv_src_;
  b.counts_block = counts_block_;
  b.counts_block_ints = ep::counts_block_ints(plan_.experts_local, plan_.world);
  b.capacity = plan_.capacity;
  return b;
}

void ExpertParallel::launch_dispatch(const ep::EpDispatchParams& p, bool fp8,
                                     cudaStream_t stream) {
  const dim3 block(ep::kThreads);
  if (plan_.config.mode == EpMode::low_latency) {
    const uint32_t smem = plan_.smem(ep::EpKernel::ll_dispatch).bytes;
    if (fp8)
      ep::ep_ll_dispatch_kernel<true><<<plan_.grid, block, smem, stream>>>(ctx_, p);
    else
      ep::ep_ll_dispatch_kernel<false><<<plan_.grid, block, smem, stream>>>(ctx_, p);
    WEFT_CHECK_LAUNCH();
    return;
  }
  const int chunks = std::max(1, (p.T + ep::kScanChunk - 1) / ep::kScanChunk);
  ep::ep_layout_kernel<<<chunks, block, plan_.smem(ep::EpKernel::layout).bytes, stream>>>(ctx_, p);
  WEFT_CHECK_LAUNCH();
}

EpDispatchResult ExpertParallel::dispatch(const EpDispatchArgs& a, cudaStream_t stream) {
  const EpConfig& c = plan_.config;
  bool capturing = false;
  // This rank's own arguments. When one fails, the call is abandoned first (a dispatch of no
  // tokens whose count messages say so), so that the peers' calls complete at once, void, and
  // report it, instead of waiting for this rank until their timeout.
  checks_or_abandon(
      world_, stream,
      [&] {
        WEFT_CHECK_ARG_AT(
            kDispatch, a.num_tokens >= 0 && a.num_tokens <= c.max_tokens,
            "num_tokens = {} is outside [0, max_tokens = {}] (the operator's buffers are sized "
            "for max_tokens tokens per rank; {})",
            a.num_tokens, c.max_tokens,
            c.mode == EpMode::low_latency && c.max_tokens >= kEpLowLatencyMaxTokens
                ? fmt::format("low-latency mode takes at most {}: use throughput mode for more",
                              kEpLowLatencyMaxTokens)
                : std::string("raise EpConfig::max_tokens"));
        WEFT_CHECK_ARG_AT(kDispatch, a.x_dtype == EpDType::bf16, "x must be bf16, got {}",
                          to_string(a.x_dtype));
        WEFT_CHECK_ARG_AT(kDispatch,
                          a.topk_idx_dtype == EpDType::i32 || a.topk_idx_dtype == EpDType::i64,
                          "topk_idx must be i32 or i64, got {}", to_string(a.topk_idx_dtype));
        WEFT_CHECK_ARG_AT(kDispatch, a.topk_weights_dtype == EpDType::f32,
                          "topk_weights must be f32, got {}", to_string(a.topk_weights_dtype));
        WEFT_CHECK_ARG_AT(
            kDispatch, a.hook_event == nullptr || c.mode == EpMode::low_latency,
            "hook_event applies to low-latency mode: a throughput dispatch publishes its experts "
            "when its data kernel ends (and that kernel needs its {} SMs to itself), so run the "
            "consumer after the dispatch on its stream",
            plan_.grid);
        capturing = stream_capturing(stream, kDispatch);
        if (a.num_tokens > 0) {
          const bool idx64 = a.topk_idx_dtype == EpDType::i64;
          checker_.check(a.x, "x", 16, kDispatch, capturing);
          checker_.check(a.topk_idx, "topk_idx", idx64 ? 8 : 4, kDispatch, capturing);
          checker_.check(a.topk_weights, "topk_weights", 4, kDispatch, capturing);
        }
      },
      [&] { abandon_dispatch(a.fp8, stream); });
  return enqueue_dispatch(a, stream, capturing, /*abandon=*/false);
}

void ExpertParallel::abandon_dispatch(bool fp8, cudaStream_t stream) noexcept {
  if (plan_.world < 2) return;
  try {
    EpDispatchArgs none;
    none.num_tokens = 0;
    none.fp8 = fp8;
    enqueue_dispatch(none, stream, /*capturing=*/false, /*abandon=*/true);
  } catch (...) {  // best effort: the peers then time out, as before there was an abandon
  }
}

EpDispatchResult ExpertParallel::enqueue_dispatch(const EpDispatchArgs& a, cudaStream_t stream,
                                                  bool capturing, bool abandon) {
  const EpConfig& c = plan_.config;
  ep::EpDispatchParams p{};
  p.x = a.x;
  p.topk = a.topk_idx;
  p.weights = a.topk_weights;
  p.idx64 = a.topk_idx_dtype == EpDType::i64 ? 1 : 0;
  p.T = a.num_tokens;
  p.E = c.num_experts;
  p.E_local = plan_.experts_local;
  p.H = c.hidden;
  p.k = c.topk;
  p.T_max = c.max_tokens;
  p.units = plan_.units;
  p.groups = plan_.scale_groups;
  p.nbuf = plan_.nbuf;
  p.count_bitmap_words = c.mode == EpMode::low_latency ? ep::kLlTokenBitmapWords : 0;
  p.send_blocks = plan_.send_blocks.for_dispatch(a.fp8);
  p.warps_per_group = plan_.warps_per_group;
  p.capacity = plan_.capacity;
  p.row_stride = plan_.row_stride;
  p.st_row_stride = plan_.st_row_stride;
  p.tma_bytes = plan_.tma_bytes;
  p.st_rows = st_rows_.data();
  p.st_scales = st_scales_.data();
  p.st_meta = st_meta_.data();
  p.st_flags = signals_.data();
  p.st_counts = st_counts_.data();
  p.recv_x = recv_x_;
  p.recv_scales = recv_scales_;
  p.recv_src = recv_src_;
  p.counts_block = counts_block_;
  p.handle_rows = handle_rows_;
  p.home_dmask = home_dmask_;
  p.ready = ready_;
  p.arrived = arrived_;
  p.hooked = a.hook_event != nullptr ? 1 : 0;
  p.ll_layout_first = ll_layout_first_ ? 1 : 0;
  p.ll_pack = ll_pack_;
  p.fp8 = a.fp8 ? 1 : 0;
  p.abandon = abandon ? 1 : 0;
  p.token_word_flags = (a.fp8 ? ep::kCountFp8Bit : 0u) | (abandon ? ep::kCountAbandonBit : 0u);
  p.lay_dslot = lay_dslot_;
  p.lay_wrank = lay_wrank_;
  p.lay_chunk_hist = lay_chunk_hist_;
  p.lay_chunk_base = lay_chunk_base_;
  p.lay_pos_base = lay_pos_base_;
  p.state = state_;
  p.error = error_dev_;
  p.trace = abandon ? nullptr : arm_trace(0, capturing, stream);
  // A bad expert id or an overflow found by an earlier call surfaces here at the latest (taken
  // before this call's kernels can report, thrown once they are enqueued). An abandoned call
  // leaves it for the next.
  const std::optional<ep::EpError> earlier = abandon ? std::nullopt : take_mapped_record(error_);

  AbortIfUnwound abort_if_failing(world_, capturing, kDispatch);
  abort_if_failing.arm();
  if (a.hook_event != nullptr) {
    // Publish this dispatch's epoch in stream order (the dispatch kernels only read it), then the
    // event consumers fork from.
    WEFT_CUDA_CHECK(cudaMemcpyAsync(&state_->hook_epoch, &state_->dispatch_epoch, sizeof(uint64_t),
                                    cudaMemcpyDeviceToDevice, stream));
    WEFT_CUDA_CHECK(cudaEventRecord(a.hook_event, stream));
  }

  const size_t count_bytes =
      ep::counts_block_ints(plan_.experts_local, plan_.world) * sizeof(int32_t);
  const bool tp = c.mode == EpMode::throughput;
  launch_dispatch(p, a.fp8, stream);  // low latency: the whole dispatch; throughput: the layout
  counts_pending_ = false;
  if (tp) {
    // The counts are final after the layout kernel: a side stream copies them to the host while
    // the data kernel runs (the copy is not on the data's critical path), and the caller's stream
    // joins it after the data kernel, so the next dispatch cannot overwrite them mid-copy.
    WEFT_CUDA_CHECK(cudaEventRecord(fork_event_, stream));
    WEFT_CUDA_CHECK(cudaStreamWaitEvent(side_stream_, fork_event_, 0));
    WEFT_CUDA_CHECK(cudaMemcpyAsync(host_counts_, counts_block_, count_bytes,
                                    cudaMemcpyDeviceToHost, side_stream_));
    WEFT_CUDA_CHECK(cudaEventRecord(counts_event_, side_stream_));
    const uint32_t smem = plan_.smem(ep::EpKernel::tp_dispatch).bytes;
    if (a.fp8)
      ep::ep_tp_dispatch_kernel<true><<<plan_.grid, ep::kThreads, smem, stream>>>(ctx_, p);
    else
      ep::ep_tp_dispatch_kernel<false><<<plan_.grid, ep::kThreads, smem, stream>>>(ctx_, p);
    WEFT_CHECK_LAUNCH();
    WEFT_CUDA_CHECK(cudaStreamWaitEvent(stream, counts_event_, 0));
  } else if (a.copy_counts_to_host) {
    WEFT_CUDA_CHECK(cudaMemcpyAsync(host_counts_, counts_block_, count_bytes,
                                    cudaMemcpyDeviceToHost, stream));
    if (!capturing) WEFT_CUDA_CHECK(cudaEventRecord(counts_event_, stream));
  }
  counts_pending_ = (tp || a.copy_counts_to_host) && !capturing && !abandon;

  dispatched_ = true;
  dispatch_abandoned_ = abandon;
  last_fp8_ = a.fp8;
  last_tokens_ = a.num_tokens;
  WEFT_CUDA_CHECK(last_call_.mark(stream, capturing));
  EpDispatchResult r = last_result();
  if (a.hook_event == nullptr) r.hook = {};  // *hook.epoch is this call's only if it published it
  if (capturing) {
    host_epoch_exact_ = false;
  } else if (host_epoch_exact_) {
    r.epoch = host_dispatch_epoch_;
  }
  ++host_dispatch_epoch_;
  abort_if_failing.dismiss();  // everything is queued
  throw_earlier_error(earlier, kDispatch);
  return r;
}

void ExpertParallel::combine(const EpCombineArgs& a, cudaStream_t stream) {
  WEFT_CHECK_ARG_AT(kCombine, dispatched_,
                    "combine() returns the rows of the last dispatch(), and there was none yet");
  bool capturing = false;
  // This rank's own arguments. When one fails, the call is abandoned first: the combine kernel
  // raises every flag the peers wait for without sending rows, and tells them, so that their
  // combines complete at once and report it (the dispatch stays valid: combine again).
  checks_or_abandon(
      world_, stream,
      [&] {
        // (Abandoned too: the device's last dispatch may be a graph replay's, which is not void
        // and whose combine the peers run. Where it is the void one, the abandoned kernel does
        // nothing, like the peers'.)
        WEFT_CHECK_ARG_AT(kCombine, !dispatch_abandoned_,
                          "the last dispatch() on this rank failed its argument checks and was "
                          "abandoned: it is void on every rank, and so is its combine. Dispatch "
                          "again");
        WEFT_CHECK_ARG_AT(kCombine, a.expert_out_dtype == EpDType::bf16,
                          "expert_out must be bf16, got {}", to_string(a.expert_out_dtype));
        WEFT_CHECK_ARG_AT(kCombine, a.out_dtype == EpDType::bf16, "out must be bf16, got {}",
                          to_string(a.out_dtype));
        capturing = stream_capturing(stream, kCombine);
        WEFT_CHECK_ARG_AT(
            kCombine, a.expert_out != nullptr,
            "expert_out is null (it holds one row per dispatched pair: [capacity = {}, hidden "
            "= {}] bf16)",
            plan_.capacity, plan_.config.hidden);
        checker_.check(a.expert_out, "expert_out", 16, kCombine, capturing);
        // out is checked against the T of the last dispatch called on the host (null is fine for
        // T = 0); the kernel writes the T of the last one that ran on the device. They differ
        // only where a graph replay of a dispatch came after the last eager one: see combine()'s
        // contract.
        if (last_tokens_ > 0) checker_.check(a.out, "out", 16, kCombine, capturing);
        // (The kernel reads expert_out through the read-only path while it writes out. The rows
        // it reads are known on the device only, so only the same buffer is caught here.)
        WEFT_CHECK_ARG_AT(kCombine, last_tokens_ == 0 || a.out != a.expert_out,
                          "out and expert_out are the same buffer; out must not overlap "
                          "expert_out");
      },
      [&] { abandon_combine(stream); });
  enqueue_combine(a, stream, capturing, /*abandon=*/false);
}

void ExpertParallel::abandon_combine(cudaStream_t stream) noexcept {
  // No dispatch: nobody can be in a combine with this rank.
  if (plan_.world < 2 || !dispatched_) return;
  try {
    enqueue_combine(EpCombineArgs{}, stream, /*capturing=*/false, /*abandon=*/true);
  } catch (...) {  // best effort: the peers then time out, as before there was an abandon
  }
}

void ExpertParallel::enqueue_combine(const EpCombineArgs& a, cudaStream_t stream, bool capturing,
                                     bool abandon) {
  const EpConfig& c = plan_.config;
  ep::EpCombineParams p{};
  p.y = a.expert_out;
  p.out = a.out;
  p.E_local = plan_.experts_local;
  p.H = c.hidden;
  p.k = c.topk;
  p.T_max = c.max_tokens;
  p.units = plan_.units;
  p.nbuf = plan_.nbuf;
  p.send_blocks = plan_.send_blocks.combine;
  p.warps_per_group = plan_.combine_warps_per_group;
  p.handle_rows = handle_rows_;
  p.home_dmask = home_dmask_;
  p.counts_block = counts_block_;
  p.cb_rows = cb_rows_.data();
  const size_t slots = static_cast<size_t>(plan_.nbuf) * plan_.world * c.max_tokens;
  p.cb_flags = signals_.data() + slots;
  p.cb_hello = p.cb_flags + slots;
  p.abandon = abandon ? 1 : 0;
  p.out_rows = abandon ? 0 : last_tokens_;
  p.state = state_;
  p.error = error_dev_;
  p.trace = abandon ? nullptr : arm_trace(1, capturing, stream);
  const uint32_t smem = plan_.smem(ep::EpKernel::combine).bytes;
  // As in enqueue_dispatch().
  const std::optional<ep::EpError> earlier = abandon ? std::nullopt : take_mapped_record(error_);
  AbortIfUnwound abort_if_failing(world_, capturing, kCombine);
  abort_if_failing.arm();
  ep::ep_combine_kernel<2><<<plan_.grid, ep::kThreads, smem, stream>>>(ctx_, p);
  WEFT_CHECK_LAUNCH();
  WEFT_CUDA_CHECK(last_call_.mark(stream, capturing));
  abort_if_failing.dismiss();  // everything is queued
  throw_earlier_error(earlier, kCombine);
}

namespace {

// One call's per-block stamps as text: each phase's earliest, median and latest block (and which
// block was latest), in us after the first stamp of the call, and the flag waits.
std::string describe_trace(const uint64_t* t, int blocks, int groups_per_block) {
  using namespace ep;
  uint64_t t0 = ~0ull;
  for (int b = 0; b < blocks; ++b)
    for (int s : {tr_start, tr_prologue})
      if (const uint64_t v = t[b * kTraceSlots + s]; v != 0) t0 = std::min(t0, v);
  if (t0 == ~0ull) return "  (no stamps)\n";
  std::string out;
  const std::pair<int, const char*> phases[] = {
      {tr_prologue, "prologue/layout"}, {tr_counts, "counts known"}, {tr_start, "data start"},
      {tr_sent, "sent"}, {tr_received, "received"}, {tr_end, "end"}};
  // Per phase: earliest, median and latest block; in a low-latency dispatch also apart for the
  // blocks with a sending group (tr_sent stamped) and those without, whose receivers do not share
  // an SM with a sender's remote stores (docs/perf.md, twenty-third pass).
  auto spread = [&](int slot, int senders) {  // senders: -1 every block, 1 with, 0 without
    std::vector<double> v;
    for (int b = 0; b < blocks; ++b) {
      const uint64_t* r = t + b * kTraceSlots;
      if (senders >= 0 && (r[tr_sent] != 0) != (senders == 1)) continue;
      if (r[slot] != 0) v.push_back((r[slot] - t0) * 1e-3);
    }
    std::sort(v.begin(), v.end());
    return v;
  };
  auto last_block = [&](int slot) {  // the block of a phase's latest stamp
    int last = 0;
    for (int b = 1; b < blocks; ++b)
      if (t[b * kTraceSlots + slot] > t[last * kTraceSlots + slot]) last = b;
    return last;
  };
  for (const auto& [slot, name] : phases) {
    const std::vector<double> v = spread(slot, -1);
    if (v.empty()) continue;
    out += fmt::format(
        "  {:<16} {:4d} blocks  first {:8.1f} us  median {:8.1f} us  last {:8.1f} us (block {})\n",
        name, v.size(), v.front(), v[v.size() / 2], v.back(), last_block(slot));
    if (slot != tr_counts && slot != tr_received) continue;
    for (int with : {1, 0}) {
      const std::vector<double> u = spread(slot, with);
      if (u.empty() || u.size() == v.size()) continue;
      out += fmt::format(
          "    {:<14} {:4d} blocks  first {:8.1f} us  median {:8.1f} us  last {:8.1f} us\n",
          with ? "(senders)" : "(no senders)", u.size(), u.front(), u[u.size() / 2], u.back());
    }
  }
  double wait_ns = 0, rows = 0, busy_ns = 0;
  for (int b = 0; b < blocks; ++b) {
    const uint64_t* r = t + b * kTraceSlots;
    wait_ns += static_cast<double>(r[tr_wait_ns]);
    rows += static_cast<double>(r[tr_rows]);
    if (r[tr_rows] != 0 && r[tr_received] > r[tr_start])
      busy_ns += static_cast<double>(r[tr_received] - r[tr_start]) * groups_per_block;
  }
  static const std::pair<int, const char*> sums[] = {
      {tr_recv_load_ns, "recv load"},     {tr_recv_place_ns, "recv place"},
      {tr_recv_store_ns, "recv store"},   {tr_recv_next_ns, "recv next"},
      {tr_send_load_ns, "send load"},     {tr_send_prep_ns, "send prep"},
      {tr_send_store_ns, "send store"},   {tr_send_queue_ns, "send queue"}};
  std::string laps;
  for (const auto& [slot, name] : sums) {
    double ns = 0;
    for (int b = 0; b < blocks; ++b) ns += static_cast<double>(t[b * kTraceSlots + slot]);
    if (ns > 0) laps += fmt::format(" {} {:.2f}", name, ns * 1e-3 / std::max(rows, 1.0));
  }
  if (!laps.empty()) out += "  us per row (warp-summed):" + laps + "\n";
  if (rows > 0)
    out += fmt::format("  flag waits: {:.0f} rows, {:.2f} us per row, {:.0f}% of the receiving "
                       "groups' time\n",
                       rows, wait_ns * 1e-3 / rows, busy_ns > 0 ? 100.0 * wait_ns / busy_ns : 0.0);
  return out;
}

}  // namespace

std::string ExpertParallel::trace_report() {
  if (trace_ == nullptr) return {};
  WEFT_CUDA_CHECK(last_call_.wait());
  std::vector<uint64_t> h(2 * static_cast<size_t>(trace_blocks_) * ep::kTraceSlots);
  WEFT_CUDA_CHECK(cudaMemcpy(h.data(), trace_, h.size() * 8, cudaMemcpyDeviceToHost));
  const int gpb = ep::kWarps / plan_.warps_per_group;
  const int combine_gpb = ep::kWarps / plan_.combine_warps_per_group;
  const EpPlan::SendBlocks& sb = plan_.send_blocks;
  return fmt::format(
      "rank {} dispatch ({}, grid {}, send blocks {}):\n{}rank {} "
      "combine (send blocks {}):\n{}",
      world_.rank(), to_string(plan_.config.mode), plan_.grid, sb.for_dispatch(last_fp8_),
      describe_trace(h.data(), trace_blocks_, gpb), world_.rank(), sb.combine,
      describe_trace(h.data() + h.size() / 2, trace_blocks_, combine_gpb));
}

EpHostCounts ExpertParallel::host_counts() {
  WEFT_CHECK_ARG_AT(
      "ExpertParallel::host_counts", counts_pending_,
      "the last dispatch enqueued no host copy of its counts ({}); in low-latency mode "
      "pass copy_counts_to_host = true, and call host_counts() after an eager (not "
      "graph-captured) dispatch",
      !dispatched_          ? "there was no dispatch"
      : dispatch_abandoned_ ? "it was abandoned: its arguments failed a check on this rank"
                            : "it was captured or did not ask for one");
  WEFT_CUDA_CHECK(cudaEventSynchronize(counts_event_));
  const int el = plan_.experts_local, W = plan_.world;
  EpHostCounts h;
  h.expert_counts.assign(host_counts_ + ep::cb_expert_counts(el),
                         host_counts_ + ep::cb_expert_counts(el) + el);
  h.expert_offsets.assign(host_counts_ + ep::cb_expert_offsets(el),
                          host_counts_ + ep::cb_expert_offsets(el) + el + 1);
  h.source_rows.assign(host_counts_ + ep::cb_source_rows(el),
                       host_counts_ + ep::cb_source_rows(el) + W);
  h.total_rows = host_counts_[ep::cb_total(el, W)];
  h.abandoned_by = static_cast<uint32_t>(host_counts_[ep::cb_abandoned(el, W)]);
  return h;
}

}  // namespace weft::ops
