// save_adapter / load_adapter: round trips (rsLoRA, rank and alpha patterns, 16-bit files,
// double and bfloat16 models), PEFT's pattern matching, the config hash that ties the two
// files, failed saves that leave the old adapter (crashes: save_crash_test.cpp), and every
// refusal.

#include <gtest/gtest.h>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

using FLora = Lora<float, Cpu>;

using json = nlohmann::ordered_json;
using Dropout = decltype(LoraConfig::dropout);  // float or double

/// A few frozen layers of different shapes, owned, by module name.
template <class T>
struct Base {
  std::vector<std::string> names;
  std::vector<Matrix<T, Cpu>> weights, biases;
  BaseModel<T, Cpu> model;

  explicit Base(std::vector<std::string> modules, index_t in = 9, std::uint32_t seed = 1)
      : names(std::move(modules)) {
    for (std::size_t i = 0; i < names.size(); ++i) {
      const index_t out = 5 + index_t(i % 3);
      weights.push_back(random_matrix<T>(out, in, seed + std::uint32_t(i)));
      biases.push_back(random_matrix<T>(1, out, seed + 100 + std::uint32_t(i)));
    }
    for (std::size_t i = 0; i < names.size(); ++i)
      model[names[i]] = {weights[i].view(),
                         VectorView<const T, Cpu>(biases[i].data(), biases[i].cols())};
  }
};

const std::vector<std::string> kModules = {
    "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"};

/// LoRA over every module of `base`: ranks {4, 4, 2, 6}, alphas {8, 3, 8, 8}, random A and B.
template <class T>
AdapterSet<T, Cpu> make_set(HostCtx& ctx, const Base<T>& base, bool rslora = false,
                            Dropout dropout = 0.1, std::uint64_t seed = 7) {
  const index_t ranks[] = {4, 4, 2, 6};
  const double alphas[] = {8, 3, 8, 8};
  AdapterSet<T, Cpu> set;
  for (std::size_t i = 0; i < base.names.size(); ++i)
    set.add_lora(ctx, base.names[i], base.model.at(base.names[i]),
                 {.r = ranks[i % 4],
                  .alpha = alphas[i % 4],
                  .dropout = dropout,
                  .use_rslora = rslora,
                  .init = LoraInit::none,
                  .seed = seed});
  return set;
}

template <class T>
void expect_same_parameters(AdapterSet<T, Cpu>& a, AdapterSet<T, Cpu>& b) {
  ASSERT_EQ(a.modules(), b.modules());
  auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].name, pb[i].name);
    EXPECT_TRUE(bitwise_equal(as_const(pa[i].value), as_const(pb[i].value))) << pa[i].name;
  }
}

/// Same outputs, bit for bit, on the same inputs (evaluation mode).
template <class T>
void expect_same_outputs(HostCtx& ctx, AdapterSet<T, Cpu>& a, AdapterSet<T, Cpu>& b) {
  a.set_training(false);
  b.set_training(false);
  std::uint32_t seed = 50;
  for (const auto& name : a.modules()) {
    auto& la = a.template get<Lora<T, Cpu>>(name);
    auto& lb = b.template get<Lora<T, Cpu>>(name);
    EXPECT_EQ(la.scaling(), lb.scaling()) << name;
    EXPECT_EQ(la.rank(), lb.rank()) << name;
    auto x = random_matrix<T>(3, la.in_features(), seed++);
    Matrix<T, Cpu> ya(3, la.out_features()), yb(3, la.out_features());
    la.forward(ctx, x.view(), ya.view());
    lb.forward(ctx, x.view(), yb.view());
    EXPECT_TRUE(bitwise_equal(as_const(ya.view()), as_const(yb.view()))) << name;
  }
}

