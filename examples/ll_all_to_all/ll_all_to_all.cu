#include <climits>
#include <cstring>
#include <optional>

#include "examples/ll_all_to_all/ll_all_to_all.cuh"
#include "examples/ll_all_to_all/ll_all_to_all.h"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/mapped_record.h"
#include "weft/runtime/validate.h"

namespace weft::examples {
namespace {

constexpr const char* kCtor = "LowLatencyAllToAll";
constexpr const char* kRun = "LowLatencyAllToAll::run";

}  // namespace

LowLatencyAllToAll::LowLatencyAllToAll(World& world, int max_m, int hidden, int experts_per_rank,
                                       int element_bytes, bool with_scale, int blocks_per_peer)
    : world_(world),
      world_size_(world.size()),
      max_m_(max_m),
      hidden_(hidden),
      experts_per_rank_(experts_per_rank),
      element_bytes_(element_bytes),
      with_scale_(with_scale),
      blocks_per_peer_(blocks_per_peer) {
  // Everything below is checked before the first collective allocation, identically on every
  // rank, so a rejected argument throws everywhere and no rank is left waiting.
  WEFT_CHECK_ARG_AT(kCtor, max_m > 0,
                    "max_m (most rows one rank sends to one rank) must be positive, got {}", max_m);
  WEFT_CHECK_ARG_AT(kCtor, hidden > 0, "hidden (elements per row) must be positive, got {}",
                    hidden);
  WEFT_CHECK_ARG_AT(kCtor, experts_per_rank > 0, "experts_per_rank must be positive, got {}",
                    experts_per_rank);
  WEFT_CHECK_ARG_AT(kCtor, element_bytes == 1 || element_bytes == 2 || element_bytes == 4,
                    "element_bytes must be 1 (fp8), 2 (bf16/fp16) or 4 (fp32), got {}",
                    element_bytes);
  WEFT_CHECK_ARG_AT(kCtor,
                    static_cast<long long>(experts_per_rank) * world_size_ <= INT_MAX &&
                        static_cast<long long>(max_m) * world_size_ <= INT_MAX,
                    "experts_per_rank ({}) or max_m ({}) times the world size ({}) overflows int",
                    experts_per_rank, max_m, world_size_);
  WEFT_CHECK_ARG_AT(kCtor, blocks_per_peer >= 1 && blocks_per_peer <= 64,
                    "blocks_per_peer must be in [1, 64], got {}", blocks_per_peer);
  WEFT_CHECK_ARG_AT(
      kCtor, world.lsa_size() == world_size_,
      "the low-latency all-to-all reaches peers by load/store, so all {} ranks must be "
      "on one node; this node holds {} of them (the cross-node path is not written)",
      world_size_, world.lsa_size());

  // Every block waits for a peer whose blocks wait for ours: the whole grid must be resident.
  // Checked against the job's smallest SM count, with this GPU's blocks per SM (a property of the
  // GPU model), under World::agree: no rank accepts what another rejects and then waits for it at
  // the collective allocations below.
  world.agree([&] {
    const int sms = world.min_sm_count();
    int per_sm = 0;
    if (with_scale)
      WEFT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &per_sm, ll_all_to_all_kernel<true>, kLlA2AThreads, 0));
    else
      WEFT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &per_sm, ll_all_to_all_kernel<false>, kLlA2AThreads, 0));
    const long long grid = static_cast<long long>(world_size_) * blocks_per_peer;
    WEFT_CHECK_ARG_AT(
        kCtor, grid <= static_cast<long long>(per_sm) * sms,
        "blocks_per_peer = {} needs {} resident blocks ({} ranks x {}), but the smallest "
        "GPU of the job holds {} ({} SMs x {}); lower blocks_per_peer",
        blocks_per_peer, grid, world_size_, blocks_per_peer, per_sm * sms, sms, per_sm);
  });

  // Symmetric buffers: same calls, same order on every rank.
  const size_t W = static_cast<size_t>(world_size_);
  data_dst_ = world.alloc<char>(2 * W * static_cast<size_t>(max_m) * row_bytes());
  splits_dst_ = world.alloc<int32_t>(2 * W * static_cast<size_t>(experts_per_rank));
  if (with_scale) scale_dst_ = world.alloc<float>(2 * W * static_cast<size_t>(max_m));
  signals_ = world.alloc_signals(2 * W * static_cast<size_t>(blocks_per_peer));

  try {
    WEFT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&state_), sizeof(LlA2AState)));
    const LlA2AState initial{1, 0};
    WEFT_CUDA_CHECK(cudaMemcpy(state_, &initial, sizeof(initial), cudaMemcpyHostToDevice));
    // A pageable copy may return before it lands, and the legacy stream does not order a
    // non-blocking stream's first run() after it.
    WEFT_CUDA_CHECK(cudaDeviceSynchronize());
    alloc_mapped_record(error_, error_dev_);
    WEFT_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&epoch_readback_), sizeof(uint64_t)));
  } catch (...) {
    release_local();
    throw;
  }
  ctx_ = world.context();
}

