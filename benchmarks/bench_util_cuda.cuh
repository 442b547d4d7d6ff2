#pragma once
// Shared by the CUDA benchmarks: the context, data drawn on the device, paired timing with CUDA
// events, and main(). The statistics are bench_util_stats.hpp's, shared with the CPU benchmarks.
//
// Paired timing: every iteration runs the subject and its reference once each, alternating
// which goes first (the reference first on even iterations), with three events on the context's
// stream around the two parts and one synchronisation per iteration; the iteration's reported
// (manual) time is the subject's alone, so Google Benchmark appends "/manual_time" to the names.
// One untimed round first (cuBLAS heuristics, cuSPARSE preprocessing, kernel loading). Kernel
// launch gaps inside a part count: they are what a caller sees without CUDA graphs.

#include <cstdint>
#include <cstdio>
#include <type_traits>
#include <utility>

#include <benchmark/benchmark.h>

#include <peft/cuda.hpp>

#include "bench_util_stats.hpp"

namespace peft::bench {

using Ctx = Context<Cuda>;
using bf16 = __nv_bfloat16;
template <class T>
using DeviceMat = Matrix<T, Cuda>;

/// The one context of a benchmark program.
inline Ctx& context() {
  static Ctx ctx;
  return ctx;
}

template <class T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>)
    return "f32";
  else if constexpr (std::is_same_v<T, double>)
    return "f64";
  else if constexpr (std::is_same_v<T, __half>)
    return "f16";
  else
    return "bf16";
}

template <class T>
__global__ void fill_uniform_kernel(T* p, index_t count, float scale, RandomStream s) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += step)
    p[i] = gpu::detail::convert<T>(uniform_symmetric(s.bits(static_cast<std::uint64_t>(i)), scale));
}

/// count contiguous values uniform in [-scale, scale), drawn on the device (the big shapes hold
/// hundreds of MB).
template <class T>
void fill_uniform(T* p, index_t count, std::uint32_t seed, float scale = 1.0f) {
  if (count == 0) return;
  const auto s = make_stream(seed, 0, RandomPurpose::init);
  fill_uniform_kernel<T>
      <<<gpu::detail::grid_size(count), gpu::detail::kThreadsPerBlock, 0, context().stream()>>>(
          p, count, scale, s);
  PEFT_CUDA_CHECK_LAUNCH();
}

template <class T>
void fill_uniform(Matrix<T, Cuda>& m, std::uint32_t seed, float scale = 1.0f) {
  fill_uniform(m.data(), m.rows() * m.cols(), seed, scale);
}

/// Three events on the context's stream: the times of two consecutive parts.
class EventTriple {
 public:
  EventTriple() {
    for (auto& e : events_) PEFT_CUDA_CHECK(cudaEventCreate(&e));
  }
  EventTriple(const EventTriple&) = delete;
  EventTriple& operator=(const EventTriple&) = delete;
  ~EventTriple() {
    for (auto& e : events_) (void)cudaEventDestroy(e);
  }
  void record(int i) { PEFT_CUDA_CHECK(cudaEventRecord(events_[i], context().stream())); }
  /// Seconds between events 0 and 1, and between 1 and 2 (waits for event 2).
  std::pair<double, double> seconds() {
    PEFT_CUDA_CHECK(cudaEventSynchronize(events_[2]));
    float first = 0, second = 0;
    PEFT_CUDA_CHECK(cudaEventElapsedTime(&first, events_[0], events_[1]));
    PEFT_CUDA_CHECK(cudaEventElapsedTime(&second, events_[1], events_[2]));
    return {1e-3 * first, 1e-3 * second};
  }

 private:
  cudaEvent_t events_[3] = {};
};

/// Runs `subject` (the reported, manually set time) and `reference` once each per iteration, in
/// alternating order, timed by CUDA events (see the top of the file). Returns the per-iteration
/// times of both.
template <class Subject, class Reference>
Paired run_paired_events(benchmark::State& state, Subject&& subject, Reference&& reference) {
  subject();
  reference();
  context().synchronize();
  EventTriple events;
  Paired t;
  t.subject.reserve(static_cast<std::size_t>(state.max_iterations));
  t.reference.reserve(static_cast<std::size_t>(state.max_iterations));
  bool reference_first = true;
  for (auto _ : state) {
    events.record(0);
    if (reference_first)
      reference();
    else
      subject();
    events.record(1);
    if (reference_first)
      subject();
    else
      reference();
    events.record(2);
    const auto [first, second] = events.seconds();
    const double ts = reference_first ? second : first;
    const double tr = reference_first ? first : second;
    reference_first = !reference_first;
    state.SetIterationTime(ts);
    t.subject.push_back(ts);
    t.reference.push_back(tr);
  }
  return t;
}

/// main() of a CUDA benchmark: without a device prints why and returns 0; otherwise registers
/// the benchmarks, records the device and the TF32 setting in the JSON context, and runs them.
template <class Register>
int run_cuda_benchmarks(int argc, char** argv, const char* program, Register&& register_all) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    std::printf("%s: no CUDA device (%s), nothing to benchmark.\n", program,
                status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  cudaDeviceProp prop{};
  PEFT_CUDA_CHECK(cudaGetDeviceProperties(&prop, context().device()));
  benchmark::AddCustomContext("peft_device", prop.name);
  benchmark::AddCustomContext("peft_tf32", context().allow_tf32() ? "on" : "off");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace peft::bench
