// Finite-difference gradient checks of Lora<double, Cpu>: dA, dB and dx, with and without
// dropout and rsLoRA, in both weight orientations. The loss is <G, y − x W0ᵀ − b>, the adapter's
// own contribution, so that the base cannot hide a broken adapter.

#include <gtest/gtest.h>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

struct GradCase {
  float dropout;
  bool use_rslora;
  bool fan_in_fan_out;
};

class LoraGradient : public ::testing::TestWithParam<GradCase> {
 protected:
  static constexpr index_t n = 5, in = 7, out = 6, r = 3;

  LoraConfig config() const {
    return {.r = r,
            .alpha = 5,
            .dropout = GetParam().dropout,
            .use_rslora = GetParam().use_rslora,
            .fan_in_fan_out = GetParam().fan_in_fan_out,
            .init = LoraInit::none,
            .seed = 11};
  }

  // The frozen weight in the orientation the config asks for.
  Matrix<double, Cpu> w0 = GetParam().fan_in_fan_out ? random_matrix<double>(in, out, 1)
                                                     : random_matrix<double>(out, in, 1);
  Matrix<double, Cpu> bias = random_matrix<double>(1, out, 2);
  Matrix<double, Cpu> g = random_matrix<double>(n, out, 3);
  HostCtx ctx;

  Lora<double, Cpu> make_layer(MatrixView<const double, Cpu> a, MatrixView<const double, Cpu> b) {
    Lora<double, Cpu> layer(ctx, w0.view(), config(), {.stream_id = 4},
                            VectorView<const double, Cpu>(bias.data(), out));
    auto params = layer.parameters();
    copy(ctx, a, params[0].value);
    copy(ctx, b, params[1].value);
    layer.parameters_updated(ctx);
    return layer;
  }

  // <G, adapter contribution> for the first forward of a fresh layer (so dropout draws the
  // same mask in every evaluation).
  double adapter_loss(MatrixView<const double, Cpu> a, MatrixView<const double, Cpu> b,
                      MatrixView<const double, Cpu> x) {
    auto layer = make_layer(a, b);
    Matrix<double, Cpu> y(n, out);
    layer.forward(ctx, x, y.view());
    auto base = naive_product(x, false, as_const(w0.view()), !GetParam().fan_in_fan_out);
    double loss = 0;
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j < out; ++j)
        loss += g.view()(i, j) * (y.view()(i, j) - base.view()(i, j) - bias.data()[j]);
    return loss;
  }

  // Central differences of adapter_loss with respect to every entry of `target`.
  template <class F>
  Matrix<double, Cpu> numeric_gradient(Matrix<double, Cpu>& target, F&& loss) {
    Matrix<double, Cpu> grad(target.rows(), target.cols());
    const double h = 1e-6;
    for (index_t i = 0; i < target.size(); ++i) {
      const double saved = target.data()[i];
      target.data()[i] = saved + h;
      const double plus = loss();
      target.data()[i] = saved - h;
      const double minus = loss();
      target.data()[i] = saved;
      grad.data()[i] = (plus - minus) / (2 * h);
    }
    return grad;
  }
};

TEST_P(LoraGradient, MatchesCentralDifferences) {
  // Start from the layer's own random init (init = none: A and B both non-zero).
  Lora<double, Cpu> init_layer(ctx, w0.view(), config(), {.stream_id = 4});
  Matrix<double, Cpu> a(r, in), b(out, r);
  copy(ctx, as_const(init_layer.parameters()[0].value), a.view());
  copy(ctx, as_const(init_layer.parameters()[1].value), b.view());
  Matrix<double, Cpu> x = random_matrix<double>(n, in, 5);

  // Analytic gradients.
  auto layer = make_layer(a.view(), b.view());
  Matrix<double, Cpu> y(n, out), dx(n, in);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), g.view(), dx.view());
  auto params = layer.parameters();

  auto loss = [&] { return adapter_loss(a.view(), b.view(), x.view()); };
  auto num_a = numeric_gradient(a, loss);
  auto num_b = numeric_gradient(b, loss);
  auto num_x = numeric_gradient(x, loss);

  EXPECT_LT(relative_error(as_const(params[0].grad), as_const(num_a.view())), 1e-7);
  EXPECT_LT(relative_error(as_const(params[1].grad), as_const(num_b.view())), 1e-7);
  // dx = G W0 + adapter part; compare the adapter part on its own.
  auto base_dx =
      naive_product(as_const(g.view()), false, as_const(w0.view()), GetParam().fan_in_fan_out);
  Matrix<double, Cpu> adapter_dx(n, in);
  for (index_t i = 0; i < adapter_dx.size(); ++i)
    adapter_dx.data()[i] = dx.data()[i] - base_dx.data()[i];
  EXPECT_LT(relative_error(as_const(adapter_dx.view()), as_const(num_x.view())), 1e-7);
  // The adapter part is not trivially zero.
  EXPECT_GT(norm(ctx, as_const(num_x.view())), 1e-3);

  // backward_delta gives the same dA, dB and exactly the adapter part of dx.
  auto delta_layer = make_layer(a.view(), b.view());
  Matrix<double, Cpu> y2(n, out), dx2(n, in);
  delta_layer.forward_delta(ctx, x.view(), y2.view());
  delta_layer.backward_delta(ctx, x.view(), g.view(), dx2.view());
  auto delta_params = delta_layer.parameters();
  EXPECT_LT(relative_error(as_const(delta_params[0].grad), as_const(params[0].grad)), 1e-12);
  EXPECT_LT(relative_error(as_const(delta_params[1].grad), as_const(params[1].grad)), 1e-12);
  EXPECT_LT(relative_error(as_const(dx2.view()), as_const(adapter_dx.view())), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(Lora, LoraGradient,
                         ::testing::Values(GradCase{0.0f, false, false},
                                           GradCase{0.0f, true, false},
                                           GradCase{0.3f, false, false},
                                           GradCase{0.3f, true, false}, GradCase{0.0f, false, true},
                                           GradCase{0.3f, true, true}),
                         [](const auto& info) {
                           return std::string(info.param.dropout > 0 ? "Dropout" : "NoDropout") +
                                  (info.param.use_rslora ? "RsLora" : "Lora") +
                                  (info.param.fan_in_fan_out ? "FanInFanOut" : "");
                         });

}  // namespace
}  // namespace peft::test
