// export_as_lora: NOLA and LoRA-XS layers written as plain PEFT LoRA checkpoints. peft-cpp's own
// LoRA loader reads them over the same base and gives the layers' outputs bit for bit (both
// methods, Linear and Conv1D orientation, float and bfloat16 models, modules of different r and
// alpha in one set); layers without effective factors are refused.
//
// Over the golden cases' bases (tests/data/peft_lora_basic, peft_lora_conv1d) the test also
// writes, with PEFT_TEST_EXPORT_DIR set, $PEFT_TEST_EXPORT_DIR/<method>_<case>/adapter (the
// export) and expected.safetensors (the case's inputs and our layers' outputs) for
// tests/data/verify_export.py to load the export with Hugging Face PEFT and compare.

#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>
#include <utility>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

const std::vector<std::pair<index_t, index_t>> kShapes = {{6, 9}, {8, 5}};

NolaConfig nola_config(bool fan_in_fan_out = false) {
  return {.r = 3,
          .alpha = 6,
          .num_basis_a = 10,
          .num_basis_b = 12,
          .dropout = 0.1,
          .fan_in_fan_out = fan_in_fan_out,
          .seed = 7};
}

LoraXsConfig lora_xs_config(bool fan_in_fan_out = false) {
  return {.r = 3,
          .alpha = 16,
          .dropout = 0.1,
          .fan_in_fan_out = fan_in_fan_out,
          .seed = 7,
          .svd = {.power_iterations = 3, .seed = 5}};
}

/// Every parameter uniform in [-1, 1], then parameters_updated: ΔW far from zero (NOLA starts
/// as the base, LoRA-XS nearly so).
template <class T>
void randomise(HostCtx& ctx, AdapterSet<T, Cpu>& set, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  set.for_each([&](const std::string&, auto& layer) {
    for (auto& p : layer.parameters())
      for (index_t i = 0; i < p.value.rows(); ++i)
        for (index_t j = 0; j < p.value.cols(); ++j) p.value(i, j) = dist(gen);
    layer.parameters_updated(ctx);
  });
}

template <class P>
double max_abs(MatrixView<const P, Cpu> m) {
  double worst = 0;
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) worst = std::max(worst, std::abs(double(m(i, j))));
  return worst;
}

/// forward of each module in eval mode on its x (random unless given), in module order.
template <class T>
std::vector<Matrix<T, Cpu>> outputs(HostCtx& ctx, AdapterSet<T, Cpu>& set,
                                    const std::vector<const Matrix<T, Cpu>*>& xs = {}) {
  std::vector<Matrix<T, Cpu>> ys;
  set.set_training(false);
  set.for_each([&](const std::string&, auto& layer) {
    const std::size_t i = ys.size();
    const auto x = i < xs.size() ? xs[i]->view() : MatrixView<const T, Cpu>();
    const auto random_x = random_matrix<T>(4, layer.in_features(), 55 + std::uint32_t(i));
    const auto used = x.empty() ? random_x.view() : x;
    Matrix<T, Cpu> y(used.rows(), layer.out_features());
    layer.forward(ctx, used, y.view());
    ys.push_back(std::move(y));
  });
  return ys;
}

/// Exports `set`, loads the export with the LoRA loader over `base` and checks it against the
/// set: factors bit for bit, scaling, outputs bit for bit (both run the same low-rank path).
template <class T>
AdapterSet<T, Cpu> export_and_reload(HostCtx& ctx, AdapterSet<T, Cpu>& set,
                                     const BaseModel<T, Cpu>& base, const fs::path& dir) {
  export_as_lora(dir, set, ctx, {.base_model_name_or_path = "base"});
  auto lora = load_adapter(dir, base, ctx);
  EXPECT_EQ(lora.modules(), set.modules());
  const auto expected = outputs(ctx, set), got = outputs(ctx, lora);
  const auto modules = set.modules();
  for (std::size_t i = 0; i < modules.size(); ++i) {
    SCOPED_TRACE(modules[i]);
    auto& l = lora.template get<Lora<T, Cpu>>(modules[i]);
    std::visit(
        [&](auto& layer) {
          if constexpr (ExportableAsLora<std::remove_cvref_t<decltype(layer)>>) {
            EXPECT_TRUE(bitwise_equal(as_const(l.parameters()[0].value), layer.effective_a()));
            EXPECT_TRUE(bitwise_equal(as_const(l.parameters()[1].value), layer.effective_b()));
            EXPECT_EQ(l.rank(), layer.rank());
            EXPECT_EQ(l.scaling(), layer.scaling());
            EXPECT_GT(max_abs(layer.effective_a()) * max_abs(layer.effective_b()), 1e-3)
                << "ΔW is about zero: the test could not tell a wrong export";
          } else {
            ADD_FAILURE() << "not exportable";
          }
        },
        set.at(modules[i]));
    EXPECT_TRUE(bitwise_equal(as_const(got[i].view()), as_const(expected[i].view())));
  }
  return lora;
}

