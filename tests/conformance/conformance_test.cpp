// The conformance suite: every adapter method (cases.hpp) and every CPU dtype pass the same
// checks of the Adapter contract. Checks look at the adapter's own contribution (y − x W0ᵀ − b,
// dx − dy W0, the gradients), never at whole outputs that the base would dominate.

#include <limits>
#include <optional>
#include <set>
#include <string>
#include <type_traits>

#include "allocation_counter.hpp"
#include "conformance.hpp"

namespace peft::test {
namespace {

template <class C>
class Conformance : public ::testing::Test {
 protected:
  using Case = typename C::case_type;
  using T = typename C::value_type;
  using Layer = typename Case::template Layer<T, Cpu>;
  using RefLayer = typename Case::template Layer<double, Cpu>;
  static constexpr index_t n = 5, in = 7, out = 6;

  static_assert(Adapter<Layer>);

  Matrix<T, Cpu> weight(bool fan_in_fan_out, std::uint32_t seed = 1) {
    return fan_in_fan_out ? random_matrix<T>(in, out, seed) : random_matrix<T>(out, in, seed);
  }

  Layer make(Matrix<T, Cpu>& w0, double dropout = 0.0, bool fan_in_fan_out = false) {
    Layer layer(ctx, w0.view(), Case::config(dropout, fan_in_fan_out), {.stream_id = 4},
                VectorView<const T, Cpu>(bias.data(), out));
    randomise(ctx, layer, 21);
    return layer;
  }

