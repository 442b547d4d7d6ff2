// The CPU gemm primitive: fp32 on the gemm provider of this build, and 16-bit operands against
// the same product in fp32.
//
//   BM_Gemm/case/n/in/out       peft::cpu::gemm in fp32 (the provider's speed), cases 0 and 1,
//                               vs cblas_sgemm of OpenBLAS where it is linked (vs_openblas)
//   BM_Bf16Gemm/case/n/in/out   peft::cpu::gemm on Eigen::bfloat16 views  vs  the provider's sgemm
//                               of the same shape on fp32 copies made once, outside the timing
//
// The three products of a bf16 layer over a frozen W0 [out, in], for a batch of n rows:
//   case 0  forward   y  = x W0ᵀ       (N, T), y bf16   [n, out]
//   case 1  backward  dx = dy W0       (N, N), dx bf16  [n, in]
//   case 2  W0's gradient G = dyᵀ x    (T, N), G fp32   [out, in]  (RoSA's mask builder)
// The 16-bit gemm stages its operands through fp32 in the Context's workspace; what that staging
// costs is the gap to the fp32 product, whose operands are already fp32.
//
// The context records the provider (peft_gemm_provider) and its kernel (bench_util.hpp).
// Timing as in bench_lora (bench_util.hpp's run_paired): subject and reference alternate inside
// each iteration, the reference with the benchmark clock paused, after one untimed round.
// Counters:
//   vs_fp32      median over iterations of (bf16 gemm time / fp32 gemm time of that iteration)
//   fp32_ms      mean time of the fp32 gemm per iteration, in ms
//   GFLOPS       2·n·in·out / mean bf16 gemm time (BM_Gemm: fp32 gemm time), in 1e9/s
//   scratch_MiB  the workspace the bf16 gemm grew to (each case has its own Context)

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench_util.hpp"

#if defined(PEFT_USE_BLAS)
#include <cblas.h>
#endif

namespace {

using peft::index_t;
using peft::Op;
using bf16 = Eigen::bfloat16;
using Ctx = peft::Context<peft::Cpu>;
using namespace peft::bench;

/// Operands of one case in bf16 and (converted once) in fp32, and a Context of its own.
struct Problem {
  Op op_a, op_b;
  peft::Matrix<bf16, peft::Cpu> a, b, c16;
  peft::Matrix<float, peft::Cpu> af, bf, cf;
  Ctx ctx;

