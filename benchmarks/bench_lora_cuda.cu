// LoRA on an NVIDIA GPU against its own frozen base: the CUDA twin of bench_lora.cpp.
//
//   BM_LoraForward<T>/n/in/out/r          forward(x, y)           vs  y = x W0ᵀ
//   BM_LoraForwardBackward<T>/n/in/out/r  forward + backward(→dx)  vs  y = x W0ᵀ, dx = dy W0
//   BM_Gemm<T>/n/in/out                   the base forward GEMM through peft::gpu::gemm (GF/s)
//
// T is f32 (full fp32: the Context's default allow_tf32 = false) or bf16 (__nv_bfloat16, fp32
// accumulation, fp32 adapter parameters with bf16 GEMM copies). The shapes are bench_lora.cpp's,
// for both types, plus two LLM-sized ones in bf16: 4096/4096/4096/16 and 8192/4096/11008/16
// (a 7B model's MLP up-projection over 8192 tokens). Dropout 0, PEFT's default initialisation.
//
// Timing: bench_util_cuda.cuh's paired CUDA events (manual time: Google Benchmark appends
// "/manual_time" to the names). Every iteration runs the base and the adapter once each, in
// alternating order; the reported time is the adapter's alone.
//
// Counters (plain values, so repetitions aggregate them like times):
//   overhead  median over iterations of (adapter time / base time) of the same iteration.
//   base_ms   mean time of the base per iteration, in ms.
//   GFLOPS    FLOPs the layer really does (base + adapter) / mean adapter time, in 1e9/s.
//             For BM_Gemm: 2·n·in·out / mean time.
//   vs_cublas BM_Gemm only: median of per-iteration (peft gemm / direct cublasGemmEx) times, the
//             two alternating as above; the library's wrapper must stay at ~1.00.
//
// Memory passes of Lora (no bias, no dropout; read from adapters/lora.hpp). The adapter GEMMs
// have r = 16 columns, so they are bound by memory traffic over the [n, in] and [n, out]
// activations, not by FLOPs; these passes are the overhead to expect:
//   forward   x Aᵀ → xa [n, r]           reads x      (1st pass over x)
//             s xa Bᵀ → y, beta = 0      writes y     (1st write of y, no read)
//             x W0ᵀ + y → y, beta = 1    reads x      (2nd pass over x, inside the base GEMM)
//                                        reads y once and writes it again (the beta = 1 epilogue)
//             => x: 2 reads; y: 2 writes + 1 read.      base alone: x 1 read, y 1 write.
//   backward  dB += s dyᵀ xa              reads dy     (1st pass over dy)
//             dxa = s dy B [n, r]         reads dy     (2nd pass over dy)
//             dA += dxaᵀ x                reads x      (3rd pass over x, counting the forward)
//             dx = dxa A, beta = 0        writes dx    (1st write of dx)
//             dx += dy W0, beta = 1       reads dy     (3rd pass over dy, inside the base GEMM)
//                                        reads dx once and writes it again
//             => dy: 3 reads; x: 1 read; dx: 2 writes + 1 read.
//                base alone: dy 1 read, dx 1 write.
//   With a bias the forward first broadcasts it into y (one more write) and the adapter GEMM
//   accumulates (one more read of y). With dropout, forward and backward each make an [n, in]
//   dropped copy of x (the dropout kernel reads x, writes the copy, and the x Aᵀ or dA GEMM reads
//   the copy instead of x: one more write and read of that size each), and backward drops dx in
//   place (one more read and write of dx).
//
// Without a CUDA device main() prints why and exits 0.
//
// Results: bench_lora_cuda --benchmark_out=benchmarks/results/<machine>.json
//                          --benchmark_out_format=json

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <benchmark/benchmark.h>

#include <peft/cuda.hpp>

#include "bench_util_cuda.cuh"