TEST(PeftFormat, RoundTripIsBitIdenticalWithPatternsAndRsLora) {
  HostCtx ctx;
  Base<float> base(kModules);
  for (bool rslora : {false, true}) {
    auto set = make_set(ctx, base, rslora);
    TempDir dir;
    save_adapter(dir.path(), set, ctx, {.base_model_name_or_path = "tiny/llama"});
    EXPECT_TRUE(temp_files(dir.path()).empty());
    auto loaded = load_adapter(dir.path(), base.model, ctx);
    expect_same_parameters(set, loaded);
    expect_same_outputs(ctx, set, loaded);
    for (const auto& name : kModules) {
      const auto& l = loaded.get<FLora>(name);
      EXPECT_EQ(l.options().stream_id, fnv1a32(name));
      EXPECT_EQ(l.config().dropout, Dropout(0.1));
      EXPECT_EQ(l.config().use_rslora, rslora);
      EXPECT_FALSE(l.training());  // loaded for inference unless asked
      EXPECT_EQ(l.config().init, LoraInit::none);
    }
    // The config PEFT will read.
    const json config = json::parse(read_text(dir / "adapter_config.json"));
    EXPECT_EQ(config["peft_type"], "LORA");
    EXPECT_EQ(config["r"], 4);
    EXPECT_EQ(config["lora_alpha"], 8);
    EXPECT_EQ(config["use_rslora"], rslora);
    EXPECT_EQ(config["lora_dropout"].dump(), "0.1");
    EXPECT_EQ(config["bias"], "none");
    EXPECT_EQ(config["init_lora_weights"], false);
    EXPECT_EQ(config["fan_in_fan_out"], false);
    EXPECT_EQ(config["inference_mode"], true);
    EXPECT_TRUE(config["modules_to_save"].is_null());
    EXPECT_TRUE(config["layers_to_transform"].is_null());
    EXPECT_TRUE(config["task_type"].is_null());
    EXPECT_TRUE(config["revision"].is_null());
    EXPECT_EQ(config["base_model_name_or_path"], "tiny/llama");
    // Exactly the saved modules under re.fullmatch ("q_proj" in a list would also select
    // "x.q_proj").
    EXPECT_EQ(config["target_modules"], "model\\.layers\\.(?:0|1)\\.self_attn\\.(?:q_proj|v_proj)");
    EXPECT_EQ(config["rank_pattern"], json::parse(R"({"model.layers.1.self_attn.q_proj": 2,
                              "model.layers.1.self_attn.v_proj": 6})"));
    EXPECT_EQ(config["alpha_pattern"], json::parse(R"({"model.layers.0.self_attn.v_proj": 3})"));
    // Keys sorted as PEFT writes them.
    std::vector<std::string> keys;
    for (const auto& [k, v] : config.items()) keys.push_back(k);
    EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  }
}

