// AdaLoRA checkpoints (peft_type ADALORA, PEFT's layout): pruned to the kept ranks with PEFT's
// rank_pattern and loaded back to the same outputs, every rank without a pattern, compacted
// layers, the config's content, refusals of malformed or inconsistent files; and the
// allocator's state file, which makes a resumed run the same run.

#include <gtest/gtest.h>

#include <random>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

using json = nlohmann::ordered_json;
using Layer = AdaLora<double, Cpu>;

const std::vector<std::string> kModules = {"model.layers.0.self_attn.q_proj",
                                           "model.layers.0.mlp.down_proj"};
const std::vector<std::pair<index_t, index_t>> kShapes = {{6, 9}, {8, 5}};  // [out, in]

struct Base {
  std::vector<Matrix<double, Cpu>> weights, biases;
  BaseModel<double, Cpu> model;

  Base() {
    for (std::size_t i = 0; i < kModules.size(); ++i) {
      weights.push_back(
          random_matrix<double>(kShapes[i].first, kShapes[i].second, 1 + unsigned(i)));
      biases.push_back(random_matrix<double>(1, kShapes[i].first, 10 + unsigned(i)));
    }
    for (std::size_t i = 0; i < kModules.size(); ++i)
      model[kModules[i]] = {weights[i].view(),
                            VectorView<const double, Cpu>(biases[i].data(), biases[i].cols())};
  }
};

Layer& layer_of(AdapterSet<double, Cpu>& set, const std::string& module) {
  return set.get<Layer>(module);
}

/// AdaLoRA over every module, A, E and B random.
AdapterSet<double, Cpu> make_set(HostCtx& ctx, const Base& base, index_t init_r = 4) {
  AdapterSet<double, Cpu> set;
  for (const auto& name : kModules)
    set.add<AdaLora>(ctx, name, base.model.at(name),
                     {.init_r = init_r, .alpha = 6, .init_weights = false, .seed = 2});
  return set;
}

/// Zeroes E where `keep` is false (what the allocator's mask does).
void mask(HostCtx& ctx, Layer& layer, const std::vector<bool>& keep) {
  auto e = layer.parameters()[1].value;
  for (index_t i = 0; i < e.rows(); ++i)
    if (!keep[std::size_t(i)]) e(i, 0) = 0.0;
  layer.parameters_updated(ctx);
}

