#include "weft/runtime/error.h"

#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

namespace weft {
namespace {
std::atomic<int> g_rank{-1};

// Every live World's report, newest first. Allocated once and never freed, so a World destroyed
// during static destruction still finds it.
struct FaultSources {
  std::mutex mutex;
  struct Entry {
    const void* owner;
    detail::FaultSource source;
    detail::ContextLost lost;
  };
  std::vector<Entry> sources;
};
FaultSources& fault_sources() {
  static FaultSources* sources = new FaultSources;
  return *sources;
}

std::string describe(const std::string& call, const std::string& detail, int rank) {
  if (rank >= 0) return fmt::format("weft (rank {}): {}: {}", rank, call, detail);
  return fmt::format("weft: {}: {}", call, detail);
}
}  // namespace

std::string format_ranks(const std::vector<int>& ranks) {
  std::string out = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (i > 0) out += ", ";
    if (j - i >= 2) {
      out += fmt::format("{}-{}", ranks[i], ranks[j]);
    } else {
      out += std::to_string(ranks[i]);
      for (size_t k = i + 1; k <= j; ++k) out += fmt::format(", {}", ranks[k]);
    }
    i = j + 1;
  }
  return out;
}

int current_rank() { return g_rank.load(std::memory_order_relaxed); }
void set_current_rank(int rank) { g_rank.store(rank, std::memory_order_relaxed); }

Error::Error(std::string call, std::string detail)
    : std::runtime_error(describe(call, detail, current_rank())),
      call_(std::move(call)),
      detail_(std::move(detail)),
      rank_(current_rank()) {}

namespace detail {

void register_fault_source(const void* owner, FaultSource source, ContextLost lost) noexcept {
  FaultSources& s = fault_sources();
  std::lock_guard<std::mutex> lock(s.mutex);
  try {
    s.sources.insert(s.sources.begin(), {owner, source, lost});
  } catch (...) {  // out of memory: this owner's reports just stay out of CUDA errors
  }
}

void unregister_fault_source(const void* owner) noexcept {
  FaultSources& s = fault_sources();
  std::lock_guard<std::mutex> lock(s.mutex);
  std::erase_if(s.sources, [owner](const auto& e) { return e.owner == owner; });
}

std::optional<std::string> current_device_fault() {
  FaultSources& s = fault_sources();
  std::lock_guard<std::mutex> lock(s.mutex);
  std::optional<std::string> all;
  for (const auto& e : s.sources) {
    auto report = e.source(e.owner);
    if (!report) continue;
    all = all ? *all + "; " + *report : *report;
  }
  return all;
}

void report_context_lost(const std::string& what) noexcept {
  FaultSources& s = fault_sources();
  std::lock_guard<std::mutex> lock(s.mutex);
  for (const auto& e : s.sources) {
    if (e.lost == nullptr) continue;
    try {
      e.lost(e.owner, what);
    } catch (...) {  // telling the peers is best effort; the caller is throwing its own error
    }
  }
}

}  // namespace detail
}  // namespace weft