  Problem(int which, index_t n, index_t in, index_t out) : op_a(Op::N), op_b(Op::N) {
    index_t ar = n, ac = in, br = out, bc = in, m = n, nn = out;  // forward: x [n, in], W0
    if (which == 0) op_b = Op::T;
    if (which == 1) {  // dy [n, out], W0 [out, in]
      ac = out;
      nn = in;
    }
    if (which == 2) {  // dy [n, out]ᵀ, x [n, in]
      op_a = Op::T;
      ac = out;
      br = n;
      m = out;
      nn = in;
    }
    a = peft::Matrix<bf16, peft::Cpu>(ar, ac);
    b = peft::Matrix<bf16, peft::Cpu>(br, bc);
    af = peft::Matrix<float, peft::Cpu>(ar, ac);
    bf = peft::Matrix<float, peft::Cpu>(br, bc);
    fill_uniform(af, 1);
    fill_uniform(bf, 2);
    for (index_t i = 0; i < af.size(); ++i) a.data()[i] = bf16(af.data()[i]);
    for (index_t i = 0; i < bf.size(); ++i) b.data()[i] = bf16(bf.data()[i]);
    cf = peft::Matrix<float, peft::Cpu>(m, nn);
    if (which != 2) c16 = peft::Matrix<bf16, peft::Cpu>(m, nn);
  }
};

Problem& problem(int which, index_t n, index_t in, index_t out) {
  static std::map<std::tuple<int, index_t, index_t, index_t>, std::unique_ptr<Problem>> cache;
  auto& slot = cache[{which, n, in, out}];
  if (!slot) slot = std::make_unique<Problem>(which, n, in, out);
  return *slot;
}

void BM_Bf16Gemm(benchmark::State& state) {
  const int which = int(state.range(0));
  const index_t n = state.range(1), in = state.range(2), out = state.range(3);
  Problem& p = problem(which, n, in, out);
  Ctx& ctx = p.ctx;
  const auto a = as_const(p.a.view()), b = as_const(p.b.view());
  const auto af = as_const(p.af.view()), bf = as_const(p.bf.view());
  auto subject = [&] {
    if (which == 2)
      peft::cpu::gemm(ctx, p.op_a, p.op_b, 1.0, a, b, 0.0, p.cf.view());
    else
      peft::cpu::gemm(ctx, p.op_a, p.op_b, 1.0, a, b, 0.0, p.c16.view());
  };
  auto reference = [&] { peft::cpu::gemm(ctx, p.op_a, p.op_b, 1.0, af, bf, 0.0, p.cf.view()); };
  const Paired t = run_paired(state, subject, reference);
  state.counters["vs_fp32"] = median_ratio(t);
  state.counters["fp32_ms"] = 1e3 * mean(t.reference);
  state.counters["GFLOPS"] = 2.0 * double(n) * double(in) * double(out) / mean(t.subject) * 1e-9;
  state.counters["scratch_MiB"] = double(ctx.workspace().capacity()) / double(1 << 20);
}

/// The base products of a layer in fp32 through the provider: case 0 (x W0ᵀ) or 1 (dy W0).
/// Where OpenBLAS is linked beside another provider (oneDNN), its cblas_sgemm of the same
/// product alternates with the provider's in one loop: vs_openblas, the median per-iteration
/// ratio, compares the two on a shared machine where separate runs drift apart.
void BM_Gemm(benchmark::State& state) {
  const int which = int(state.range(0));
  const index_t n = state.range(1), in = state.range(2), out = state.range(3);
  Problem& p = problem(which, n, in, out);
  Ctx& ctx = p.ctx;
  const auto af = as_const(p.af.view()), bf = as_const(p.bf.view());
  auto run = [&] { peft::cpu::gemm(ctx, p.op_a, p.op_b, 1.0, af, bf, 0.0, p.cf.view()); };
  const double flops = 2.0 * double(n) * double(in) * double(out);
#if defined(PEFT_USE_BLAS)
  auto openblas = [&] {
    const auto tb = p.op_b == Op::T ? CblasTrans : CblasNoTrans;
    const index_t m = p.cf.rows(), nn = p.cf.cols(),
                  k = p.op_b == Op::T ? p.bf.cols() : p.bf.rows();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, int(m), int(nn), int(k), 1.0f, p.af.data(),
                int(p.af.cols()), p.bf.data(), int(p.bf.cols()), 0.0f, p.cf.data(), int(nn));
  };
  const Paired t = run_paired(state, run, openblas);
  state.counters["vs_openblas"] = median_ratio(t);
  state.counters["GFLOPS"] = flops / mean(t.subject) * 1e-9;
#else
  run();  // untimed warm-up (page faults, the provider's buffers)
  std::vector<double> times;
  times.reserve(static_cast<std::size_t>(state.max_iterations));
  for (auto _ : state) times.push_back(seconds_of(run));
  state.counters["GFLOPS"] = flops / mean(times) * 1e-9;
#endif
}

void register_all() {
  // bench_lora's base shapes (n, in, out), forward and backward.
  constexpr std::tuple<index_t, index_t, index_t> kBaseShapes[] = {
      {16, 4096, 4096}, {512, 1024, 1024}, {512, 2048, 2048}, {2048, 4096, 4096}};
  for (const auto& [n, in, out] : kBaseShapes)
    for (int which = 0; which < 2; ++which)
      benchmark::RegisterBenchmark("BM_Gemm", BM_Gemm)
          ->Args({which, n, in, out})
          ->Unit(benchmark::kMillisecond);
  // (n, in, out): a decode-sized batch over a 4096 x 4096 weight, and two training batches.
  constexpr std::tuple<index_t, index_t, index_t> kShapes[] = {
      {16, 4096, 4096}, {512, 1024, 1024}, {512, 2048, 2048}};
  for (const auto& [n, in, out] : kShapes)
    for (int which = 0; which < 3; ++which)
      benchmark::RegisterBenchmark("BM_Bf16Gemm", BM_Bf16Gemm)
          ->Args({which, n, in, out})
          ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::AddCustomContext("peft_threads", std::to_string(Ctx().threads()));
  add_provider_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