namespace {

using namespace peft::bench;  // context(), Ctx, DeviceMat, bf16, fill_uniform, paired timing
using peft::index_t;

struct Shape {
  index_t n, in, out, r;
};

// (n, in, out, r): bench_lora.cpp's shapes, for f32 and bf16.
constexpr Shape kShapes[] = {
    {16, 4096, 4096, 16},  {512, 1024, 1024, 16},  {512, 2048, 2048, 16},
    {512, 2048, 2048, 64}, {2048, 4096, 4096, 16},
};
// bf16 only: a square 4096 layer over 4096 tokens, and a 7B MLP up-projection over 8192 tokens.
constexpr Shape kLargeBf16[] = {{4096, 4096, 4096, 16}, {8192, 4096, 11008, 16}};

/// Activations, gradients and the frozen weight of one (n, in, out), allocated and filled once
/// per shape and type and shared by every benchmark of that shape.
template <class T>
struct Problem {
  DeviceMat<T> x, w0, y, dy, dx;
  Problem(index_t n, index_t in, index_t out)
      : x(n, in), w0(out, in), y(n, out), dy(n, out), dx(n, in) {
    fill_uniform(x, 1);
    fill_uniform(w0, 2);
    fill_uniform(dy, 3);
    fill_uniform(y, 4);
    fill_uniform(dx, 5);
    context().synchronize();
  }
};

template <class T>
Problem<T>& problem(index_t n, index_t in, index_t out) {
  static std::map<std::tuple<index_t, index_t, index_t>, std::unique_ptr<Problem<T>>> cache;
  auto& slot = cache[{n, in, out}];
  if (!slot) slot = std::make_unique<Problem<T>>(n, in, out);
  return *slot;
}

/// One layer per (n, in, out, r) and type, built once: dropout 0, PEFT's default initialisation
/// (B = 0; the GEMMs cost the same with a zero B), workspace and reserve sized up front.
template <class T>
peft::Lora<T, peft::Cuda>& layer(const Shape& s) {
  static std::map<std::tuple<index_t, index_t, index_t, index_t>,
                  std::unique_ptr<peft::Lora<T, peft::Cuda>>>
      cache;
  auto& slot = cache[{s.n, s.in, s.out, s.r}];
  if (!slot) {
    Problem<T>& p = problem<T>(s.n, s.in, s.out);
    peft::LoraConfig cfg;
    cfg.r = s.r;
    cfg.alpha = double(2 * s.r);
    cfg.dropout = 0.0;
    slot = std::make_unique<peft::Lora<T, peft::Cuda>>(context(), as_const(p.w0.view()), cfg);
    slot->preallocate(context(), s.n);
  }
  return *slot;
}

Shape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), state.range(2), state.range(3)};
}

template <class T>
void BM_LoraForward(benchmark::State& state) {
  const Shape s = shape_of(state);
  Ctx& ctx = context();
  Problem<T>& p = problem<T>(s.n, s.in, s.out);
  auto& lora = layer<T>(s);
  const auto x = as_const(p.x.view());
  const auto w0 = as_const(p.w0.view());
  const auto y = p.y.view();

  const Paired t = run_paired_events(
      state, [&] { lora.forward(ctx, x, y); },
      [&] { peft::gpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, w0, 0.0, y); });

  const double base_flops = 2.0 * double(s.n) * double(s.in) * double(s.out);
  const double adapter_flops = 2.0 * double(s.n) * double(s.r) * double(s.in + s.out);
  state.counters["overhead"] = median_ratio(t);
  state.counters["base_ms"] = 1e3 * mean(t.reference);
  state.counters["GFLOPS"] = (base_flops + adapter_flops) / mean(t.subject) * 1e-9;
}

