// LoRA-XS checkpoints (peft_type LORA_XS): round trips with the frozen factors stored or
// regenerated from the base weights (bit-identical layers and outputs on the same backend, for
// float and bfloat16 models and 16-bit files), the config's content, and every refusal of a
// malformed or mismatched file or set.

#include <gtest/gtest.h>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

const std::vector<std::pair<index_t, index_t>> kShapes = {{6, 9}, {8, 5}};

LoraXsConfig config() {
  return {.r = 3, .alpha = 6, .dropout = 0.1, .seed = 7, .svd = {.power_iterations = 3, .seed = 5}};
}

/// LoRA-XS over every module of `base`, R random.
template <class T>
AdapterSet<T, Cpu> make_set(HostCtx& ctx, const OwnedBase<T>& base,
                            const LoraXsConfig& c = config()) {
  AdapterSet<T, Cpu> set;
  for (const auto& name : base.names) set.template add<LoraXs>(ctx, name, base.model.at(name), c);
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> dist(-1, 1);
  set.for_each([&](const std::string&, auto& layer) {
    for (auto& p : layer.parameters())
      for (index_t i = 0; i < p.value.rows(); ++i)
        for (index_t j = 0; j < p.value.cols(); ++j) p.value(i, j) = dist(gen);
    layer.parameters_updated(ctx);
  });
  return set;
}

template <class T>
LoraXs<T, Cpu>& layer_of(AdapterSet<T, Cpu>& set, const std::string& module) {
  return std::get<LoraXs<T, Cpu>>(set.at(module));
}

/// Layers of `a` and `b` equal bit for bit: R, both frozen factors, and forward outputs.
template <class T>
void expect_same_layers(HostCtx& ctx, AdapterSet<T, Cpu>& a, AdapterSet<T, Cpu>& b) {
  ASSERT_EQ(a.modules(), b.modules());
  a.set_training(false);
  b.set_training(false);
  for (const auto& module : a.modules()) {
    SCOPED_TRACE(module);
    auto& la = layer_of(a, module);
    auto& lb = layer_of(b, module);
    EXPECT_TRUE(
        bitwise_equal(as_const(la.parameters()[0].value), as_const(lb.parameters()[0].value)));
    EXPECT_TRUE(bitwise_equal(la.frozen_a(), lb.frozen_a()));
    EXPECT_TRUE(bitwise_equal(la.frozen_b(), lb.frozen_b()));
    const auto x = random_matrix<T>(4, la.in_features(), 55);
    Matrix<T, Cpu> ya(4, la.out_features()), yb(4, lb.out_features());
    la.forward(ctx, x.view(), ya.view());
    lb.forward(ctx, x.view(), yb.view());
    EXPECT_TRUE(bitwise_equal(as_const(ya.view()), as_const(yb.view())));
  }
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

template <class T>
class LoraXsCheckpoint : public ::testing::Test {
 protected:
  HostCtx ctx;
  OwnedBase<T> base{kTwoModules, kShapes};
};
using ModelTypes = ::testing::Types<float, Eigen::bfloat16>;
TYPED_TEST_SUITE(LoraXsCheckpoint, ModelTypes);

// Stored factors: the file holds R and both factors; loading runs no SVD (the loaded layer's
// factors are the file's) and reproduces the set bit for bit.
TYPED_TEST(LoraXsCheckpoint, StoredFactorsRoundTrip) {
  auto set = make_set(this->ctx, this->base);
  TempDir dir;
  save_adapter(dir.path(), set, this->ctx, {}, LoraXsSaveOptions{});
  const json c = read_json(dir / "adapter_config.json");
  EXPECT_EQ(c["peft_type"], "LORA_XS");
  EXPECT_EQ(c["frozen_factors"], "stored");
  EXPECT_EQ(c["r"], 3);
  EXPECT_EQ(c["svd"]["power_iterations"], 3);
  EXPECT_EQ(c["svd"]["algorithm"], "randomized_range_finder");
  const auto reader = SafetensorsReader::open(dir / "adapter_model.safetensors");
  EXPECT_NE(reader.find(tensor_key(kTwoModules[0], "lora_A.weight")), nullptr);
  EXPECT_NE(reader.find(tensor_key(kTwoModules[1], "lora_B.weight")), nullptr);

  auto loaded = load_adapter(dir.path(), this->base.model, this->ctx);
  for (const auto& module : loaded.modules())
    EXPECT_FALSE(layer_of(loaded, module).frozen_from_svd()) << "restored, not recomputed";
  expect_same_layers(this->ctx, set, loaded);
}

// Regenerated factors: the file holds R alone; loading recomputes the same factors bit for bit
// from the same base weights.
TYPED_TEST(LoraXsCheckpoint, RegeneratedFactorsRoundTrip) {
  auto set = make_set(this->ctx, this->base);
  TempDir dir;
  save_adapter(dir.path(), set, this->ctx, {},
               LoraXsSaveOptions{.factors = LoraXsFactorStorage::regenerated});
  EXPECT_EQ(read_json(dir / "adapter_config.json")["frozen_factors"], "regenerated");
  const auto reader = SafetensorsReader::open(dir / "adapter_model.safetensors");
  EXPECT_EQ(reader.tensors().size(), kTwoModules.size()) << "R alone per module";

  auto loaded = load_adapter(dir.path(), this->base.model, this->ctx);
  for (const auto& module : loaded.modules())
    EXPECT_TRUE(layer_of(loaded, module).frozen_from_svd());
  expect_same_layers(this->ctx, set, loaded);
}

// A 16-bit file: R and the factors rounded once, the loaded layer within bf16 rounding.
TEST(LoraXsCheckpointFiles, Bf16FileOfAFloatModel) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  auto set = make_set(ctx, base);
  TempDir dir;
  save_adapter(dir.path(), set, ctx, {.dtype = SafetensorsDtype::BF16});
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  for (const auto& module : set.modules()) {
    auto& a = layer_of(set, module);
    auto& b = layer_of(loaded, module);
    EXPECT_LT(relative_error(b.frozen_a(), a.frozen_a()), 4e-3);
    EXPECT_LT(relative_error(b.frozen_b(), a.frozen_b()), 4e-3);
    EXPECT_LT(relative_error(as_const(b.parameters()[0].value), as_const(a.parameters()[0].value)),
              4e-3);
  }
}

