// Plain structs shared by the expert-parallel kernels (ep_kernels.cuh) and their host side
// (expert_parallel.cu, ep_plan.cc): kernel parameters, per-instance device state, the device error
// record and the shared-memory layout of each kernel. Plain C++: a host compiler can include it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "weft/ops/expert_parallel/ep_config.h"

#if defined(__CUDACC__)
#define WEFT_EP_HD __host__ __device__
#else
#define WEFT_EP_HD
#endif

namespace weft::ops::ep {

// Threads per block of every kernel (16 warps) and the token chunk one block scans.
inline constexpr int kThreads = 512;
inline constexpr int kWarps = kThreads / 32;
inline constexpr int kScanChunk = 256;
inline constexpr int kTokensPerWarp = kScanChunk / kWarps;  // 16
static_assert(kScanChunk == kEpLowLatencyMaxTokens, "one low-latency call is one scan chunk");

// A source's count message to a destination (st_counts): its pair count for each of the
// destination's E/W experts, its token count, then (low latency) one bit per token of the call
// saying whether the token goes there, so a low-latency row can be staged at the token's own index
// (the receiver finds the j-th row of a source as the j-th set bit).
inline constexpr int kLlTokenBitmapWords = kScanChunk / 32;
WEFT_EP_HD inline constexpr int count_words(int experts_local, int bitmap_words) {
  return experts_local + 1 + bitmap_words;
}

// Per-instance state in device memory (local). The epochs live here, not on the host, so CUDA
// graph replays advance them: a kernel reads its epoch when it starts and one block stores
// epoch + 1 once every block has read it — the last to finish (throughput kernels, which also
// re-arm tickets then) or, in the low-latency kernels, the last to count itself in after reading
// it (at that block's end).
struct EpState {
  uint64_t dispatch_epoch;     // epoch of the next dispatch: 1, 2, ... (signals start at 0)
  uint64_t combine_epoch;      // epoch of the next combine
  uint64_t hook_epoch;         // copy of dispatch_epoch, taken in stream order before a hooked dispatch
  uint32_t dispatch_arrivals;  // blocks of the current dispatch data kernel counted in (above)
  uint32_t combine_arrivals;
  uint32_t layout_ticket;      // blocks of the current layout kernel that finished (throughput)
  uint32_t send_ticket;        // throughput data kernel: next token a sending warp takes
  uint32_t recv_ticket;        // throughput data kernel: next staged row a receiving warp takes
  uint32_t combine_ticket;     // throughput combine: next received row a sending warp takes
  uint32_t pad[3];
};

// Optional phase timestamps of the data kernels (WEFT_EP_TRACE=1; a null pointer = off), for
// finding where a dispatch or combine spends its time: kTraceSlots uint64 per block, globaltimer
// nanoseconds, latest stamp wins (atomicMax), zeroed before each traced call.
inline constexpr int kTraceSlots = 16;
enum TraceSlot : int {
  tr_start = 0,     // data kernel started (block)
  tr_prologue = 1,  // low latency: scan + counts pushed; throughput: layout kernel started
  tr_sent = 2,      // the block's senders finished
  tr_counts = 3,    // every source's counts known (receive layout)
  tr_received = 4,  // the block's receivers finished
  tr_end = 5,       // the block finished
  tr_wait_ns = 6,   // nanoseconds the block's groups spent in per-row flag waits (sum)
  tr_rows = 7,      // rows the block's receivers handled
  // Throughput data kernel, nanoseconds summed over the block's warps and rows (lane 0's view):
  tr_recv_load_ns = 8,    // flag seen -> the staged row is in shared memory
  tr_recv_place_ns = 9,   // metadata, positions, fp8 scales
  tr_recv_store_ns = 10,  // issuing the copies
  tr_recv_next_ns = 11,   // taking the next row's ticket (and the loop)
  tr_send_load_ns = 12,   // slot free + bf16 row in shared memory
  tr_send_prep_ns = 13,   // metadata, destinations, fp8 quantization
  tr_send_store_ns = 14,  // issuing the stores and waiting for the previous token's
  tr_send_queue_ns = 15,  // queueing the previous token's flags, taking the next ticket
};

// What the kernels found wrong with device-resident inputs (host-mapped; first error wins). The
// host turns it into weft::InvalidArgument (ExpertParallel::check_errors, next dispatch/combine).
struct EpError {
  enum Kind : int {
    none = 0,
    bad_expert_id = 1,
    capacity_exceeded = 2,
    fp8_mismatch = 3,
    dispatch_abandoned = 4,  // a peer abandoned the dispatch (slot: its rank; see cb_abandoned)
    combine_abandoned = 5,   // a peer abandoned the combine (slot: its rank; epoch: the combine's)
    out_too_small = 6,       // the combined dispatch (a graph replay) had more tokens than out's
                             // rows (value: its tokens, limit: out's rows; epoch: the combine's)
  };
  unsigned int claimed;  // arbitration between faulting threads (device only)
  int kind;
  int rank;
  int token;  // bad_expert_id: the token; otherwise -1
  int slot;   // bad_expert_id: the top-k slot; fp8_mismatch, *_abandoned: the peer's rank
  int pad;
  long long value;  // the bad id / the rows that did not fit / the peer's fp8 flag
  long long limit;  // E / the capacity / this rank's fp8 flag
  unsigned long long epoch;
  volatile int ready;   // set last
};

// Low-latency dispatch: the warps of a receiving group (rows are placed by groups this small, so
// that every row of a typical call has a group of its own from the start), and the scratch
// entries the kernel needs: one per group of either size.
inline constexpr int kLlRecvWarps = 2;
WEFT_EP_HD constexpr int ll_dispatch_groups(int warps_per_group) {
  return kWarps / (warps_per_group < kLlRecvWarps ? warps_per_group : kLlRecvWarps);
}

// Which groups of a low-latency dispatch block send which tokens, and the order in which the
// receiving groups of the grid take rows (group r of that order takes rows r, r + groups, ...).
// Spread (pack 0): token t is sent by group t / grid of block t % grid, every block has the same
// sending groups, and receiving group i of block b comes at i * grid + b', where b' puts blocks
// [T, grid) first and the blocks that send a token last: a row placed beside a sending group waits
// behind that group's remote stores on the SM (2x H200: fp8 T = 1 13.1-13.4 us this way against
// 14.7-15.0, T = 32 13.7 against 14.8-15.1; docs/perf.md, twenty-second pass). Packed (pack > 0,
// WEFT_EP_LL_PACK, for A/B runs; where T <= pack x (grid - W)): blocks [0, nsb = ceil(T / pack))
// send tokens b x pack + i from their first pack groups, the others send nothing, and the row
// order takes every receiving group of the blocks that send nothing first. Every token has one
// sending group and every place of the row order one receiving group (ep_cpu_test).
struct LlSenders {
  int T, grid;
  int spread_groups;  // spread: sending groups per block (gpb = groups per block)
  int pack;           // tokens per sending block; 0 = spread
  int nsb;            // packed: the sending blocks [0, nsb)

