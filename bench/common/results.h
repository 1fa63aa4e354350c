// Benchmark result rows (bench/results/*.jsonl): one JSON object a line, in DESIGN.md's format
//
//   {"op": "ag_gemm", "shape": {"M": 8192, ...}, "dtype": "bf16", "world": 4,
//    "device": "NVIDIA H100 80GB HBM3", "weft_us": 412.0,
//    "baselines": {"nccl_then_cublas": 774.3, ...}, "ratio": 1.879,
//    "commit": "abc1234", "date": "2026-11-27", ...free-form extra fields...}
//
// Json is a small ordered JSON value (objects keep insertion order, so rows read the same way every
// time); ResultRow builds a row; append_row writes it on rank 0 only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace weft {
class World;
}

namespace weft::bench {

class Json {
 public:
  enum class Kind { null, boolean, integer, number, string, array, object };

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool b) : kind_(Kind::boolean), b_(b) {}
  template <class T>
    requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
  Json(T v) : kind_(Kind::integer) {
    if constexpr (std::is_unsigned_v<T>) {
      unsigned_ = v > static_cast<unsigned long long>(INT64_MAX);
      u_ = static_cast<uint64_t>(v);
    }
    i_ = static_cast<int64_t>(v);
  }
  template <class T>
    requires std::is_floating_point_v<T>
  Json(T v) : kind_(Kind::number), d_(static_cast<double>(v)) {}
  Json(const char* s) : kind_(Kind::string), s_(s) {}
  Json(std::string s) : kind_(Kind::string), s_(std::move(s)) {}
  Json(std::string_view s) : kind_(Kind::string), s_(s) {}

  static Json object() { Json j; j.kind_ = Kind::object; return j; }
  static Json array() { Json j; j.kind_ = Kind::array; return j; }

  Kind kind() const { return kind_; }
  // Object: set `key` (replacing an existing member in place, else appending). Turns null into {}.
  Json& set(std::string_view key, Json value);
  // Array: append. Turns null into [].
  Json& push(Json value);
  // Object member or nullptr.
  const Json* find(std::string_view key) const;
  // Members of an object / elements of an array, in order.
  size_t size() const { return values_.size(); }
  const std::string& key(size_t i) const { return keys_.at(i); }
  const Json& value(size_t i) const { return values_.at(i); }

  // Compact one-line JSON ("key": value pairs separated by ", "). Non-finite numbers become null.
  std::string dump() const;

 private:
  void dump_to(std::string& out) const;

  Kind kind_ = Kind::null;
  bool b_ = false;
  bool unsigned_ = false;  // an unsigned integer above INT64_MAX (kept in u_)
  int64_t i_ = 0;
  uint64_t u_ = 0;
  double d_ = 0;
  std::string s_;
  std::vector<std::string> keys_;  // object
  std::vector<Json> values_;       // object or array
};

// `text` as a JSON string literal, quotes included (escapes ", \, control characters; UTF-8 passes
// through unchanged).
std::string json_quote(std::string_view text);

// `x` rounded to `digits` decimals (keeps rows short; timings are not precise beyond that).
double round_to(double x, int digits);

struct ResultRow {
  std::string op;
  Json shape = Json::object();
  std::string dtype;
  int world = 0;
  std::string device;
  double weft_us = 0;
  std::vector<std::pair<std::string, double>> baselines;  // in the order given
  // Name (in `baselines`) of the main baseline: ratio = that baseline's us / weft_us. Empty: no
  // ratio field.
  std::string main_baseline;
  std::string commit;
  std::string date;  // YYYY-MM-DD; empty = today (UTC)
  Json extra = Json::object();  // appended after the fixed fields, e.g. "unit_extra": {...}

  // The row in DESIGN.md's field order. Times are rounded to 3 decimals (nanoseconds).
  Json to_json() const;
};

// Today's date in UTC as YYYY-MM-DD.
std::string today_utc();
// cudaDeviceProp::name of `device`.
std::string device_name(int device);

// Append `row.dump()` plus a newline to `path` (creating the file and its folder when missing);
// throws weft::Error when the write fails.
void append_jsonl(const std::string& path, const Json& row);
// Rank 0 appends the row to `path`; other ranks do nothing. Empty path: nothing is written.
void append_row(const World& world, const std::string& path, const ResultRow& row);

}  // namespace weft::bench
