// What a checkpoint applies, as PEFT applies it: the modules its config selects
// (target_modules as list or regular expression, exclude_modules, layers_to_transform,
// layers_pattern), the exact selection written on save, each layer's weight layout, and the
// LoRA variants refused by name. PEFT's own files are in tests/data (make_golden.py).

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include <peft/io/module_selection.hpp>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

using json = nlohmann::ordered_json;
using FLora = Lora<float, Cpu>;

/// Square frozen layers by name, owned.
struct SquareBase {
  std::vector<Matrix<float, Cpu>> weights;
  BaseModel<float, Cpu> model;

  explicit SquareBase(const std::vector<std::string>& names, index_t n = 6) {
    weights.reserve(names.size());
    for (std::size_t i = 0; i < names.size(); ++i) {
      weights.push_back(random_matrix<float>(n, n, 40 + std::uint32_t(i)));
      model[names[i]] = BaseLinear<float, Cpu>(as_const(weights.back().view()));
    }
  }
};

std::vector<std::string> llama_modules(int layers) {
  std::vector<std::string> names;
  for (int i = 0; i < layers; ++i)
    for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"})
      names.push_back(detail::concat("model.layers.", i, ".self_attn.", p));
  return names;
}

ModuleSelection selection(const json& config) {
  return ModuleSelection::read(ConfigReader(config, "adapter_config.json"));
}

std::vector<std::string> selected(const ModuleSelection& s, const std::vector<std::string>& all) {
  std::vector<std::string> out;
  for (const auto& m : all)
    if (s.selects(m)) out.push_back(m);
  return out;
}

/// Saves LoRA over `modules` of `base` to `dir`, then replaces config fields with `patch`.
void save_then_patch(const fs::path& dir, SquareBase& base, const std::vector<std::string>& modules,
                     const json& patch) {
  HostCtx ctx;
  AdapterSet<float, Cpu> set;
  for (const auto& m : modules)
    set.add_lora(ctx, m, base.model.at(m), {.r = 2, .alpha = 4, .init = LoraInit::none});
  save_adapter(dir, set, ctx);
  json config = json::parse(read_text(dir / "adapter_config.json"));
  for (const auto& [k, v] : patch.items()) config[k] = v;
  write_text(dir / "adapter_config.json", config.dump(2));
}

// ---- selection, as PEFT's check_target_module_exists ------------------------------------

// Expected values: what PEFT 0.21.2's check_target_module_exists (tuners_utils.py) answered
// on these configs and names (called with the configs' fields, under Python 3.11).
TEST(ModuleSelection, FollowsPeftRules) {
  const std::vector<std::string> names = {"fc",
                                          "block.fc",
                                          "block.fcx",
                                          "xfc",
                                          "model.layers.0.q",
                                          "model.layers.1.q",
                                          "model.layers.12.q",
                                          "model.layers.1.experts.0.q",
                                          "model.h.1.q",
                                          "h.1.q",
                                          "a.b.1.q",
                                          "model.layers.x.q"};
  struct Case {
    const char* config;
    std::vector<std::string> expected;
  };
  const Case cases[] = {
      {R"({"target_modules": ["fc"]})", {"fc", "block.fc"}},
      {R"({"target_modules": "fc"})", {"fc"}},
      {R"({"target_modules": "(block\\.)?fc"})", {"fc", "block.fc"}},
      {R"({"target_modules": ["fc", "q"], "exclude_modules": ["block.fc"]})",
       {"fc", "model.layers.0.q", "model.layers.1.q", "model.layers.12.q",
        "model.layers.1.experts.0.q", "model.h.1.q", "h.1.q", "a.b.1.q", "model.layers.x.q"}},
      {R"({"target_modules": ["fc", "q"], "exclude_modules": "model\\.layers\\..*"})",
       {"fc", "block.fc", "model.h.1.q", "h.1.q", "a.b.1.q"}},
      {R"({"target_modules": ["q"], "layers_to_transform": [1]})",
       {"model.layers.1.q", "model.layers.1.experts.0.q", "model.h.1.q", "a.b.1.q"}},
      {R"({"target_modules": ["q"], "layers_to_transform": 1, "layers_pattern": "layers"})",
       {"model.layers.1.q", "model.layers.1.experts.0.q"}},
      {R"({"target_modules": ["q"], "layers_to_transform": [1, 12], "layers_pattern": ["h", "layers"]})",
       {"model.layers.1.q", "model.layers.12.q", "model.layers.1.experts.0.q", "model.h.1.q",
        "h.1.q"}},
      {R"({"target_modules": ["q", "model.layers.0.q"], "layers_to_transform": [1]})",
       {"model.layers.0.q", "model.layers.1.q", "model.layers.1.experts.0.q", "model.h.1.q",
        "a.b.1.q"}},
      {R"({"target_modules": ["q"], "layers_to_transform": []})",
       {"model.layers.0.q", "model.layers.1.q", "model.layers.12.q", "model.layers.1.experts.0.q",
        "model.h.1.q", "h.1.q", "a.b.1.q", "model.layers.x.q"}},
      {R"({"target_modules": ["q"], "layers_to_transform": [1], "layers_pattern": ""})",
       {"model.layers.1.q", "model.layers.1.experts.0.q", "model.h.1.q", "a.b.1.q"}},
      {R"({"target_modules": []})", {}},
  };
  for (const Case& c : cases)
    EXPECT_EQ(selected(selection(json::parse(c.config)), names), c.expected) << c.config;
}

