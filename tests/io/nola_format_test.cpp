// NOLA checkpoints (peft-cpp's self-describing format): round trips that reproduce the layers
// bit for bit (float and bfloat16 models, 16-bit files, layers with their own stream_id), the
// config's content, every refusal of a malformed or mismatched file. export_as_lora is tested in
// lora_export_test.cpp.

#include <gtest/gtest.h>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

const std::vector<std::pair<index_t, index_t>> kShapes = {{6, 9}, {5, 11}};

NolaConfig config(std::uint64_t seed = 7) {
  return {.r = 3, .alpha = 6, .num_basis_a = 10, .num_basis_b = 12, .dropout = 0.1, .seed = seed};
}

/// Random coefficients, then parameters_updated.
template <class T>
void randomise(HostCtx& ctx, AdapterSet<T, Cpu>& set, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  set.for_each([&](const std::string&, auto& layer) {
    for (auto& p : layer.parameters())
      for (index_t i = 0; i < p.value.rows(); ++i) p.value(i, 0) = dist(gen);
    layer.parameters_updated(ctx);
  });
}

/// forward of every module of `set` on the same x, in module order (eval mode).
template <class T>
std::vector<Matrix<T, Cpu>> outputs(HostCtx& ctx, AdapterSet<T, Cpu>& set) {
  std::vector<Matrix<T, Cpu>> ys;
  set.set_training(false);
  set.for_each([&](const std::string&, auto& layer) {
    auto x = random_matrix<T>(4, layer.in_features(), 55);
    Matrix<T, Cpu> y(4, layer.out_features());
    layer.forward(ctx, x.view(), y.view());
    ys.push_back(std::move(y));
  });
  return ys;
}

template <class T>
AdapterSet<T, Cpu> make_set(HostCtx& ctx, OwnedBase<T>& base, const NolaConfig& c = config()) {
  AdapterSet<T, Cpu> set;
  for (const auto& name : base.names) set.template add<Nola>(ctx, name, base.model.at(name), c);
  randomise(ctx, set, 3);
  return set;
}

TEST(NolaFormat, RoundTripReproducesTheLayersBitForBit) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  auto set = make_set(ctx, base);
  TempDir dir;
  save_adapter(dir.path(), set, ctx, {.task_type = "CAUSAL_LM"});

  auto loaded = load_adapter(dir.path(), base.model, ctx);
  ASSERT_EQ(loaded.modules(), set.modules());
  const auto a = outputs(ctx, set), b = outputs(ctx, loaded);
  for (std::size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(bitwise_equal(as_const(a[i].view()), as_const(b[i].view()))) << kTwoModules[i];
  for (const auto& module : kTwoModules) {
    auto& l = loaded.template get<Nola<float, Cpu>>(module);
    auto& o = set.template get<Nola<float, Cpu>>(module);
    EXPECT_EQ(l.config().seed, 7u);
    EXPECT_EQ(l.config().num_basis_a, 10);
    EXPECT_EQ(l.config().dropout, 0.1);
    EXPECT_EQ(l.basis_stream_id(), o.basis_stream_id());
    EXPECT_EQ(l.basis_stream_id(), module_stream_id(module));
  }

  // The files: coefficients only, as vectors; the config says how to regenerate the bases.
  const auto reader = SafetensorsReader::open(dir / "adapter_model.safetensors");
  ASSERT_EQ(reader.tensors().size(), 4u);
  const auto* alpha = reader.find("base_model.model." + kTwoModules[0] + ".nola_alpha");
  ASSERT_NE(alpha, nullptr);
  EXPECT_EQ(alpha->shape, (std::vector<index_t>{10}));
  EXPECT_EQ(alpha->dtype, SafetensorsDtype::F32);
  const json c = json::parse(read_text(dir / "adapter_config.json"));
  EXPECT_EQ(c["peft_type"], "NOLA");
  EXPECT_EQ(c["r"], 3);
  EXPECT_EQ(c["lora_alpha"], 6);
  EXPECT_EQ(c["num_basis_a"], 10);
  EXPECT_EQ(c["num_basis_b"], 12);
  EXPECT_EQ(c["seed"], 7);
  EXPECT_EQ(c["generator"]["name"], "philox4x32-10");
  EXPECT_EQ(c["generator"]["version"], 1);
  EXPECT_EQ(c["generator"]["basis_a"]["purpose"], 3);
  EXPECT_EQ(c["modules"][kTwoModules[1]]["in_features"], 11);
  EXPECT_EQ(c["modules"][kTwoModules[1]]["out_features"], 5);
  EXPECT_EQ(c["modules"][kTwoModules[1]]["basis_stream_id"], module_stream_id(kTwoModules[1]));
  EXPECT_EQ(c["task_type"], "CAUSAL_LM");
}

// A layer built with its own stream_id keeps its bases through a checkpoint, although the
// loading set gives the module another stream_id.
TEST(NolaFormat, LayersWithTheirOwnStreamKeepTheirBases) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  AdapterSet<float, Cpu> set;
  for (std::size_t i = 0; i < kTwoModules.size(); ++i)
    set.add(kTwoModules[i], Nola<float, Cpu>(ctx, base.weights[i].view(), config(),
                                             {.stream_id = 1000 + std::uint32_t(i)},
                                             base.model.at(kTwoModules[i]).bias));
  randomise(ctx, set, 4);
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  using FNola = Nola<float, Cpu>;
  EXPECT_EQ(loaded.template get<FNola>(kTwoModules[1]).basis_stream_id(), 1001u);
  const auto a = outputs(ctx, set), b = outputs(ctx, loaded);
  for (std::size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(bitwise_equal(as_const(a[i].view()), as_const(b[i].view())));
}