template <class T>
class ExportAsLora : public ::testing::Test {};
using Types = ::testing::Types<float, Eigen::bfloat16>;
TYPED_TEST_SUITE(ExportAsLora, Types);

/// Builds a `Layer` with `config` over every module of `base`, randomises it, exports it and
/// reloads the export (export_and_reload's checks), then checks the export's config: LORA, r,
/// `lora_alpha`, fan_in_fan_out and the base's name. Returns the set and the reloaded LoRA set.
template <template <class, class> class Layer, class T, class Config>
std::pair<AdapterSet<T, Cpu>, AdapterSet<T, Cpu>> export_every_module(HostCtx& ctx,
                                                                      const OwnedBase<T>& base,
                                                                      const Config& config,
                                                                      std::uint32_t seed,
                                                                      double lora_alpha) {
  AdapterSet<T, Cpu> set;
  for (const auto& m : base.names) set.template add<Layer>(ctx, m, base.model.at(m), config);
  randomise(ctx, set, seed);
  TempDir dir;
  auto lora = export_and_reload(ctx, set, base.model, dir.path());
  const json c = json::parse(read_text(dir / "adapter_config.json"));
  EXPECT_EQ(c["peft_type"], "LORA");
  EXPECT_EQ(c["r"], config.r);
  EXPECT_EQ(c["lora_alpha"], lora_alpha);
  EXPECT_EQ(c["fan_in_fan_out"], config.fan_in_fan_out);
  EXPECT_EQ(c["base_model_name_or_path"], "base");
  return {std::move(set), std::move(lora)};
}

TYPED_TEST(ExportAsLora, NolaLoadsAsLoraWithTheSameOutputs) {
  using T = TypeParam;
  for (bool fan_in_fan_out : {false, true}) {
    SCOPED_TRACE(fan_in_fan_out ? "fan_in_fan_out" : "[out, in]");
    HostCtx ctx;
    OwnedBase<T> base(kTwoModules, kShapes, fan_in_fan_out);
    export_every_module<Nola>(ctx, base, nola_config(fan_in_fan_out), 3, 6);
  }
}

TYPED_TEST(ExportAsLora, LoraXsLoadsAsLoraWithTheSameOutputs) {
  using T = TypeParam;
  for (bool fan_in_fan_out : {false, true}) {
    SCOPED_TRACE(fan_in_fan_out ? "fan_in_fan_out" : "[out, in]");
    HostCtx ctx;
    OwnedBase<T> base(kTwoModules, kShapes, fan_in_fan_out);
    // lora_alpha 16: s = 16 / 3, as the LoRA-XS layer's.
    auto [set, lora] =
        export_every_module<LoraXs>(ctx, base, lora_xs_config(fan_in_fan_out), 4, 16);
    // lora_B is U_r itself, lora_A is R Σ_r V_rᵀ.
    for (const auto& m : kTwoModules) {
      auto& xs = std::get<LoraXs<T, Cpu>>(set.at(m));
      EXPECT_TRUE(bitwise_equal(as_const(lora.template get<Lora<T, Cpu>>(m).parameters()[1].value),
                                xs.frozen_b()));
    }
  }
}

