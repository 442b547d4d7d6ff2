// LoRA on the CPU against its own frozen base.
//
//   BM_LoraForward/n/in/out/r          layer.forward(x, y)                  vs  y = x W0ᵀ
//   BM_LoraForwardBackward/n/in/out/r  layer.forward + layer.backward(→dx)  vs  y = x W0ᵀ, dx = dy
//   W0 BM_Gemm/n/in/out                   the base forward GEMM through peft::cpu::gemm   (GF/s)
//   BM_CblasGemm/n/in/out              the same shape through cblas_sgemm directly     (GF/s)
//
// float, dropout 0, PEFT's default initialisation (B = 0 costs the GEMMs the same), the layer
// preallocated for n rows. The base is the library's own peft::cpu::gemm, with beta = 0 as a
// plain nn.Linear would run it.
//
// Timing. Every iteration runs the base and the adapter once each, in alternating order (base
// first on even iterations, adapter first on odd ones), so that machine drift and cache warmth
// hit both alike. Each part is timed with std::chrono::steady_clock. The benchmark's own clock
// is paused around the base, so the reported time is the adapter's alone. The first run of each
// case starts with one untimed round (page faults, OpenBLAS buffers); data and layers are built
// once per shape and shared by the cases.
//
// Counters (plain values, so repetitions aggregate them like times):
//   overhead  the median over the iterations of (adapter time / base time) of one iteration.
//             A ratio of two adjacent measurements cancels slow drift, and the median ignores
//             the iterations a neighbour on a shared machine slowed down.
//   floor     the FLOP-floor ratio (base + adapter FLOPs) / base FLOPs: the overhead the layer
//             would have if its r-wide products ran at the base GEMM's FLOP rate. Forward:
//             1 + r (in + out) / (in out); forward+backward: 1 + 1.5 r (in + out) / (in out)
//             (six r-wide products against the base's two GEMMs).
//   vs_floor  overhead / floor: 1 means the adapter costs no more per FLOP than the base.
//   base_ms   mean time of the base per iteration, in ms.
//   median_ms the median over the iterations of the layer's time, in ms (what
//             peft_compare/layers.py sets against PEFT's median).
//   GFLOPS    the FLOPs the layer really does (base + adapter) / mean adapter time, in 1e9/s.
//             BM_Gemm / BM_CblasGemm: 2·n·in·out / mean time.
//   vs_cblas  BM_Gemm with BLAS: median of per-iteration (peft::cpu::gemm / cblas_sgemm) times,
//             the two alternating as above; the library's base must stay within 1.05.
//
// Names carry no /min_time or /manual_time suffix, so that they read as in the README: the run
// length is --benchmark_min_time's. The 2048/4096/4096 shape takes 0.3 s or more per iteration,
// so a small min_time (0.5) gives it one or two iterations per repetition.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench_util.hpp"

#if defined(PEFT_USE_BLAS)
#include <cblas.h>
// OpenBLAS only; weak so that another BLAS still links. Recorded in the JSON context because
// the kernel OpenBLAS picks for the CPU sets the base's speed (see OPENBLAS_CORETYPE).
extern "C" char* openblas_get_corename(void) __attribute__((weak));
extern "C" char* openblas_get_config(void) __attribute__((weak));
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
#endif

