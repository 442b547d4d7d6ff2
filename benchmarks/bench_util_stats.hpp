#pragma once
// Statistics of paired timings, shared by the CPU benchmarks (bench_util.hpp) and the CUDA ones
// (bench_util_cuda.cuh): a subject and its reference are timed in the same iteration, so that
// drift on a shared machine hits both alike, and their per-iteration ratio is reported. Needs
// neither Eigen nor CUDA.

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

namespace peft::bench {

inline double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  const auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  if (v.size() % 2 == 1) return *mid;
  return 0.5 * (*mid + *std::max_element(v.begin(), mid));
}

/// Per-iteration times (seconds) of a subject and its reference.
struct Paired {
  std::vector<double> subject, reference;
};

/// The median over iterations of subject time / reference time of the same iteration.
inline double median_ratio(const Paired& t) {
  std::vector<double> ratios(t.subject.size());
  for (std::size_t i = 0; i < ratios.size(); ++i) ratios[i] = t.subject[i] / t.reference[i];
  return median(std::move(ratios));
}

}  // namespace peft::bench