LowLatencyAllToAll::~LowLatencyAllToAll() {
  // Peers write into our buffers only during our own calls (each call waits for every peer's
  // last write), so once our last call finished nobody writes into them any more.
  if (launched_) cudaStreamSynchronize(last_stream_);
  release_local();
}

void LowLatencyAllToAll::release_local() noexcept {
  if (state_) cudaFree(state_);
  if (error_) cudaFreeHost(error_);
  if (epoch_readback_) cudaFreeHost(epoch_readback_);
  state_ = nullptr;
  error_ = nullptr;
  error_dev_ = nullptr;
  epoch_readback_ = nullptr;
}

LowLatencyAllToAll::Received LowLatencyAllToAll::received(int parity) const {
  WEFT_CHECK_ARG_AT("LowLatencyAllToAll::received", parity == 0 || parity == 1,
                    "parity must be 0 or 1, got {}", parity);
  const size_t W = static_cast<size_t>(world_size_);
  Received rx;
  rx.data = data_dst_.data() + parity * W * max_m_ * row_bytes();
  rx.splits = splits_dst_.data() + parity * W * experts_per_rank_;
  rx.scales = with_scale_ ? scale_dst_.data() + parity * W * max_m_ : nullptr;
  rx.parity = parity;
  return rx;
}

void LowLatencyAllToAll::check_errors() { throw_error(take_mapped_record(error_), ""); }

void LowLatencyAllToAll::throw_error(const std::optional<LlA2AError>& found,
                                     const char* note) const {
  if (!found) return;
  const LlA2AError& e = *found;
  const int first = e.dest * experts_per_rank_;
  if (e.kind == LlA2AError::negative_split)
    throw InvalidArgument(
        "LowLatencyAllToAll::run",
        fmt::format(
            "call {}: splits_src[{}] (rows for expert {}) is negative; counts must be >= 0. "
            "No rows were sent to rank {} nor to the ranks after it in that call{}",
            e.epoch, e.expert, e.expert, e.dest, note));
  throw InvalidArgument(
      "LowLatencyAllToAll::run",
      fmt::format("call {}: the rows for destination rank {} (experts [{}, {})) sum to {}, more "
                  "than max_m = {}; each rank may send at most max_m rows to each rank per call "
                  "(raise max_m). No rows were sent to rank {} in that call{}",
                  e.epoch, e.dest, first, first + experts_per_rank_, e.value, max_m_, e.dest,
                  note));
}