namespace {

using peft::index_t;
using namespace peft::bench;

struct Shape {
  index_t n, in, out, r;
};

// (n, in, out, r)
constexpr Shape kShapes[] = {
    {16, 4096, 4096, 16},  {512, 1024, 1024, 16},  {512, 2048, 2048, 16},
    {512, 2048, 2048, 64}, {2048, 4096, 4096, 16},
};

/// Activations, gradients and the frozen weight of one (n, in, out): allocated, filled and
/// touched once per shape and shared by every benchmark of that shape (the big shape holds
/// ~190 MB and the benchmark library calls each case several times).
LayerOperands& problem(index_t n, index_t in, index_t out) {
  static std::map<std::tuple<index_t, index_t, index_t>, std::unique_ptr<LayerOperands>> cache;
  auto& slot = cache[{n, in, out}];
  if (!slot) slot = std::make_unique<LayerOperands>(n, in, out);
  return *slot;
}

/// One layer per (n, in, out, r), built once: dropout 0, PEFT's default initialisation (B = 0;
/// the GEMMs cost the same with a zero B).
peft::Lora<float, peft::Cpu>& layer(const Shape& s) {
  static std::map<std::tuple<index_t, index_t, index_t, index_t>,
                  std::unique_ptr<peft::Lora<float, peft::Cpu>>>
      cache;
  auto& slot = cache[{s.n, s.in, s.out, s.r}];
  if (!slot) {
    LayerOperands& p = problem(s.n, s.in, s.out);
    peft::LoraConfig cfg;
    cfg.r = s.r;
    cfg.alpha = double(2 * s.r);
    cfg.dropout = 0.0f;
    slot = std::make_unique<peft::Lora<float, peft::Cpu>>(context(), p.w0.view(), cfg);
    slot->preallocate(context(), s.n);
  }
  return *slot;
}

/// True the first time `key` is seen: the first run of a case warms up (page faults of fresh
/// buffers, OpenBLAS's buffers); the library calls each case several times and the later runs
/// find everything in place, which matters for the big shape (~0.3 s per GEMM).
bool first_time(const std::string& key) {
  static std::set<std::string> seen;
  return seen.insert(key).second;
}

std::string key_of(const char* what, const benchmark::State& state, int ranges) {
  std::string key = what;
  for (int i = 0; i < ranges; ++i) {
    key += '/';
    key += std::to_string(state.range(i));
  }
  return key;
}

Shape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), state.range(2), state.range(3)};
}

/// The counters of a Lora case from its paired times and the FLOPs of its base and its adapter.
/// The FLOP floor is what the overhead would be if the adapter's products ran at the base
/// GEMM's FLOP rate; vs_floor says how far above that the layer is.
void set_lora_counters(benchmark::State& state, const Paired& t, double base_flops,
                       double adapter_flops) {
  const double overhead = median_ratio(t);
  const double floor = (base_flops + adapter_flops) / base_flops;
  state.counters["overhead"] = overhead;
  state.counters["floor"] = floor;
  state.counters["vs_floor"] = overhead / floor;
  state.counters["base_ms"] = 1e3 * mean(t.reference);
  state.counters["median_ms"] = 1e3 * median(t.subject);
  state.counters["GFLOPS"] = (base_flops + adapter_flops) / mean(t.subject) * 1e-9;
}

void BM_LoraForward(benchmark::State& state) {
  const Shape s = shape_of(state);
  Ctx& ctx = context();
  LayerOperands& p = problem(s.n, s.in, s.out);
  auto& lora = layer(s);
  const auto x = as_const(p.x.view());
  const auto w0 = as_const(p.w0.view());
  const auto y = p.y.view();

  const Paired t = run_paired(
      state, [&] { lora.forward(ctx, x, y); },
      [&] { peft::cpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, w0, 0.0, y); },
      first_time(key_of("fwd", state, 4)));

  const double base_flops = 2.0 * double(s.n) * double(s.in) * double(s.out);
  const double adapter_flops = 2.0 * double(s.n) * double(s.r) * double(s.in + s.out);
  set_lora_counters(state, t, base_flops, adapter_flops);
}

void BM_LoraForwardBackward(benchmark::State& state) {
  const Shape s = shape_of(state);
  Ctx& ctx = context();
  LayerOperands& p = problem(s.n, s.in, s.out);
  auto& lora = layer(s);
  const auto x = as_const(p.x.view());
  const auto w0 = as_const(p.w0.view());
  const auto dy = as_const(p.dy.view());
  const auto y = p.y.view();
  const auto dx = p.dx.view();

  const Paired t = run_paired(
      state,
      [&] {
        lora.forward(ctx, x, y);
        lora.backward(ctx, x, dy, dx);
      },
      [&] {
        peft::cpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, w0, 0.0, y);
        peft::cpu::gemm(ctx, peft::Op::N, peft::Op::N, 1.0, dy, w0, 0.0, dx);
      },
      first_time(key_of("fwdbwd", state, 4)));
  lora.zero_grad(ctx);  // backward accumulates; keep the gradients bounded across runs

  const double base_flops = 2 * 2.0 * double(s.n) * double(s.in) * double(s.out);
  // forward: x Aᵀ (in), (x Aᵀ) Bᵀ (out); backward: dB (out), d(x Aᵀ) (out), dA (in), d(x Aᵀ) A (in)
  const double adapter_flops = 3 * 2.0 * double(s.n) * double(s.r) * double(s.in + s.out);
  set_lora_counters(state, t, base_flops, adapter_flops);
}