TEST(PeftFormat, TensorsFollowPeftsKeysAndDtypes) {
  HostCtx ctx;
  Base<float> base(kModules);
  auto set = make_set(ctx, base);
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
  EXPECT_EQ(r.tensors().size(), 8u);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(r.metadata().at("peft_cpp_config_sha256"),
            sha256_hex(read_text(dir / "adapter_config.json")));
  const auto& a = r.info("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight");
  const auto& b = r.info("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
  EXPECT_EQ(a.dtype, SafetensorsDtype::F32);
  EXPECT_EQ(a.shape, (std::vector<index_t>{6, 9}));
  EXPECT_EQ(b.shape, (std::vector<index_t>{5, 6}));

  // 16-bit files: the factors come back rounded to nearest even, nothing else changes.
  for (auto dtype : {SafetensorsDtype::F16, SafetensorsDtype::BF16}) {
    TempDir half;
    save_adapter(half.path(), set, ctx, {.dtype = dtype});
    const auto rh = SafetensorsReader::open(half / "adapter_model.safetensors");
    for (const auto& t : rh.tensors()) EXPECT_EQ(t.dtype, dtype);
    auto loaded = load_adapter(half.path(), base.model, ctx);
    auto po = set.parameters(), pl = loaded.parameters();
    for (std::size_t i = 0; i < po.size(); ++i)
      for (index_t k = 0; k < po[i].value.size(); ++k) {
        const float v = po[i].value.data()[k];
        const float rounded = dtype == SafetensorsDtype::F16
                                  ? half_bits_to_float(float_to_half_bits(v))
                                  : bfloat16_bits_to_float(float_to_bfloat16_bits(v));
        ASSERT_EQ(pl[i].value.data()[k], rounded);
      }
  }
  expect_error([&] { save_adapter(dir.path(), set, ctx, {.dtype = SafetensorsDtype::I8}); },
               ErrorKind::invalid_argument, {"dtype I8"});
}

TEST(PeftFormat, DoubleAndBfloat16Models) {
  HostCtx ctx;
  {  // double parameters are saved as F64 by default: bit-identical
    Base<double> base(kModules);
    auto set = make_set(ctx, base, true);
    TempDir dir;
    save_adapter(dir.path(), set, ctx);
    EXPECT_EQ(SafetensorsReader::open(dir / "adapter_model.safetensors").tensors()[0].dtype,
              SafetensorsDtype::F64);
    auto loaded = load_adapter(dir.path(), base.model, ctx, {.access = SafetensorsAccess::stream});
    expect_same_parameters(set, loaded);
    expect_same_outputs(ctx, set, loaded);
    // An F64 file cannot go into a float model: that would round.
    Base<float> fbase(kModules);
    expect_error([&] { load_adapter(dir.path(), fbase.model, ctx); }, ErrorKind::io,
                 {"F64 into float would lose precision"});
  }
  {  // a bfloat16 model keeps float32 factors
    Base<Eigen::bfloat16> base(kModules);
    auto set = make_set(ctx, base);
    TempDir dir;
    save_adapter(dir.path(), set, ctx);
    auto loaded = load_adapter(dir.path(), base.model, ctx);
    expect_same_parameters(set, loaded);
    expect_same_outputs(ctx, set, loaded);
  }
}

TEST(PeftFormat, LoadedLayersTrainAndSaveAgain) {
  HostCtx ctx;
  Base<float> base(kModules);
  auto set = make_set(ctx, base);
  TempDir first, second;
  save_adapter(first.path(), set, ctx);
  auto loaded = load_adapter(first.path(), base.model, ctx, {.seed = 7, .training = true});
  // Same seed and stream ids: the same dropout masks, so training continues identically.
  auto x = random_matrix<float>(4, 9, 3);
  auto dy = random_matrix<float>(4, 5, 4);
  for (auto* s : {&set, &loaded}) {
    s->set_training(true);
    auto& l = s->get<FLora>(kModules[0]);
    Matrix<float, Cpu> y(4, 5);
    l.forward(ctx, x.view(), y.view());
    l.backward(ctx, x.view(), dy.view(), MatrixView<float, Cpu>());
  }
  auto ga = set.parameters(), gb = loaded.parameters();
  EXPECT_TRUE(bitwise_equal(as_const(ga[0].grad), as_const(gb[0].grad)));
  EXPECT_GT(norm(ctx, as_const(gb[0].grad)), 0.0);
  save_adapter(second.path(), loaded, ctx);
  EXPECT_EQ(read_text(first / "adapter_config.json"), read_text(second / "adapter_config.json"));
  EXPECT_EQ(read_file(first / "adapter_model.safetensors"),
            read_file(second / "adapter_model.safetensors"));
}

// ---- rank_pattern / alpha_pattern ----------------------------------------------------------

TEST(PeftFormat, PatternsMatchAsPeftDoes) {
  PatternMap<index_t> p;
  p.add("q_proj", 2);
  p.add("layers\\.1\\..*", 3);
  p.add("model.layers.1.self_attn.v_proj", 4);  // shadowed by the key before it
  EXPECT_EQ(p.value_for("model.layers.0.self_attn.q_proj", 8), 2);
  EXPECT_EQ(p.value_for("q_proj", 8), 2);                             // the whole name
  EXPECT_EQ(p.value_for("model.layers.0.self_attn.xq_proj", 8), 8);   // not at a dot
  EXPECT_EQ(p.value_for("model.layers.0.self_attn.q_proj.x", 8), 8);  // anchored at the end
  EXPECT_EQ(p.value_for("model.layers.1.self_attn.v_proj", 8), 3);    // first match wins
  EXPECT_EQ(p.value_for("model.layers.11.self_attn.v_proj", 8), 8);
  EXPECT_EQ(p.match("model.layers.1.mlp")->key, "layers\\.1\\..*");
  EXPECT_EQ(p.match("other"), nullptr);

  PatternMap<double> anchored;
  anchored.add("^q_proj", 1.5);
  EXPECT_EQ(anchored.value_for("q_proj", 0), 1.5);
  EXPECT_EQ(anchored.value_for("model.q_proj", 0), 0);

  expect_error([] { PatternMap<index_t>().add("(unclosed", 1); }, ErrorKind::io,
               {"'(unclosed'", "not a regular expression"});
}

TEST(PeftFormat, ConfigResolvesPerModule) {
  const json j = json::parse(R"({
    "peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true, "lora_dropout": 0.05,
    "rank_pattern": {"v_proj": 4, "layers\\.0\\..*": 2},
    "alpha_pattern": {"model.layers.0.self_attn.q_proj": 7.5}})");
  const auto c = LoraAdapterConfig::from_json(j, "cfg");
  EXPECT_EQ(c.r, 8);
  EXPECT_EQ(c.lora_dropout, Dropout(0.05));
  const auto q0 = c.for_module("model.layers.0.self_attn.q_proj");
  EXPECT_EQ(q0.r, 2);
  EXPECT_EQ(q0.alpha, 7.5);
  EXPECT_TRUE(q0.use_rslora);
  const auto v0 = c.for_module("model.layers.0.self_attn.v_proj");  // "v_proj" comes first
  EXPECT_EQ(v0.r, 4);
  EXPECT_EQ(v0.alpha, 16);
  const auto q1 = c.for_module("model.layers.1.self_attn.q_proj", 5);
  EXPECT_EQ(q1.r, 8);
  EXPECT_EQ(q1.seed, 5u);
}