  WEFT_EP_HD LlSenders(int T_, int grid_, int W, int gpb, int pack_request) : T(T_), grid(grid_) {
    const int spread = (T + grid - 1) / grid;
    spread_groups = spread < gpb ? spread : gpb;
    const bool packed =
        pack_request > 0 && pack_request < gpb && T > 0 && T <= pack_request * (grid - W);
    pack = packed ? pack_request : 0;
    nsb = packed ? (T + pack - 1) / pack : grid;
  }
  // Sending groups of block b (its first ones).
  WEFT_EP_HD int groups(int b) const {
    if (pack == 0) return spread_groups;
    return b < nsb ? pack : 0;
  }
  // The token sending group i of block b sends, or -1.
  WEFT_EP_HD int token(int b, int i) const {
    const int t = pack == 0 ? i * grid + b : b * pack + i;
    return t < T ? t : -1;
  }
  // Receiving group i of block b: its place in the row order (rpb_free = the receiving groups of
  // a block that sends nothing).
  WEFT_EP_HD int row_order(int b, int i, int rpb_free) const {
    if (pack == 0) {
      const int first_free = T < grid ? T : grid;
      return i * grid + (b - first_free + grid) % grid;
    }
    const int nfree = grid - nsb;
    return b >= nsb ? i * nfree + (b - nsb) : rpb_free * nfree + i * nsb + b;
  }
  // The receiving groups of the grid (per_send = the receiving groups a sending group displaces).
  WEFT_EP_HD int receiving_groups(int rpb_free, int per_send) const {
    if (pack == 0) return (rpb_free - spread_groups * per_send) * grid;
    return rpb_free * (grid - nsb) + (rpb_free - pack * per_send) * nsb;
  }
};

// Fixed-size per-group scratch in shared memory (a group is the warps that move one row).
struct EpGroupScratch {
  // low-latency send: the token's destinations' staging, slot i for rank (me + 1 + i) % W
  char* dst_row[kEpMaxRanks];
  float* dst_scales[kEpMaxRanks];
  uint64_t* dst_meta[kEpMaxRanks];  // low latency: the row's tagged metadata words
  int32_t meta[1 + 3 * kEpMaxTopk];
  int32_t pos[kEpMaxTopk];   // output row of each top-k slot on this rank, -1 = none
  int32_t lexp[kEpMaxTopk];  // local expert of each slot, -1 = not on this rank
  uint64_t rx_bar;           // low-latency receive by TMA: the row's bulk load completes here
};

// Throughput dispatch: a sending warp hands the (destination, slot) of every row whose stores are
// complete to its block's flag warp through this single-producer, single-consumer ring in shared
// memory; the flag warp raises the rows' flags in batches, one system-scope fence per batch.
inline constexpr int kFlagRing = 64;
struct FlagQueue {
  uint32_t head;  // entries the flag warp has raised (it writes this)
  uint32_t tail;  // entries the sending warp has queued (it writes this)
  uint32_t done;  // the sending warp has queued its last entry
  uint32_t pad;
  uint32_t ring[kFlagRing];  // (destination << 24) | slot
};
// The ring's 24-bit slot field holds any slot: max_tokens <= 2^20 (plan_expert_parallel).
inline constexpr int kEpMaxTokensPerRank = 1 << 20;
static_assert(kEpMaxTokensPerRank <= (1 << 24), "FlagQueue entries keep the slot in 24 bits");

// Layout of the local "counts block" (int32): what the dispatch reports about what this rank
// received, contiguous so one copy brings it to the host.
WEFT_EP_HD inline constexpr int counts_block_ints(int experts_local, int world) {
  return experts_local + (experts_local + 1) + world + 1 + 1 + 1 + 1;
}
WEFT_EP_HD inline constexpr int cb_expert_counts(int) { return 0; }
WEFT_EP_HD inline constexpr int cb_expert_offsets(int el) { return el; }
WEFT_EP_HD inline constexpr int cb_source_rows(int el) { return 2 * el + 1; }
WEFT_EP_HD inline constexpr int cb_total(int el, int world) { return 2 * el + 1 + world; }
// The dispatch's own token count (num_tokens of the call): the combine reads it here, so a combine
// after a graph replay of a dispatch uses that dispatch's T, not the last one the host enqueued.
WEFT_EP_HD inline constexpr int cb_tokens(int el, int world) { return 2 * el + 2 + world; }
// Bit s: rank s called this dispatch with the other fp8 flag (EpError::fp8_mismatch). No rows
// were exchanged with it, and the combine does not wait for it.
WEFT_EP_HD inline constexpr int cb_fp8_mismatch(int el, int world) { return 2 * el + 3 + world; }
// Bit s: rank s abandoned this dispatch (its own arguments failed a host check; it took part with
// no tokens so that nobody waits for it: EpError::dispatch_abandoned). The dispatch is void on
// every rank alike, so its combine does nothing anywhere (whether the abandoning rank calls it or
// not) and leaves the combine epoch as it was.
WEFT_EP_HD inline constexpr int cb_abandoned(int el, int world) { return 2 * el + 4 + world; }

// A count message's token word carries the sender's fp8 flag in its top bit (token counts are
// below 2^20): ranks that disagree on it would otherwise wait for rows that never come (low
// latency) or read rows of the wrong size (throughput).
inline constexpr uint32_t kCountFp8Bit = 1u << 31;
// ... and the next bit says the sender abandoned the call (cb_abandoned).
inline constexpr uint32_t kCountAbandonBit = 1u << 30;
inline constexpr uint32_t kCountTokenMask = kCountAbandonBit - 1;

// Ints per staged row's metadata: [token, expert id x k, rank within (source, expert) x k, weight
// bits x k], padded to 16 bytes. Low latency keeps each int in a tagged word (dev::tagged_word:
// the value and the epoch's low 32 bits, one 8-byte store), so the staging holds meta_ints(k)
// 8-byte words per row there (ll_meta_words).
WEFT_EP_HD inline constexpr int meta_ints(int k) { return (1 + 3 * k + 3) / 4 * 4; }

// The low-latency dispatch moves fp8 rows without a flag: a receiver knows a staged fp8 byte has
// arrived when it no longer reads 0x7f, which the quantization never produces (it saturates to
// +-448 = 0x7e / 0xfe and writes NaN as 0xff), and a scale when it no longer reads the bit pattern
// below (scales are positive or +inf). Receivers put the poison back after reading, so every slot
// is poisoned again before its next use; fp8 rows have staging bytes of their own (staged_row).
inline constexpr uint32_t kFp8Poison4 = 0x7f7f7f7fu;
inline constexpr uint32_t kScalePoison = 0xffffffffu;
// (Both are one byte repeated: the staging starts as a memset of that byte.)
static_assert(kFp8Poison4 == 0x01010101u * (kFp8Poison4 & 0xffu) &&
              kScalePoison == 0x01010101u * (kScalePoison & 0xffu));

// Row `row`'s metadata words in the low-latency staging (st_meta holds words there).
// The tag of an epoch's tagged words (count messages, low-latency metadata): never 0 — what the
// metadata staging starts as and what a receiver clears a consumed word to — and different for
// any two epochs less than 2^32 - 1 apart, so a word left from an old call never passes for a new
// one (a slot's metadata may sit unread for any number of calls: only tokens sent there write it).
WEFT_EP_HD inline constexpr uint32_t epoch_tag(uint64_t epoch) {
  return static_cast<uint32_t>(epoch % 0xffffffffull) + 1u;
}
WEFT_EP_HD inline uint64_t* ll_meta_words(int32_t* st_meta, size_t row, int k) {
  return reinterpret_cast<uint64_t*>(st_meta) + row * static_cast<size_t>(meta_ints(k));
}
// Ints per dispatch handle row (what combine needs per received token): [token, pair row x k,
// weight bits x k], padded to 16 bytes.
WEFT_EP_HD inline constexpr int handle_ints(int k) { return (1 + 2 * k + 3) / 4 * 4; }

// Shared-memory layout (byte offsets) of a kernel; `bytes` is the dynamic size to launch with.
struct EpSmemLayout {
  uint32_t ids, hist, wrank, totals;                 // scan
  uint32_t cnt, pos_base, tot, off, nsrc;            // receive-side layout
  uint32_t scratch;                                  // EpGroupScratch[groups]
  uint32_t tma_bars, flag_q, tma;  // throughput data kernel: an mbarrier and a FlagQueue per
                                   // warp, then the TMA slots
  uint32_t bytes;
};

enum class EpKernel { ll_dispatch, layout, tp_dispatch, combine };

WEFT_EP_HD inline constexpr uint32_t ep_align16(uint32_t x) { return (x + 15u) & ~15u; }

// Bulk copies (TMA) between shared memory and a peer run at the links' rate only from 128-byte
// aligned shared memory: from 16-byte aligned buffers the throughput dispatch's rows left a GPU at
// ~265 GB/s instead of ~340 (docs/perf.md, twentieth pass; bench/primitives/scatter.cu measures
// it). So every TMA buffer, and every piece of one that a bulk copy reads or fills, starts on 128
// bytes. Nothing promises that the dynamic shared memory itself starts on 128 bytes (only 16), so
// the layout keeps kTmaSlack bytes in front of the TMA region and the kernels round its start up
// at run time (tma_region).
inline constexpr uint32_t kTmaAlign = 128;
inline constexpr uint32_t kTmaSlack = kTmaAlign - 16;
WEFT_EP_HD inline constexpr uint32_t ep_align_tma(uint32_t x) {
  return (x + kTmaAlign - 1u) & ~(kTmaAlign - 1u);
}

// Throughput data kernel: the dynamic shared memory it is launched with (the per-block maximum
// of sm_90, 227 KiB, less room for static shared memory); what the layout leaves is TMA slots.
inline constexpr uint32_t kTpDispatchSmemBytes = 227u * 1024u - 256u;

// Bytes of one warp's TMA slot: a receiving warp stages one row (bf16: 2H; fp8: H); a sending warp
// stages the token's bf16 row (fp8: quantized in place), the fp8 scales and the metadata row.
// Each piece starts on kTmaAlign bytes.
WEFT_EP_HD inline constexpr uint32_t tma_recv_slot_bytes(int hidden, bool fp8) {
  return ep_align_tma(static_cast<uint32_t>(hidden) * (fp8 ? 1u : 2u));
}
// A sending warp's slot: the bf16 row (fp8: quantized in place into its first H bytes), then the
// fp8 scales, then the metadata row, each piece at a multiple of kTmaAlign.
struct TmaSendSlotLayout {
  uint32_t scales, meta, bytes;
};
WEFT_EP_HD inline constexpr TmaSendSlotLayout tma_send_slot_layout(int hidden, int topk, bool fp8) {
  const uint32_t h = static_cast<uint32_t>(hidden);
  TmaSendSlotLayout l{};
  l.scales = ep_align_tma(2u * h);
  l.meta = l.scales + (fp8 ? ep_align_tma(h / 128u * 4u) : 0u);
  l.bytes = l.meta + ep_align_tma(static_cast<uint32_t>(meta_ints(topk)) * 4u);
  return l;
}
WEFT_EP_HD inline constexpr uint32_t tma_send_slot_bytes(int hidden, int topk, bool fp8) {
  return tma_send_slot_layout(hidden, topk, fp8).bytes;
}

// Reserve `bytes` at `at` (16-byte aligned); returns where they start.
WEFT_EP_HD inline uint32_t ep_take(uint32_t& at, uint32_t bytes) {
  const uint32_t here = at;
  at = ep_align16(at + bytes);
  return here;
}

// `tma_bytes`: the throughput data kernel's TMA slots (0 for the other kernels).
WEFT_EP_HD inline EpSmemLayout ep_smem_layout(EpKernel kernel, int experts, int world, int topk,
                                              int groups, uint32_t tma_bytes = 0) {
  const uint32_t el = static_cast<uint32_t>(experts / world);
  const uint32_t cols = static_cast<uint32_t>(experts + world);
  const bool scan = kernel == EpKernel::ll_dispatch || kernel == EpKernel::layout;
  // The low-latency kernel keeps its pair ranks here (the layout kernel writes them to global) and
  // its count messages carry a token bitmap.
  const bool ll = kernel == EpKernel::ll_dispatch;
  // The kernels that derive the receive layout from the counts; the throughput data kernel only
  // reads its result (pos_base, nsrc).
  const bool recv_layout = scan;
  const bool recv = kernel != EpKernel::combine;
  EpSmemLayout s{};
  uint32_t at = 0;
  s.ids = scan ? ep_take(at, 4u * kScanChunk * static_cast<uint32_t>(topk)) : 0;
  s.hist = scan ? ep_take(at, 4u * kWarps * cols) : 0;
  s.wrank = ll ? ep_take(at, 4u * kScanChunk * topk) : 0;
  // (The low-latency count blocks build a count message in `totals`.)
  const uint32_t ll_words =
      static_cast<uint32_t>(count_words(static_cast<int>(el), kLlTokenBitmapWords));
  s.totals = scan ? ep_take(at, 4u * (ll && ll_words > cols ? ll_words : cols)) : 0;
  s.cnt = recv_layout ? ep_take(at, 4u * world * (ll ? ll_words : el + 1)) : 0;
  s.pos_base = recv ? ep_take(at, 4u * world * el) : 0;
  s.tot = recv_layout ? ep_take(at, 4u * el) : 0;
  s.off = recv_layout ? ep_take(at, 4u * (el + 1)) : 0;
  // [W] rows per source, then their maximum, then (combine) the dispatch's token count and its
  // cb_abandoned mask
  s.nsrc = ep_take(at, 4u * (world + 3));
  s.scratch =
      groups > 0 ? ep_take(at, static_cast<uint32_t>(sizeof(EpGroupScratch)) * groups) : 0;
  s.tma_bars = kernel == EpKernel::tp_dispatch ? ep_take(at, 8u * kWarps) : 0;
  s.flag_q = kernel == EpKernel::tp_dispatch
                 ? ep_take(at, static_cast<uint32_t>(sizeof(FlagQueue)) * kWarps)
                 : 0;
  // The TMA region: kTmaSlack bytes to round its start up to kTmaAlign at run time (tma_region),
  // also when the plan asks for the layout's size before choosing tma_bytes.
  if (kernel == EpKernel::tp_dispatch || kernel == EpKernel::ll_dispatch) at += kTmaSlack;
  s.tma = tma_bytes > 0 ? ep_take(at, tma_bytes) : 0;
  s.bytes = at;
  return s;
}

// Parameters of the dispatch kernels (low-latency kernel, throughput layout and data kernels).
// "symmetric" buffers come from World::alloc (same offset on every rank); the rest is local.
//
// Staging (symmetric), indexed [buffer][source rank][slot], buffer = epoch & 1 in low-latency mode
// (double buffered), 0 in throughput mode; slot = the token's index among the source's tokens that
// go to this rank (throughput) or the token's own index (low latency, kLlTokenBitmapWords):
//   st_rows    [nbuf][W][T_max] rows of st_row_stride bytes (staged_row: bf16, or fp8 in the first
//              H bytes; low latency: fp8 in H bytes of their own after the bf16 row)
//   st_scales  [nbuf][W][T_max][H/128] fp32
//   st_meta    [nbuf][W][T_max][meta_ints(k)] int32 (throughput) or tagged 8-byte words (low
//              latency, ll_meta_words: no flag needs to cover them)
//   st_flags   [nbuf][W][T_max] signals: set to the epoch after the row, its scales and meta
//              (low latency: bf16 rows only; fp8 rows and scales show their own arrival, see
//              kFp8Poison4)
//   st_counts  [2][W][count_words(E/W, count_bitmap_words)] tagged words (dev::put_tagged; tag =
//              the epoch's low 32 bits, always double buffered by epoch parity): the source's rows
//              per local expert, its token count, then (low latency) its token bitmap
struct EpDispatchParams {
  // inputs
  const void* x;
  const void* topk;
  const float* weights;
  int idx64;  // topk holds int64
  int T;
  // sizes
  int E, E_local, H, k, T_max;
  int units;   // H / 16: a thread moves 16 channels at a time
  int groups;  // H / 128: fp8 scale groups
  int nbuf;
  int count_bitmap_words;  // low latency: kLlTokenBitmapWords; throughput: 0
  int send_blocks;      // throughput data kernel: blocks [0, send_blocks) send, the rest receive
  int warps_per_group;  // warps that move one row together (16 = the block)
  int hooked;           // low latency: a hook consumer may wait per expert (count arrivals)
  int fp8;              // this call quantizes to fp8 (its count messages say so: kCountFp8Bit)
  int abandon;          // this rank abandons the call: T = 0, kCountAbandonBit, no report
  uint32_t token_word_flags;  // kCountFp8Bit and kCountAbandonBit as fp8 and abandon say (one
                              // word for the count blocks to OR in, made on the host)
  int ll_layout_first;  // low-latency fp8: derive the layout before looking for rows, as bf16
                        // does (0: receive_rows_early_ll wherever a row buffer fits; the host
                        // picks by world size, WEFT_EP_LL_LAYOUT_FIRST overrides)
  int ll_pack;          // low latency: tokens per sending block, packed (WEFT_EP_LL_PACK, A/B
                        // runs; 0 = one token per block, spread over the grid: LlSenders)
  int64_t capacity;     // rows of the expert-grouped output (< 2^31)
  uint64_t row_stride;  // bytes per bf16 row (2 * H)
  uint64_t st_row_stride;  // bytes between staged rows: 2 * H, low latency 3 * H (staged_row)
  uint32_t tma_bytes;      // throughput data kernel: shared memory for the warps' TMA slots;
                           // low latency: a row buffer per receiving group (0 = none)
  // symmetric staging
  char* st_rows;
  float* st_scales;
  int32_t* st_meta;
  uint64_t* st_flags;
  uint64_t* st_counts;
  // outputs (local)
  void* recv_x;
  float* recv_scales;
  EpPairSource* recv_src;
  int32_t* counts_block;  // see counts_block_ints()
  int32_t* handle_rows;   // [W][T_max][handle_ints(k)]
  uint32_t* home_dmask;   // [T_max]: ranks each of this rank's tokens went to
  uint64_t* ready;        // [E_local]
  uint32_t* arrived;      // [E_local]
  // throughput layout (local scratch)
  int32_t* lay_dslot;      // [T_max][W]: slot relative to the token's chunk, -1 = not sent
  int32_t* lay_wrank;      // [T_max][k]: rank within (source, expert) relative to the chunk
  int32_t* lay_chunk_hist; // [chunks][E + W]
  int32_t* lay_chunk_base; // [chunks][E + W]: exclusive prefix over chunks
  int32_t* lay_pos_base;   // [W][E_local]: first output row of (source, local expert)
  EpState* state;
  EpError* error;  // host-mapped, may be null
  uint64_t* trace;  // [grid][kTraceSlots] or null (see TraceSlot)
};

// Staged row `row`: bf16 at its start; an fp8 row there too in throughput mode, but in low latency
// mode in the H bytes after the bf16 row, which only fp8 calls touch, so the poison that shows an
// fp8 row's arrival (kFp8Poison4) survives the bf16 calls in between.
WEFT_EP_HD inline char* staged_row(const EpDispatchParams& p, size_t row, bool ll_fp8) {
  return p.st_rows + row * p.st_row_stride + (ll_fp8 ? p.row_stride : 0);
}

// A combine's hello: its epoch and whether the rank abandoned it, in one monotonic word (a later
// combine's hello is larger than either form of an earlier one), so that the peers learn of an
// abandoned combine from the hello they wait for anyway (EpError::combine_abandoned).
WEFT_EP_HD inline constexpr uint64_t hello_word(uint64_t epoch, bool abandoned) {
  return (epoch << 1) | (abandoned ? 1u : 0u);
}

// Parameters of the combine kernel. Staging (symmetric), indexed [buffer][expert rank][token]:
//   cb_rows   [nbuf][W][T_max][H] bf16: the expert rank's weighted partial sum for the token
//   cb_flags  [nbuf][W][T_max] signals
//   cb_hello  [W] signals: rank s sets hello[s] on every peer to hello_word(epoch, abandon) when
//             its combine starts
struct EpCombineParams {
  const void* y;  // [capacity][H] bf16 expert outputs
  void* out;      // [T][H] bf16
  int E_local, H, k, T_max;  // (the dispatch's token count comes from counts_block: cb_tokens)
  int units;
  int nbuf;
  int send_blocks;  // 0: every block sends then receives (low latency)
  int warps_per_group;
  const int32_t* handle_rows;
  const uint32_t* home_dmask;
  const int32_t* counts_block;
  char* cb_rows;
  uint64_t* cb_flags;
  uint64_t* cb_hello;
  // This rank abandons the call (its own arguments failed a host check; y and out may be null):
  // it raises every flag its peers wait for without writing their rows (it reads only its
  // dispatch's bookkeeping), receives nothing, writes no output, and tells the peers by its hello
  // (hello_word).
  int abandon;
  // The rows of out (the token count of the last dispatch the host made). The dispatch combined is
  // the last one the device ran, which a graph replay makes another: the kernel writes no row at
  // or past out_rows and reports out_too_small where that dispatch had more tokens.
  int out_rows;
  EpState* state;
  EpError* error;   // host-mapped, may be null
  uint64_t* trace;  // [grid][kTraceSlots] or null (see TraceSlot)
};

}  // namespace weft::ops::ep