Matrix<double, Cpu> output(HostCtx& ctx, Layer& layer, std::uint32_t seed = 77) {
  layer.set_training(false);
  const auto x = random_matrix<double>(5, layer.in_features(), seed);
  Matrix<double, Cpu> y(5, layer.out_features());
  layer.forward(ctx, x.view(), y.view());
  return y;
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

struct AdaLoraCheckpoint : ::testing::Test {
  HostCtx ctx;
  Base base;
  TempDir dir;
  const std::vector<bool> q_keep = {true, false, true, false};
  const RankAllocatorOptions schedule{.target_r = 2, .tinit = 1, .tfinal = 2, .total_step = 10};

  /// Saves a set whose q_proj keeps ranks 0 and 2 (down_proj: all four).
  AdapterSet<double, Cpu> save_pruned() {
    auto set = make_set(ctx, base);
    mask(ctx, layer_of(set, kModules[0]), q_keep);
    save_adapter(
        dir.path(), set, ctx, {},
        AdaLoraSaveOptions{.rank_pattern = {{kModules[0], q_keep}}, .allocator = schedule});
    return set;
  }
  void set_config(const json& j) { write_text(dir / "adapter_config.json", j.dump(2)); }
  json config() const { return read_json(dir / "adapter_config.json"); }
  /// Rewrites the weights: edit(writer, tensor) returns true when it wrote the tensor itself.
  template <class F>
  void edit_weights(F edit) {
    const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
    SafetensorsWriter w;
    for (const auto& t : r.tensors())
      if (!edit(w, t)) w.add(t.name, r.read_matrix<double>(t.name).view());
    w.write(dir / "adapter_model.safetensors");
  }
  void refused(std::initializer_list<std::string> needles) {
    expect_error([&] { load_adapter(dir.path(), base.model, ctx, {.verify_config_hash = false}); },
                 ErrorKind::io, needles);
  }
};

TEST_F(AdaLoraCheckpoint, PrunedCheckpointHasPeftsKeysShapesAndRankPattern) {
  save_pruned();
  const json c = config();
  EXPECT_EQ(c["peft_type"], "ADALORA");
  EXPECT_EQ(c["init_r"], 4);
  EXPECT_EQ(c["target_r"], 2);
  EXPECT_EQ(c["tinit"], 1);
  EXPECT_EQ(c["tfinal"], 2);
  EXPECT_EQ(c["total_step"], 10);
  EXPECT_EQ(c["deltaT"], 1);
  EXPECT_EQ(c["lora_alpha"], 6);
  const json expected = {{kModules[0] + ".lora_E", {true, false, true, false}}};
  EXPECT_EQ(c["rank_pattern"], expected) << "down_proj keeps all: no entry";
  const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
  EXPECT_EQ(r.tensors().size(), 6u) << "lora_A, lora_E, lora_B per module, no ranknum";
  EXPECT_EQ(r.info(tensor_key(kModules[0], "lora_A")).shape, (std::vector<index_t>{2, 9}));
  EXPECT_EQ(r.info(tensor_key(kModules[0], "lora_E")).shape, (std::vector<index_t>{2, 1}));
  EXPECT_EQ(r.info(tensor_key(kModules[0], "lora_B")).shape, (std::vector<index_t>{6, 2}));
  EXPECT_EQ(r.info(tensor_key(kModules[1], "lora_A")).shape, (std::vector<index_t>{4, 5}));
  EXPECT_EQ(r.info(tensor_key(kModules[1], "lora_B")).shape, (std::vector<index_t>{8, 4}));
}

// The loaded layers hold the kept ranks and divide by init_r: the same outputs and ΔW.
TEST_F(AdaLoraCheckpoint, PrunedCheckpointLoadsToTheSameOutputs) {
  auto set = save_pruned();
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  for (const auto& module : kModules) {
    SCOPED_TRACE(module);
    Layer& a = layer_of(set, module);
    Layer& b = layer_of(loaded, module);
    EXPECT_EQ(b.rank(), module == kModules[0] ? 2 : 4);
    EXPECT_EQ(b.ranknum(), 4.0);
    EXPECT_EQ(b.scaling(), a.scaling());
    const auto ya = output(ctx, a), yb = output(ctx, b);
    EXPECT_LT(relative_error(as_const(ya.view()), as_const(yb.view())), 1e-14);
  }
  // Kept rows of A and E, columns of B, in order.
  auto a = layer_of(set, kModules[0]).parameters();
  auto b = layer_of(loaded, kModules[0]).parameters();
  for (index_t j = 0; j < 9; ++j) EXPECT_EQ(b[0].value(1, j), a[0].value(2, j));
  EXPECT_EQ(b[1].value(1, 0), a[1].value(2, 0));
  for (index_t o = 0; o < 6; ++o) EXPECT_EQ(b[2].value(o, 1), a[2].value(o, 2));

  // Saved again (a layer below init_r, no pattern given): PEFT's pattern over its init_r.
  TempDir again;
  save_adapter(again.path(), loaded, ctx);
  EXPECT_EQ(read_json(again / "adapter_config.json")["rank_pattern"],
            (json{{kModules[0] + ".lora_E", {true, true, false, false}}}));
  auto reloaded = load_adapter(again.path(), base.model, ctx);
  const auto y1 = output(ctx, layer_of(loaded, kModules[0]));
  const auto y2 = output(ctx, layer_of(reloaded, kModules[0]));
  EXPECT_TRUE(bitwise_equal(as_const(y1.view()), as_const(y2.view())));
}

// Without a pattern every rank is written (masked ones with E = 0), with no rank_pattern: what
// resuming a run needs.
TEST_F(AdaLoraCheckpoint, WithoutAPatternEveryRankIsWritten) {
  auto set = make_set(ctx, base);
  save_adapter(dir.path(), set, ctx);
  EXPECT_TRUE(config()["rank_pattern"].is_null());
  EXPECT_EQ(config()["total_step"], 1) << "PEFT needs one; none was given";
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  for (const auto& module : kModules) {
    EXPECT_EQ(layer_of(loaded, module).rank(), 4);
    for (std::size_t k = 0; k < 3; ++k)
      EXPECT_TRUE(bitwise_equal(as_const(layer_of(set, module).parameters()[k].value),
                                as_const(layer_of(loaded, module).parameters()[k].value)));
  }
}

// A compacted layer (keep_ranks) is saved with the pattern over its initial ranks.
TEST_F(AdaLoraCheckpoint, CompactedLayersSaveThePatternOverTheirInitialRanks) {
  auto set = make_set(ctx, base);
  Layer& q = layer_of(set, kModules[0]);
  mask(ctx, q, q_keep);
  const auto before = output(ctx, q);
  q.keep_ranks(ctx, {0, 2});
  save_adapter(dir.path(), set, ctx, {},
               AdaLoraSaveOptions{.rank_pattern = {{kModules[0], q_keep}}});
  EXPECT_EQ(config()["rank_pattern"],
            (json{{kModules[0] + ".lora_E", {true, false, true, false}}}));
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  const auto after = output(ctx, layer_of(loaded, kModules[0]));
  EXPECT_LT(relative_error(as_const(before.view()), as_const(after.view())), 1e-14);
}

TEST_F(AdaLoraCheckpoint, SaveRefusesPatternsThatDoNotFit) {
  auto set = make_set(ctx, base);
  expect_error(
      [&] {
        save_adapter(dir.path(), set, ctx, {},
                     AdaLoraSaveOptions{.rank_pattern = {{"nope", q_keep}}});
      },
      ErrorKind::invalid_argument, {"names 'nope'", "not a module of the set"});
  expect_error(
      [&] {
        save_adapter(dir.path(), set, ctx, {},
                     AdaLoraSaveOptions{.rank_pattern = {{kModules[0], {true, false}}}});
      },
      ErrorKind::invalid_argument, {"gives module", "2 ranks", "its layer has 4"});
  expect_error(
      [&] {
        save_adapter(
            dir.path(), set, ctx, {},
            AdaLoraSaveOptions{.rank_pattern = {{kModules[0], {false, false, false, false}}}});
      },
      ErrorKind::invalid_argument, {"keeps no rank"});
  expect_error(
      [&] {
        save_adapter(dir.path(), set, ctx, {},
                     AdaLoraSaveOptions{.allocator = {.tinit = 5, .tfinal = 5, .total_step = 10}});
      },
      ErrorKind::invalid_argument, {"tinit (5)", "total_step - tfinal"});
}

TEST_F(AdaLoraCheckpoint, RefusesMalformedRankPatterns) {
  save_pruned();
  const std::string key = kModules[0] + ".lora_E";
  auto with_pattern = [&](json pattern) {
    json c = config();
    c["rank_pattern"] = std::move(pattern);
    set_config(c);
  };
  with_pattern({{key, {true, false, true}}});
  refused({"rank_pattern['" + key + "'] must be a list of booleans (init_r of them)"});
  with_pattern({{key, {1, 0, 1, 0}}});
  refused({"must be a list of booleans"});
  with_pattern({{kModules[0], {true, false, true, false}}});
  refused({"key '" + kModules[0] + "' is not <module>.lora_E"});
  with_pattern(
      {{key, {true, false, true, false}}, {"model.other.lora_E", {true, true, true, true}}});
  refused({"rank_pattern lists module 'model.other'", "the weights do not hold"});
  with_pattern({{key, {true, true, true, false}}});
  refused({"module '" + kModules[0] + "'", "lora_A is [2, 9], expected [3, 9]",
           "rank_pattern keeps 3 of init_r = 4"});
  with_pattern({{key, {false, false, false, false}}});
  refused({"keeps none of its 4 ranks"});
  with_pattern(nullptr);
  refused({"lora_A is [2, 9], expected [4, 9]", "init_r = 4 (no rank_pattern entry)"});
  // PEFT's in-memory form with the adapter name is accepted.
  with_pattern({{key + ".default", {true, false, true, false}}});
  EXPECT_NO_THROW(load_adapter(dir.path(), base.model, ctx, {.verify_config_hash = false}));
}

TEST_F(AdaLoraCheckpoint, RefusesInconsistentConfigs) {
  save_pruned();
  const json saved = config();
  auto with = [&](const char* key, json value) {
    json c = saved;
    c[key] = std::move(value);
    set_config(c);
  };
  with("tinit", 8);
  refused({"tinit (8) must be below total_step - tfinal (10 - 2)"});
  with("beta1", 1.0);
  refused({"beta1 must be in (0, 1)"});
  with("init_r", 0);
  refused({"init_r must be an integer >= 1"});
  with("deltaT", 0);
  refused({"deltaT must be an integer >= 1"});
  with("use_dora", true);
  refused({"use_dora = true is not supported by peft-cpp's AdaLoRA"});
  with("bias", "all");
  refused({"bias \"all\" is not supported"});
}

TEST_F(AdaLoraCheckpoint, RefusesHostileTensors) {
  save_pruned();
  const std::string e_key = tensor_key(kModules[0], "lora_E");
  edit_weights([&](SafetensorsWriter& w, const SafetensorsTensorInfo& t) {
    if (t.name != e_key) return false;
    Matrix<double, Cpu> e(2, 1);
    e.view()(0, 0) = 1.0;
    e.view()(1, 0) = std::numeric_limits<double>::quiet_NaN();
    w.add(t.name, e.view());
    return true;
  });
  refused({"lora_E holds a non-finite value at element 1"});

  save_pruned();
  edit_weights([&](SafetensorsWriter& w, const SafetensorsTensorInfo& t) {
    if (t.name != e_key) return false;
    w.add(t.name, Matrix<double, Cpu>(1, 2).view());
    return true;
  });
  refused({"lora_E is [1, 2], expected [2, 1]"});

  for (double ranknum : {3.0, 4.0}) {
    save_pruned();
    edit_weights([&](SafetensorsWriter& w, const SafetensorsTensorInfo& t) {
      if (t.name != e_key) return false;
      Matrix<double, Cpu> r(1, 1);
      r.view()(0, 0) = ranknum;
      w.add(tensor_key(kModules[0], "ranknum"), as_const(r.view()), std::nullopt,
            std::vector<index_t>{1});
      return false;
    });
    if (ranknum == 4.0)
      EXPECT_NO_THROW(load_adapter(dir.path(), base.model, ctx)) << "ranknum = init_r is fine";
    else
      refused({"ranknum is 3, expected init_r = 4"});
  }

  save_pruned();
  edit_weights([&](SafetensorsWriter& w, const SafetensorsTensorInfo& t) {
    w.add(t.name + ".weight", SafetensorsReader::open(dir / "adapter_model.safetensors")
                                  .read_matrix<double>(t.name)
                                  .view());
    return true;
  });
  refused({"which is not base_model.model.<module>.lora_A, .lora_E, .lora_B or .ranknum"});
}

// ---- the allocator's state ---------------------------------------------------------------

constexpr RankAllocatorOptions kRun{.target_r = 2, .tinit = 2, .tfinal = 3, .total_step = 12};

/// One training step of every layer (fixed inputs per step), plain SGD (no optimizer state),
/// then PEFT's order: update_and_allocate after the step, before zero_grad.
void train_step(HostCtx& ctx, AdapterSet<double, Cpu>& set, RankAllocator<double, Cpu>& allocator,
                std::int64_t step) {
  std::uint32_t seed = 1000 + 10 * std::uint32_t(step);
  for (const auto& module : kModules) {
    Layer& l = layer_of(set, module);
    const auto x = random_matrix<double>(4, l.in_features(), seed++);
    const auto dy = random_matrix<double>(4, l.out_features(), seed++);
    Matrix<double, Cpu> y(4, l.out_features());
    l.forward(ctx, x.view(), y.view());
    l.backward(ctx, x.view(), dy.view(), MatrixView<double, Cpu>());
    l.prepare_gradients(ctx);
    for (auto& p : l.parameters())
      for (index_t i = 0; i < p.value.size(); ++i) p.value.data()[i] -= 0.05 * p.grad.data()[i];
    l.parameters_updated(ctx);
  }
  allocator.update_and_allocate(ctx, step);
  set.zero_grad(ctx);
}

RankAllocator<double, Cpu> allocator_for(HostCtx& ctx, AdapterSet<double, Cpu>& set) {
  RankAllocator<double, Cpu> a(kRun);
  for (const auto& module : kModules) a.add(ctx, layer_of(set, module), module);
  return a;
}

// Train 12 steps straight, or 6, save (every rank + the allocator's state), load into new
// layers and a new allocator, and 6 more: the same masks at every step and the same E, A, B.
TEST(AdaLoraAllocatorState, ResumingGivesTheSameMasksAsNotStopping) {
  HostCtx ctx;
  Base base;
  auto straight = make_set(ctx, base);
  auto first = make_set(ctx, base);
  auto a = allocator_for(ctx, straight);
  auto b = allocator_for(ctx, first);
  std::vector<AdaLoraRankPattern> patterns;
  // The EMAs after step 7 (before the freeze at 9 resets them), a copy.
  std::vector<Matrix<double, Cpu>> emas_at_7;
  const auto emas = [&](RankAllocator<double, Cpu>& alloc) {
    std::vector<Matrix<double, Cpu>> out;
    for (auto& [name, view] : alloc.state(ctx)) out.push_back(detail::host_copy(ctx, view));
    return out;
  };
  for (std::int64_t step = 0; step < 12; ++step) {
    train_step(ctx, straight, a, step);
    patterns.push_back(a.rank_pattern(ctx));
    if (step == 7) emas_at_7 = emas(a);
  }
  for (std::int64_t step = 0; step < 6; ++step) train_step(ctx, first, b, step);
  TempDir dir;
  save_adapter(dir.path(), first, ctx, {}, AdaLoraSaveOptions{.allocator = b.options()});
  save_allocator_state(dir.path(), b, ctx);

  auto resumed = load_adapter(dir.path(), base.model, ctx, {.training = true});
  auto c = allocator_for(ctx, resumed);
  const std::int64_t start = load_allocator_state(dir.path(), c, ctx);
  EXPECT_EQ(start, 6);
  // Without the state (PEFT's resume): the EMAs restart at zero.
  auto again = load_adapter(dir.path(), base.model, ctx, {.training = true});
  auto d = allocator_for(ctx, again);
  bool peft_resume_differs = false;
  for (std::int64_t step = start; step < 12; ++step) {
    train_step(ctx, resumed, c, step);
    train_step(ctx, again, d, step);
    EXPECT_EQ(c.rank_pattern(ctx), patterns[std::size_t(step)]) << "step " << step;
    if (step != 7) continue;
    const auto ours = emas(c), peft_like = emas(d);
    for (std::size_t i = 0; i < ours.size(); ++i) {
      EXPECT_TRUE(bitwise_equal(as_const(ours[i].view()), as_const(emas_at_7[i].view()))) << i;
      peft_resume_differs = peft_resume_differs || !bitwise_equal(as_const(peft_like[i].view()),
                                                                  as_const(emas_at_7[i].view()));
    }
  }
  EXPECT_TRUE(c.pattern_final());
  for (const auto& module : kModules)
    for (std::size_t k = 0; k < 3; ++k)
      EXPECT_TRUE(bitwise_equal(as_const(layer_of(straight, module).parameters()[k].value),
                                as_const(layer_of(resumed, module).parameters()[k].value)))
          << module << " parameter " << k;
  EXPECT_TRUE(peft_resume_differs) << "restarted EMAs (PEFT's resume) are not the same run";
}

struct AdaLoraStateFile : ::testing::Test {
  HostCtx ctx;
  Base base;
  TempDir dir;
  AdapterSet<double, Cpu> set = make_set(ctx, base);

  AdaLoraStateFile() {
    auto a = allocator_for(ctx, set);
    for (std::int64_t step = 0; step < 4; ++step) train_step(ctx, set, a, step);
    save_allocator_state(dir.path(), a, ctx);
  }
  fs::path file() const { return dir / kAdaLoraAllocatorName; }
  template <class F>
  void edit(F f) {
    const auto r = SafetensorsReader::open(file());
    SafetensorsWriter w;
    for (const auto& [k, v] : r.metadata()) w.set_metadata(k, v);
    for (const auto& t : r.tensors()) {
      auto m = r.read_matrix<double>(t.name);
      if (f(w, t.name, m)) w.add(t.name, m.view());
    }
    w.write(file());
  }
  void refused(std::initializer_list<std::string> needles,
               const RankAllocatorOptions& options = kRun) {
    RankAllocator<double, Cpu> a(options);
    for (const auto& module : kModules) a.add(ctx, layer_of(set, module), module);
    auto before = a.state(ctx);
    std::vector<Matrix<double, Cpu>> copies;
    for (auto& [name, v] : before) copies.push_back(detail::host_copy(ctx, v));
    expect_error([&] { load_allocator_state(dir.path(), a, ctx); }, ErrorKind::io, needles);
    for (std::size_t i = 0; i < before.size(); ++i)
      EXPECT_TRUE(bitwise_equal(as_const(copies[i].view()), as_const(before[i].second)))
          << "nothing written on a refusal";
    EXPECT_EQ(a.last_step(), -1);
  }
};

TEST_F(AdaLoraStateFile, RefusesAnotherScheduleOrOtherLayers) {
  auto other = kRun;
  other.total_step = 13;
  refused({"saved with the allocator options", "a run resumes with its own schedule"}, other);
  RankAllocator<double, Cpu> swapped(kRun);
  swapped.add(ctx, layer_of(set, kModules[1]), kModules[1]);
  swapped.add(ctx, layer_of(set, kModules[0]), kModules[0]);
  expect_error([&] { load_allocator_state(dir.path(), swapped, ctx); }, ErrorKind::io,
               {"saved for the layers (name, rank)", "in the same order"});
}

TEST_F(AdaLoraStateFile, RefusesValuesAnAllocatorCannotHold) {
  const std::string sens = kModules[0] + ".lora_A.sensitivity";
  edit([&](SafetensorsWriter&, const std::string& name, Matrix<double, Cpu>& m) {
    if (name == sens) m.data()[3] = -1.0;
    return true;
  });
  refused({"'" + sens + "' holds -1 at element 3", "finite value >= 0"});
  edit([&](SafetensorsWriter&, const std::string& name, Matrix<double, Cpu>& m) {
    if (name == sens) m.data()[3] = std::numeric_limits<double>::infinity();
    if (name == "rank_mask") m.data()[1] = 0.5;
    return true;
  });
  refused({"holds inf at element 3"});
  edit([&](SafetensorsWriter&, const std::string& name, Matrix<double, Cpu>& m) {
    if (name == sens) m.data()[3] = 0.0;
    return true;
  });
  refused({"'rank_mask' holds 0.5 at element 1, expected 0 or 1"});
  edit([&](SafetensorsWriter& w, const std::string& name, Matrix<double, Cpu>& m) {
    if (name != "rank_mask") return true;
    w.add(name, Matrix<double, Cpu>(1, m.cols() - 1).view());
    return false;
  });
  refused({"'rank_mask' is [1, 7], expected [1, 8]"});
  edit([&](SafetensorsWriter&, const std::string& name, Matrix<double, Cpu>&) {
    return name != sens;
  });
  refused({"it holds 12 tensors, the allocator's state has 13"});
}

TEST_F(AdaLoraStateFile, RefusesBrokenMetadataAndAFinalMaskOffBudget) {
  auto with_meta = [&](const std::string& text) {
    const auto r = SafetensorsReader::open(file());
    SafetensorsWriter w;
    if (!text.empty()) w.set_metadata(kAdaLoraAllocatorKey, text);
    for (const auto& t : r.tensors()) w.add(t.name, r.read_matrix<double>(t.name).view());
    w.write(file());
  };
  const auto r = SafetensorsReader::open(file());
  json meta = json::parse(r.metadata().at(kAdaLoraAllocatorKey));
  json final_meta = meta;
  final_meta["pattern_final"] = true;  // the mask of step 3 keeps more than the final budget
  with_meta(final_meta.dump());
  refused({"the final rank_mask keeps", "the final budget is 4"});
  meta["version"] = 2;
  with_meta(meta.dump());
  refused({"version 2 is not supported"});
  with_meta("{not json");
  refused({"is not a JSON object"});
  with_meta("");
  refused({"no peft_cpp_adalora_allocator metadata"});
}

}  // namespace
}  // namespace peft::test