TEST(PeftFormat, ModuleNamesThatAreSuffixesOfOthersGetAnchoredKeys) {
  // "q_proj" (a top-level module) would also match "model.q_proj" as a pattern key, in one
  // of the two key orders: the saver switches to anchored, escaped keys.
  HostCtx ctx;
  Base<float> base({"q_proj", "model.q_proj", "model.k_proj"});
  AdapterSet<float, Cpu> set;
  set.add_lora(ctx, "q_proj", base.model.at("q_proj"),
               {.r = 3, .alpha = 5, .init = LoraInit::none});
  set.add_lora(ctx, "model.q_proj", base.model.at("model.q_proj"),
               {.r = 2, .alpha = 2, .init = LoraInit::none});
  set.add_lora(ctx, "model.k_proj", base.model.at("model.k_proj"),
               {.r = 2, .alpha = 2, .init = LoraInit::none});
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  const json config = json::parse(read_text(dir / "adapter_config.json"));
  EXPECT_EQ(config["r"], 2);
  EXPECT_EQ(config["rank_pattern"],
            json::parse(R"({"^q_proj": 3, "^model\\.q_proj": 2, "^model\\.k_proj": 2})"));
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  expect_same_outputs(ctx, set, loaded);
  EXPECT_EQ(loaded.get<FLora>("q_proj").rank(), 3);
  EXPECT_EQ(loaded.get<FLora>("model.q_proj").rank(), 2);

  // Plain names suffice when no name is a dotted suffix of another.
  Base<float> plain({"a.q_proj", "b.q_proj"});
  AdapterSet<float, Cpu> set2;
  set2.add_lora(ctx, "a.q_proj", plain.model.at("a.q_proj"), {.r = 3, .init = LoraInit::none});
  set2.add_lora(ctx, "b.q_proj", plain.model.at("b.q_proj"),
                {.r = 3, .alpha = 1, .init = LoraInit::none});
  TempDir dir2;
  save_adapter(dir2.path(), set2, ctx);
  const json c2 = json::parse(read_text(dir2 / "adapter_config.json"));
  EXPECT_TRUE(c2["rank_pattern"].empty());
  EXPECT_EQ(c2["lora_alpha"], 8);  // tie between 8 and 1: the first module's
  EXPECT_EQ(c2["alpha_pattern"], json::parse(R"({"b.q_proj": 1})"));
}

// ---- the config hash and atomic saves ------------------------------------------------------

