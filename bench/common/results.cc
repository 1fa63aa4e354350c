#include "bench/common/results.h"

#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "weft/runtime/cuda_check.h"
#include "weft/runtime/error.h"
#include "weft/runtime/world.h"

namespace weft::bench {

Json& Json::set(std::string_view key, Json value) {
  if (kind_ == Kind::null) kind_ = Kind::object;
  WEFT_CHECK(kind_ == Kind::object, "Json::set(\"{}\") on a value that is not an object", key);
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] == key) {
      values_[i] = std::move(value);
      return *this;
    }
  }
  keys_.emplace_back(key);
  values_.push_back(std::move(value));
  return *this;
}

Json& Json::push(Json value) {
  if (kind_ == Kind::null) kind_ = Kind::array;
  WEFT_CHECK(kind_ == Kind::array, "Json::push on a value that is not an array");
  values_.push_back(std::move(value));
  return *this;
}

const Json* Json::find(std::string_view key) const {
  if (kind_ != Kind::object) return nullptr;
  for (size_t i = 0; i < keys_.size(); ++i)
    if (keys_[i] == key) return &values_[i];
  return nullptr;
}

std::string json_quote(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        else
          out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

void Json::dump_to(std::string& out) const {
  switch (kind_) {
    case Kind::null: out += "null"; break;
    case Kind::boolean: out += b_ ? "true" : "false"; break;
    case Kind::integer: out += unsigned_ ? fmt::format("{}", u_) : fmt::format("{}", i_); break;
    case Kind::number:
      // Shortest text that reads back as the same double, always with a fraction or exponent so
      // that it reads back as a float (412.0, not 412); JSON has no inf/nan.
      if (std::isfinite(d_)) {
        std::string text = fmt::format("{}", d_);
        if (text.find_first_of(".eE") == std::string::npos) text += ".0";
        out += text;
      } else {
        out += "null";
      }
      break;
    case Kind::string: out += json_quote(s_); break;
    case Kind::array:
      out.push_back('[');
      for (size_t i = 0; i < values_.size(); ++i) {
        if (i) out += ", ";
        values_[i].dump_to(out);
      }
      out.push_back(']');
      break;
    case Kind::object:
      out.push_back('{');
      for (size_t i = 0; i < values_.size(); ++i) {
        if (i) out += ", ";
        out += json_quote(keys_[i]);
        out += ": ";
        values_[i].dump_to(out);
      }
      out.push_back('}');
      break;
  }
}

std::string Json::dump() const {
  std::string out;
  dump_to(out);
  return out;
}

double round_to(double x, int digits) {
  if (!std::isfinite(x)) return x;
  const double scale = std::pow(10.0, digits);
  return std::round(x * scale) / scale;
}

Json ResultRow::to_json() const {
  Json j = Json::object();
  j.set("op", op);
  j.set("shape", shape.kind() == Json::Kind::null ? Json::object() : shape);
  j.set("dtype", dtype);
  j.set("world", world);
  j.set("device", device);
  j.set("weft_us", round_to(weft_us, 3));
  Json b = Json::object();
  double main_us = NAN;
  for (const auto& [name, us] : baselines) {
    b.set(name, round_to(us, 3));
    if (name == main_baseline) main_us = us;
  }
  j.set("baselines", std::move(b));
  if (!main_baseline.empty()) {
    WEFT_CHECK(!std::isnan(main_us), "row '{}': main baseline '{}' is not among its baselines", op,
               main_baseline);
    j.set("ratio", weft_us > 0 ? round_to(main_us / weft_us, 4) : NAN);
  }
  j.set("commit", commit.empty() ? std::string("unknown") : commit);
  j.set("date", date.empty() ? today_utc() : date);
  if (extra.kind() == Json::Kind::object) {
    // Extra fields follow the fixed ones; they may not replace them.
    for (const char* fixed : {"op", "shape", "dtype", "world", "device", "weft_us", "baselines",
                              "ratio", "commit", "date"})
      WEFT_CHECK(extra.find(fixed) == nullptr, "row '{}': extra field '{}' clashes with a fixed field",
                 op, fixed);
    for (size_t i = 0; i < extra.size(); ++i) j.set(extra.key(i), extra.value(i));
  }
  return j;
}

std::string today_utc() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  return fmt::format("{:04d}-{:02d}-{:02d}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  WEFT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

void append_jsonl(const std::string& path, const Json& row) {
  const std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  std::ofstream out(p, std::ios::app);
  WEFT_CHECK(out.good(), "cannot open {} for appending", path);
  out << row.dump() << '\n';
  out.flush();
  WEFT_CHECK(out.good(), "writing a result row to {} failed", path);
}

void append_row(const World& world, const std::string& path, const ResultRow& row) {
  if (path.empty() || world.rank() != 0) return;
  append_jsonl(path, row.to_json());
}

}  // namespace weft::bench
