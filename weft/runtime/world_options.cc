// WorldOptions from the environment (host-only, so CPU tests can cover the parsing).
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "weft/runtime/world.h"

namespace weft {
namespace {

// "1073741824", "512M", "1G", "64k" -> bytes.
size_t parse_bytes(const std::string& name, const std::string& text) {
  size_t pos = 0;
  unsigned long long value = 0;
  try {
    // Digits first: stoull would skip blanks and wrap a minus sign.
    if (!text.empty() && std::isdigit(static_cast<unsigned char>(text[0])))
      value = std::stoull(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  WEFT_CHECK_ARG(pos > 0, "{}={} is not a byte count (examples: 1073741824, 512M, 2G)", name, text);
  const std::string suffix = text.substr(pos);
  size_t scale = 1;
  if (suffix == "k" || suffix == "K") scale = size_t(1) << 10;
  else if (suffix == "m" || suffix == "M") scale = size_t(1) << 20;
  else if (suffix == "g" || suffix == "G") scale = size_t(1) << 30;
  else WEFT_CHECK_ARG(suffix.empty(), "{}={}: unknown suffix '{}' (use K, M or G)", name, text, suffix);
  WEFT_CHECK_ARG(value <= SIZE_MAX / scale, "{}={} does not fit in 64 bits", name, text);
  return static_cast<size_t>(value) * scale;
}

// "250" -> 250 ms (0 = wait forever). At most kMaxMs, so that nanoseconds fit in 64 bits.
constexpr long long kMaxMs = 1'000'000'000'000ll;  // ~31 years
std::chrono::milliseconds parse_ms(const std::string& name, const std::string& text) {
  size_t pos = 0;
  long long ms = -1;
  try {
    if (!text.empty() && std::isdigit(static_cast<unsigned char>(text[0])))
      ms = std::stoll(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  WEFT_CHECK_ARG(pos == text.size() && ms >= 0 && ms <= kMaxMs,
                 "{}={} is not a number of milliseconds in [0, {}] (0 = wait forever)", name, text,
                 kMaxMs);
  return std::chrono::milliseconds(ms);
}

// A variable set to the empty string counts as unset (as in bootstrap.h).
std::optional<std::string> value_of(const EnvLookup& env, const char* name) {
  auto v = env(name);
  if (v && v->empty()) return std::nullopt;
  return v;
}

}  // namespace

WorldOptions world_options_from_env(WorldOptions base, const EnvLookup& env) {
  if (auto v = value_of(env, "WEFT_HEAP_BYTES"))
    base.heap_bytes = parse_bytes("WEFT_HEAP_BYTES", *v);
  if (auto v = value_of(env, "WEFT_RENDEZVOUS_TIMEOUT_MS")) {
    const std::chrono::milliseconds ms = parse_ms("WEFT_RENDEZVOUS_TIMEOUT_MS", *v);
    base.rendezvous_timeout = ms.count() == 0 ? std::chrono::milliseconds::max() : ms;
  }
  if (auto v = value_of(env, "WEFT_WAIT_TIMEOUT_MS"))
    base.wait_timeout = parse_ms("WEFT_WAIT_TIMEOUT_MS", *v);
  if (auto v = value_of(env, "WEFT_SYNC_TIMEOUT_MS"))
    base.sync_timeout = parse_ms("WEFT_SYNC_TIMEOUT_MS", *v);
  if (auto v = value_of(env, "WEFT_CHECK_SYMMETRY")) {
    WEFT_CHECK_ARG(*v == "0" || *v == "1", "WEFT_CHECK_SYMMETRY must be 0 or 1, got {}", *v);
    base.check_symmetric_allocations = *v == "1";
  }
  return base;
}

std::chrono::milliseconds effective_sync_timeout(const WorldOptions& o) {
  if (o.sync_timeout.count() >= 0) return o.sync_timeout;
  if (o.wait_timeout.count() == 0) return std::chrono::milliseconds(0);
  return std::max<std::chrono::milliseconds>(std::chrono::seconds(120), 2 * o.wait_timeout);
}

}  // namespace weft