TEST(PeftFormat, ConfigAndWeightsFromDifferentSavesAreRefused) {
  HostCtx ctx;
  Base<float> base(kModules);
  auto set = make_set(ctx, base);
  TempDir a, b;
  save_adapter(a.path(), set, ctx);
  auto& first = set.get<FLora>(kModules[0]);
  first.parameters()[1].value.data()[0] += 1;                    // change the weights only...
  save_adapter(b.path(), set, ctx, {.task_type = "CAUSAL_LM"});  // ...and the config text
  fs::copy_file(a / "adapter_config.json", b / "adapter_config.json",
                fs::copy_options::overwrite_existing);
  expect_error(
      [&] { load_adapter(b.path(), base.model, ctx); }, ErrorKind::io,
      {"adapter_config.json", "different saves", sha256_hex(read_text(a / "adapter_config.json"))});
  EXPECT_NO_THROW(load_adapter(b.path(), base.model, ctx, {.verify_config_hash = false}));

  // A config edited by hand is refused too; files without the hash (PEFT's) load.
  write_text(a / "adapter_config.json", read_text(a / "adapter_config.json") + "\n");
  expect_error([&] { load_adapter(a.path(), base.model, ctx); }, ErrorKind::io,
               {"different saves"});
}

TEST(PeftFormat, FailedSavesLeaveTheOldAdapter) {
  HostCtx ctx;
  Base<float> base(kModules);
  auto set = make_set(ctx, base);
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  const auto config = read_text(dir / "adapter_config.json");
  const auto weights = read_file(dir / "adapter_model.safetensors");

  // Refused before anything is written: layers that PEFT's config cannot describe.
  AdapterSet<float, Cpu> mixed;
  mixed.add_lora(ctx, kModules[0], base.model.at(kModules[0]), {.dropout = 0.1});
  mixed.add_lora(ctx, kModules[1], base.model.at(kModules[1]), {.dropout = 0.2});
  expect_error([&] { save_adapter(dir.path(), mixed, ctx); }, ErrorKind::invalid_argument,
               {kModules[1], "lora_dropout, use_rslora or fan_in_fan_out"});
  AdapterSet<float, Cpu> empty;
  expect_error([&] { save_adapter(dir.path(), empty, ctx); }, ErrorKind::invalid_argument,
               {"empty"});
  // Fails while committing: the config's name is taken by a directory of the user's, which a
  // save does not delete. Nothing changes.
  TempDir blocked;
  fs::create_directories(blocked / "adapter_config.json" / "x");
  expect_error([&] { save_adapter(blocked.path(), set, ctx); }, ErrorKind::io,
               {"adapter_config.json'", "is a directory, not a file"});
  EXPECT_TRUE(temp_files(blocked.path()).empty());
  EXPECT_TRUE(fs::exists(blocked / "adapter_config.json" / "x"));

  EXPECT_EQ(read_text(dir / "adapter_config.json"), config);
  EXPECT_EQ(read_file(dir / "adapter_model.safetensors"), weights);
  EXPECT_TRUE(temp_files(dir.path()).empty());
  EXPECT_NO_THROW(load_adapter(dir.path(), base.model, ctx));
}