void BM_Gemm(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2);
  Ctx& ctx = context();
  LayerOperands& p = problem(n, in, out);
  const auto x = as_const(p.x.view());
  const auto w0 = as_const(p.w0.view());
  const auto y = p.y.view();
  auto library = [&] { peft::cpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, w0, 0.0, y); };
  const double flops = 2.0 * double(n) * double(in) * double(out);
#if defined(PEFT_USE_BLAS)
  auto direct = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(out), int(in), 1.0f,
                p.x.data(), int(in), p.w0.data(), int(in), 0.0f, p.y.data(), int(out));
  };
  const Paired t = run_paired(state, library, direct, first_time(key_of("gemm", state, 3)));
  state.counters["vs_cblas"] = median_ratio(t);
  state.counters["GFLOPS"] = flops / mean(t.subject) * 1e-9;
#else
  if (first_time(key_of("gemm", state, 3))) library();  // untimed warm-up
  std::vector<double> times;
  for (auto _ : state) times.push_back(seconds_of(library));
  state.counters["GFLOPS"] = flops / mean(times) * 1e-9;
#endif
}

#if defined(PEFT_USE_BLAS)
void BM_CblasGemm(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2);
  LayerOperands& p = problem(n, in, out);
  // The thread count the library gives OpenBLAS (the Context's), also for this direct call.
  if (openblas_set_num_threads != nullptr) openblas_set_num_threads(context().threads());
  auto direct = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(out), int(in), 1.0f,
                p.x.data(), int(in), p.w0.data(), int(in), 0.0f, p.y.data(), int(out));
  };
  if (first_time(key_of("cblas", state, 3))) direct();  // untimed warm-up
  std::vector<double> times;
  times.reserve(static_cast<std::size_t>(state.max_iterations));
  for (auto _ : state) times.push_back(seconds_of(direct));
  state.counters["GFLOPS"] = 2.0 * double(n) * double(in) * double(out) / mean(times) * 1e-9;
}
#endif

void register_all() {
  std::vector<std::tuple<index_t, index_t, index_t>> bases;
  for (const Shape& s : kShapes) {
    benchmark::RegisterBenchmark("BM_LoraForward", BM_LoraForward)
        ->Args({s.n, s.in, s.out, s.r})
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("BM_LoraForwardBackward", BM_LoraForwardBackward)
        ->Args({s.n, s.in, s.out, s.r})
        ->Unit(benchmark::kMillisecond);
    // The base GEMM of each distinct (n, in, out).
    const auto key = std::make_tuple(s.n, s.in, s.out);
    if (std::find(bases.begin(), bases.end(), key) != bases.end()) continue;
    bases.push_back(key);
    benchmark::RegisterBenchmark("BM_Gemm", BM_Gemm)
        ->Args({s.n, s.in, s.out})
        ->Unit(benchmark::kMillisecond);
#if defined(PEFT_USE_BLAS)
    benchmark::RegisterBenchmark("BM_CblasGemm", BM_CblasGemm)
        ->Args({s.n, s.in, s.out})
        ->Unit(benchmark::kMillisecond);
#endif
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::AddCustomContext("peft_threads", std::to_string(context().threads()));
  add_provider_context();
#if defined(PEFT_USE_BLAS)
  if (openblas_get_config != nullptr)
    benchmark::AddCustomContext("openblas_config", openblas_get_config());
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
