#pragma once
// The one harness of the CUDA adapter tests: an AdapterPair is a layer on the device
// (GpuAdapter, of any method and dtype) and the same method as Layer<double, Cpu>, over one
// frozen weight, bias, config and set of parameters, and the checks every method passes against
// the CPU: forward/backward, forward_delta/backward_delta, caller-owned reserves used out of
// order, merge/unmerge/delta_weight and an optimizer step. Checks compare the adapter's own
// contribution (y − x W0ᵀ − b and dx − dy W0, the base computed in double on the host) and the
// gradients of parameters(), never whole outputs that the base would dominate.
//
// The CudaAdapter suite (adapter_test.cpp) runs these checks over the cases that each method's
// file instantiates (lora_test.cpp, rosa_test.cpp, adalora_test.cpp); the conformance suite
// (conformance_test.cpp) runs them over the CPU suite's case list.
//
// Relative error bounds: outputs 1e-5 for float, 1e-12 for double, 1e-2 for __half and
// __nv_bfloat16; gradients of parameters (kept in fp32 or fp64) 1e-5, and 1e-12 for double.

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "cuda/gpu_adapter.hpp"
#include "cuda/gpu_sparse.hpp"
#include "cuda/reference.hpp"
#include "cuda/sparse_reference.hpp"

namespace peft::gpu::test {

/// Bound on ‖gpu − cpu‖ / ‖cpu‖ of outputs (y, dx, ΔW) of a layer of dtype t.
inline double output_tolerance(DType t) {
  switch (t) {
    case DType::f32:
      return 1e-5;
    case DType::f64:
      return 1e-12;
    default:
      return 1e-2;
  }
}

/// The same bound for gradients of parameters: they are param_t<T>, fp32-accurate also over a
/// 16-bit layer (the low-rank path computes in fp32).
inline double gradient_tolerance(DType t) {
  return t == DType::f64 ? 1e-12 : 1e-5;
}

/// The dtype of a layer's parameters (param_t<T>).
inline DType param_dtype(DType t) {
  return t == DType::f64 ? DType::f64 : DType::f32;
}

/// The problem a pair is built over.
struct PairShape {
  DType dtype = DType::f32;
  index_t n = 1, in = 1, out = 1;
  bool bias = false;
  bool strided = false;    // x, y, dy, dx and W0 as blocks of larger device matrices
  double mask_fill = 1.0;  // a sparse part's mask: this fraction of its capacity (0: no mask)
};

/// How a pair's parameters start.
enum class Init {
  library,  // the method's own initialisation (drawn on the host: identical on both sides)
  random,   // every parameter uniform in [-0.5, 0.5] (the same values on both sides)
};

template <class CpuLayer>
class AdapterPair {
 public:
  using Config = std::remove_cvref_t<decltype(std::declval<const CpuLayer&>().config())>;
  static constexpr bool kSparse =
      requires(CpuLayer & layer, Context<Cpu>& ctx, const CsrPattern& p) {
    layer.set_mask(ctx, p);
  };

  /// The GPU layer from make_gpu(args), which must build the method of CpuLayer with `config`.
  /// The frozen weight is small (|W0| <= 0.1) so that the base does not dwarf the adapter's
  /// contribution in 16-bit outputs.
  template <class MakeGpu>
  AdapterPair(const PairShape& shape, const Config& config, MakeGpu&& make_gpu,
              Init init = Init::random)
      : c(shape), cfg(config) {
    const bool fan = fan_in_fan_out();
    w0 = fan ? random_matrix(c.dtype, c.in, c.out, 1, 0.1)
             : random_matrix(c.dtype, c.out, c.in, 1, 0.1);
    if (c.bias) bias = random_matrix(c.dtype, 1, c.out, 2, 0.1);
    const VectorView<const double, Cpu> b = c.bias
                                                ? VectorView<const double, Cpu>(bias.data(), c.out)
                                                : VectorView<const double, Cpu>();
    cpu = std::make_unique<CpuLayer>(ctx, w0.view(), cfg, opts, b);
    gpu = make_gpu(AdapterArgs{w0.view(), opts, bias.view(), c.strided});
    EXPECT_EQ(gpu->name(), CpuLayer::name);
    if constexpr (kSparse) {
      const auto nnz = static_cast<index_t>(c.mask_fill * double(cpu->sparse_capacity()));
      if (nnz > 0) install_mask(pattern_with(c.out, c.in, nnz, 21));
    }
    if (init == Init::random) randomise(31);
  }

