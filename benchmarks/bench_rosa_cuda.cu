// RoSA on an NVIDIA GPU: the CUDA twin of bench_rosa.cpp. The sparse primitives against the
// dense GEMM of the same shape, and RoSA against LoRA at an equal trainable budget.
//
//   BM_Spmm/n/4096/4096/d    y = x Sᵀ (cusparseSpMM, S [4096, 4096] CSR)  vs  y = x Wᵀ (GEMM)
//   BM_Sddmm/n/4096/4096/d   dS = (dyᵀ x) ⊙ mask (cusparseSDDMM)          vs  dyᵀ x (GEMM)
//       fp32 (full fp32: the Context's default allow_tf32 = false); d is the density in units of
//       0.1 % (1, 6, 20 = 0.1 %, 0.6 %, 2 %); n = 512 and 2048.
//   BM_RosaForwardBackward<T>/n/in/out/r/d/mode  forward + backward (→ dx) of Rosa<T, Cuda>
//       (rank r = 12, density d in units of 0.01 %, mode 0 = dense_add, 1 = spmm) vs
//       Lora<T, Cuda> r = 16 in the same loop. r and d give RoSA the trainable budget of LoRA
//       r = 16 (as bench_rosa.cpp: d = 4 (in + out) / (in · out)). T is f32 or bf16.
//
// Timing: bench_util_cuda.cuh's paired CUDA events, as in bench_lora_cuda.cu (manual time:
// Google Benchmark appends "/manual_time" to the names); the reported time is the subject's
// alone.
//
// Counters (plain values, so repetitions aggregate them like times):
//   overhead  BM_Spmm, BM_Sddmm: median over iterations of (sparse time / dense GEMM time).
//   vs_lora   BM_RosaForwardBackward: median of (RoSA time / LoRA time).
//   ref_ms    mean time of the reference per iteration, in ms.
//   nnz, rosa_trainable, lora_trainable.
//
// What the RoSA layer does per forward + backward beyond LoRA (read from adapters/rosa.hpp):
//   dense_add  forward: copy W0 into scratch, add S, GEMM with it; backward: the same copy and
//              add again for dx = dy (W0 + S); SDDMM dS += (dyᵀ x) ⊙ mask.
//   spmm       forward: GEMM on W0 plus y += x Sᵀ (SpMM); backward: dx = dy W0 plus dx += dy S
//              (SpMM on Sᵀ); the same SDDMM. bf16 SDDMM inputs are staged through fp32.
//
// Without a CUDA device main() prints why and exits 0.
//
// Results: bench_rosa_cuda --benchmark_out=benchmarks/results/<machine>.json
//                          --benchmark_out_format=json

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
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

/// A uniformly random pattern with exactly nnz entries of a rows x cols matrix.
peft::CsrPattern random_pattern(index_t rows, index_t cols, index_t nnz, std::uint32_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(rows * cols), 0);
  std::uniform_int_distribution<index_t> pick(0, rows * cols - 1);
  for (index_t placed = 0; placed < nnz;) {
    auto& m = mask[static_cast<std::size_t>(pick(gen))];
    if (m == 0) {
      m = 1;
      ++placed;
    }
  }
  return peft::CsrPattern::from_mask(
      peft::MatrixView<const std::uint8_t, peft::Cpu>(mask.data(), rows, cols));
}

// ---- the sparse primitives -------------------------------------------------------------------

/// Dense operands of one (n, in, out) and a [out, in] CSR matrix of one density (fp32), built
/// once and shared by BM_Spmm and BM_Sddmm.
struct SparseProblem {
  DeviceMat<float> x, dy, w, y, g;
  peft::CsrMatrix<float, peft::Cuda> s;
  SparseProblem(index_t n, index_t in, index_t out, double density)
      : x(n, in), dy(n, out), w(out, in), y(n, out), g(out, in) {
    fill_uniform(x, 1);
    fill_uniform(dy, 2);
    fill_uniform(w, 3);
    fill_uniform(y, 4);
    const auto nnz = static_cast<index_t>(density * double(in) * double(out));
    s = peft::CsrMatrix<float, peft::Cuda>(out, in, nnz);
    s.set_pattern(context(), random_pattern(out, in, nnz, 5));
    fill_uniform(s.values().data(), nnz, 6, 0.01f);
    s.refresh_transpose(context());
    context().synchronize();
  }
};

SparseProblem& sparse_problem(index_t n, index_t in, index_t out, index_t d) {
  static std::map<std::tuple<index_t, index_t, index_t, index_t>, std::unique_ptr<SparseProblem>> c;
  auto& slot = c[{n, in, out, d}];
  if (!slot) slot = std::make_unique<SparseProblem>(n, in, out, double(d) * 1e-3);
  return *slot;
}

void BM_Spmm(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), d = state.range(3);
  Ctx& ctx = context();
  auto& p = sparse_problem(n, in, out, d);
  const auto& s = p.s;
  const peft::SparseOperand<float, peft::Cuda> op{s.view(), s.transposed_view(), &p.s.cache()};
  const auto x = as_const(p.x.view());
  const Paired t = run_paired_events(
      state, [&] { peft::gpu::spmm(ctx, 1.0, x, op, peft::Op::T, 0.0, p.y.view()); },
      [&] {
        peft::gpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, as_const(p.w.view()), 0.0,
                        p.y.view());
      });
  state.counters["overhead"] = median_ratio(t);
  state.counters["ref_ms"] = 1e3 * mean(t.reference);
  state.counters["nnz"] = double(s.nnz());
}

