// AdaLoRA made by Hugging Face PEFT itself (tests/data/peft_adalora, from make_golden.py): an
// adapter PEFT trained with update_and_allocate until its rank pattern was final, pruned by
// save_pretrained, loads with each module's kept ranks and reproduces PEFT's outputs and delta
// weights; saved again and reloaded it changes nothing. And PEFT's RankAllocator on recorded
// values and gradients: ours makes the same EMAs and the same masks.
//
// With PEFT_TEST_EXPORT_DIR set, the re-saved adapter is also written to
// $PEFT_TEST_EXPORT_DIR/adalora, for `make_golden.py verify DIR adalora` to load it with PEFT.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

using FAda = AdaLora<float, Cpu>;

std::vector<std::string> modules_of(const SafetensorsReader& r) {
  std::vector<std::string> out;
  std::stringstream list(r.metadata().at("modules"));
  for (std::string m; std::getline(list, m, ',');) out.push_back(m);
  return out;
}

struct Case {
  fs::path dir = data_dir() / "peft_adalora";
  SafetensorsReader io = SafetensorsReader::open(dir / "io.safetensors");
  std::vector<std::string> modules = modules_of(io);
  std::map<std::string, Matrix<float, Cpu>> weights, biases;
  BaseModel<float, Cpu> base;

  Case() {
    const auto r = SafetensorsReader::open(dir / "base.safetensors");
    for (const auto& m : modules) {
      weights.emplace(m, r.read_matrix<float>(m + ".weight"));
      if (r.contains(m + ".bias")) biases.emplace(m, r.read_matrix<float>(m + ".bias"));
    }
    for (const auto& m : modules) {
      BaseLinear<float, Cpu> layer(as_const(weights.at(m).view()));
      if (biases.count(m))
        layer.bias = VectorView<const float, Cpu>(biases.at(m).data(), biases.at(m).size());
      base.emplace(m, layer);
    }
  }

  /// Every module against PEFT's numbers.
  void check(HostCtx& ctx, AdapterSet<float, Cpu>& set, bool exact_factors) const {
    ASSERT_EQ(set.modules().size(), modules.size());
    std::set<index_t> ranks;
    for (const auto& m : modules) {
      SCOPED_TRACE(m);
      auto& layer = set.get<FAda>(m);
      const auto a = io.read_matrix<float>(m + ".lora_A");
      ranks.insert(a.rows());
      EXPECT_EQ(layer.rank(), a.rows()) << "the kept ranks of PEFT's rank_pattern";
      EXPECT_EQ(layer.ranknum(), io.read_matrix<double>(m + ".ranknum").data()[0]);
      const double alpha = io.read_matrix<double>(m + ".scaling").data()[0];
      EXPECT_EQ(layer.scaling(), alpha / (layer.ranknum() + 1e-5));
      if (exact_factors) {
        auto p = layer.parameters();
        const char* keys[3] = {".lora_A", ".lora_E", ".lora_B"};
        for (std::size_t k = 0; k < 3; ++k)
          EXPECT_TRUE(bitwise_equal(as_const(p[k].value),
                                    as_const(io.read_matrix<float>(m + keys[k]).view())))
              << keys[k];
      }
      const auto x = io.read_matrix<float>(m + ".x");
      const auto y_ref = io.read_matrix<float>(m + ".y");
      Matrix<float, Cpu> y(x.rows(), layer.out_features());
      layer.forward(ctx, x.view(), y.view());
      EXPECT_LT(relative_error(as_const(y.view()), as_const(y_ref.view())), 1e-6);
      const auto delta_ref = io.read_matrix<float>(m + ".delta");
      Matrix<float, Cpu> delta(delta_ref.rows(), delta_ref.cols());
      layer.delta_weight(ctx, delta.view());
      EXPECT_LT(relative_error(as_const(delta.view()), as_const(delta_ref.view())), 1e-6);
    }
    EXPECT_GE(ranks.size(), 3u) << "the modules keep different numbers of ranks";
  }
};

TEST(PeftAdaLoraGolden, PrunedAdapterReproducesPeft) {
  HostCtx ctx;
  Case c;
  for (auto access : {SafetensorsAccess::mmap, SafetensorsAccess::stream}) {
    auto set = load_adapter(c.dir / "adapter", c.base, ctx, {.access = access});
    c.check(ctx, set, true);
  }
}

