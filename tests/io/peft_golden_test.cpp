// Adapters written by Hugging Face PEFT itself (tests/data/peft_*, from make_golden.py): they
// load, resolve r and alpha per module as PEFT does, and reproduce PEFT's outputs and delta
// weights; saving them again and reloading changes nothing.
//
// With PEFT_TEST_EXPORT_DIR set, the re-saved adapters are also written to
// $PEFT_TEST_EXPORT_DIR/<case>, for `make_golden.py verify` to load them with PEFT.

#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

using FLora = Lora<float, Cpu>;

/// One golden case: base weights and biases (as T), inputs and PEFT's results.
template <class T>
struct GoldenCase {
  fs::path dir;
  std::vector<std::string> modules;
  std::map<std::string, Matrix<T, Cpu>> weights, biases;
  BaseModel<T, Cpu> base;
  SafetensorsReader io;

  explicit GoldenCase(const std::string& name)
      : dir(data_dir() / ("peft_" + name)),
        io(SafetensorsReader::open(data_dir() / ("peft_" + name) / "io.safetensors")) {
    std::stringstream list(io.metadata().at("modules"));
    for (std::string m; std::getline(list, m, ',');) modules.push_back(m);
    const auto r = SafetensorsReader::open(dir / "base.safetensors");
    for (const auto& m : modules) {
      weights.emplace(m, r.read_matrix<T>(m + ".weight"));
      if (r.contains(m + ".bias")) biases.emplace(m, r.read_matrix<T>(m + ".bias"));
    }
    for (const auto& m : modules) {
      BaseLinear<T, Cpu> layer(as_const(weights.at(m).view()));
      if (biases.count(m))
        layer.bias = VectorView<const T, Cpu>(biases.at(m).data(), biases.at(m).size());
      base.emplace(m, layer);
    }
  }

  double scaling(const std::string& m) const {
    return io.read_matrix<double>(m + ".scaling").data()[0];
  }
};

/// Loads the case's adapter and compares every module with PEFT's numbers.
template <class T>
AdapterSet<T, Cpu> check_case(const std::string& name, SafetensorsAccess access,
                              std::optional<bool> fan_in_fan_out = std::nullopt) {
  SCOPED_TRACE(name);
  HostCtx ctx;
  GoldenCase<T> c(name);
  auto set = load_adapter(c.dir / "adapter", c.base, ctx,
                          {.access = access, .fan_in_fan_out = fan_in_fan_out});
  EXPECT_EQ(set.size(), c.modules.size());
  for (const auto& m : c.modules) {
    SCOPED_TRACE(m);
    auto& layer = set.template get<Lora<T, Cpu>>(m);
    EXPECT_FALSE(layer.training());
    // The factors, exactly as PEFT holds them in float32.
    auto params = layer.parameters();
    EXPECT_TRUE(
        bitwise_equal(as_const(params[0].value),
                      as_const(c.io.template read_matrix<param_t<T>>(m + ".lora_A").view())));
    EXPECT_TRUE(
        bitwise_equal(as_const(params[1].value),
                      as_const(c.io.template read_matrix<param_t<T>>(m + ".lora_B").view())));
    // r and alpha resolved as PEFT did after loading the file.
    EXPECT_EQ(layer.scaling(), c.scaling(m));

    const auto x = c.io.template read_matrix<T>(m + ".x");
    const auto y_ref = c.io.template read_matrix<T>(m + ".y");
    Matrix<T, Cpu> y(x.rows(), layer.out_features());
    layer.forward(ctx, x.view(), y.view());
    EXPECT_LT(relative_error(as_const(y.view()), as_const(y_ref.view())), 1e-6);

    const auto delta_ref = c.io.template read_matrix<T>(m + ".delta");
    Matrix<T, Cpu> delta(delta_ref.rows(), delta_ref.cols());
    layer.delta_weight(ctx, delta.view());
    EXPECT_LT(relative_error(as_const(delta.view()), as_const(delta_ref.view())), 1e-6);
  }
  return set;
}

TEST(PeftGolden, BasicLoraReproducesPeft) {
  check_case<float>("lora_basic", SafetensorsAccess::mmap);
  check_case<double>("lora_basic", SafetensorsAccess::stream);
}