  /// The GPU layer from make_adapter(dtype, args, config).
  explicit AdapterPair(const PairShape& shape, const Config& config, Init init = Init::random)
      : AdapterPair(
            shape, config,
            [&](const AdapterArgs& args) -> std::unique_ptr<GpuAdapter> {
              return make_adapter(shape.dtype, args, config);
            },
            init) {}

  AdapterPair(const AdapterPair&) = delete;
  AdapterPair& operator=(const AdapterPair&) = delete;

  bool fan_in_fan_out() const {
    if constexpr (requires { cfg.fan_in_fan_out; })
      return cfg.fan_in_fan_out;
    else
      return cfg.lora.fan_in_fan_out;
  }

  /// The device layer's RoSA interface.
  GpuRosa& rosa() const { return dynamic_cast<GpuRosa&>(*gpu); }

  /// The same mask on both layers (S's values are zeroed by set_mask).
  void install_mask(const CsrPattern& pattern) {
    cpu->set_mask(ctx, pattern);
    rosa().set_mask(pattern);
  }

  /// S's first nnz values uniform in [-0.5, 0.5), in the parameters' type, on both layers.
  void set_sparse_values(std::uint32_t value_seed) {
    const index_t nnz = cpu->sparse().nnz();
    const HostMatrix values = random_matrix(param_dtype(c.dtype), 1, nnz, value_seed, 0.5);
    auto s = sparse_parameter(*cpu).value;
    for (index_t e = 0; e < nnz; ++e) s.data()[e] = values.data()[e];
    cpu->parameters_updated(ctx);
    rosa().set_sparse_values(values.view());
  }

  /// Every parameter uniform in [-0.5, 0.5) (in the parameters' type), the same on both layers.
  void randomise(std::uint32_t value_seed) {
    auto params = cpu->parameters();
    for (std::size_t p = 0; p < params.size(); ++p) {
      const HostMatrix values =
          random_matrix(param_dtype(c.dtype), params[p].value.rows(), params[p].value.cols(),
                        value_seed + std::uint32_t(p), 0.5);
      copy(ctx, values.view(), params[p].value);
      gpu->set_parameter(p, values.view());
    }
    cpu->parameters_updated(ctx);
    gpu->parameters_updated();
  }

  /// The CPU layer takes the device layer's parameters (e.g. after an optimizer step there).
  void copy_parameters_from_gpu() {
    auto params = cpu->parameters();
    for (std::size_t p = 0; p < params.size(); ++p)
      copy(ctx, gpu->parameter(p).view(), params[p].value);
    cpu->parameters_updated(ctx);
  }

  HostMatrix random(index_t rows, index_t cols, double scale = 1.0) {
    return random_matrix(c.dtype, rows, cols, ++seed, scale);
  }
  DeviceMatrix device(HostView m) const { return DeviceMatrix(c.dtype, m, c.strided); }
  /// An output on the device: NaN everywhere, so anything left unwritten shows.
  DeviceMatrix output(index_t rows, index_t cols) const {
    return DeviceMatrix(c.dtype, rows, cols, c.strided);
  }

