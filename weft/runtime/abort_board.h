// The abort board: where the ranks on one host tell each other that one of them gave up, so that
// its peers stop waiting for it at once instead of at their wait timeout.
//
// One POSIX shared-memory object per host and World (about 80 KB), mapped by every rank of the
// World on that host (and, once World registers it with CUDA, by their GPUs). It holds, per rank:
//   - the rank's device fault report: World points its Context's `fault` here, so the report a
//     trapping kernel leaves is readable by the peers' hosts too;
//   - a mark that the rank gave up (set by its GPU in the fault path, or by its host: a CUDA error
//     that ends its context, World::abort) and, from the host, a line saying why;
// and one word, `any`, that every rank giving up sets. Device waits that have spun a while read
// `any` (weft/device/signal.cuh) and give up too, through their own timeout's report flagged
// peer_gave_up; World then quotes the marked ranks' own accounts.
//
// Only ranks that share a host see each other's marks (the node's NVLink domain, today's LSA team):
// ranks on other hosts still wait until their timeout. Every rank writes only its own slot, so the
// page needs no atomics across processes (plain stores; `any` only ever goes from 0 to 1).
//
// Host-only, no CUDA: World does the CUDA registration.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "weft/device/context.h"
#include "weft/runtime/rendezvous.h"

namespace weft {

class AbortBoard {
 public:
  static constexpr int kMaxRanks = 72;          // ranks per host that share one board
  static constexpr size_t kReasonBytes = 1024;  // a host account, NUL included

  enum Mark : uint8_t { kNone = 0, kDevice = 1, kHost = 2 };

  // The page. Plain data so that every process and GPU maps the same layout.
  struct Page {
    uint32_t magic;
    uint32_t slots;         // ranks on this host
    volatile uint32_t any;  // 1 once any slot is marked
    uint32_t reserved;
    int32_t world_rank[kMaxRanks];         // slot -> rank in the World
    volatile uint8_t mark[kMaxRanks];      // Mark of each slot
    dev::FaultReport report[kMaxRanks];    // each rank's device fault report
    char reason[kMaxRanks][kReasonBytes];  // kHost marks: the rank's account
  };

  // What a rank that gave up left on the board.
  struct Account {
    int rank;  // in the World
    Mark mark;
    std::string reason;                      // kHost: the host's line
    std::optional<dev::FaultReport> report;  // kDevice: the report, once it is complete
  };

  // Collective over the World (three all_gather rounds on `rendezvous`): the ranks whose
  // `host_key` is equal share one board, created by the lowest of them. Returns null, with the
  // reason in `why`, when this rank's host group has one rank (nobody to tell) or more than
  // kMaxRanks, or when any rank of the group could not create or map the page (another IPC
  // namespace, say): then none of the group uses it, so no rank marks a board its peers do not
  // read. The shared-memory name is removed once every rank of the group has mapped it.
  static std::unique_ptr<AbortBoard> create(Rendezvous& rendezvous, std::string_view host_key,
                                            std::string* why = nullptr);
  ~AbortBoard();
  AbortBoard(const AbortBoard&) = delete;
  AbortBoard& operator=(const AbortBoard&) = delete;

  // This host's identity for create(): the host name and the kernel's boot id.
  static std::string default_host_key();

  Page* page() const { return page_; }
  size_t page_bytes() const { return sizeof(Page); }
  int slot() const { return slot_; }

  // Marks this rank as having given up, with `reason` (cut to kReasonBytes - 1). The first mark of
  // this rank stays; later calls do nothing. Safe to call from any thread.
  void mark_host(std::string_view reason);
  // Where this rank's GPU marks the board (host addresses; World translates them for the device).
  volatile uint32_t* any_word() const { return &page_->any; }
  volatile uint8_t* own_mark() const { return &page_->mark[slot_]; }
  dev::FaultReport* own_report() const { return &page_->report[slot_]; }
  bool marked() const { return page_->mark[slot_] != kNone; }

  // Every rank on this host that gave up (this one too when `include_own`), in slot order.
  std::vector<Account> accounts(bool include_own) const;
  // Whether any other rank on this host gave up.
  bool any_peer() const;
  // Whether any rank on this host, this one included, gave up (one load; for polling loops).
  bool any() const { return page_->any != 0; }

 private:
  AbortBoard(Page* page, int slot) : page_(page), slot_(slot) {}

  Page* page_;
  int slot_;
  std::mutex mark_mutex_;
};

}  // namespace weft