TEST(PeftAdaLoraGolden, ResavedAdapterLoadsIdentically) {
  HostCtx ctx;
  Case c;
  auto original = load_adapter(c.dir / "adapter", c.base, ctx);
  TempDir dir;
  save_adapter(dir.path(), original, ctx);
  if (const char* export_dir = std::getenv("PEFT_TEST_EXPORT_DIR"))
    save_adapter(fs::path(export_dir) / "adalora", original, ctx);
  auto again = load_adapter(dir.path(), c.base, ctx);
  c.check(ctx, again, true);
}

// PEFT's RankAllocator and ours on the same values and gradients, step by step: the same EMAs
// (to float rounding) and the same E after masking (kept entries untouched, pruned ones zero).
TEST(PeftAdaLoraGolden, RankAllocatorMakesPeftsMasks) {
  HostCtx ctx;
  const auto r = SafetensorsReader::open(data_dir() / "peft_adalora" / "allocator.safetensors");
  const auto modules = modules_of(r);
  // make_golden.py's ALLOCATOR_CONFIG.
  const RankAllocatorOptions options{.target_r = 2,
                                     .tinit = 1,
                                     .tfinal = 2,
                                     .delta_t = 2,
                                     .beta1 = 0.7,
                                     .beta2 = 0.8,
                                     .total_step = 9};
  std::vector<Matrix<float, Cpu>> weights;
  for (const auto& m : modules) {
    const auto a = r.read_matrix<float>("0." + m + ".lora_A.value");
    const auto b = r.read_matrix<float>("0." + m + ".lora_B.value");
    weights.emplace_back(b.rows(), a.cols());
  }
  std::vector<FAda> layers;
  for (auto& w : weights) layers.emplace_back(ctx, as_const(w.view()), AdaLoraConfig{.init_r = 4});
  RankAllocator<float, Cpu> allocator(options);
  for (std::size_t i = 0; i < layers.size(); ++i) allocator.add(ctx, layers[i], modules[i]);

  const char* keys[3] = {"lora_A", "lora_E", "lora_B"};
  index_t masked_steps = 0;
  for (std::int64_t step = 0; step < options.total_step; ++step) {
    SCOPED_TRACE(step);
    const std::string s = std::to_string(step) + ".";
    for (std::size_t i = 0; i < layers.size(); ++i) {
      layers[i].zero_grad(ctx);
      auto p = layers[i].parameters();
      for (std::size_t k = 0; k < 3; ++k) {
        r.read_into(s + modules[i] + "." + keys[k] + ".value", p[k].value);
        r.read_into(s + modules[i] + "." + keys[k] + ".grad", p[k].grad);
      }
      layers[i].parameters_updated(ctx);
    }
    allocator.update_and_allocate(ctx, step);
    auto state = allocator.state(ctx);
    bool pruned_any = false;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      SCOPED_TRACE(modules[i]);
      const auto e = as_const(layers[i].parameters()[1].value);
      const auto e_ref = r.read_matrix<float>(s + modules[i] + ".lora_E.after");
      for (index_t j = 0; j < e.rows(); ++j) {
        EXPECT_EQ(e(j, 0), e_ref.view()(j, 0)) << "rank " << j;
        pruned_any = pruned_any || e_ref.view()(j, 0) == 0.0f;
      }
      for (std::size_t k = 0; k < 3; ++k) {
        const std::string key = s + modules[i] + "." + keys[k];
        if (!r.contains(key + ".sensitivity")) continue;  // PEFT resets them when it freezes
        for (const char* what : {"sensitivity", "uncertainty"}) {
          const auto ref = r.read_matrix<float>(key + "." + what);
          const std::string name = modules[i] + "." + keys[k] + "." + what;
          const auto it = std::find_if(state.begin(), state.end(),
                                       [&](const auto& kv) { return kv.first == name; });
          ASSERT_NE(it, state.end());
          EXPECT_LT(relative_error(as_const(it->second), as_const(ref.view())), 1e-6) << name;
        }
      }
    }
    masked_steps += pruned_any ? 1 : 0;
  }
  EXPECT_GE(masked_steps, 4) << "steps 2, 4, 6 (deltaT 2), the freeze at 7 and 8";
  EXPECT_TRUE(allocator.pattern_final());
}

}  // namespace
}  // namespace peft::test