// r and lora_alpha per module (rank_pattern / alpha_pattern), NOLA and LoRA-XS side by side.
TEST(ExportAsLoraMixed, EachModuleKeepsItsRankAndScaling) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  AdapterSet<float, Cpu> set;
  set.template add<Nola>(ctx, kTwoModules[0], base.model.at(kTwoModules[0]), nola_config());
  auto xs = lora_xs_config();
  xs.r = 2;
  xs.alpha = 5;
  set.template add<LoraXs>(ctx, kTwoModules[1], base.model.at(kTwoModules[1]), xs);
  randomise(ctx, set, 5);
  TempDir dir;
  auto lora = export_and_reload(ctx, set, base.model, dir.path());
  EXPECT_EQ((lora.get<Lora<float, Cpu>>(kTwoModules[1]).scaling()), 2.5);
}

TEST(ExportAsLoraMixed, ScalingOtherThanAlphaOverRIsFoldedIntoLoraAlpha) {
  // A layer whose s is not its alpha / r (here: rsLoRA's alpha / sqrt(r)) exports s · r.
  struct Fake {
    using param_type = float;
    using backend_type = Cpu;
    LoraConfig c;
    const LoraConfig& config() const { return c; }
    index_t rank() const { return c.r; }
    double scaling() const { return c.scaling(); }
    MatrixView<const float, Cpu> effective_a() const { return {}; }
    MatrixView<const float, Cpu> effective_b() const { return {}; }
  };
  static_assert(ExportableAsLora<Fake>);
  EXPECT_EQ(exported_lora_alpha(Fake{{.r = 4, .alpha = 6, .use_rslora = true}}), 12.0);
  EXPECT_EQ(exported_lora_alpha(Fake{{.r = 4, .alpha = 6}}), 6.0);
}

TEST(ExportAsLoraMixed, RefusesLayersWithoutEffectiveFactors) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  TempDir dir;
  AdapterSet<float, Cpu> empty;
  expect_error([&] { export_as_lora(dir.path(), empty, ctx); }, ErrorKind::invalid_argument,
               {"export_as_lora", "empty"});
  AdapterSet<float, Cpu> mixed;
  mixed.template add<Nola>(ctx, kTwoModules[0], base.model.at(kTwoModules[0]), nola_config());
  mixed.template add<Lora>(ctx, kTwoModules[1], base.model.at(kTwoModules[1]), {.r = 2});
  expect_error([&] { export_as_lora(dir / "mixed", mixed, ctx); }, ErrorKind::invalid_argument,
               {"export_as_lora", kTwoModules[1], "Lora layer", "no effective low-rank factors"});
  AdapterSet<float, Cpu> rosa;
  rosa.template add<Rosa>(ctx, kTwoModules[0], base.model.at(kTwoModules[0]),
                          {.lora = {.r = 2}, .density = 0.1});
  expect_error([&] { export_as_lora(dir / "rosa", rosa, ctx); }, ErrorKind::invalid_argument,
               {"export_as_lora", kTwoModules[0], "Rosa layer"});
  EXPECT_FALSE(fs::exists(dir / "mixed"));
  EXPECT_FALSE(fs::exists(dir / "rosa"));
  // Modules that disagree on what adapter_config.json holds once: save_adapter's refusal.
  AdapterSet<float, Cpu> dropouts;
  auto other = nola_config();
  other.dropout = 0.2;
  dropouts.template add<Nola>(ctx, kTwoModules[0], base.model.at(kTwoModules[0]), nola_config());
  dropouts.template add<Nola>(ctx, kTwoModules[1], base.model.at(kTwoModules[1]), other);
  expect_error([&] { export_as_lora(dir / "dropouts", dropouts, ctx); },
               ErrorKind::invalid_argument, {kTwoModules[1], "lora_dropout"});
}

// ---- Over the golden cases' bases, for Hugging Face PEFT ------------------------------------

/// A golden case's base layers (as PEFT's model holds them) and inputs.
struct GoldenBase {
  std::string name;
  std::vector<std::string> modules;
  std::map<std::string, Matrix<float, Cpu>> weights, biases, xs;
  BaseModel<float, Cpu> model;