  /// x W0ᵀ + b in double.
  HostMatrix base_y(HostView x) {
    HostMatrix y(x.rows(), c.out);
    cpu::gemm(ctx, Op::N, fan_in_fan_out() ? Op::N : Op::T, 1.0, x, w0.view(), 0.0, y.view());
    if (c.bias)
      for (index_t i = 0; i < y.rows(); ++i)
        for (index_t j = 0; j < y.cols(); ++j) y.view()(i, j) += bias.view()(0, j);
    return y;
  }
  /// dy W0 in double (the base's part of dx).
  HostMatrix base_dx(HostView dy) {
    HostMatrix dx(dy.rows(), c.in);
    cpu::gemm(ctx, Op::N, fan_in_fan_out() ? Op::T : Op::N, 1.0, dy, w0.view(), 0.0, dx.view());
    return dx;
  }

  /// got − base against expected − base.
  void expect_part(const char* what, HostView got, HostView expected, HostView base) const {
    const HostMatrix g = difference(got, base), e = difference(expected, base);
    EXPECT_GT(frobenius_norm(e.view()), 1e-3 * frobenius_norm(base) + 1e-12)
        << what << ": the adapter contributes nothing, the comparison would be vacuous";
    EXPECT_LT(relative_error(g.view(), e.view()), output_tolerance(c.dtype)) << what;
  }

  /// The gradients of every parameter, made current on both sides (prepare_gradients).
  /// `allow_zero`: a parameter whose CPU gradient is zero (a sparse part without a mask) must
  /// have a zero gradient on the device too; otherwise a zero CPU gradient fails the check as a
  /// vacuous comparison.
  void expect_gradients_match(bool allow_zero = false) {
    cpu->prepare_gradients(ctx);
    gpu->prepare_gradients();
    auto params = cpu->parameters();
    for (std::size_t p = 0; p < params.size(); ++p) {
      const HostMatrix expected = copy_of(as_const(params[p].grad));
      const HostMatrix got = gpu->gradient(p);
      if (allow_zero && frobenius_norm(expected.view()) == 0.0) {
        EXPECT_EQ(frobenius_norm(got.view()), 0.0) << "gradient of " << params[p].name;
        continue;
      }
      EXPECT_GT(frobenius_norm(expected.view()), 0.0) << params[p].name;
      EXPECT_LT(relative_error(got.view(), expected.view()), gradient_tolerance(c.dtype))
          << "gradient of " << params[p].name;
    }
  }

  PairShape c;
  Config cfg;
  LayerOptions opts{.stream_id = 5};
  HostMatrix w0, bias;
  HostCtx ctx;
  std::unique_ptr<CpuLayer> cpu;
  std::unique_ptr<GpuAdapter> gpu;
  std::uint32_t seed = 100;