TEST(NolaFormat, BfloatModelsAndSixteenBitFilesRoundTrip) {
  HostCtx ctx;
  OwnedBase<Eigen::bfloat16> base(kTwoModules, kShapes);
  auto set = make_set(ctx, base);
  TempDir same, narrow;
  save_adapter(same.path(), set, ctx);
  save_adapter(narrow.path(), set, ctx, {.dtype = SafetensorsDtype::BF16});
  auto loaded = load_adapter(same.path(), base.model, ctx);
  const auto a = outputs(ctx, set), b = outputs(ctx, loaded);
  for (std::size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(bitwise_equal(as_const(a[i].view()), as_const(b[i].view())));
  // BF16 coefficients: rounded, close.
  auto rounded = load_adapter(narrow.path(), base.model, ctx);
  auto p = rounded.template get<Nola<Eigen::bfloat16, Cpu>>(kTwoModules[0]).parameters();
  auto q = set.template get<Nola<Eigen::bfloat16, Cpu>>(kTwoModules[0]).parameters();
  EXPECT_LT(relative_error(as_const(p[0].value), as_const(q[0].value)), 1e-2);
  EXPECT_GT(relative_error(as_const(p[0].value), as_const(q[0].value)), 0.0);
}

TEST(NolaFormat, SavingRefusesLayersThatDifferInSharedFields) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  AdapterSet<float, Cpu> set;
  set.template add<Nola>(ctx, kTwoModules[0], base.model.at(kTwoModules[0]), config(7));
  set.template add<Nola>(ctx, kTwoModules[1], base.model.at(kTwoModules[1]), config(8));
  TempDir dir;
  expect_error([&] { save_adapter(dir.path(), set, ctx); }, ErrorKind::invalid_argument,
               {"save_adapter", kTwoModules[1], "seed", "once for all modules"});
}

/// Saves a set, edits its config with `edit`, and expects load_adapter to refuse it.
void expect_refused(const std::function<void(json&)>& edit,
                    std::initializer_list<std::string> needles, ErrorKind kind = ErrorKind::io) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  auto set = make_set(ctx, base);
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  json c = json::parse(read_text(dir / "adapter_config.json"));
  edit(c);
  write_text(dir / "adapter_config.json", c.dump(2));
  expect_error([&] { load_adapter(dir.path(), base.model, ctx, {.verify_config_hash = false}); },
               kind, needles);
}

TEST(NolaFormat, LoadingRefusesWhatCannotRegenerateTheBases) {
  expect_refused([](json& c) { c["generator"]["name"] = "mt19937"; },
                 {"generator \"mt19937\"", "not supported", "philox4x32-10"});
  expect_refused([](json& c) { c["generator"]["version"] = 2; }, {"version 2", "not supported"});
  expect_refused([](json& c) { c["generator"] = "philox"; }, {"generator must be an object"});
  expect_refused([](json& c) { c.erase("seed"); }, {"seed is missing"});
  expect_refused([](json& c) { c["seed"] = -1; }, {"seed must be an integer in [0, 2^64)"});
  expect_refused([](json& c) { c.erase("num_basis_a"); }, {"num_basis_a is missing"});
  expect_refused([](json& c) { c["num_basis_b"] = 0; }, {"num_basis_b must be an integer >= 1"});
  expect_refused([](json& c) { c["lora_dropout"] = 1.0; }, {"lora_dropout", "[0, 1)"});
  expect_refused([](json& c) { c["modules"].erase(kTwoModules[1]); },
                 {kTwoModules[1], "no entry for it"});
  expect_refused([](json& c) { c["modules"][kTwoModules[0]]["basis_stream_id"] = -4; },
                 {"basis_stream_id must be an integer"});
  expect_refused([](json& c) { c["modules"][kTwoModules[0]]["in_features"] = 10; },
                 {kTwoModules[0], "trained on in_features 10", "bases depend on the shape"});
  // Another basis count than the tensors hold.
  expect_refused([](json& c) { c["num_basis_a"] = 11; },
                 {"nola_alpha is [10]", "expected [11]", "num_basis_a"});
  expect_refused([](json& c) { c["bias"] = "all"; }, {"bias \"all\" is not supported"});
  expect_refused([](json& c) { c["peft_type"] = "LORA"; }, {});  // LoRA's reader refuses it
}

TEST(NolaFormat, LoadingRefusesAnotherBase) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  auto set = make_set(ctx, base);
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  OwnedBase<float> other(kTwoModules, {{6, 9}, {5, 12}});
  expect_error([&] { load_adapter(dir.path(), other.model, ctx); }, ErrorKind::io,
               {kTwoModules[1], "the base weight is 5 x 12", "in_features 11"});
}

TEST(NolaFormat, LoadingRefusesABiasOfAnotherSize) {
  HostCtx ctx;
  OwnedBase<float> base(kTwoModules, kShapes);
  auto set = make_set(ctx, base);
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  BaseModel<float, Cpu> short_bias = base.model;
  const auto& bias = base.biases[1];
  short_bias[kTwoModules[1]].bias = VectorView<const float, Cpu>(bias.data(), bias.cols() - 1);
  expect_error([&] { load_adapter(dir.path(), short_bias, ctx); }, ErrorKind::io,
               {kTwoModules[1], "the bias has 4 elements, out_features is 5"});
}

}  // namespace
}  // namespace peft::test
