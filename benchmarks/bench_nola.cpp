// NOLA against LoRA of the same rank, in one loop (ratios survive a noisy machine):
//   BM_NolaStep      one optimizer step's adapter work: `micro` micro-batches of forward +
//                    backward, then NOLA's pull-back (prepare_gradients) and generate
//                    (parameters_updated), against LoRA's micro-batches alone    -> vs_lora
//   BM_NolaGenerate  pull-back + generate alone against one base GEMM x W0ᵀ    -> vs_gemm, and
//                    the basis entries drawn per second                         -> entries_per_s
// Issue 11's goal on the CPU: vs_lora <= 1.3 with one micro-batch per step, <= 1.1 with four, at
// n = 512, in = out = 2048, r = 8, kA = kB = 1024.

#include <benchmark/benchmark.h>

#include <peft/peft.hpp>

#include "bench_util.hpp"

namespace {

using peft::index_t;
using namespace peft::bench;

/// Non-zero coefficients (zero ones cost nothing in generate), then generate.
void randomise(Ctx& ctx, peft::Nola<float, peft::Cpu>& layer) {
  std::uint64_t seed = 5;
  for (auto& p : layer.parameters()) {
    Mat values(p.value.rows(), p.value.cols());
    fill_uniform(values, ++seed);
    peft::cpu::copy(ctx, as_const(values.view()), p.value);
  }
  layer.parameters_updated(ctx);
}

peft::NolaConfig nola_config(index_t r, index_t k) {
  return {.r = r, .alpha = double(2 * r), .num_basis_a = k, .num_basis_b = k, .seed = 1};
}

void BM_NolaStep(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), r = state.range(3);
  const index_t k = state.range(4), micro = state.range(5);
  Ctx& ctx = context();
  LayerOperands p(n, in, out);
  peft::Nola<float, peft::Cpu> nola(ctx, p.w0.view(), nola_config(r, k));
  peft::Lora<float, peft::Cpu> lora(ctx, p.w0.view(), {.r = r, .alpha = double(2 * r)});
  randomise(ctx, nola);
  nola.preallocate(ctx, n);
  lora.preallocate(ctx, n);
  const Paired t = run_paired(
      state,
      [&] {
        for (index_t m = 0; m < micro; ++m) {
          nola.forward(ctx, as_const(p.x.view()), p.y.view());
          nola.backward(ctx, as_const(p.x.view()), as_const(p.dy.view()), p.dx.view());
        }
        nola.prepare_gradients(ctx);
        nola.parameters_updated(ctx);
        nola.zero_grad(ctx);
      },
      [&] {
        for (index_t m = 0; m < micro; ++m) {
          lora.forward(ctx, as_const(p.x.view()), p.y.view());
          lora.backward(ctx, as_const(p.x.view()), as_const(p.dy.view()), p.dx.view());
        }
        lora.zero_grad(ctx);
      });
  state.counters["vs_lora"] = median_ratio(t);
}

void BM_NolaGenerate(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), r = state.range(3);
  const index_t k = state.range(4);
  Ctx& ctx = context();
  LayerOperands p(n, in, out);
  peft::Nola<float, peft::Cpu> nola(ctx, p.w0.view(), nola_config(r, k));
  randomise(ctx, nola);
  nola.preallocate(ctx, n);
  nola.forward(ctx, as_const(p.x.view()), p.y.view());
  nola.backward(ctx, as_const(p.x.view()), as_const(p.dy.view()), {});
  const Paired t = run_paired(
      state,
      [&] {
        nola.backward_delta(ctx, as_const(p.x.view()).block(0, 0, 1, in),
                            as_const(p.dy.view()).block(0, 0, 1, out), {});  // keeps pull_back busy
        nola.prepare_gradients(ctx);
        nola.parameters_updated(ctx);
      },
      [&] {
        peft::cpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, as_const(p.x.view()),
                        as_const(p.w0.view()), 0.0, p.y.view());
      });
  state.counters["vs_gemm"] = median_ratio(t);
  state.counters["entries_per_s"] = benchmark::Counter(
      double(2 * k * r * (in + out)), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  for (index_t micro : {1, 4})
    benchmark::RegisterBenchmark("BM_NolaStep", BM_NolaStep)
        ->Args({512, 2048, 2048, 8, 1024, micro})
        ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("BM_NolaGenerate", BM_NolaGenerate)
      ->Args({512, 2048, 2048, 8, 1024})
      ->Unit(benchmark::kMillisecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