  explicit GoldenBase(std::string case_name) : name(std::move(case_name)) {
    const fs::path dir = data_dir() / ("peft_" + name);
    const auto io = SafetensorsReader::open(dir / "io.safetensors");
    std::stringstream list(io.metadata().at("modules"));
    for (std::string m; std::getline(list, m, ',');) modules.push_back(m);
    const auto base = SafetensorsReader::open(dir / "base.safetensors");
    for (const auto& m : modules) {
      weights.emplace(m, base.read_matrix<float>(m + ".weight"));
      if (base.contains(m + ".bias")) biases.emplace(m, base.read_matrix<float>(m + ".bias"));
      xs.emplace(m, io.read_matrix<float>(m + ".x"));
    }
    for (const auto& m : modules) {
      BaseLinear<float, Cpu> layer(as_const(weights.at(m).view()));
      if (biases.count(m))
        layer.bias = VectorView<const float, Cpu>(biases.at(m).data(), biases.at(m).size());
      model.emplace(m, layer);
    }
  }
};

/// Writes dir/adapter (the export of `set`) and dir/expected.safetensors: each module's x (the
/// case's inputs) and y (the set's outputs), metadata "case" (what verify_export.py needs).
void write_for_peft(HostCtx& ctx, AdapterSet<float, Cpu>& set, const GoldenBase& golden,
                    const fs::path& dir) {
  export_as_lora(dir / "adapter", set, ctx, {.base_model_name_or_path = golden.name});
  std::vector<const Matrix<float, Cpu>*> xs;
  for (const auto& m : set.modules()) xs.push_back(&golden.xs.at(m));
  const auto ys = outputs(ctx, set, xs);
  SafetensorsWriter writer;
  const auto modules = set.modules();
  for (std::size_t i = 0; i < modules.size(); ++i) {
    writer.add(modules[i] + ".x", as_const(xs[i]->view()));
    writer.add(modules[i] + ".y", as_const(ys[i].view()));
  }
  writer.set_metadata("case", golden.name);
  writer.write(dir / "expected.safetensors");
}

TEST(ExportAsLoraGolden, ExportsOverPeftsBasesReloadWithTheSameOutputs) {
  const char* export_dir = std::getenv("PEFT_TEST_EXPORT_DIR");
  for (const char* name : {"lora_basic", "lora_conv1d"}) {
    SCOPED_TRACE(name);
    const GoldenBase golden(name);
    const bool conv1d = std::string(name) == "lora_conv1d";  // GPT-2's Conv1D: W is [in, out]
    HostCtx ctx;
    for (const char* method : {"nola", "lora_xs"}) {
      SCOPED_TRACE(method);
      AdapterSet<float, Cpu> set;
      for (const auto& m : golden.modules) {
        if (std::string(method) == "nola") {
          set.template add<Nola>(ctx, m, golden.model.at(m),
                                 {.r = 4,
                                  .alpha = 8,
                                  .num_basis_a = 20,
                                  .num_basis_b = 20,
                                  .fan_in_fan_out = conv1d,
                                  .seed = 11});
        } else {
          set.template add<LoraXs>(ctx, m, golden.model.at(m),
                                   {.r = 4, .alpha = 16, .fan_in_fan_out = conv1d, .seed = 11});
        }
      }
      randomise(ctx, set, 6);
      TempDir dir;
      export_and_reload(ctx, set, golden.model, dir.path());
      write_for_peft(ctx, set, golden, dir / "for_peft");
      const auto expected = SafetensorsReader::open(dir / "for_peft" / "expected.safetensors");
      EXPECT_EQ(expected.metadata().at("case"), name);
      for (const auto& m : golden.modules)
        EXPECT_TRUE(bitwise_equal(as_const(expected.read_matrix<float>(m + ".x").view()),
                                  as_const(golden.xs.at(m).view())));
      if (export_dir != nullptr)
        write_for_peft(ctx, set, golden, fs::path(export_dir) / (std::string(method) + "_" + name));
    }
  }
}

}  // namespace
}  // namespace peft::test
