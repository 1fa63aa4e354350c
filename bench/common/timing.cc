#include "bench/common/timing.h"

#include <algorithm>
#include <cstring>

#include "weft/runtime/cuda_check.h"

namespace weft::bench {

EventTimer::EventTimer(int iters) {
  start_.reserve(iters);
  stop_.reserve(iters);
  try {
    for (int i = 0; i < iters; ++i) {
      cudaEvent_t a = nullptr, b = nullptr;
      WEFT_CUDA_CHECK(cudaEventCreate(&a));
      start_.push_back(a);
      WEFT_CUDA_CHECK(cudaEventCreate(&b));
      stop_.push_back(b);
    }
  } catch (...) {
    for (auto e : start_) cudaEventDestroy(e);
    for (auto e : stop_) cudaEventDestroy(e);
    throw;
  }
}

EventTimer::~EventTimer() {
  for (auto e : start_) cudaEventDestroy(e);
  for (auto e : stop_) cudaEventDestroy(e);
}

void EventTimer::start(int i, cudaStream_t stream) {
  WEFT_CUDA_CHECK(cudaEventRecord(start_.at(i), stream));
}

void EventTimer::stop(int i, cudaStream_t stream) {
  WEFT_CUDA_CHECK(cudaEventRecord(stop_.at(i), stream));
}

std::vector<double> EventTimer::elapsed_us() const {
  std::vector<double> us(start_.size());
  for (size_t i = 0; i < start_.size(); ++i) {
    float ms = 0.f;
    WEFT_CUDA_CHECK(cudaEventElapsedTime(&ms, start_[i], stop_[i]));
    us[i] = static_cast<double>(ms) * 1e3;
  }
  return us;
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + mid, v.end());
  if (v.size() % 2 == 1) return v[mid];
  const double upper = v[mid];
  const double lower = *std::max_element(v.begin(), v.begin() + mid);
  return 0.5 * (lower + upper);
}

double minimum(const std::vector<double>& v) {
  return v.empty() ? NAN : *std::min_element(v.begin(), v.end());
}

double maximum(const std::vector<double>& v) {
  return v.empty() ? NAN : *std::max_element(v.begin(), v.end());
}

std::vector<double> gather_values(World& world, double mine) {
  const auto all =
      world.rendezvous().all_gather(std::string_view(reinterpret_cast<const char*>(&mine), sizeof(mine)));
  WEFT_CHECK(static_cast<int>(all.size()) == world.size(), "all_gather returned {} entries for {} ranks",
             all.size(), world.size());
  std::vector<double> values(all.size());
  for (size_t r = 0; r < all.size(); ++r) {
    WEFT_CHECK(all[r].size() == sizeof(double), "rank {} sent {} bytes, expected {}", r,
               all[r].size(), sizeof(double));
    std::memcpy(&values[r], all[r].data(), sizeof(double));
  }
  return values;
}

double slowest_rank(World& world, double mine) {
  double worst = NAN;
  for (double v : gather_values(world, mine))
    if (!std::isnan(v) && (std::isnan(worst) || v > worst)) worst = v;
  return worst;
}

double slowest_rank_median(World& world, const std::vector<double>& samples) {
  return slowest_rank(world, median(samples));
}

double sum_over_ranks(World& world, double mine) {
  double sum = 0;
  for (double v : gather_values(world, mine)) sum += v;
  return sum;
}

}  // namespace weft::bench
