// AdaLoRA's training step against LoRA's of the same initial rank, in one loop (ratios):
//   vs_lora           forward + backward + prepare_gradients (AdaLoRA's pull-back of dA_eff)
//   vs_lora_allocate  the same plus RankAllocator::update_and_allocate (importance EMAs, triplet
//                     scores, top-k over all ranks, mask) for this one layer
//   vs_lora_final     after RankAllocator::compact (init_r 12 -> 8 kept ranks) against LoRA of
//                     rank 8: forward + backward + prepare_gradients
// Goals (issue 10): vs_lora <= 1.15, vs_lora_final <= 1.05 on the CPU.

#include <benchmark/benchmark.h>

#include <vector>

#include <peft/peft.hpp>

#include "bench_util.hpp"

namespace {

using peft::index_t;
using namespace peft::bench;

void BM_AdaLoraStep(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), r = state.range(3);
  const bool allocate = state.range(4) != 0;
  Ctx& ctx = context();
  LayerOperands p(n, in, out);
  peft::AdaLora<float, peft::Cpu> ada(ctx, p.w0.view(), {.init_r = r, .alpha = double(2 * r)});
  peft::Lora<float, peft::Cpu> lora(ctx, p.w0.view(), {.r = r, .alpha = double(2 * r)});
  peft::RankAllocator<float, peft::Cpu> allocator(
      {.target_r = r / 2, .total_step = std::int64_t(1) << 40});
  allocator.add(ctx, ada, "layer");
  ada.preallocate(ctx, n);
  lora.preallocate(ctx, n);
  std::int64_t step = 1;
  const Paired t = run_paired(
      state,
      [&] {
        ada.forward(ctx, as_const(p.x.view()), p.y.view());
        ada.backward(ctx, as_const(p.x.view()), as_const(p.dy.view()), p.dx.view());
        ada.prepare_gradients(ctx);
        if (allocate) allocator.update_and_allocate(ctx, step++);
        ada.zero_grad(ctx);
      },
      [&] {
        lora.forward(ctx, as_const(p.x.view()), p.y.view());
        lora.backward(ctx, as_const(p.x.view()), as_const(p.dy.view()), p.dx.view());
        lora.zero_grad(ctx);
      });
  state.counters[allocate ? "vs_lora_allocate" : "vs_lora"] = median_ratio(t);
}

/// After RankAllocator::compact (here: keep_ranks, which it calls per layer): AdaLoRA shrunk
/// from init_r to `kept` ranks against LoRA of rank `kept`. The allocator does nothing more
/// once compacted, so the step is forward + backward + prepare_gradients.
void BM_AdaLoraCompactedStep(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), r = state.range(3),
                kept = state.range(4);
  Ctx& ctx = context();
  LayerOperands p(n, in, out);
  peft::AdaLora<float, peft::Cpu> ada(ctx, p.w0.view(), {.init_r = r, .alpha = double(2 * r)});
  peft::Lora<float, peft::Cpu> lora(ctx, p.w0.view(), {.r = kept, .alpha = double(2 * kept)});
  std::vector<index_t> ranks;
  for (index_t k = 0; k < kept; ++k) ranks.push_back(k * r / kept);  // spread over the ranks
  ada.keep_ranks(ctx, ranks);
  ada.preallocate(ctx, n);
  lora.preallocate(ctx, n);
  const Paired t = run_paired(
      state,
      [&] {
        ada.forward(ctx, as_const(p.x.view()), p.y.view());
        ada.backward(ctx, as_const(p.x.view()), as_const(p.dy.view()), p.dx.view());
        ada.prepare_gradients(ctx);
        ada.zero_grad(ctx);
      },
      [&] {
        lora.forward(ctx, as_const(p.x.view()), p.y.view());
        lora.backward(ctx, as_const(p.x.view()), as_const(p.dy.view()), p.dx.view());
        lora.zero_grad(ctx);
      });
  state.counters["vs_lora_final"] = median_ratio(t);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  for (auto [n, in, out] : {std::tuple<index_t, index_t, index_t>{512, 1024, 1024},
                            {512, 2048, 2048},
                            {2048, 4096, 4096}})
    for (index_t allocate : {0, 1})
      benchmark::RegisterBenchmark("BM_AdaLoraStep", BM_AdaLoraStep)
          ->Args({n, in, out, 12, allocate})
          ->Unit(benchmark::kMillisecond);
  for (auto [n, in, out] : {std::tuple<index_t, index_t, index_t>{512, 1024, 1024},
                            {512, 2048, 2048},
                            {2048, 4096, 4096}})
    benchmark::RegisterBenchmark("BM_AdaLoraCompactedStep", BM_AdaLoraCompactedStep)
        ->Args({n, in, out, 12, 8})
        ->Unit(benchmark::kMillisecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
