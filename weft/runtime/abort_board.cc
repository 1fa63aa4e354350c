#include "weft/runtime/abort_board.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <random>

#include "weft/runtime/error.h"

namespace weft {
namespace {

constexpr uint32_t kPageMagic = 0x42414557;  // "WEAB"

std::string random_name() {
  std::random_device rd;
  const uint64_t hi = rd(), lo = rd();
  return fmt::format("/weft-abort-{}-{:016x}", static_cast<long>(::getpid()), (hi << 32) ^ lo);
}

// Maps the shared-memory object `name` (created when `create`), sized for one Page. Returns null
// with the reason in `why`.
AbortBoard::Page* map_page(const std::string& name, bool create, std::string* why) {
  const int fd = ::shm_open(name.c_str(), create ? O_CREAT | O_EXCL | O_RDWR : O_RDWR, 0600);
  if (fd < 0) {
    *why = fmt::format("shm_open({}): {}", name, std::strerror(errno));
    return nullptr;
  }
  const size_t bytes = sizeof(AbortBoard::Page);
  struct stat st {};
  if (create ? ::ftruncate(fd, static_cast<off_t>(bytes)) != 0
             : ::fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != bytes) {
    *why = create ? fmt::format("ftruncate({}): {}", name, std::strerror(errno))
                  : fmt::format("{} is not an abort board of this weft build", name);
    ::close(fd);
    if (create) ::shm_unlink(name.c_str());
    return nullptr;
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);  // the mapping keeps the object alive
  if (p == MAP_FAILED) {
    *why = fmt::format("mmap({}): {}", name, std::strerror(errno));
    if (create) ::shm_unlink(name.c_str());
    return nullptr;
  }
  return static_cast<AbortBoard::Page*>(p);
}

}  // namespace

std::string AbortBoard::default_host_key() {
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  return fmt::format("{}/{}", host, boot);
}

std::unique_ptr<AbortBoard> AbortBoard::create(Rendezvous& rendezvous, std::string_view host_key,
                                               std::string* why) {
  std::string reason;
  const int me = rendezvous.rank();
  // Round 1: who shares this host.
  const std::vector<std::string> keys = rendezvous.all_gather(host_key);
  std::vector<int> group;
  for (int r = 0; r < static_cast<int>(keys.size()); ++r)
    if (keys[r] == host_key) group.push_back(r);
  const int slot = static_cast<int>(std::find(group.begin(), group.end(), me) - group.begin());
  const bool wanted = group.size() >= 2 && group.size() <= static_cast<size_t>(kMaxRanks);
  if (group.size() < 2) reason = "no other rank on this host";
  if (group.size() > static_cast<size_t>(kMaxRanks))
    reason = fmt::format("{} ranks on this host, more than the {} a board holds", group.size(),
                         kMaxRanks);

  // Round 2: the group's lowest rank creates the page and shares its name. Nothing may throw
  // between the rounds: a rank that left them would leave its peers waiting.
  Page* page = nullptr;
  std::string name;
  if (wanted && slot == 0) {
    try {
      name = random_name();
    } catch (const std::exception& e) {  // std::random_device; nothing may throw between rounds
      reason = fmt::format("no random name for the board: {}", e.what());
    }
    if (!name.empty()) page = map_page(name, /*create=*/true, &reason);
    if (page != nullptr) {
      std::memset(page, 0, sizeof(Page));
      page->slots = static_cast<uint32_t>(group.size());
      for (size_t i = 0; i < group.size(); ++i) page->world_rank[i] = group[i];
      std::atomic_thread_fence(std::memory_order_release);
      page->magic = kPageMagic;
    } else {
      name.clear();
    }
  }
  const std::vector<std::string> names = rendezvous.all_gather(name);

  // Round 3: the others map it and check it; every rank says whether it holds the page.
  if (wanted && slot != 0) {
    name = names[group[0]];
    if (name.empty()) {
      reason = fmt::format("rank {} could not create the host's abort board", group[0]);
    } else if ((page = map_page(name, /*create=*/false, &reason)) != nullptr &&
               (page->magic != kPageMagic || page->slots != group.size() ||
                page->world_rank[slot] != me)) {
      reason = fmt::format("{} does not hold this World's abort board", name);
      ::munmap(page, sizeof(Page));
      page = nullptr;
    }
  }
  std::vector<std::string> held;
  try {
    held = rendezvous.all_gather(page != nullptr ? "1" : "0");
  } catch (...) {  // a rank is gone: the creator must not leave the object behind in /dev/shm
    if (wanted && slot == 0 && !name.empty()) ::shm_unlink(name.c_str());
    if (page != nullptr) ::munmap(page, sizeof(Page));
    throw;
  }
  if (wanted && slot == 0 && !name.empty()) ::shm_unlink(name.c_str());  // every rank is done
  if (page != nullptr) {
    for (int r : group) {
      if (held[r] != "1") {
        reason = fmt::format("rank {} on this host could not map the abort board", r);
        ::munmap(page, sizeof(Page));
        page = nullptr;
        break;
      }
    }
  }
  if (page == nullptr) {
    if (why != nullptr) *why = reason;
    return nullptr;
  }
  return std::unique_ptr<AbortBoard>(new AbortBoard(page, slot));
}

AbortBoard::~AbortBoard() { ::munmap(page_, sizeof(Page)); }

void AbortBoard::mark_host(std::string_view reason) {
  std::lock_guard<std::mutex> lock(mark_mutex_);
  if (marked()) return;
  const size_t n = std::min(reason.size(), kReasonBytes - 1);
  std::memcpy(page_->reason[slot_], reason.data(), n);
  page_->reason[slot_][n] = '\0';
  std::atomic_thread_fence(std::memory_order_release);  // the reason before the mark
  page_->mark[slot_] = kHost;
  std::atomic_thread_fence(std::memory_order_release);  // the mark before `any`
  page_->any = 1;
}

bool AbortBoard::any_peer() const {
  if (page_->any == 0) return false;
  for (uint32_t s = 0; s < page_->slots; ++s)
    if (static_cast<int>(s) != slot_ && page_->mark[s] != kNone) return true;
  return false;
}

std::vector<AbortBoard::Account> AbortBoard::accounts(bool include_own) const {
  std::vector<Account> out;
  if (page_->any == 0) return out;
  for (uint32_t s = 0; s < page_->slots; ++s) {
    const uint8_t mark = page_->mark[s];
    if ((static_cast<int>(s) == slot_ && !include_own) || mark == kNone) continue;
    std::atomic_thread_fence(std::memory_order_acquire);  // pairs with the marker's release
    Account a{page_->world_rank[s], static_cast<Mark>(mark), {}, std::nullopt};
    if (mark == kHost) a.reason.assign(page_->reason[s], ::strnlen(page_->reason[s], kReasonBytes));
    const auto* report = static_cast<const volatile dev::FaultReport*>(&page_->report[s]);
    if (report->ready != 0) {
      std::atomic_thread_fence(std::memory_order_acquire);
      dev::FaultReport copy;
      std::memcpy(&copy, const_cast<const dev::FaultReport*>(&page_->report[s]), sizeof(copy));
      a.report = copy;
    }
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace weft