TEST(PeftGolden, RankAndAlphaPatternsWithRsLora) {
  auto set = check_case<float>("lora_patterns", SafetensorsAccess::mmap);
  check_case<double>("lora_patterns", SafetensorsAccess::stream);
  // The file's rank_pattern: {"layers.1.self_attn.q_proj": 2, "layers\\.[02]\\.self_attn\\.k_proj":
  // 3, "proj": 7, "v_proj": 6} (PEFT sorted the keys when it saved them).
  auto rank = [&](const char* m) { return set.get<FLora>(m).rank(); };
  EXPECT_EQ(rank("model.layers.1.self_attn.q_proj"), 2);
  EXPECT_EQ(rank("model.layers.0.self_attn.q_proj"), 4);
  EXPECT_EQ(rank("model.layers.0.self_attn.k_proj"), 3);
  EXPECT_EQ(rank("model.layers.1.self_attn.k_proj"), 4);
  EXPECT_EQ(rank("model.layers.2.self_attn.k_proj"), 3);
  EXPECT_EQ(rank("model.layers.2.self_attn.v_proj"), 6);
  EXPECT_EQ(rank("model.layers.2.self_attn.o_proj"), 4);  // "proj" matches only at a dot
  // alpha_pattern as saved: {"layers.2.self_attn.q_proj": 3, "model.layers.0.self_attn.o_proj":
  // 5.5, "q_proj": 12}: sorted by PEFT's save, so layers.2's q_proj gets 3, not the 12 it was
  // built with. rsLoRA: s = alpha / sqrt(r).
  auto& q2 = set.get<FLora>("model.layers.2.self_attn.q_proj");
  EXPECT_EQ(q2.config().alpha, 3);
  EXPECT_DOUBLE_EQ(q2.scaling(), 1.5);
  EXPECT_EQ(set.get<FLora>("model.layers.0.self_attn.q_proj").config().alpha, 12);
  EXPECT_EQ(set.get<FLora>("model.layers.0.self_attn.o_proj").config().alpha, 5.5);
  EXPECT_EQ(set.get<FLora>("model.layers.1.self_attn.o_proj").config().alpha, 8);
  EXPECT_EQ(q2.config().dropout, decltype(LoraConfig::dropout)(0.1));
  EXPECT_TRUE(q2.config().use_rslora);
}

TEST(PeftGolden, Conv1dWithFanInFanOut) {
  auto set = check_case<float>("lora_conv1d", SafetensorsAccess::stream);
  const auto& layer = set.get<FLora>("transformer.h.0.attn.c_attn");
  EXPECT_TRUE(layer.config().fan_in_fan_out);
  EXPECT_EQ(layer.in_features(), 8);
  EXPECT_EQ(layer.out_features(), 24);
  // The config says fan_in_fan_out; overriding it cannot match the [in, out] weights.
  expect_error([] { check_case<float>("lora_conv1d", SafetensorsAccess::mmap, false); },
               ErrorKind::io, {"fan_in_fan_out = false"});
}

TEST(PeftGolden, SelectionByLayerIndexExclusionAndRegex) {
  check_case<float>("lora_select", SafetensorsAccess::mmap);   // layers_to_transform, exclude
  check_case<float>("lora_regex", SafetensorsAccess::stream);  // target_modules as a regex
}

TEST(PeftGolden, SixteenBitAdapterFiles) {
  EXPECT_EQ(SafetensorsReader::open(data_dir() / "peft_lora_bf16" / "adapter" /
                                    "adapter_model.safetensors")
                .tensors()[0]
                .dtype,
            SafetensorsDtype::BF16);
  EXPECT_EQ(SafetensorsReader::open(data_dir() / "peft_lora_f16" / "adapter" /
                                    "adapter_model.safetensors")
                .tensors()[0]
                .dtype,
            SafetensorsDtype::F16);
  check_case<float>("lora_bf16", SafetensorsAccess::mmap);
  check_case<float>("lora_f16", SafetensorsAccess::stream);
  check_case<double>("lora_f16", SafetensorsAccess::mmap);
}

TEST(PeftGolden, ResavedAdaptersLoadIdentically) {
  const char* export_dir = std::getenv("PEFT_TEST_EXPORT_DIR");
  for (const char* name : {"lora_basic", "lora_patterns", "lora_conv1d", "lora_bf16", "lora_f16",
                           "lora_select", "lora_regex"}) {
    SCOPED_TRACE(name);
    HostCtx ctx;
    GoldenCase<float> c(name);
    auto original = load_adapter(c.dir / "adapter", c.base, ctx);
    TempDir dir;
    save_adapter(dir.path(), original, ctx);
    if (export_dir != nullptr) save_adapter(fs::path(export_dir) / name, original, ctx);
    auto again = load_adapter(dir.path(), c.base, ctx);
    ASSERT_EQ(again.modules(), original.modules());
    auto pa = original.parameters(), pb = again.parameters();
    for (std::size_t i = 0; i < pa.size(); ++i)
      EXPECT_TRUE(bitwise_equal(as_const(pa[i].value), as_const(pb[i].value))) << pa[i].name;
    for (const auto& m : c.modules) {
      const auto& a = original.get<FLora>(m);
      const auto& b = again.get<FLora>(m);
      EXPECT_EQ(a.rank(), b.rank()) << m;
      EXPECT_EQ(a.scaling(), b.scaling()) << m;
      EXPECT_EQ(a.config().fan_in_fan_out, b.config().fan_in_fan_out) << m;
    }
  }
}

}  // namespace
}  // namespace peft::test
