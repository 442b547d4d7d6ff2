#pragma once
// The demo's synthetic tasks, deterministic functions of the seed.
//
//   Task A: 10 classes, each a mixture of 3 Gaussian blobs (so no linear model separates them).
//     The blob centres lie in the first 16 of the 64 input features; every feature gets unit
//     Gaussian noise, so the other 48 are pure distractors. Sample i has class i % 10 and blob
//     (i / 10) % 3: classes are balanced without any random draw.
//   Task B: A through a "rotated sensor": the feature planes (0, 1), ..., (6, 7) are rotated by
//     80 degrees. The rotation R is orthogonal and R - I has rank 8, so the first layer's
//     W1 Rᵀ = W1 + W1 (Rᵀ - I) undoes it with a rank-8 change of W1: a purely low-rank shift.
//   Task C: A with three rotated planes (features 0..5: a rank-6 change of W1) plus 20 alarm
//     channels, the noise features 16, 18, ..., 54. In 30% of the samples one alarm fires: its
//     feature jumps by +6 and the label becomes the alarm's class (alarm k means class k % 10),
//     whatever the blobs say. Catching an alarm takes a few hidden units that listen hard to that
//     one feature: a handful of large entries in each alarm's column of W1. That change is
//     sparse but of rank 20, so a rank-8 update fits it poorly, while RoSA's gradient mask finds
//     the alarm columns and its sparse part holds the large entries.

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "mlp.hpp"

namespace demo {

constexpr index_t kSignal = 16;  // features that carry the class in task A; the rest is noise
constexpr index_t kBlobsPerClass = 3;
constexpr double kSpread = 1.3;  // standard deviation of the blob centres (noise has 1)
constexpr double kAngleDegrees = 80;
constexpr index_t kAlarms = 20;
constexpr double kAlarmJump = 6;
constexpr double kAlarmFraction = 0.3;

// Groups of input features a task changes, to see where RoSA's masks land.
struct FeatureGroup {
  std::string name;
  std::vector<index_t> features;
};

struct Task {
  char name = 'A';
  Dataset train, test;
  std::vector<FeatureGroup> changed;
};

// One centre per (class, blob), non-zero only in the signal features.
inline Mat make_centres(std::uint64_t seed) {
  Mat centres(kClasses * kBlobsPerClass, kInputs);
  Random random = make_random(seed, kCentres);
  View c = centres.view();
  for (index_t i = 0; i < c.rows(); ++i)
    for (index_t j = 0; j < kSignal; ++j) c(i, j) = float(kSpread * random.normal());
  return centres;
}

// Task A's samples; `split` separates the random streams of the train and test sets of every
// task.
inline Dataset make_samples(const Mat& centres, index_t n, std::uint64_t seed,
                            std::uint32_t split) {
  Dataset d{Mat(n, kInputs), std::vector<int>(n)};
  Random noise = make_random(seed, kSamples, split);
  const ConstView c = centres.view();
  View x = d.x.view();
  for (index_t i = 0; i < n; ++i) {
    d.y[i] = int(i % kClasses);
    const index_t blob = d.y[i] * kBlobsPerClass + (i / kClasses) % kBlobsPerClass;
    for (index_t j = 0; j < kInputs; ++j) x(i, j) = c(blob, j) + float(noise.normal());
  }
  return d;
}

// Rotates the feature planes (0, 1), (2, 3), ... of the first `features` features.
inline void rotate_inputs(Dataset& d, index_t features) {
  const double angle = kAngleDegrees * 3.14159265358979323846 / 180.0;
  const float c = float(std::cos(angle)), s = float(std::sin(angle));
  View x = d.x.view();
  for (index_t i = 0; i < x.rows(); ++i) {
    for (index_t j = 0; j + 1 < features; j += 2) {
      const float u = x(i, j), v = x(i, j + 1);
      x(i, j) = c * u - s * v;
      x(i, j + 1) = s * u + c * v;
    }
  }
}

inline index_t alarm_feature(index_t k) {
  return kSignal + 2 * k;
}

// Task C's alarms: each sample draws whether an alarm fires and which one.
inline void add_alarms(Dataset& d, std::uint64_t seed, std::uint32_t split) {
  Random random = make_random(seed, kAlarmDraws, split);
  View x = d.x.view();
  for (index_t i = 0; i < x.rows(); ++i) {
    const bool fires = peft::uniform01(random.bits()) < kAlarmFraction;
    const index_t k = index_t(random.bits() % std::uint32_t(kAlarms));
    if (!fires) continue;
    x(i, alarm_feature(k)) += float(kAlarmJump);
    d.y[i] = int(k % kClasses);
  }
}

inline std::vector<index_t> range(index_t first, index_t count) {
  std::vector<index_t> r;
  for (index_t j = first; j < first + count; ++j) r.push_back(j);
  return r;
}

// Task `name` ('A', 'B' or 'C'), with its train and test sets.
inline Task make_task(char name, const Mat& centres, index_t train_size, index_t test_size,
                      std::uint64_t seed) {
  const std::uint32_t split = name == 'A' ? 0 : 2;  // B and C share A's shifted-task samples
  Task t{name,
         make_samples(centres, train_size, seed, split),
         make_samples(centres, test_size, seed, split + 1),
         {}};
  if (name == 'B') {
    for (Dataset* d : {&t.train, &t.test}) rotate_inputs(*d, 8);
    t.changed.push_back({"rotated", range(0, 8)});
  } else if (name == 'C') {
    for (Dataset* d : {&t.train, &t.test}) rotate_inputs(*d, 6);
    add_alarms(t.train, seed, split);
    add_alarms(t.test, seed, split + 1);
    FeatureGroup alarms{"alarm", {}};
    for (index_t k = 0; k < kAlarms; ++k) alarms.features.push_back(alarm_feature(k));
    t.changed.push_back(std::move(alarms));
    t.changed.push_back({"rotated", range(0, 6)});
  }
  return t;
}

}  // namespace demo