 private:
  static auto sparse_parameter(CpuLayer& layer) {
    for (auto& p : layer.parameters())
      if (p.name == "rosa_S") return p;
    throw Error(ErrorKind::invalid_argument, "gpu test: the layer has no rosa_S");
  }
};

// ---- the checks every method passes ----------------------------------------------------------

/// Before any change: the same parameter names, values (bit for bit: both sides draw their
/// initialisation on the host) and zero gradients.
template <class Pair>
void check_same_parameters(Pair& s) {
  auto params = s.cpu->parameters();
  const auto names = s.gpu->parameter_names();
  ASSERT_EQ(names.size(), params.size());
  for (std::size_t p = 0; p < params.size(); ++p) {
    EXPECT_EQ(names[p], params[p].name);
    EXPECT_TRUE(bitwise_equal(s.gpu->parameter(p).view(), as_const(params[p].value)))
        << params[p].name;
    EXPECT_EQ(frobenius_norm(s.gpu->gradient(p).view()), 0.0) << params[p].name;
  }
  EXPECT_EQ(s.gpu->num_trainable(), s.cpu->num_trainable());
  EXPECT_EQ(s.gpu->in_features(), s.cpu->in_features());
  EXPECT_EQ(s.gpu->out_features(), s.cpu->out_features());
  EXPECT_GT(s.gpu->reserve_bytes(7), 0);
}

/// One forward and backward of fresh inputs on both layers, compared (outputs untouched outside
/// their views). `allow_zero_gradients`: as in expect_gradients_match.
template <class Pair>
void check_forward_backward(Pair& s, const char* what, bool allow_zero_gradients = false) {
  SCOPED_TRACE(what);
  const PairShape& c = s.c;
  const HostMatrix x = s.random(c.n, c.in), dy = s.random(c.n, c.out);
  DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
  DeviceMatrix y_d = s.output(c.n, c.out), dx_d = s.output(c.n, c.in);
  s.gpu->forward(x_d, y_d);
  s.gpu->backward(x_d, dy_d, dx_d);
  HostMatrix y(c.n, c.out), dx(c.n, c.in);
  s.cpu->forward(s.ctx, x.view(), y.view());
  s.cpu->backward(s.ctx, x.view(), dy.view(), dx.view());
  s.expect_part("y", y_d.download().view(), y.view(), s.base_y(x.view()).view());
  s.expect_part("dx", dx_d.download().view(), dx.view(), s.base_dx(dy.view()).view());
  s.expect_gradients_match(allow_zero_gradients);
  EXPECT_TRUE(y_d.gaps_untouched());
  EXPECT_TRUE(dx_d.gaps_untouched());
  EXPECT_TRUE(x_d.gaps_untouched());
}

/// backward with an empty dx: only the gradients.
template <class Pair>
void check_backward_without_dx(Pair& s) {
  const PairShape& c = s.c;
  const HostMatrix x = s.random(c.n, c.in), dy = s.random(c.n, c.out);
  DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
  DeviceMatrix y_d = s.output(c.n, c.out), no_dx;
  s.gpu->forward(x_d, y_d);
  s.gpu->backward(x_d, dy_d, no_dx);
  HostMatrix y(c.n, c.out);
  s.cpu->forward(s.ctx, x.view(), y.view());
  s.cpu->backward(s.ctx, x.view(), dy.view(), MatrixView<double, Cpu>());
  s.expect_gradients_match();
}

/// forward_delta and backward_delta accumulate the adapter's part on top of what y and dx held.
template <class Pair>
void check_delta(Pair& s) {
  const PairShape& c = s.c;
  const HostMatrix x = s.random(c.n, c.in), dy = s.random(c.n, c.out);
  const HostMatrix y0 = s.random(c.n, c.out, 0.5), dx0 = s.random(c.n, c.in, 0.5);
  DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
  DeviceMatrix y_d = s.device(y0.view()), dx_d = s.device(dx0.view());
  s.gpu->forward_delta(x_d, y_d);
  s.gpu->backward_delta(x_d, dy_d, dx_d);

  HostMatrix y = copy_of(y0.view()), dx = copy_of(dx0.view());
  s.cpu->forward_delta(s.ctx, x.view(), y.view());
  s.cpu->backward_delta(s.ctx, x.view(), dy.view(), dx.view());

  s.expect_part("y (delta)", y_d.download().view(), y.view(), y0.view());
  s.expect_part("dx (delta)", dx_d.download().view(), dx.view(), dx0.view());
  s.expect_gradients_match();
  EXPECT_TRUE(y_d.gaps_untouched());
  EXPECT_TRUE(dx_d.gaps_untouched());

  // Again without dx: only the gradients.
  DeviceMatrix no_dx;
  s.gpu->forward_delta(x_d, y_d);
  s.gpu->backward_delta(x_d, dy_d, no_dx);
  s.cpu->forward_delta(s.ctx, x.view(), y.view());
  s.cpu->backward_delta(s.ctx, x.view(), dy.view(), MatrixView<double, Cpu>());
  s.expect_gradients_match();
}

/// Pipeline order with caller-owned reserves (two batch sizes): both forwards, then the
/// backwards in reverse; then the delta forms interleaved the same way.
template <class Pair>
void check_reserves_out_of_order(Pair& s) {
  const PairShape& c = s.c;
  const index_t n1 = c.n, n2 = c.n + 2;
  const HostMatrix x1 = s.random(n1, c.in), dy1 = s.random(n1, c.out);
  const HostMatrix x2 = s.random(n2, c.in), dy2 = s.random(n2, c.out);
  DeviceMatrix x1_d = s.device(x1.view()), dy1_d = s.device(dy1.view());
  DeviceMatrix x2_d = s.device(x2.view()), dy2_d = s.device(dy2.view());
  DeviceMatrix y1_d = s.output(n1, c.out), y2_d = s.output(n2, c.out);
  DeviceMatrix dx1_d = s.output(n1, c.in), dx2_d = s.output(n2, c.in);
  DeviceBytes r1(s.gpu->reserve_bytes(n1)), r2(s.gpu->reserve_bytes(n2));
  s.gpu->forward(x1_d, y1_d, r1);
  s.gpu->forward(x2_d, y2_d, r2);
  s.gpu->backward(x2_d, dy2_d, dx2_d, r2);
  s.gpu->backward(x1_d, dy1_d, dx1_d, r1);

  Vector<std::byte, Cpu> c1(s.cpu->reserve_bytes(n1)), c2(s.cpu->reserve_bytes(n2));
  HostMatrix y1(n1, c.out), y2(n2, c.out), dx1(n1, c.in), dx2(n2, c.in);
  s.cpu->forward(s.ctx, x1.view(), y1.view(), c1.view());
  s.cpu->forward(s.ctx, x2.view(), y2.view(), c2.view());
  s.cpu->backward(s.ctx, x2.view(), dy2.view(), dx2.view(), c2.view());
  s.cpu->backward(s.ctx, x1.view(), dy1.view(), dx1.view(), c1.view());

  s.expect_part("y1", y1_d.download().view(), y1.view(), s.base_y(x1.view()).view());
  s.expect_part("y2", y2_d.download().view(), y2.view(), s.base_y(x2.view()).view());
  s.expect_part("dx1", dx1_d.download().view(), dx1.view(), s.base_dx(dy1.view()).view());
  s.expect_part("dx2", dx2_d.download().view(), dx2.view(), s.base_dx(dy2.view()).view());
  s.expect_gradients_match();

  const HostMatrix y0 = s.random(n1, c.out, 0.5), dx0 = s.random(n1, c.in, 0.5);
  DeviceMatrix yd_d = s.device(y0.view()), dxd_d = s.device(dx0.view());
  DeviceMatrix no_dx;
  s.gpu->forward_delta(x1_d, yd_d, r1);
  s.gpu->forward_delta(x2_d, y2_d, r2);
  s.gpu->backward_delta(x2_d, dy2_d, no_dx, r2);
  s.gpu->backward_delta(x1_d, dy1_d, dxd_d, r1);
  HostMatrix yd = copy_of(y0.view()), dxd = copy_of(dx0.view());
  s.cpu->forward_delta(s.ctx, x1.view(), yd.view(), c1.view());
  s.cpu->forward_delta(s.ctx, x2.view(), y2.view(), c2.view());
  s.cpu->backward_delta(s.ctx, x2.view(), dy2.view(), MatrixView<double, Cpu>(), c2.view());
  s.cpu->backward_delta(s.ctx, x1.view(), dy1.view(), dxd.view(), c1.view());
  s.expect_part("y (delta, reserve)", yd_d.download().view(), yd.view(), y0.view());
  s.expect_part("dx (delta, reserve)", dxd_d.download().view(), dxd.view(), dx0.view());
  s.expect_gradients_match();
}

/// delta_weight equals the CPU's; merge adds it to W0 once; the merged layer (the base alone)
/// equals the unmerged CPU layer; unmerge restores W0 and the adapter path runs again.
template <class Pair>
void check_merge(Pair& s) {
  const PairShape& c = s.c;
  const double tol = output_tolerance(c.dtype);
  HostMatrix delta(s.w0.rows(), s.w0.cols());
  s.cpu->delta_weight(s.ctx, delta.view());
  ASSERT_GT(frobenius_norm(delta.view()), 0.0);
  EXPECT_LT(relative_error(s.gpu->delta_weight().view(), delta.view()), tol) << "delta_weight";

  EXPECT_FALSE(s.gpu->merged());
  EXPECT_TRUE(s.gpu->merge());
  EXPECT_TRUE(s.gpu->merged());
  EXPECT_FALSE(s.gpu->merge()) << "merging twice must do nothing";
  const HostMatrix merged = s.gpu->base_weight();
  EXPECT_LT(relative_error(difference(merged.view(), s.w0.view()).view(), delta.view()), tol)
      << "W0 after merge − W0";

  // In evaluation, where neither drops anything.
  s.gpu->set_training(false);
  s.cpu->set_training(false);
  const HostMatrix x = s.random(c.n, c.in);
  DeviceMatrix x_d = s.device(x.view()), y_d = s.output(c.n, c.out);
  s.gpu->forward(x_d, y_d);
  HostMatrix y(c.n, c.out);
  s.cpu->forward(s.ctx, x.view(), y.view());
  s.expect_part("y (merged)", y_d.download().view(), y.view(), s.base_y(x.view()).view());

  EXPECT_TRUE(s.gpu->unmerge());
  EXPECT_FALSE(s.gpu->unmerge());
  const HostMatrix restored = s.gpu->base_weight();
  EXPECT_LT(frobenius_norm(difference(restored.view(), s.w0.view()).view()),
            tol * frobenius_norm(delta.view()))
      << "unmerge must restore W0";

  DeviceMatrix y2_d = s.output(c.n, c.out);
  s.gpu->forward(x_d, y2_d);
  s.expect_part("y (unmerged)", y2_d.download().view(), y.view(), s.base_y(x.view()).view());
}

/// AdamW steps the device layer's parameters and calls parameters_updated; the CPU layer then
/// takes the stepped values, and both must agree again (effective factors, Sᵀ and 16-bit copies
/// follow the step).
template <class Pair>
void check_optimizer_step(Pair& s) {
  s.gpu->add_to_optimizer({.lr = 0.05, .weight_decay = 0.1});
  check_forward_backward(s, "before the step");
  std::vector<HostMatrix> before;
  for (std::size_t p = 0; p < s.gpu->parameter_names().size(); ++p)
    before.push_back(s.gpu->parameter(p));
  s.gpu->prepare_gradients();  // what AdamW's users without the pre-step hook must call
  s.gpu->optimizer_step();
  s.gpu->zero_grad();
  s.cpu->zero_grad(s.ctx);
  const auto names = s.gpu->parameter_names();
  for (std::size_t p = 0; p < names.size(); ++p)
    EXPECT_GT(relative_error(s.gpu->parameter(p).view(), before[p].view()), 1e-3)
        << "the step must change " << names[p];
  s.copy_parameters_from_gpu();
  check_forward_backward(s, "after the step");
}

// ---- the suite over every method's cases -----------------------------------------------------

/// The methods of the CudaAdapter suite, by config (one line per method here and in CpuLayerOf).
using MethodConfig = std::variant<LoraConfig, RosaConfig, AdaLoraConfig>;

template <class Config>
struct CpuLayerOf;
template <>
struct CpuLayerOf<LoraConfig> {
  using type = Lora<double, Cpu>;
};
template <>
struct CpuLayerOf<RosaConfig> {
  using type = Rosa<double, Cpu>;
};
template <>
struct CpuLayerOf<AdaLoraConfig> {
  using type = AdaLora<double, Cpu>;
};

struct AdapterCase {
  PairShape shape;
  MethodConfig config;
};

/// Runs f(pair) on a fresh pair of the case's method.
template <class F>
void with_pair(const AdapterCase& ac, F&& f, Init init = Init::random) {
  std::visit(
      [&](const auto& config) {
        using Config = std::decay_t<decltype(config)>;
        AdapterPair<typename CpuLayerOf<Config>::type> pair(ac.shape, config, init);
        f(pair);
      },
      ac.config);
}

inline std::string method_label(const LoraConfig& c) {
  return peft::detail::concat("_r", c.r, c.dropout > 0 ? "_dropout" : "",
                              c.fan_in_fan_out ? "_fanin" : "", c.use_rslora ? "_rslora" : "");
}
inline std::string method_label(const RosaConfig& c) {
  return peft::detail::concat(method_label(c.lora),
                              c.forward == RosaForward::spmm ? "_spmm" : "_denseadd");
}
inline std::string method_label(const AdaLoraConfig& c) {
  return peft::detail::concat("_r", c.init_r, c.dropout > 0 ? "_dropout" : "",
                              c.fan_in_fan_out ? "_fanin" : "");
}

inline std::string label(const AdapterCase& ac) {
  const PairShape& s = ac.shape;
  return peft::detail::concat(name(s.dtype), "_n", s.n, "_in", s.in, "_out", s.out,
                              std::visit([](const auto& c) { return method_label(c); }, ac.config),
                              s.bias ? "_bias" : "", s.strided ? "_strided" : "",
                              s.mask_fill < 1.0 ? "_partial" : "");
}

inline void PrintTo(const AdapterCase& ac, std::ostream* os) {
  *os << label(ac);
}

/// Names the parameterised tests by their case.
struct CaseName {
  std::string operator()(const ::testing::TestParamInfo<AdapterCase>& info) const {
    return label(info.param);
  }
};

class CudaAdapter : public CudaTest, public ::testing::WithParamInterface<AdapterCase> {};

/// Cases written as the old per-method lists wrote them. alpha = 2 r, init none (A and B both
/// random), seed 11.
inline AdapterCase lora_case(DType t, index_t n, index_t in, index_t out, index_t r,
                             double dropout = 0.0, bool fan_in_fan_out = false, bool bias = false,
                             bool strided = false, bool rslora = false) {
  return {{t, n, in, out, bias, strided},
          LoraConfig{.r = r,
                     .alpha = 2.0 * double(r),
                     .dropout = dropout,
                     .use_rslora = rslora,
                     .fan_in_fan_out = fan_in_fan_out,
                     .init = LoraInit::none,
                     .seed = 11}};
}

/// `partial`: a mask with two thirds of the capacity.
inline AdapterCase rosa_case(DType t, index_t n, index_t in, index_t out, index_t r, double density,
                             RosaForward mode, double dropout = 0.0, bool fan_in_fan_out = false,
                             bool bias = false, bool strided = false, bool partial = false) {
  AdapterCase ac = lora_case(t, n, in, out, r, dropout, fan_in_fan_out, bias, strided);
  ac.shape.mask_fill = partial ? 2.0 / 3.0 : 1.0;
  ac.config =
      RosaConfig{.lora = std::get<LoraConfig>(ac.config), .density = density, .forward = mode};
  return ac;
}

/// init_weights = false (E random too).
inline AdapterCase adalora_case(DType t, index_t n, index_t in, index_t out, index_t r,
                                double dropout = 0.0, bool fan_in_fan_out = false,
                                bool bias = false, bool strided = false) {
  return {{t, n, in, out, bias, strided},
          AdaLoraConfig{.init_r = r,
                        .alpha = 2.0 * double(r),
                        .dropout = dropout,
                        .fan_in_fan_out = fan_in_fan_out,
                        .init_weights = false,
                        .seed = 11}};
}

}  // namespace peft::gpu::test
