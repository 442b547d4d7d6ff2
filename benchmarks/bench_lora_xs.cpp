// LoRA-XS on the CPU: its training step against LoRA's of the same rank, and the truncated SVD
// that builds its frozen factors against one base GEMM. Paired timing (bench_util.hpp): subject
// and reference run once each per iteration, in alternating order; counters are the median of
// the per-iteration ratios.
//
//   BM_LoraXsStep/n/in/out/r/adamw
//     adamw = 0: forward + backward + prepare_gradients + zero_grad (LoRA-XS's pull-back,
//                dR += dA_eff (Σ_r V_rᵀ)ᵀ)                          counter vs_lora
//     adamw = 1: forward + backward + AdamW::step (pull-back, the update of r² numbers against
//                LoRA's r (in + out), parameters_updated: A_eff = R Σ_r V_rᵀ) + zero_grad
//                                                                   counter vs_lora_adamw
//     against LoRA (same r, alpha, float) doing the same calls. Goal (issue 12): <= 1.0.
//   BM_TruncatedSvd/m/n/r/q
//     truncated_svd(W [m, n], r, power_iterations = q, oversampling 10) into U, S, Vt (float)
//     against one base GEMM y = x W0ᵀ with x [4096, n]                counter vs_gemm
//     (q = 10 is LoraXsConfig's default, as the reference's n_iter.)

#include <cstdint>
#include <tuple>

#include <benchmark/benchmark.h>

#include <peft/peft.hpp>

#include "bench_util.hpp"

namespace {

using peft::index_t;
using namespace peft::bench;

void BM_LoraXsStep(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), r = state.range(3);
  const bool adamw = state.range(4) != 0;
  Ctx& ctx = context();
  LayerOperands p(n, in, out);
  peft::LoraXs<float, peft::Cpu> xs(
      ctx, p.w0.view(), {.r = r, .alpha = double(2 * r), .svd = {.power_iterations = 2}});
  peft::Lora<float, peft::Cpu> lora(ctx, p.w0.view(), {.r = r, .alpha = double(2 * r)});
  // Tiny steps: the parameters stay finite however long the benchmark runs.
  peft::AdamW<float, peft::Cpu> xs_opt({.lr = 1e-7}), lora_opt({.lr = 1e-7});
  xs_opt.add(xs);
  lora_opt.add(lora);
  xs.preallocate(ctx, n);
  lora.preallocate(ctx, n);
  const auto step = [&](auto& layer, auto& optimizer) {
    layer.forward(ctx, as_const(p.x.view()), p.y.view());
    layer.backward(ctx, as_const(p.x.view()), as_const(p.dy.view()), p.dx.view());
    if (adamw)
      optimizer.step(ctx);
    else
      layer.prepare_gradients(ctx);
    layer.zero_grad(ctx);
  };
  const Paired t = run_paired(
      state, [&] { step(xs, xs_opt); }, [&] { step(lora, lora_opt); });
  state.counters[adamw ? "vs_lora_adamw" : "vs_lora"] = median_ratio(t);
  state.counters["lora_ms"] = 1e3 * mean(t.reference);
  state.counters["trainable"] = double(xs.num_trainable());
  state.counters["lora_trainable"] = double(lora.num_trainable());
}

void BM_TruncatedSvd(benchmark::State& state) {
  const index_t m = state.range(0), n = state.range(1), r = state.range(2), q = state.range(3);
  constexpr index_t rows = 4096;  // x of the base GEMM
  Ctx& ctx = context();
  Mat w(m, n), x(rows, n), y(rows, m), u(m, r), vt(r, n);
  peft::Vector<float, peft::Cpu> s(r);
  fill_uniform(w, 4);
  fill_uniform(x, 5);
  const peft::SvdOptions options{.oversampling = 10, .power_iterations = q, .seed = 0};
  const Paired t = run_paired(
      state,
      [&] {
        peft::cpu::truncated_svd(ctx, as_const(w.view()), r, options, u.view(), s.view(),
                                 vt.view());
      },
      [&] {
        gemm(ctx, peft::Op::N, peft::Op::T, 1.0, as_const(x.view()), as_const(w.view()), 0.0,
             y.view());
      });
  state.counters["vs_gemm"] = median_ratio(t);
  state.counters["gemm_ms"] = 1e3 * mean(t.reference);
  state.counters["svd_ms"] = 1e3 * mean(t.subject);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  for (auto [n, in, out, r] : {std::tuple<index_t, index_t, index_t, index_t>{512, 1024, 1024, 16},
                               {512, 2048, 2048, 16},
                               {512, 2048, 2048, 64},
                               {2048, 4096, 4096, 64}})
    for (index_t adamw : {0, 1})
      benchmark::RegisterBenchmark("BM_LoraXsStep", BM_LoraXsStep)
          ->Args({n, in, out, r, adamw})
          ->Unit(benchmark::kMillisecond);
  for (index_t q : {4, 10})
    benchmark::RegisterBenchmark("BM_TruncatedSvd", BM_TruncatedSvd)
        ->Args({4096, 4096, 64, q})
        ->Iterations(3)
        ->Unit(benchmark::kMillisecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