TEST(ModuleSelection, RefusesWhatPeftRefuses) {
  expect_error(
      [] { selection(json::parse(R"({"target_modules": "q", "layers_to_transform": 1})")); },
      ErrorKind::io, {"layers_to_transform cannot be used when target_modules is a string"});
  expect_error(
      [] { selection(json::parse(R"({"target_modules": ["q"], "layers_pattern": "h"})")); },
      ErrorKind::io, {"layers_pattern is given without layers_to_transform"});
  expect_error([] { selection(json::parse(R"({"target_modules": "(q"})")); }, ErrorKind::io,
               {"target_modules '(q'", "not a regular expression"});
  expect_error([] { selection(json::parse(R"({"target_modules": [1]})")); }, ErrorKind::io,
               {"target_modules must be a string or a list of strings"});
  expect_error(
      [] { selection(json::parse(R"({"target_modules": ["q"], "layers_to_transform": "1"})")); },
      ErrorKind::io, {"layers_to_transform must be an integer or a list of integers"});
}

// PEFT's own files: the selection picks exactly the modules PEFT wrapped, and they reproduce
// PEFT's numbers (peft_golden_test.cpp's checks run on them too).
TEST(ModuleSelection, PicksWhatPeftWrappedInItsOwnFiles) {
  for (const auto& [name, layers] :
       {std::pair{"lora_select", 3}, {"lora_regex", 3}, {"lora_patterns", 3}, {"lora_basic", 2}}) {
    SCOPED_TRACE(name);
    const fs::path dir = data_dir() / (std::string("peft_") + name);
    const auto io = SafetensorsReader::open(dir / "io.safetensors");
    std::vector<std::string> wrapped;
    std::stringstream list(io.metadata().at("modules"));
    for (std::string m; std::getline(list, m, ',');) wrapped.push_back(m);
    const auto s = selection(json::parse(read_text(dir / "adapter" / "adapter_config.json")));
    auto got = selected(s, llama_modules(layers));
    std::sort(got.begin(), got.end());
    std::sort(wrapped.begin(), wrapped.end());
    EXPECT_EQ(got, wrapped);
  }
}

// peft-cpp applied every tensor in the file; PEFT applies only what the config selects.
TEST(ModuleSelection, TensorsOfModulesTheConfigDoesNotSelectAreRefused) {
  const auto all = llama_modules(2);
  SquareBase base(all);
  const std::vector<std::string> saved = {"model.layers.0.self_attn.q_proj",
                                          "model.layers.0.self_attn.v_proj",
                                          "model.layers.1.self_attn.q_proj"};
  const std::pair<json, std::string> cases[] = {
      {{{"target_modules", json::array({"q_proj"})}}, "model.layers.0.self_attn.v_proj"},
      {{{"target_modules", ".*q_proj"}}, "model.layers.0.self_attn.v_proj"},
      {{{"target_modules", json::array({"q_proj", "v_proj"})},
        {"exclude_modules", json::array({"layers.1.self_attn.q_proj"})}},
       "model.layers.1.self_attn.q_proj"},
      {{{"target_modules", json::array({"q_proj", "v_proj"})},
        {"layers_to_transform", json::array({0})},
        {"layers_pattern", "layers"}},
       "model.layers.1.self_attn.q_proj"},
  };
  for (const auto& [patch, refused] : cases) {
    SCOPED_TRACE(patch.dump());
    TempDir dir;
    save_then_patch(dir.path(), base, saved, patch);
    HostCtx ctx;
    expect_error([&] { load_adapter(dir.path(), base.model, ctx, {.verify_config_hash = false}); },
                 ErrorKind::io, {"module '" + refused + "'", "does not select"});
  }
  // What selects every saved module loads.
  TempDir dir;
  save_then_patch(dir.path(), base, saved,
                  {{"target_modules", json::array({"q_proj", "v_proj"})},
                   {"exclude_modules", "model\\.layers\\.1\\.self_attn\\.v_proj"}});
  HostCtx ctx;
  EXPECT_EQ(load_adapter(dir.path(), base.model, ctx, {.verify_config_hash = false}).size(), 3u);
}

// ---- save: target_modules selects exactly the saved modules -----------------------------

// A set that adapts "fc" saved ["fc"], which PEFT also applies to "block.fc".
TEST(ModuleSelection, SaveWritesTheExactSelection) {
  const std::vector<std::string> all = {"fc", "block.fc", "block.fc2", "head"};
  SquareBase base(all);
  TempDir dir;
  save_then_patch(dir.path(), base, {"fc", "head"}, json::object());
  const json config = json::parse(read_text(dir / "adapter_config.json"));
  ASSERT_TRUE(config["target_modules"].is_string()) << config["target_modules"].dump();
  EXPECT_EQ(selected(selection(config), all), (std::vector<std::string>{"fc", "head"}));
  HostCtx ctx;
  EXPECT_EQ(load_adapter(dir.path(), base.model, ctx).modules(),
            (std::vector<std::string>{"fc", "head"}));

  // A Llama-like set: compact (equal subtrees merged), and exact among all modules.
  const auto llama = llama_modules(4);
  std::vector<std::string> chosen;
  for (const auto& m : llama)
    if (m.ends_with("q_proj") || m.ends_with("v_proj") || m == "model.layers.2.self_attn.o_proj")
      chosen.push_back(m);
  const std::string regex = detail::exact_selection_regex(chosen);
  EXPECT_LT(regex.size(), 120u) << regex;
  const PyRegex re(regex);
  for (const auto& m : llama)
    EXPECT_EQ(re.full_match(m), std::find(chosen.begin(), chosen.end(), m) != chosen.end()) << m;
  EXPECT_FALSE(re.full_match("x." + chosen.front()));
  // Names that are prefixes of others, and characters a regular expression reads.
  const std::vector<std::string> odd = {"a", "a.b", "a.b.c", "x+y.(1)", "a.c"};
  const PyRegex odd_re(detail::exact_selection_regex(odd));
  for (const auto& m : odd) EXPECT_TRUE(odd_re.full_match(m)) << m;
  for (const char* m : {"a.b.c.d", "b", "a.", "xxy.(1)", "a.b.", ""})
    EXPECT_FALSE(odd_re.full_match(m)) << m;
}

// ---- each layer's weight layout ---------------------------------------------------------

/// PEFT's lora_mixed adapter: square Conv1D (c_proj, [in, out]) and nn.Linear (fc) layers;
/// the file says fan_in_fan_out = false, PEFT used true for the Conv1D layers.
struct MixedCase {
  std::vector<std::string> modules;
  std::map<std::string, Matrix<float, Cpu>> weights, biases;
  BaseModel<float, Cpu> base;
  SafetensorsReader io;

  explicit MixedCase(bool declare)
      : io(SafetensorsReader::open(data_dir() / "peft_lora_mixed" / "io.safetensors")) {
    std::stringstream list(io.metadata().at("modules"));
    for (std::string m; std::getline(list, m, ',');) modules.push_back(m);
    const auto r = SafetensorsReader::open(data_dir() / "peft_lora_mixed" / "base.safetensors");
    for (const auto& m : modules) {
      weights.emplace(m, r.read_matrix<float>(m + ".weight"));
      const auto& b = biases.emplace(m, r.read_matrix<float>(m + ".bias")).first->second;
      const WeightLayout layout = !declare                ? WeightLayout::from_config
                                  : m.ends_with("c_proj") ? WeightLayout::in_out
                                                          : WeightLayout::out_in;
      base.emplace(
          m, BaseLinear<float, Cpu>(as_const(weights.at(m).view()),
                                    VectorView<const float, Cpu>(b.data(), b.size()), layout));
    }
  }

  /// Relative error of each module's output against PEFT's.
  std::map<std::string, double> errors(AdapterSet<float, Cpu>& set) {
    HostCtx ctx;
    std::map<std::string, double> e;
    for (const auto& m : modules) {
      auto& layer = set.get<FLora>(m);
      const auto x = io.read_matrix<float>(m + ".x");
      const auto y_ref = io.read_matrix<float>(m + ".y");
      Matrix<float, Cpu> y(x.rows(), layer.out_features());
      layer.forward(ctx, x.view(), y.view());
      e[m] = relative_error(as_const(y.view()), as_const(y_ref.view()));
    }
    return e;
  }
};

TEST(WeightLayout, MixedConv1dAndLinearReproducePeft) {
  const fs::path adapter = data_dir() / "peft_lora_mixed" / "adapter";
  HostCtx ctx;
  MixedCase declared(true);
  std::vector<std::string> warnings;
  auto set = load_adapter(adapter, declared.base, ctx,
                          {.warn = [&](const std::string& w) { warnings.push_back(w); }});
  for (const auto& [m, e] : declared.errors(set)) EXPECT_LT(e, 1e-6) << m;
  EXPECT_TRUE(set.get<FLora>("h.0.c_proj").config().fan_in_fan_out);
  EXPECT_FALSE(set.get<FLora>("h.0.fc").config().fan_in_fan_out);
  // The file's flag contradicts the Conv1D layers: overridden as PEFT does, with one warning.
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("module 'h.0.c_proj'"), std::string::npos) << warnings[0];
  // A warn that throws refuses the file instead.
  expect_error(
      [&] {
        load_adapter(adapter, declared.base, ctx,
                     {.warn = [](const std::string& w) { throw Error(ErrorKind::io, w); }});
      },
      ErrorKind::io, {"fan_in_fan_out is false", "[in, out] (Conv1D"});

  // Without declared layouts, the one flag computes the square Conv1D layers transposed.
  MixedCase undeclared(false);
  auto wrong = load_adapter(adapter, undeclared.base, ctx);
  const auto e = undeclared.errors(wrong);
  EXPECT_GT(e.at("h.0.c_proj"), 1e-3);
  EXPECT_LT(e.at("h.0.fc"), 1e-6);

  // An explicit LoadOptions::fan_in_fan_out that contradicts a declared layout is refused.
  expect_error([&] { load_adapter(adapter, declared.base, ctx, {.fan_in_fan_out = true}); },
               ErrorKind::invalid_argument, {"contradicts module 'h.0.fc'"});
}

