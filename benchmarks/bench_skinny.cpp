// The skinny float GEMM kernels (backend/cpu/skinny_gemm.hpp) on the six r-wide products of a
// LoRA layer, against the GEMM provider on the same product, and against themselves on one
// thread (the cut-over to threading).
//
//   BM_SkinnyGemm/case/n/in/out/r    skinny kernel (Context threads)  vs  the provider's gemm
//   BM_SkinnyThreads/case/n/in/out/r skinny kernel on the Context's threads  vs  on one thread
//
// case: 0 xa = x Aᵀ, 1 y = s xa Bᵀ, 2 dB += s dyᵀ xa, 3 dxa = s dy B, 4 dA += dxaᵀ x,
//       5 dx += dxa A   (x [n, in], A [r, in], B [out, r], dy [n, out]); with few rows
//       (n <= 32) also the base: 6 y = x W0ᵀ, 7 dx = dy W0 (W0 [out, in])
// Timing as in bench_lora (bench_util.hpp's run_paired). Counters:
//   vs_provider  median of per-iteration (skinny / provider) times
//   vs_1thread   median of per-iteration (threaded skinny / one-thread skinny) times
//   GFLOPS       2 m n k / mean skinny time, in 1e9/s
//   fma          m n k (compare with kSkinnyParallelFma, the threading cut-over)

#include <map>
#include <memory>
#include <string>
#include <tuple>

#include <benchmark/benchmark.h>

#include "bench_util.hpp"

namespace {

using peft::index_t;
using peft::Op;
using Ctx = peft::Context<peft::Cpu>;
using Mat = peft::Matrix<float, peft::Cpu>;
using namespace peft::bench;

/// One product: C [m, n] = alpha op(A) op(B) + beta C.
struct Product {
  Op op_a, op_b;
  index_t m, n, k;
  double alpha, beta;
  Mat a, b, c;

  Product(int which, index_t rows, index_t in, index_t out, index_t r) {
    // (op_a, op_b, m, n, k, beta) of each case, in the layer's orientations.
    const std::tuple<Op, Op, index_t, index_t, index_t, double> cases[] = {
        {Op::N, Op::T, rows, r, in, 0.0},   {Op::N, Op::T, rows, out, r, 0.0},
        {Op::T, Op::N, out, r, rows, 1.0},  {Op::N, Op::N, rows, r, out, 0.0},
        {Op::T, Op::N, r, in, rows, 1.0},   {Op::N, Op::N, rows, in, r, 1.0},
        {Op::N, Op::T, rows, out, in, 0.0}, {Op::N, Op::N, rows, in, out, 0.0}};
    std::tie(op_a, op_b, m, n, k, beta) = cases[which];
    alpha = 2.0;
    a = op_a == Op::N ? Mat(m, k) : Mat(k, m);
    b = op_b == Op::N ? Mat(k, n) : Mat(n, k);
    c = Mat(m, n);
    fill_uniform(a, 1);
    fill_uniform(b, 2);
    fill_uniform(c, 3);
  }
};

Product& product(const benchmark::State& state) {
  static std::map<std::tuple<index_t, index_t, index_t, index_t, index_t>, std::unique_ptr<Product>>
      cache;
  auto& slot =
      cache[{state.range(0), state.range(1), state.range(2), state.range(3), state.range(4)}];
  if (!slot)
    slot = std::make_unique<Product>(int(state.range(0)), state.range(1), state.range(2),
                                     state.range(3), state.range(4));
  return *slot;
}

bool skinny(Ctx& ctx, Product& p) {
  return peft::cpu::detail::skinny_gemm(ctx, p.op_a, p.op_b, float(p.alpha), as_const(p.a.view()),
                                        as_const(p.b.view()), float(p.beta), p.c.view(), p.k);
}

void BM_SkinnyGemm(benchmark::State& state) {
  static Ctx ctx;
  Product& p = product(state);
  if (!skinny(ctx, p)) {
    state.SkipWithError("no skinny kernel on this machine");
    return;
  }
  const Paired t = run_paired(
      state, [&] { skinny(ctx, p); },
      [&] {
        peft::cpu::detail::apply_threads(ctx);
        peft::cpu::detail::provider_gemm<float>(ctx.threads(), p.op_a, p.op_b, float(p.alpha),
                                                as_const(p.a.view()), as_const(p.b.view()),
                                                float(p.beta), p.c.view(), p.k);
      });
  state.counters["vs_provider"] = median_ratio(t);
  state.counters["GFLOPS"] = 2.0 * double(p.m) * double(p.n) * double(p.k) / mean(t.subject) * 1e-9;
  state.counters["fma"] = double(p.m) * double(p.n) * double(p.k);
}

void BM_SkinnyThreads(benchmark::State& state) {
  static Ctx ctx;
  static Ctx one(peft::CpuContextOptions{1});
  Product& p = product(state);
  if (!skinny(ctx, p)) {
    state.SkipWithError("no skinny kernel on this machine");
    return;
  }
  const Paired t = run_paired(
      state, [&] { skinny(ctx, p); }, [&] { skinny(one, p); });
  state.counters["vs_1thread"] = median_ratio(t);
  state.counters["GFLOPS"] = 2.0 * double(p.m) * double(p.n) * double(p.k) / mean(t.subject) * 1e-9;
  state.counters["fma"] = double(p.m) * double(p.n) * double(p.k);
}

void register_all() {
  // bench_lora's shapes (n, in, out, r).
  constexpr std::tuple<index_t, index_t, index_t, index_t> kShapes[] = {{16, 4096, 4096, 16},
                                                                        {512, 1024, 1024, 16},
                                                                        {512, 2048, 2048, 16},
                                                                        {512, 2048, 2048, 64},
                                                                        {2048, 4096, 4096, 16}};
  for (const auto& [n, in, out, r] : kShapes)
    for (int which = 0; which < (n <= 32 ? 8 : 6); ++which)  // the base too when few rows
      benchmark::RegisterBenchmark("BM_SkinnyGemm", BM_SkinnyGemm)
          ->Args({which, n, in, out, r})
          ->Unit(benchmark::kMicrosecond);
  // The threading cut-over: x Aᵀ and dA over growing batches (the fma counter).
  for (index_t n : {4, 8, 16, 32, 64, 128, 256})
    for (int which : {0, 4})
      benchmark::RegisterBenchmark("BM_SkinnyThreads", BM_SkinnyThreads)
          ->Args({which, n, 1024, 1024, 16})
          ->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  const auto isa = peft::cpu::detail::best_skinny_isa();
  benchmark::AddCustomContext("skinny_isa", isa == peft::cpu::detail::SkinnyIsa::avx512 ? "avx512"
                                            : isa == peft::cpu::detail::SkinnyIsa::avx2 ? "avx2"
                                                                                        : "none");
  benchmark::AddCustomContext("peft_threads", std::to_string(Ctx().threads()));
  add_provider_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