uint64_t LowLatencyAllToAll::next_epoch(cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  WEFT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  WEFT_CHECK_ARG_AT("LowLatencyAllToAll::next_epoch", capture == cudaStreamCaptureStatusNone,
                    "next_epoch() waits for the stream, so it cannot run while the stream is "
                    "being captured");
  WEFT_CUDA_CHECK(cudaMemcpyAsync(epoch_readback_, &state_->next_epoch, sizeof(uint64_t),
                                  cudaMemcpyDeviceToHost, stream));
  world_.synchronize(stream);
  return *epoch_readback_;
}

LowLatencyAllToAll::Received LowLatencyAllToAll::run(const void* data_src,
                                                     const int32_t* splits_src,
                                                     const float* scale_src, cudaStream_t stream) {
  WEFT_CHECK_ARG_AT(kRun, data_src != nullptr, "data_src (the rows to send) is null");
  WEFT_CHECK_ARG_AT(kRun, splits_src != nullptr,
                    "splits_src (rows per expert, {} int32 on the device) is null", num_experts());
  if (with_scale_)
    WEFT_CHECK_ARG_AT(
        kRun, scale_src != nullptr,
        "this all-to-all was built with with_scale = true, so scale_src (one fp32 per "
        "row) is required");
  else
    WEFT_CHECK_ARG_AT(kRun, scale_src == nullptr,
                      "this all-to-all was built with with_scale = false, but a scale_src was "
                      "given; build it with with_scale = true to send scales");

  const bool capturing = stream_capturing(stream, kRun);

  const void* inputs[3] = {data_src, splits_src, scale_src};
  if (std::memcmp(inputs, checked_, sizeof(inputs)) != 0) {
    RelaxedCaptureScope relaxed(capturing);
    const int device = world_.device();
    check_device_pointer(data_src, "data_src", static_cast<size_t>(element_bytes_), device, kRun);
    check_device_pointer(splits_src, "splits_src", sizeof(int32_t), device, kRun);
    if (with_scale_) check_device_pointer(scale_src, "scale_src", sizeof(float), device, kRun);
    std::memcpy(checked_, inputs, sizeof(inputs));
  }

  Received rx;  // parity -1: unknown while capturing
  if (!capturing) {
    // Graph replays advanced the device epoch without us: read it back once per eager call.
    if (!host_epoch_exact_) host_next_epoch_ = next_epoch(stream);
    rx = received(static_cast<int>(host_next_epoch_ & 1));
    rx.epoch = host_next_epoch_;
  } else {
    host_epoch_exact_ = false;
  }

  LlA2AParams p{};
  p.data_src = data_src;
  p.splits_src = splits_src;
  p.scale_src = scale_src;
  p.data_dst = data_dst_.data();
  p.splits_dst = splits_dst_.data();
  p.scale_dst = with_scale_ ? scale_dst_.data() : nullptr;
  p.signals = signals_.data();
  p.state = state_;
  p.error = error_dev_;
  p.max_m = max_m_;
  p.experts_per_rank = experts_per_rank_;
  p.blocks_per_peer = blocks_per_peer_;
  p.row_bytes = row_bytes();
  const unsigned grid = static_cast<unsigned>(world_size_ * blocks_per_peer_);
  // A bad count found by an earlier call on the device surfaces here at the latest: taken before
  // this call's kernel can report, thrown once it is enqueued (only this rank knows of it, and
  // its peers are already in this call: throwing first would leave them waiting).
  const std::optional<LlA2AError> earlier = take_mapped_record(error_);
  if (with_scale_)
    ll_all_to_all_kernel<true><<<grid, kLlA2AThreads, 0, stream>>>(ctx_, p);
  else
    ll_all_to_all_kernel<false><<<grid, kLlA2AThreads, 0, stream>>>(ctx_, p);
  WEFT_CHECK_LAUNCH();

  if (!capturing) ++host_next_epoch_;
  last_stream_ = stream;
  launched_ = true;
  throw_error(earlier,
              " (reported by the next run(), which was enqueued nonetheless so that the peers' "
              "calls complete)");
  return rx;
}

}  // namespace weft::examples