TEST(LoraXsCheckpointFiles, SaveRefusals) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  TempDir dir;
  {  // Layers that differ in what the config holds once.
    AdapterSet<float, Cpu> set;
    set.add<LoraXs>(ctx, kTwoModules[0], base.model.at(kTwoModules[0]), config());
    auto other = config();
    other.svd.power_iterations = 4;
    set.add<LoraXs>(ctx, kTwoModules[1], base.model.at(kTwoModules[1]), other);
    expect_error([&] { save_adapter(dir / "a", set, ctx); }, ErrorKind::invalid_argument,
                 {"differs", "SVD options"});
  }
  {  // Given factors cannot be regenerated.
    AdapterSet<float, Cpu> set;
    auto& w = base.model.at(kTwoModules[0]);
    Matrix<float, Cpu> a = random_matrix<float>(3, 9, 1), b = random_matrix<float>(6, 3, 2);
    set.add(kTwoModules[0],
            LoraXs<float, Cpu>(ctx, w.weight, config(),
                               LoraXsFrozenFactors<float, Cpu>(a.view(), b.view())));
    expect_error(
        [&] {
          save_adapter(dir / "b", set, ctx, {},
                       LoraXsSaveOptions{.factors = LoraXsFactorStorage::regenerated});
        },
        ErrorKind::invalid_argument, {kTwoModules[0], "given, not computed", "stored"});
    save_adapter(dir / "c", set, ctx);  // stored: fine
    auto loaded = load_adapter(dir / "c", base.model, ctx);
    EXPECT_TRUE(bitwise_equal(layer_of(loaded, kTwoModules[0]).frozen_a(), as_const(a.view())));
  }
}

/// Saves a valid checkpoint, lets `edit` change its config or tensors, and expects load_adapter
/// to refuse it with an io error naming every needle.
class LoraXsLoadRefusals : public ::testing::Test {
 protected:
  void expect_refused(
      const std::function<void(json&)>& edit_config,
      const std::function<void(SafetensorsWriter&, const SafetensorsReader&)>& edit_tensors,
      std::initializer_list<std::string> needles,
      LoraXsFactorStorage storage = LoraXsFactorStorage::stored) {
    TempDir dir;
    auto set = make_set(ctx, base);
    save_adapter(dir.path(), set, ctx, {}, LoraXsSaveOptions{.factors = storage});
    json c = read_json(dir / "adapter_config.json");
    edit_config(c);
    const auto reader = SafetensorsReader::open(dir / "adapter_model.safetensors");
    SafetensorsWriter writer;
    edit_tensors(writer, reader);
    TempDir edited;
    detail::commit_adapter_files(edited.path(), c.dump(2), writer);
    expect_error([&] { load_adapter(edited.path(), base.model, ctx); }, ErrorKind::io, needles);
  }