TEST(WeightLayout, AddRefusesAConfigThatContradictsTheLayout) {
  HostCtx ctx;
  Matrix<float, Cpu> w = random_matrix<float>(4, 4, 3);
  AdapterSet<float, Cpu> set;
  const BaseLinear<float, Cpu> conv(as_const(w.view()), {}, WeightLayout::in_out);
  expect_error([&] { set.add_lora(ctx, "c_proj", conv, {.r = 2}); }, ErrorKind::invalid_argument,
               {"module 'c_proj'", "fan_in_fan_out = false", "[in, out]"});
  EXPECT_NO_THROW(set.add_lora(ctx, "c_proj", conv, {.r = 2, .fan_in_fan_out = true}));
}

// ---- LoRA variants --------------------------------------------------------------------------

TEST(LoraVariants, RefusedByName) {
  const std::pair<const char*, const char*> variants[] = {
      {"use_bdlora", R"({"target_modules_bd_a": ["q_proj"], "nblocks": 2})"},
      {"kasa_config", R"({"beta": 1e-4})"},
      {"velora_config", R"({"num_groups": 32})"},
      {"monteclora_config", R"({"num_samples": 2})"},
      {"arrow_config", R"({"top_k": 3})"},
      {"use_dora", "true"},
      {"lora_bias", "true"},
      {"use_qalora", "true"},
      {"alora_invocation_tokens", "[1, 2]"},
      {"layer_replication", "[[0, 2]]"},
      {"target_parameters", R"(["experts.w1"])"},
      {"trainable_token_indices", "[5]"},
  };
  for (const auto& [field, value] : variants) {
    json j = {{"peft_type", "LORA"}, {"r", 4}};
    j[field] = json::parse(value);
    expect_error([&] { LoraAdapterConfig::from_json(j, "cfg"); }, ErrorKind::io,
                 {std::string(field) + " = ", "not supported"});
    // Their defaults load.
    j[field] = std::string(value) == "true" ? json(false) : json(nullptr);
    EXPECT_NO_THROW(LoraAdapterConfig::from_json(j, "cfg")) << field;
  }
}

TEST(LoraVariants, UnknownFieldsOfANewerPeftWarn) {
  std::vector<std::string> warnings;
  const LoadOptions options{.warn = [&](const std::string& w) { warnings.push_back(w); }};
  const json j = {{"peft_type", "LORA"},         {"r", 4},
                  {"shiny_config", {{"a", 1}}},  {"use_shiny", false},
                  {"other_list", json::array()}, {"gamma", 0.5}};
  LoraAdapterConfig::from_json(j, "cfg", options);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("shiny_config = {\"a\":1}"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("gamma = 0.5"), std::string::npos) << warnings[0];
  EXPECT_EQ(warnings[0].find("use_shiny"), std::string::npos) << warnings[0];
  // Every field PEFT 0.21 writes is known: its own files load without a warning.
  warnings.clear();
  for (const char* c : {"lora_basic", "lora_patterns", "lora_select", "lora_regex"}) {
    const json file = json::parse(
        read_text(data_dir() / (std::string("peft_") + c) / "adapter" / "adapter_config.json"));
    LoraAdapterConfig::from_json(file, "cfg", options);
  }
  EXPECT_TRUE(warnings.empty()) << warnings.front();
}

}  // namespace
}  // namespace peft::test
