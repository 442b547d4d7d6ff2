// RoSA on the CPU: the sparse primitives against the dense GEMM of the same shape, and RoSA
// against LoRA at an equal trainable budget.
//
//   BM_Spmm/n/4096/4096/d     y = x Sᵀ (SpMM)            vs  y = x Wᵀ (dense GEMM)   counter
//   overhead BM_Sddmm/n/4096/4096/d    dS = (dyᵀ x) ⊙ mask (SDDMM) vs  dyᵀ x (dense GEMM) counter
//   overhead
//       d is the density in units of 0.1 % (1, 6, 20 = 0.1 %, 0.6 %, 2 %).
//   BM_RosaForwardBackward/n/in/out/r/d/mode  forward + backward of RoSA (rank r, density d in
//       units of 0.01 %, mode 0 = dense_add, 1 = spmm) vs LoRA r = 16 in the same loop: counter
//       vs_lora = RoSA time / LoRA time. r and d give RoSA the trainable budget of LoRA r = 16.
//
// Timing as in bench_lora.cpp: subject and reference alternate inside one loop; counters are
// medians of per-iteration ratios.

#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <tuple>

#include "bench_util.hpp"

namespace {

using peft::index_t;
using namespace peft::bench;

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

struct SparseProblem {
  Mat x, dy, w, y, g;
  peft::CsrMatrix<float, peft::Cpu> s;
  SparseProblem(index_t n, index_t in, index_t out, double density)
      : x(n, in), dy(n, out), w(out, in), y(n, out), g(out, in) {
    fill_uniform(x, 1);
    fill_uniform(dy, 2);
    fill_uniform(w, 3);
    const auto nnz = static_cast<index_t>(density * double(in) * double(out));
    s = peft::CsrMatrix<float, peft::Cpu>(out, in, nnz);
    s.set_pattern(context(), random_pattern(out, in, nnz, 4));
    fill_uniform(y, 5);
    for (index_t e = 0; e < nnz; ++e) s.values().data()[e] = 0.01f * float(e % 7);
    s.refresh_transpose(context());
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
  const peft::SparseOperand<float, peft::Cpu> op{s.view(), s.transposed_view(), &p.s.cache()};
  const auto x = as_const(p.x.view());
  const Paired t = run_paired(
      state, [&] { peft::cpu::spmm(ctx, 1.0, x, op, peft::Op::T, 0.0, p.y.view()); },
      [&] {
        peft::cpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, as_const(p.w.view()), 0.0,
                        p.y.view());
      });
  state.counters["overhead"] = median_ratio(t);
  state.counters["nnz"] = double(s.nnz());
}

void BM_Sddmm(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), d = state.range(3);
  Ctx& ctx = context();
  auto& p = sparse_problem(n, in, out, d);
  auto grad = p.s.view();
  const auto x = as_const(p.x.view());
  const auto dy = as_const(p.dy.view());
  const Paired t = run_paired(
      state, [&] { peft::cpu::sddmm(ctx, 1.0, peft::Op::T, dy, peft::Op::N, x, 0.0, grad); },
      [&] { peft::cpu::gemm(ctx, peft::Op::T, peft::Op::N, 1.0, dy, x, 0.0, p.g.view()); });
  state.counters["overhead"] = median_ratio(t);
  state.counters["nnz"] = double(grad.nnz);
}

struct LayerProblem {
  Mat x, w0, y, dy, dx;
  LayerProblem(index_t n, index_t in, index_t out)
      : x(n, in), w0(out, in), y(n, out), dy(n, out), dx(n, in) {
    fill_uniform(x, 1);
    fill_uniform(w0, 2);
    fill_uniform(dy, 3);
  }
};

void BM_RosaForwardBackward(benchmark::State& state) {
  const index_t n = state.range(0), in = state.range(1), out = state.range(2), r = state.range(3);
  const double density = double(state.range(4)) * 1e-4;
  const auto mode = state.range(5) == 0 ? peft::RosaForward::dense_add : peft::RosaForward::spmm;
  Ctx& ctx = context();
  LayerProblem p(n, in, out);
  peft::Rosa<float, peft::Cpu> rosa(
      ctx, p.w0.view(),
      {.lora = {.r = r, .alpha = double(2 * r)}, .density = density, .forward = mode});
  rosa.set_mask(ctx, random_pattern(out, in, rosa.sparse_capacity(), 7));
  peft::Lora<float, peft::Cpu> lora(ctx, p.w0.view(), {.r = 16, .alpha = 32});
  rosa.preallocate(ctx, n);
  lora.preallocate(ctx, n);
  const auto x = as_const(p.x.view());
  const auto dy = as_const(p.dy.view());
  const Paired t = run_paired(
      state,
      [&] {
        rosa.forward(ctx, x, p.y.view());
        rosa.backward(ctx, x, dy, p.dx.view());
      },
      [&] {
        lora.forward(ctx, x, p.y.view());
        lora.backward(ctx, x, dy, p.dx.view());
      });
  state.counters["vs_lora"] = median_ratio(t);
  state.counters["rosa_trainable"] = double(rosa.num_trainable());
  state.counters["lora_trainable"] = double(lora.num_trainable());
}

void register_all() {
  for (index_t n : {512, 2048})
    for (index_t d : {1, 6, 20}) {
      benchmark::RegisterBenchmark("BM_Spmm", BM_Spmm)
          ->Args({n, 4096, 4096, d})
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("BM_Sddmm", BM_Sddmm)
          ->Args({n, 4096, 4096, d})
          ->Unit(benchmark::kMillisecond);
    }
  // LoRA r = 16 has 16 (in + out) parameters; RoSA r = 12 fills the other 4 (in + out) with S:
  // density = 4 (in + out) / (in · out), in units of 0.01 %.
  for (auto [n, in, out] :
       {std::tuple<index_t, index_t, index_t>{512, 2048, 2048}, {512, 4096, 4096}}) {
    const auto d = static_cast<index_t>(4.0 * double(in + out) / double(in * out) * 1e4 + 0.5);
    for (index_t mode : {0, 1})
      benchmark::RegisterBenchmark("BM_RosaForwardBackward", BM_RosaForwardBackward)
          ->Args({n, in, out, 12, d, mode})
          ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::AddCustomContext("peft_threads", std::to_string(context().threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