  /// Copies every tensor except those whose key ends with `drop`, replacing `replace`'s.
  static auto copy_tensors(std::string drop = "", std::string replace = "",
                           Matrix<float, Cpu>* with = nullptr) {
    return [=](SafetensorsWriter& w, const SafetensorsReader& r) {
      for (const auto& t : r.tensors()) {
        if (!drop.empty() && t.name.ends_with(drop)) continue;
        if (!replace.empty() && t.name.ends_with(replace)) {
          w.add(t.name, as_const(with->view()), SafetensorsDtype::F32);
          continue;
        }
        auto m = r.read_matrix<float>(t.name);
        w.add(t.name, as_const(m.view()), SafetensorsDtype::F32);
      }
    };
  }

  HostCtx ctx;
  OwnedBase<float> base{kTwoModules, kShapes};
};

TEST_F(LoraXsLoadRefusals, ConfigFields) {
  const auto keep = copy_tensors();
  expect_refused([](json& c) { c.erase("svd"); }, keep, {"svd is missing"});
  expect_refused([](json& c) { c.erase("frozen_factors"); }, keep, {"frozen_factors is missing"});
  expect_refused([](json& c) { c["frozen_factors"] = "maybe"; }, keep,
                 {"frozen_factors must be \"stored\" or \"regenerated\""});
  expect_refused([](json& c) { c["svd"]["algorithm"] = "lanczos"; }, keep,
                 {"\"lanczos\"", "not supported"});
  expect_refused([](json& c) { c["svd"]["version"] = 2; }, keep, {"version 2", "not supported"});
  expect_refused([](json& c) { c["svd"]["power_iterations"] = -1; }, keep,
                 {"svd.power_iterations must be an integer"});
  expect_refused([](json& c) { c["svd"].erase("seed"); }, keep, {"svd.seed is missing"});
  expect_refused([](json& c) { c["init_lora_xs"] = "kaiming"; }, keep, {"init_lora_xs must be"});
  expect_refused([](json& c) { c["init_std"] = -1; }, keep, {"init_std must be"});
  expect_refused([](json& c) { c["lora_dropout"] = 1.0; }, keep, {"lora_dropout"});
  expect_refused([](json& c) { c["r"] = 7; }, keep, {"r = 7 exceeds min(in_features"});
  expect_refused([](json& c) { c["bias"] = "all"; }, keep, {"bias \"all\" is not supported"});
}

TEST_F(LoraXsLoadRefusals, Tensors) {
  const auto same = [](json&) {};
  expect_refused(same, copy_tensors("lora_xs_R"), {kTwoModules[0], "it has no lora_xs_R"});
  expect_refused(same, copy_tensors("lora_A.weight"), {"it has no lora_A.weight"});
  Matrix<float, Cpu> wrong(3, 4);
  expect_refused(same, copy_tensors("", kTwoModules[0] + ".lora_xs_R", &wrong),
                 {"lora_xs_R is [3, 4], expected [3, 3]"});
  Matrix<float, Cpu> infinite(3, 9);
  infinite.data()[5] = std::numeric_limits<float>::infinity();
  expect_refused(same, copy_tensors("", kTwoModules[0] + ".lora_A.weight", &infinite),
                 {"lora_A.weight holds a non-finite value"});
  // Regenerated files hold R alone.
  expect_refused([](json& c) { c["frozen_factors"] = "regenerated"; }, copy_tensors(),
                 {"frozen_factors is \"regenerated\", yet the file holds lora_A.weight"});
}

TEST_F(LoraXsLoadRefusals, ABiasOfAnotherSize) {
  TempDir dir;
  auto set = make_set(ctx, base);
  save_adapter(dir.path(), set, ctx);
  BaseModel<float, Cpu> short_bias = base.model;
  const auto& bias = base.biases[0];
  short_bias[kTwoModules[0]].bias = VectorView<const float, Cpu>(bias.data(), bias.cols() - 1);
  expect_error([&] { load_adapter(dir.path(), short_bias, ctx); }, ErrorKind::io,
               {kTwoModules[0], "the bias has 5 elements, out_features is 6"});
}

}  // namespace
}  // namespace peft::test