  HostCtx ctx;
  Matrix<T, Cpu> bias = random_matrix<T>(1, out, 2);
  Matrix<T, Cpu> x = random_matrix<T>(n, in, 5);
  Matrix<T, Cpu> dy = random_matrix<T>(n, out, 3);
};

TYPED_TEST_SUITE_P(Conformance);

// Finite differences in double of <dy, adapter part of y> for every parameter entry and x, with
// and without dropout, in both weight orientations and both forward modes.
TYPED_TEST_P(Conformance, GradientsMatchCentralDifferences) {
  using T = typename TestFixture::T;
  if constexpr (!std::is_same_v<T, double>) {
    GTEST_SKIP() << "finite differences run in double; other dtypes are compared with it";
  } else {
    constexpr index_t n = TestFixture::n, out = TestFixture::out;
    auto& ctx = this->ctx;
    for (double dropout : {0.0, 0.3})
      for (bool fan : {false, true})
        for (bool delta : {false, true}) {
          SCOPED_TRACE(testing::Message() << "dropout " << dropout << " fan_in_fan_out " << fan
                                          << (delta ? " delta" : " full"));
          auto w0 = this->weight(fan);
          auto reference = this->make(w0, dropout, fan);
          const auto base = base_output(as_const(this->x.view()), as_const(w0.view()), fan,
                                        as_const(this->bias.view()));
          // <dy, adapter part> for a fresh layer with reference's parameters and the given x:
          // a fresh layer's first forward draws the same dropout mask every time.
          auto loss = [&](MatrixView<const double, Cpu> x) {
            auto layer = this->make(w0, dropout, fan);
            copy_parameters(ctx, layer, reference);
            Matrix<double, Cpu> y(n, out);
            if (delta) {
              layer.forward_delta(ctx, x, y.view());
            } else {
              layer.forward(ctx, x, y.view());
              auto base_x = base_output(x, as_const(w0.view()), fan, as_const(this->bias.view()));
              axpy(ctx, -1.0, as_const(base_x.view()), y.view());
            }
            return dot(ctx, as_const(y.view()), as_const(this->dy.view()));
          };
          auto central = [&](auto& value, auto&& evaluate) {
            const double h = 1e-6, saved = value;
            value = saved + h;
            const double plus = evaluate();
            value = saved - h;
            const double minus_ = evaluate();
            value = saved;
            return (plus - minus_) / (2 * h);
          };

          // Analytic gradients.
          auto layer = this->make(w0, dropout, fan);
          copy_parameters(ctx, layer, reference);
          Matrix<double, Cpu> y(n, out), dx(n, TestFixture::in);
          if (delta) {
            layer.forward_delta(ctx, this->x.view(), y.view());
            layer.backward_delta(ctx, this->x.view(), this->dy.view(), dx.view());
          } else {
            layer.forward(ctx, this->x.view(), y.view());
            layer.backward(ctx, this->x.view(), this->dy.view(), dx.view());
            auto base_dx =
                naive_product(as_const(this->dy.view()), false, as_const(w0.view()), fan);
            axpy(ctx, -1.0, as_const(base_dx.view()), dx.view());
          }
          (void)base;
          layer.prepare_gradients(ctx);

          auto params = layer.parameters();
          auto ref_params = reference.parameters();
          for (std::size_t k = 0; k < params.size(); ++k) {
            auto value = ref_params[k].value;
            Matrix<double, Cpu> numeric(value.rows(), value.cols());
            for (index_t i = 0; i < value.rows(); ++i)
              for (index_t j = 0; j < value.cols(); ++j)
                numeric.view()(i, j) =
                    central(value(i, j), [&] { return loss(as_const(this->x.view())); });
            EXPECT_GT(norm(ctx, as_const(numeric.view())), 1e-3) << params[k].name;
            EXPECT_LT(relative_error(as_const(params[k].grad), as_const(numeric.view())), 1e-7)
                << params[k].name;
          }
          Matrix<double, Cpu> x_copy(n, TestFixture::in), numeric_dx(n, TestFixture::in);
          copy(ctx, as_const(this->x.view()), x_copy.view());
          for (index_t i = 0; i < x_copy.size(); ++i)
            numeric_dx.data()[i] =
                central(x_copy.data()[i], [&] { return loss(as_const(x_copy.view())); });
          EXPECT_GT(norm(ctx, as_const(numeric_dx.view())), 1e-3);
          EXPECT_LT(relative_error(as_const(dx.view()), as_const(numeric_dx.view())), 1e-7);
        }
  }
}

// float and bfloat16 layers against a double layer with the same parameters and inputs.
TYPED_TEST_P(Conformance, AgreesWithDouble) {
  using T = typename TestFixture::T;
  using Ref = typename TestFixture::RefLayer;
  auto& ctx = this->ctx;
  auto w0 = this->weight(false);
  auto layer = this->make(w0);
  auto w0r = converted<double>(as_const(w0.view()));
  auto xr = converted<double>(as_const(this->x.view()));
  auto dyr = converted<double>(as_const(this->dy.view()));
  auto biasr = converted<double>(as_const(this->bias.view()));
  Ref ref(ctx, w0r.view(), TestFixture::Case::config(0.0, false), {.stream_id = 4},
          VectorView<const double, Cpu>(biasr.data(), TestFixture::out));
  randomise(ctx, ref, 21);
  copy_parameters(ctx, ref, layer);

  Matrix<T, Cpu> y(TestFixture::n, TestFixture::out), dx(TestFixture::n, TestFixture::in);
  Matrix<double, Cpu> yr(TestFixture::n, TestFixture::out), dxr(TestFixture::n, TestFixture::in);
  layer.forward(ctx, this->x.view(), y.view());
  layer.backward(ctx, this->x.view(), this->dy.view(), dx.view());
  ref.forward(ctx, xr.view(), yr.view());
  ref.backward(ctx, xr.view(), dyr.view(), dxr.view());
  layer.prepare_gradients(ctx);
  ref.prepare_gradients(ctx);

  const auto base =
      base_output(as_const(xr.view()), as_const(w0r.view()), false, as_const(biasr.view()));
  auto part = minus(as_const(y.view()), as_const(base.view()));
  auto part_ref = minus(as_const(yr.view()), as_const(base.view()));
  EXPECT_LT(relative_error(as_const(part.view()), as_const(part_ref.view())), Tolerance<T>::output);
  EXPECT_LT(relative_error(as_const(dx.view()), as_const(dxr.view())), Tolerance<T>::output);
  auto params = layer.parameters();
  auto ref_params = ref.parameters();
  for (std::size_t k = 0; k < params.size(); ++k)
    EXPECT_LT(relative_error(as_const(params[k].grad), as_const(ref_params[k].grad)),
              Tolerance<T>::gradient)
        << params[k].name;
}

TYPED_TEST_P(Conformance, MergedForwardEqualsForwardAndUnmergeRestoresW0) {
  using T = typename TestFixture::T;
  auto& ctx = this->ctx;
  for (bool fan : {false, true}) {
    auto w0 = this->weight(fan);
    const auto original = this->weight(fan);
    auto layer = this->make(w0, 0.0, fan);
    layer.set_training(false);
    Matrix<T, Cpu> y(TestFixture::n, TestFixture::out), merged_y(TestFixture::n, TestFixture::out);
    layer.forward(ctx, this->x.view(), y.view());
    ASSERT_TRUE(layer.merge(ctx, w0.view()));
    EXPECT_FALSE(layer.merge(ctx, w0.view())) << "merging twice does nothing";
    layer.forward(ctx, this->x.view(), merged_y.view());
    const auto base = base_output(as_const(this->x.view()), as_const(original.view()), fan,
                                  as_const(this->bias.view()));
    auto part = minus(as_const(y.view()), as_const(base.view()));
    auto merged_part = minus(as_const(merged_y.view()), as_const(base.view()));
    EXPECT_LT(relative_error(as_const(merged_part.view()), as_const(part.view())),
              Tolerance<T>::output);
    ASSERT_TRUE(layer.unmerge(ctx, w0.view()));
    // W0 + ΔW − ΔW: exact up to the rounding of the sum in T.
    constexpr double exact = std::is_same_v<T, double>  ? 1e-15
                             : std::is_same_v<T, float> ? 1e-7
                                                        : 1e-2;
    EXPECT_LT(relative_error(as_const(w0.view()), as_const(original.view())), exact);
  }
}

TYPED_TEST_P(Conformance, SafeMergeRefusesNonFiniteAndLeavesW0Untouched) {
  auto& ctx = this->ctx;
  auto w0 = this->weight(false);
  const auto original = this->weight(false);
  auto layer = this->make(w0);
  auto first = layer.parameters()[0].value;
  first(0, 0) = std::numeric_limits<typename TestFixture::Layer::param_type>::infinity();
  layer.parameters_updated(ctx);
  expect_error([&] { layer.safe_merge(ctx, w0.view()); }, ErrorKind::numeric, {"non-finite"});
  EXPECT_TRUE(bitwise_equal(as_const(w0.view()), as_const(original.view())));
  EXPECT_FALSE(layer.merged());
}

// Two micro-batches forward with their own reserves, then backward in reverse order, equal the
// simple order (forward, backward, forward, backward), dropout included.
TYPED_TEST_P(Conformance, ReservesUsedOutOfOrderMatchTheSimpleOrder) {
  using T = typename TestFixture::T;
  auto& ctx = this->ctx;
  constexpr index_t n = TestFixture::n, in = TestFixture::in, out = TestFixture::out;
  auto w0 = this->weight(false);
  auto x2 = random_matrix<T>(n + 2, in, 8);
  auto dy2 = random_matrix<T>(n + 2, out, 9);
  Matrix<T, Cpu> y1(n, out), y2(n + 2, out), dx1(n, in), dx2(n + 2, in);
  Matrix<T, Cpu> py1(n, out), py2(n + 2, out), pdx1(n, in), pdx2(n + 2, in);

  auto simple = this->make(w0, 0.3);
  simple.forward(ctx, this->x.view(), y1.view());
  simple.backward(ctx, this->x.view(), this->dy.view(), dx1.view());
  simple.forward(ctx, x2.view(), y2.view());
  simple.backward(ctx, x2.view(), dy2.view(), dx2.view());

  auto piped = this->make(w0, 0.3);
  Vector<std::byte, Cpu> r1(piped.reserve_bytes(n)), r2(piped.reserve_bytes(n + 2));
  piped.forward(ctx, this->x.view(), py1.view(), r1.view());
  piped.forward(ctx, x2.view(), py2.view(), r2.view());
  piped.backward(ctx, x2.view(), dy2.view(), pdx2.view(), r2.view());
  piped.backward(ctx, this->x.view(), this->dy.view(), pdx1.view(), r1.view());
  simple.prepare_gradients(ctx);
  piped.prepare_gradients(ctx);

  EXPECT_TRUE(bitwise_equal(as_const(py1.view()), as_const(y1.view())));
  EXPECT_TRUE(bitwise_equal(as_const(py2.view()), as_const(y2.view())));
  EXPECT_TRUE(bitwise_equal(as_const(pdx1.view()), as_const(dx1.view())));
  EXPECT_TRUE(bitwise_equal(as_const(pdx2.view()), as_const(dx2.view())));
  auto a = piped.parameters(), b = simple.parameters();
  for (std::size_t k = 0; k < a.size(); ++k)  // summed in the other order
    EXPECT_LT(relative_error(as_const(a[k].grad), as_const(b[k].grad)), 1e-6) << a[k].name;
}

// forward_delta and backward_delta give the full calls minus the base, and the same gradients.
TYPED_TEST_P(Conformance, DeltaCallsEqualFullCallsMinusTheBase) {
  using T = typename TestFixture::T;
  auto& ctx = this->ctx;
  constexpr index_t n = TestFixture::n, in = TestFixture::in, out = TestFixture::out;
  for (bool fan : {false, true}) {
    auto w0 = this->weight(fan);
    auto full = this->make(w0, 0.3, fan);
    auto delta = this->make(w0, 0.3, fan);
    Matrix<T, Cpu> y(n, out), dx(n, in), dy_part(n, out), dx_part(n, in);
    full.forward(ctx, this->x.view(), y.view());
    full.backward(ctx, this->x.view(), this->dy.view(), dx.view());
    delta.forward_delta(ctx, this->x.view(), dy_part.view());
    delta.backward_delta(ctx, this->x.view(), this->dy.view(), dx_part.view());
    full.prepare_gradients(ctx);
    delta.prepare_gradients(ctx);

    const auto base = base_output(as_const(this->x.view()), as_const(w0.view()), fan,
                                  as_const(this->bias.view()));
    const auto base_dx = naive_product(as_const(this->dy.view()), false, as_const(w0.view()), fan);
    auto part = minus(as_const(y.view()), as_const(base.view()));
    auto part_dx = minus(as_const(dx.view()), as_const(base_dx.view()));
    EXPECT_LT(relative_error(as_const(dy_part.view()), as_const(part.view())),
              Tolerance<T>::output);
    EXPECT_LT(relative_error(as_const(dx_part.view()), as_const(part_dx.view())),
              Tolerance<T>::output);
    auto a = delta.parameters(), b = full.parameters();
    for (std::size_t k = 0; k < a.size(); ++k)
      EXPECT_LT(relative_error(as_const(a[k].grad), as_const(b[k].grad)), Tolerance<T>::gradient)
          << a[k].name;
  }
}

// After preallocate, no call allocates: not the workspace, not the backend allocator, not the
// heap (operator new is counted in this executable).
TYPED_TEST_P(Conformance, NoAllocationAfterPreallocate) {
  using T = typename TestFixture::T;
  auto& ctx = this->ctx;
  constexpr index_t n = TestFixture::n, in = TestFixture::in, out = TestFixture::out;
  auto w0 = this->weight(false);
  auto layer = this->make(w0, 0.3);
  Matrix<T, Cpu> y(n, out), dx(n, in);
  Vector<std::byte, Cpu> reserve(layer.reserve_bytes(n));
  layer.preallocate(ctx, n);
  auto step = [&] {
    layer.forward(ctx, this->x.view(), y.view());
    layer.backward(ctx, this->x.view(), this->dy.view(), dx.view());
    layer.forward_delta(ctx, this->x.view(), y.view(), reserve.view());
    layer.backward_delta(ctx, this->x.view(), this->dy.view(), dx.view(), reserve.view());
    layer.prepare_gradients(ctx);
    layer.parameters_updated(ctx);
    layer.zero_grad(ctx);
  };
  step();  // warms up what is outside the library (OpenMP's and the BLAS's thread pools)
  const auto workspace = ctx.workspace().allocations();
  const AllocationCount before = count_allocations();
  step();
  const AllocationCount after = count_allocations();
  EXPECT_EQ(ctx.workspace().allocations(), workspace);
  EXPECT_EQ(after.backend, before.backend);
#if defined(PEFT_GEMM_PROVIDER_ONEDNN)
  // oneDNN's dnnl_sgemm calls operator new on every call (README: "Choosing the GEMM provider");
  // double runs on OpenBLAS there.
  if (!std::is_same_v<T, double>) return;
#endif
  EXPECT_EQ(after.heap, before.heap);
}

TYPED_TEST_P(Conformance, ParameterNamesAreUniqueAndCountsAgree) {
  auto w0 = this->weight(false);
  auto layer = this->make(w0);
  std::set<std::string> names;
  index_t total = 0;
  for (const auto& p : layer.parameters()) {
    EXPECT_TRUE(names.insert(p.name).second) << p.name << " twice";
    EXPECT_EQ(p.grad.rows(), p.value.rows()) << p.name;
    EXPECT_EQ(p.grad.cols(), p.value.cols()) << p.name;
    total += p.value.size();
  }
  EXPECT_EQ(total, layer.num_trainable());
}

// A handle follows the layer when it moves and refuses once the layer is gone.
TYPED_TEST_P(Conformance, HandlesFollowMovesAndRefuseDestroyedLayers) {
  auto w0 = this->weight(false);
  std::optional<typename TestFixture::Layer> holder;
  auto layer = this->make(w0);
  auto handle = layer.handle();
  holder.emplace(std::move(layer));
  EXPECT_EQ(&handle.get("test"), &*holder);
  std::vector<typename TestFixture::Layer> many;
  many.push_back(std::move(*holder));
  for (int i = 0; i < 4; ++i) many.push_back(this->make(w0));  // reallocates
  EXPECT_EQ(&handle.get("test"), &many[0]);
  many.clear();
  EXPECT_FALSE(handle.alive());
  expect_error([&] { handle.get("AdamW::step"); }, ErrorKind::state,
               {"AdamW::step", "no longer exists"});
}

REGISTER_TYPED_TEST_SUITE_P(Conformance, GradientsMatchCentralDifferences, AgreesWithDouble,
                            MergedForwardEqualsForwardAndUnmergeRestoresW0,
                            SafeMergeRefusesNonFiniteAndLeavesW0Untouched,
                            ReservesUsedOutOfOrderMatchTheSimpleOrder,
                            DeltaCallsEqualFullCallsMinusTheBase, NoAllocationAfterPreallocate,
                            ParameterNamesAreUniqueAndCountsAgree,
                            HandlesFollowMovesAndRefuseDestroyedLayers);

struct ComboName {
  template <class C>
  static std::string GetName(int) {
    using T = typename C::value_type;
    return std::string(C::case_type::name) + (std::is_same_v<T, double>  ? "_f64"
                                              : std::is_same_v<T, float> ? "_f32"
                                                                         : "_bf16");
  }
};

using Combos = EveryDtype<AllCases>::type;
INSTANTIATE_TYPED_TEST_SUITE_P(Cpu, Conformance, Combos, ComboName);

}  // namespace
}  // namespace peft::test