template <class T>
void BM_LoraForwardBackward(benchmark::State& state) {
  const Shape s = shape_of(state);
  Ctx& ctx = context();
  Problem<T>& p = problem<T>(s.n, s.in, s.out);
  auto& lora = layer<T>(s);
  const auto x = as_const(p.x.view());
  const auto w0 = as_const(p.w0.view());
  const auto dy = as_const(p.dy.view());
  const auto y = p.y.view();
  const auto dx = p.dx.view();

  const Paired t = run_paired_events(
      state,
      [&] {
        lora.forward(ctx, x, y);
        lora.backward(ctx, x, dy, dx);
      },
      [&] {
        peft::gpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, w0, 0.0, y);
        peft::gpu::gemm(ctx, peft::Op::N, peft::Op::N, 1.0, dy, w0, 0.0, dx);
      });
  lora.zero_grad(ctx);  // backward accumulates; keep the gradients bounded across runs

  const double base_flops = 2 * 2.0 * double(s.n) * double(s.in) * double(s.out);
  // forward: x Aᵀ (in), (x Aᵀ) Bᵀ (out); backward: dB (out), d(x Aᵀ) (out), dA (in), d(x Aᵀ) A (in)
  const double adapter_flops = 3 * 2.0 * double(s.n) * double(s.r) * double(s.in + s.out);
  state.counters["overhead"] = median_ratio(t);
  state.counters["base_ms"] = 1e3 * mean(t.reference);
  state.counters["GFLOPS"] = (base_flops + adapter_flops) / mean(t.subject) * 1e-9;
}

template <class T>
void BM_Gemm(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2);
  Ctx& ctx = context();
  Problem<T>& p = problem<T>(n, in, out);
  const auto x = as_const(p.x.view());
  const auto w0 = as_const(p.w0.view());
  const auto y = p.y.view();
  auto library = [&] { peft::gpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, w0, 0.0, y); };
  // The same product straight through cuBLAS: column-major yᵀ = W0 xᵀ.
  auto direct = [&] {
    const float one = 1.0f, zero = 0.0f;
    constexpr cudaDataType_t type = peft::gpu::detail::data_type<T>();
    PEFT_CUDA_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(n), int(in),
                                 &one, p.w0.data(), type, int(in), p.x.data(), type, int(in), &zero,
                                 p.y.data(), type, int(out), CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
  };
  const Paired t = run_paired_events(state, library, direct);
  state.counters["vs_cublas"] = median_ratio(t);
  state.counters["GFLOPS"] = 2.0 * double(n) * double(in) * double(out) / mean(t.subject) * 1e-9;
}

template <class T>
void register_type(const std::vector<Shape>& shapes, bool forward) {
  const std::string type = dtype_name<T>();
  std::vector<std::tuple<index_t, index_t, index_t>> bases;
  for (const Shape& s : shapes) {
    if (forward)
      benchmark::RegisterBenchmark(("BM_LoraForward<" + type + ">").c_str(), BM_LoraForward<T>)
          ->Args({s.n, s.in, s.out, s.r})
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("BM_LoraForwardBackward<" + type + ">").c_str(),
                                 BM_LoraForwardBackward<T>)
        ->Args({s.n, s.in, s.out, s.r})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    // The base GEMM of each distinct (n, in, out).
    const auto key = std::make_tuple(s.n, s.in, s.out);
    if (std::find(bases.begin(), bases.end(), key) != bases.end()) continue;
    bases.push_back(key);
    benchmark::RegisterBenchmark(("BM_Gemm<" + type + ">").c_str(), BM_Gemm<T>)
        ->Args({s.n, s.in, s.out})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
}

void register_all() {
  const std::vector<Shape> common(std::begin(kShapes), std::end(kShapes));
  register_type<float>(common, true);
  register_type<bf16>(common, true);
  register_type<bf16>(std::vector<Shape>(std::begin(kLargeBf16), std::end(kLargeBf16)), false);
}

}  // namespace

int main(int argc, char** argv) {
  return peft::bench::run_cuda_benchmarks(argc, argv, "bench_lora_cuda", register_all);
}
