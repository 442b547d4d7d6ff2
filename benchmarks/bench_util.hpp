#pragma once
// Shared by the CPU benchmarks: deterministic data, and paired timing of a subject against its
// reference inside one loop so that drift on a shared machine hits both alike.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include <benchmark/benchmark.h>

#include <peft/peft.hpp>

namespace peft::bench {

using Clock = std::chrono::steady_clock;

/// Uniform values in [-1, 1) from a xorshift generator (fast for large matrices).
template <class T>
void fill_uniform(Matrix<T, Cpu>& m, std::uint64_t seed) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  T* p = m.data();
  for (index_t i = 0; i < m.size(); ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    p[i] = static_cast<T>(static_cast<double>(s >> 40) / double(1 << 24) * 2.0 - 1.0);
  }
}

inline double seconds_of(auto&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

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

struct Paired {
  std::vector<double> subject, reference;
};

/// Runs `subject` (timed by the benchmark) and `reference` (benchmark clock paused) once each per
/// iteration, alternating which goes first, after one untimed warm-up round (when warm_up).
template <class Subject, class Reference>
Paired run_paired(benchmark::State& state, Subject&& subject, Reference&& reference,
                  bool warm_up = true) {
  if (warm_up) {
    subject();
    reference();
  }
  Paired t;
  t.subject.reserve(static_cast<std::size_t>(state.max_iterations));
  t.reference.reserve(static_cast<std::size_t>(state.max_iterations));
  bool reference_first = true;
  for (auto _ : state) {
    double ts = 0, tr = 0;
    if (reference_first) {
      state.PauseTiming();
      tr = seconds_of(reference);
      state.ResumeTiming();
      ts = seconds_of(subject);
    } else {
      ts = seconds_of(subject);
      state.PauseTiming();
      tr = seconds_of(reference);
      state.ResumeTiming();
    }
    reference_first = !reference_first;
    t.subject.push_back(ts);
    t.reference.push_back(tr);
  }
  return t;
}

/// The median over iterations of subject time / reference time of the same iteration.
inline double median_ratio(const Paired& t) {
  std::vector<double> ratios(t.subject.size());
  for (std::size_t i = 0; i < ratios.size(); ++i) ratios[i] = t.subject[i] / t.reference[i];
  return median(std::move(ratios));
}

}  // namespace peft::bench