void BM_Sddmm(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), d = state.range(3);
  Ctx& ctx = context();
  auto& p = sparse_problem(n, in, out, d);
  auto grad = p.s.view();
  const auto x = as_const(p.x.view());
  const auto dy = as_const(p.dy.view());
  const Paired t = run_paired_events(
      state, [&] { peft::gpu::sddmm(ctx, 1.0, peft::Op::T, dy, peft::Op::N, x, 0.0, grad); },
      [&] { peft::gpu::gemm(ctx, peft::Op::T, peft::Op::N, 1.0, dy, x, 0.0, p.g.view()); });
  p.s.refresh_transpose(ctx);  // the values changed; keep Sᵀ in step for BM_Spmm
  state.counters["overhead"] = median_ratio(t);
  state.counters["ref_ms"] = 1e3 * mean(t.reference);
  state.counters["nnz"] = double(grad.nnz);
}

// ---- RoSA against LoRA -----------------------------------------------------------------------

/// Activations, gradients and the frozen weight of one (n, in, out), per type.
template <class T>
struct LayerProblem {
  DeviceMat<T> x, w0, y, dy, dx;
  LayerProblem(index_t n, index_t in, index_t out)
      : x(n, in), w0(out, in), y(n, out), dy(n, out), dx(n, in) {
    fill_uniform(x, 1);
    fill_uniform(w0, 2);
    fill_uniform(dy, 3);
    context().synchronize();
  }
};

template <class T>
LayerProblem<T>& layer_problem(index_t n, index_t in, index_t out) {
  static std::map<std::tuple<index_t, index_t, index_t>, std::unique_ptr<LayerProblem<T>>> cache;
  auto& slot = cache[{n, in, out}];
  if (!slot) slot = std::make_unique<LayerProblem<T>>(n, in, out);
  return *slot;
}

template <class T>
void BM_RosaForwardBackward(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), r = state.range(3);
  const double density = double(state.range(4)) * 1e-4;
  const auto mode = state.range(5) == 0 ? peft::RosaForward::dense_add : peft::RosaForward::spmm;
  Ctx& ctx = context();
  LayerProblem<T>& p = layer_problem<T>(n, in, out);
  const auto w0 = as_const(p.w0.view());
  peft::Rosa<T, peft::Cuda> rosa(
      ctx, w0, {.lora = {.r = r, .alpha = double(2 * r)}, .density = density, .forward = mode});
  rosa.set_mask(ctx, random_pattern(out, in, rosa.sparse_capacity(), 7));
  // Non-zero S (the products cost the same, but a zero S would hide nothing either way).
  fill_uniform(rosa.sparse().values().data(), rosa.sparse().nnz(), 8, 0.01f);
  rosa.parameters_updated(ctx);
  peft::Lora<T, peft::Cuda> lora(ctx, w0, {.r = 16, .alpha = 32});
  rosa.preallocate(ctx, n);
  lora.preallocate(ctx, n);
  const auto x = as_const(p.x.view());
  const auto dy = as_const(p.dy.view());
  const Paired t = run_paired_events(
      state,
      [&] {
        rosa.forward(ctx, x, p.y.view());
        rosa.backward(ctx, x, dy, p.dx.view());
      },
      [&] {
        lora.forward(ctx, x, p.y.view());
        lora.backward(ctx, x, dy, p.dx.view());
      });
  rosa.zero_grad(ctx);  // backward accumulates; keep the gradients bounded across runs
  lora.zero_grad(ctx);
  state.counters["vs_lora"] = median_ratio(t);
  state.counters["ref_ms"] = 1e3 * mean(t.reference);
  state.counters["rosa_trainable"] = double(rosa.num_trainable());
  state.counters["lora_trainable"] = double(lora.num_trainable());
}

template <class T>
void register_rosa(index_t n, index_t in, index_t out) {
  // LoRA r = 16 has 16 (in + out) parameters; RoSA r = 12 fills the other 4 (in + out) with S:
  // density = 4 (in + out) / (in · out), in units of 0.01 %.
  const auto d = static_cast<index_t>(4.0 * double(in + out) / double(in * out) * 1e4 + 0.5);
  const std::string name = std::string("BM_RosaForwardBackward<") + dtype_name<T>() + ">";
  for (index_t mode : {0, 1})
    benchmark::RegisterBenchmark(name.c_str(), BM_RosaForwardBackward<T>)
        ->Args({n, in, out, 12, d, mode})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
}

void register_all() {
  for (index_t n : {512, 2048})
    for (index_t d : {1, 6, 20}) {
      benchmark::RegisterBenchmark("BM_Spmm", BM_Spmm)
          ->Args({n, 4096, 4096, d})
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("BM_Sddmm", BM_Sddmm)
          ->Args({n, 4096, 4096, d})
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
  // bench_rosa.cpp's shapes, and a larger batch on the 4096 layer.
  for (auto [n, in, out] : {std::tuple<index_t, index_t, index_t>{512, 2048, 2048},
                            {512, 4096, 4096},
                            {2048, 4096, 4096}}) {
    register_rosa<float>(n, in, out);
    register_rosa<bf16>(n, in, out);
  }
}

}  // namespace

int main(int argc, char** argv) {
  return peft::bench::run_cuda_benchmarks(argc, argv, "bench_rosa_cuda", register_all);
}