TEST(PeftFormat, RefusesAnotherMethodsOptionsAndMixedInits) {
  HostCtx ctx;
  Base<float> base(kModules);
  auto set = make_set(ctx, base);
  TempDir dir;
  expect_error([&] { save_adapter(dir.path(), set, ctx, {}, RosaSaveOptions{}); },
               ErrorKind::invalid_argument, {"options given are for another adapter type", "LoRA"});
  AdapterSet<float, Cpu> inits;
  inits.add_lora(ctx, kModules[0], base.model.at(kModules[0]), {.init = LoraInit::gaussian});
  inits.add_lora(ctx, kModules[1], base.model.at(kModules[1]), {.init = LoraInit::none});
  expect_error([&] { save_adapter(dir.path(), inits, ctx); }, ErrorKind::invalid_argument,
               {kModules[1], "init_lora_weights"});
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(PeftFormat, AtomicFileIsAllOrNothing) {
  TempDir dir;
  write_text(dir / "target", "old");
  {
    detail::AtomicFile file(dir / "target");
    file.write(std::string_view("new contents"));
    file.finish();
    EXPECT_TRUE(fs::exists(file.temp_path()));
    EXPECT_EQ(read_text(dir / "target"), "old");
  }  // destroyed without commit
  EXPECT_EQ(read_text(dir / "target"), "old");
  EXPECT_TRUE(temp_files(dir.path()).empty());
  {
    detail::AtomicFile file(dir / "target");
    file.write(std::string_view("new"));
    file.commit();
  }
  EXPECT_EQ(read_text(dir / "target"), "new");
  EXPECT_TRUE(temp_files(dir.path()).empty());
  expect_error([&] { detail::AtomicFile(dir / "missing_dir" / "x"); }, ErrorKind::io,
               {"cannot create the temporary file"});
}

// ---- refusals ------------------------------------------------------------------------------

/// A saved adapter whose config or weights a test then edits.
struct Saved {
  HostCtx ctx;
  Base<float> base{kModules};
  TempDir dir;
  Saved() {
    auto set = make_set(ctx, base);
    save_adapter(dir.path(), set, ctx);
  }
  json config() const { return json::parse(read_text(dir / "adapter_config.json")); }
  void set_config(const json& j) { write_text(dir / "adapter_config.json", j.dump(2)); }
  void load(std::initializer_list<std::string> needles, LoadOptions options = {}) {
    options.verify_config_hash = false;
    expect_error([&] { load_adapter(dir.path(), base.model, ctx, options); }, ErrorKind::io,
                 needles);
  }
  /// Rewrites the weights with `edit` applied to a writer holding the saved tensors.
  template <class F>
  void edit_weights(F edit) {
    const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
    SafetensorsWriter w;
    for (const auto& t : r.tensors())
      if (!edit(w, t)) w.add(t.name, r.read_matrix<float>(t.name).view());
    w.write(dir / "adapter_model.safetensors");
  }
};

TEST(PeftFormatRefuses, UnsupportedConfigs) {
  Saved s;
  auto with = [&](const char* key, json value) {
    json j = s.config();
    j[key] = std::move(value);
    s.set_config(j);
  };
  with("peft_type", "IA3");
  s.load({"peft_type \"IA3\" is not supported (supported: LORA, ROSA"});
  with("peft_type", "LORA");
  with("use_dora", true);
  s.load({"adapter_config.json", "use_dora = true is not supported"});
  with("use_dora", false);
  with("bias", "all");
  s.load({"bias \"all\" is not supported"});
  with("bias", "none");
  with("modules_to_save", json::array({"classifier"}));
  s.load({"modules_to_save"});
  with("modules_to_save", nullptr);
  with("init_lora_weights", "pissa");
  s.load({"init_lora_weights \"pissa\" is not supported"});
  with("init_lora_weights", "gaussian");
  with("r", 0);
  s.load({"r must be an integer >= 1, got 0"});
  with("r", 4);
  with("lora_alpha", "8");
  s.load({"lora_alpha must be a number"});
  with("lora_alpha", 8);
  with("lora_dropout", 1.0);
  s.load({"lora_dropout must be a number in [0, 1)"});
  with("lora_dropout", 0.0);
  with("use_rslora", "yes");
  s.load({"use_rslora must be true or false"});
  with("use_rslora", false);
  with("rank_pattern", json::parse(R"({"(bad": 2})"));
  s.load({"rank_pattern", "'(bad'", "not a regular expression"});
  with("rank_pattern", json::parse(R"({"q_proj": 0})"));
  s.load({"rank_pattern['q_proj'] must be an integer >= 1"});
  with("rank_pattern", json::parse(R"({"model.layers.1.self_attn.q_proj": 2,
                                       "model.layers.1.self_attn.v_proj": 6})"));
  with("alpha_pattern", json::parse(R"({"q_proj": null})"));
  s.load({"alpha_pattern['q_proj'] must be a number"});
  with("alpha_pattern", json::object());
  EXPECT_NO_THROW(load_adapter(s.dir.path(), s.base.model, s.ctx, {.verify_config_hash = false}));

  write_text(s.dir / "adapter_config.json", "{\"peft_type\": \"LORA\",");
  s.load({"adapter_config.json", "not valid JSON"});
  write_text(s.dir / "adapter_config.json", R"({"peft_type": "LORA", "r": 4, "r": 8})");
  s.load({"adapter_config.json", "the key 'r' appears twice"});
  write_text(s.dir / "adapter_config.json", "[]");
  s.load({"expected a JSON object"});
  write_text(s.dir / "adapter_config.json", "{\"r\": 4}");
  s.load({"no peft_type"});
  fs::remove(s.dir / "adapter_config.json");
  s.load({"adapter_config.json", "cannot open"});
}

TEST(PeftFormatRefuses, MismatchedTensorsAndModules) {
  {
    Saved s;
    fs::remove(s.dir / "adapter_model.safetensors");
    s.load({"adapter_model.safetensors"});
  }
  {
    Saved s;
    s.edit_weights([](SafetensorsWriter& w, const SafetensorsTensorInfo& t) {
      if (t.name != "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") return false;
      w.add("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
            Matrix<float, Cpu>(1, 5).view());
      return false;
    });
    s.load({"'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector'",
            "not base_model.model.<module>.lora_A.weight"});
  }
  {
    Saved s;
    s.edit_weights([](SafetensorsWriter&, const SafetensorsTensorInfo& t) {
      return t.name == "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";
    });
    s.load({"module 'model.layers.1.self_attn.q_proj' has lora_A but no lora_B"});
  }
  {
    Saved s;
    s.base.model.erase("model.layers.1.self_attn.v_proj");
    s.load({"module 'model.layers.1.self_attn.v_proj'", "not among the 3 base layers"});
  }
  {
    Saved s;  // the base weight has other in_features
    Matrix<float, Cpu> wide(5, 10);
    s.base.model["model.layers.0.self_attn.q_proj"] = BaseLinear<float, Cpu>(wide.view());
    s.load({"module 'model.layers.0.self_attn.q_proj'", "lora_A is [4, 9]", "lora_B is [5, 4]",
            "the base weight is 5 x 10 [out, in]", "fan_in_fan_out = false"});
    // fan_in_fan_out read the wrong way round.
    s.base.model["model.layers.0.self_attn.q_proj"] = s.base.model.at(kModules[1]);
    s.load({"fan_in_fan_out = true"}, {.fan_in_fan_out = true});
  }
  {
    Saved s;  // the config's rank differs from the tensors'
    json j = s.config();
    j["rank_pattern"] = json::object();
    s.set_config(j);
    s.load({"module 'model.layers", "the config gives rank 4", "lora_A is [2, 9]"});
  }
  {
    Saved s;  // A and B of different ranks
    s.edit_weights([](SafetensorsWriter& w, const SafetensorsTensorInfo& t) {
      if (t.name != "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight") return false;
      w.add(t.name, Matrix<float, Cpu>(5, 3).view());
      return true;
    });
    s.load({"lora_A is [4, 9] and lora_B is [5, 3]", "their ranks differ"});
  }
  {
    Saved s;  // a factor that is not a matrix
    s.edit_weights([](SafetensorsWriter& w, const SafetensorsTensorInfo& t) {
      if (t.name != "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") return false;
      w.add(t.name, Matrix<float, Cpu>(4, 9).view(), std::nullopt, std::vector<index_t>{4, 9, 1});
      return true;
    });
    s.load({"lora_A is [4, 9, 1]", "expected two matrices"});
  }
  {
    Saved s;  // integers are no factors
    s.edit_weights([](SafetensorsWriter& w, const SafetensorsTensorInfo& t) {
      if (t.name != "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") return false;
      w.add(t.name, Matrix<std::int32_t, Cpu>(4, 9).view());
      return true;
    });
    s.load({"I32 is not a floating-point dtype"});
  }
  {
    Saved s;
    s.edit_weights([](SafetensorsWriter&, const SafetensorsTensorInfo&) { return true; });
    s.load({"holds no LoRA tensors"});
  }
}

}  // namespace
}  // namespace peft::test
