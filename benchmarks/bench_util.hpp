#pragma once
// Shared by the CPU benchmarks: their context, deterministic data and a layer's operands, and
// paired timing of a subject against its reference inside one loop so that drift on a shared
// machine hits both alike (the statistics are in bench_util_stats.hpp, shared with the CUDA
// benchmarks' bench_util_cuda.cuh).

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <peft/peft.hpp>

#include "bench_util_stats.hpp"

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

/// float on the CPU: what the CPU benchmarks time.
using Mat = Matrix<float, Cpu>;
using Ctx = Context<Cpu>;

/// The one context of a benchmark process (the library's default thread count), shared by its
/// cases so that the BLAS threads and buffers are set up once.
inline Ctx& context() {
  static Ctx ctx;
  return ctx;
}

/// The operands of a layer [n, in] -> [n, out]: x, the frozen W0 [out, in] and dy filled from
/// fixed seeds; y and dx, which the layer writes, filled too so that their pages are touched
/// before any timing.
struct LayerOperands {
  Mat x, w0, y, dy, dx;
  LayerOperands(index_t n, index_t in, index_t out)
      : x(n, in), w0(out, in), y(n, out), dy(n, out), dx(n, in) {
    fill_uniform(x, 1);
    fill_uniform(w0, 2);
    fill_uniform(dy, 3);
    fill_uniform(y, 4);
    fill_uniform(dx, 5);
  }
};

inline double seconds_of(auto&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

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

/// Records the gemm provider of this build and the kernel it runs on this CPU in the JSON
/// context: peft_gemm_provider, peft_gemm_kernel, dnnl_version / blis_arch for those providers,
/// and openblas_core whenever OpenBLAS is linked (the provider, or the double gemm beside oneDNN).
inline void add_provider_context() {
  const std::string provider = peft::cpu::gemm_provider_name();
  const std::string kernel = peft::cpu::gemm_provider_kernel();
  benchmark::AddCustomContext("peft_gemm_provider", provider);
  benchmark::AddCustomContext("peft_gemm_kernel", kernel);
  if (provider == "onednn") benchmark::AddCustomContext("dnnl_version", kernel);
  if (provider == "blis") benchmark::AddCustomContext("blis_arch", kernel);
#if defined(PEFT_USE_BLAS)
  if (openblas_get_corename != nullptr)
    benchmark::AddCustomContext("openblas_core", openblas_get_corename());
#endif
}

}  // namespace peft::bench
