// A consumer of peft: one LoRA layer on a small weight, forward checked against a naive
// y = x W0ᵀ + s (x Aᵀ) Bᵀ. Exits non-zero on any failure.

#include <peft/peft.hpp>

#include <cmath>
#include <cstdio>
#include <exception>
#include <string_view>

int main() try {
#if defined(PEFT_EXPECT_USE_BLAS)
#if defined(PEFT_USE_BLAS)
  constexpr bool has_blas = true;
#else
  constexpr bool has_blas = false;
#endif
  if (has_blas != bool(PEFT_EXPECT_USE_BLAS)) {
    std::fprintf(stderr, "PEFT_USE_BLAS did not reach the consumer as built\n");
    return 1;
  }
#endif
#if defined(PEFT_EXPECT_GEMM_PROVIDER)
  if (std::string_view(peft::cpu::gemm_provider_name()) != PEFT_EXPECT_GEMM_PROVIDER) {
    std::fprintf(stderr, "gemm provider %s, built with %s\n", peft::cpu::gemm_provider_name(),
                 PEFT_EXPECT_GEMM_PROVIDER);
    return 1;
  }
#endif

  using Layer = peft::Lora<float, peft::Cpu>;
  constexpr peft::index_t rows = 3, in = 5, out = 4;
  peft::Context<peft::Cpu> ctx;
  peft::Matrix<float, peft::Cpu> w0(out, in), x(rows, in), y(rows, out);
  for (peft::index_t i = 0; i < w0.size(); ++i) w0.data()[i] = 0.1f * float(i % 7) - 0.3f;
  for (peft::index_t i = 0; i < x.size(); ++i) x.data()[i] = 0.2f * float(i % 5) - 0.4f;

  // init = none: B is random too, so the adapter contributes to y.
  Layer layer(ctx, w0.view(), {.r = 2, .alpha = 4, .init = peft::LoraInit::none, .seed = 1});
  layer.forward(ctx, x.view(), y.view());

  const auto params = layer.parameters();
  const auto a = params[0].value, b = params[1].value;  // A [r, in], B [out, r]
  double max_error = 0;
  for (peft::index_t i = 0; i < rows; ++i)
    for (peft::index_t j = 0; j < out; ++j) {
      double expected = 0;
      for (peft::index_t k = 0; k < in; ++k) expected += double(x.view()(i, k)) * w0.view()(j, k);
      for (peft::index_t q = 0; q < layer.rank(); ++q) {
        double xa = 0;
        for (peft::index_t k = 0; k < in; ++k) xa += double(x.view()(i, k)) * a(q, k);
        expected += layer.scaling() * xa * b(j, q);
      }
      max_error = std::fmax(max_error, std::fabs(expected - y.view()(i, j)));
    }
  std::printf("peft consumer: LoRA forward max error %.3g\n", max_error);
  return max_error < 1e-4 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "peft consumer: %s\n", e.what());
  return 1;
}
