// AdapterSet: layers of every listed type built by add<Method>, insertion order, stream ids
// from module names, qualified parameter names, the whole-set operations (zero_grad, training
// mode, merge/unmerge) and an optimizer over it.

#include <gtest/gtest.h>

#include <type_traits>
#include <variant>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

using FLora = Lora<float, Cpu>;
using FRosa = Rosa<float, Cpu>;

struct TinyModel {
  std::vector<std::string> names = {"model.layers.0.self_attn.q_proj",
                                    "model.layers.0.self_attn.v_proj", "lm_head"};
  std::vector<Matrix<float, Cpu>> weights;
  std::vector<Matrix<float, Cpu>> biases;
  BaseModel<float, Cpu> base;
  WeightMap<float, Cpu> mutable_weights;

  TinyModel() {
    const index_t shapes[3][2] = {{6, 5}, {4, 5}, {7, 6}};
    for (std::size_t i = 0; i < names.size(); ++i) {
      weights.push_back(random_matrix<float>(shapes[i][0], shapes[i][1], 10 + std::uint32_t(i)));
      biases.push_back(random_matrix<float>(1, shapes[i][0], 20 + std::uint32_t(i)));
    }
    for (std::size_t i = 0; i < names.size(); ++i) {
      base[names[i]] = {weights[i].view(),
                        VectorView<const float, Cpu>(biases[i].data(), biases[i].cols())};
      mutable_weights[names[i]] = weights[i].view();
    }
  }
};

AdapterSet<float, Cpu> make_set(HostCtx& ctx, TinyModel& model) {
  AdapterSet<float, Cpu> set;
  for (std::size_t i = 0; i < model.names.size(); ++i)
    set.add_lora(ctx, model.names[i], model.base.at(model.names[i]),
                 {.r = index_t(2 + i), .alpha = 4, .init = LoraInit::none, .seed = 9});
  return set;
}

TEST(AdapterSet, Fnv1aIsTheStreamId) {
  EXPECT_EQ(fnv1a32(""), 0x811c9dc5u);
  EXPECT_EQ(fnv1a32("a"), 0xe40c292cu);
  EXPECT_EQ(fnv1a32("foobar"), 0xbf9cf968u);
  static_assert(module_stream_id("a") == 0xe40c292cu);

  HostCtx ctx;
  TinyModel model;
  auto set = make_set(ctx, model);
  for (const auto& name : model.names)
    EXPECT_EQ(set.get<FLora>(name).options().stream_id, fnv1a32(name));
  // Same seed, different modules: different factors (streams differ).
  const auto& q = set.get<FLora>(model.names[0]);
  const auto& v = set.get<FLora>(model.names[1]);
  EXPECT_NE(const_cast<FLora&>(q).parameters()[0].value.data()[0],
            const_cast<FLora&>(v).parameters()[0].value.data()[0]);
}

TEST(AdapterSet, KeepsInsertionOrderAndQualifiesNames) {
  HostCtx ctx;
  TinyModel model;
  auto set = make_set(ctx, model);
  EXPECT_EQ(set.size(), 3u);
  EXPECT_EQ(set.modules(), model.names);
  EXPECT_TRUE(set.contains("lm_head"));
  EXPECT_FALSE(set.contains("model.layers.0.self_attn.k_proj"));
  const auto params = set.parameters();
  ASSERT_EQ(params.size(), 6u);
  EXPECT_EQ(params[0].name, "model.layers.0.self_attn.q_proj.lora_A");
  EXPECT_EQ(params[1].name, "model.layers.0.self_attn.q_proj.lora_B");
  EXPECT_EQ(params[5].name, "lm_head.lora_B");
  EXPECT_EQ(params[5].value.rows(), 7);
  EXPECT_EQ(params[5].value.cols(), 4);
  EXPECT_EQ(set.num_trainable(), 2 * (5 + 6) + 3 * (5 + 4) + 4 * (6 + 7));

  std::vector<std::string> visited;
  set.for_each([&](const std::string& name, auto& layer) {
    visited.push_back(name);
    EXPECT_GT(layer.rank(), 0);
  });
  EXPECT_EQ(visited, model.names);
  std::visit([](auto& layer) { EXPECT_EQ(layer.rank(), 4); }, set.at("lm_head"));

  // Layers stay where they are when the set moves (optimizers keep references).
  const void* before = &set.get<FLora>("lm_head");
  AdapterSet<float, Cpu> moved = std::move(set);
  EXPECT_EQ(before, &moved.get<FLora>("lm_head"));
}

TEST(AdapterSet, RefusesBadModules) {
  HostCtx ctx;
  TinyModel model;
  auto set = make_set(ctx, model);
  expect_error([&] { set.add_lora(ctx, "lm_head", model.base.at("lm_head"), {}); },
               ErrorKind::invalid_argument, {"'lm_head' already has an adapter"});
  expect_error([&] { set.add_lora(ctx, "", model.base.at("lm_head"), {}); },
               ErrorKind::invalid_argument, {"empty"});
  expect_error([&] { set.at("nope"); }, ErrorKind::invalid_argument,
               {"no adapter for module 'nope'"});
  Lora<float, Cpu> extra(ctx, model.weights[2].view(), {.r = 1}, {.stream_id = 5});
  auto& added = set.add("extra", std::move(extra));
  EXPECT_EQ(added.options().stream_id, 5u);
  EXPECT_EQ(set.modules().back(), "extra");
}

TEST(AdapterSet, ZeroGradTrainingAndOptimizer) {
  HostCtx ctx;
  TinyModel model;
  auto set = make_set(ctx, model);
  auto& q = set.get<FLora>(model.names[0]);
  auto x = random_matrix<float>(3, 5, 1);
  auto dy = random_matrix<float>(3, 6, 2);
  Matrix<float, Cpu> y(3, 6);
  q.forward(ctx, x.view(), y.view());
  q.backward(ctx, x.view(), dy.view(), MatrixView<float, Cpu>());
  EXPECT_GT(norm(ctx, as_const(q.parameters()[0].grad)), 0.0);

  AdamW<float, Cpu> opt({.lr = 0.1, .weight_decay = 0});
  opt.add(set.parameters(), {}, [&set](HostCtx& c) { set.parameters_updated(c); });
  const auto a_before = converted<float>(as_const(q.parameters()[0].value));
  opt.step(ctx);
  EXPECT_FALSE(bitwise_equal(as_const(a_before.view()), as_const(q.parameters()[0].value)));

  set.zero_grad(ctx);
  for (auto& p : set.parameters()) EXPECT_EQ(norm(ctx, as_const(p.grad)), 0.0) << p.name;
  set.set_training(false);
  set.for_each([](const std::string&, auto& layer) { EXPECT_FALSE(layer.training()); });
  set.set_training(true);
  set.for_each([](const std::string&, auto& layer) { EXPECT_TRUE(layer.training()); });
}

TEST(AdapterSet, MergesAndUnmergesAll) {
  HostCtx ctx;
  TinyModel model;
  auto set = make_set(ctx, model);
  set.set_training(false);
  std::vector<Matrix<float, Cpu>> originals, outputs;
  for (std::size_t i = 0; i < model.names.size(); ++i) {
    originals.push_back(converted<float>(as_const(model.weights[i].view())));
    auto x = random_matrix<float>(4, model.weights[i].cols(), 30 + std::uint32_t(i));
    Matrix<float, Cpu> y(4, model.weights[i].rows());
    set.get<FLora>(model.names[i]).forward(ctx, x.view(), y.view());
    outputs.push_back(std::move(y));
  }
  // A missing module or foreign memory: refused before anything is merged.
  auto missing = model.mutable_weights;
  missing.erase("lm_head");
  expect_error([&] { set.merge(ctx, missing); }, ErrorKind::invalid_argument,
               {"no weight given for module 'lm_head'"});
  Matrix<float, Cpu> other(7, 6);
  auto foreign = model.mutable_weights;
  foreign["lm_head"] = other.view();
  expect_error([&] { set.merge(ctx, foreign); }, ErrorKind::invalid_argument,
               {"'lm_head'", "not the memory"});
  for (std::size_t i = 0; i < model.names.size(); ++i)
    EXPECT_TRUE(bitwise_equal(as_const(model.weights[i].view()), as_const(originals[i].view())));

  auto extra = model.mutable_weights;
  extra["unrelated"] = other.view();  // modules without adapters are ignored
  EXPECT_EQ(set.merge(ctx, extra), 3);
  EXPECT_EQ(set.merge(ctx, extra), 0);  // already merged
  for (std::size_t i = 0; i < model.names.size(); ++i) {
    auto& layer = set.get<FLora>(model.names[i]);
    EXPECT_TRUE(layer.merged());
    auto x = random_matrix<float>(4, model.weights[i].cols(), 30 + std::uint32_t(i));
    Matrix<float, Cpu> y(4, model.weights[i].rows());
    layer.forward(ctx, x.view(), y.view());
    EXPECT_LT(relative_error(as_const(y.view()), as_const(outputs[i].view())), 1e-5);
  }
  EXPECT_EQ(set.unmerge(ctx, model.mutable_weights), 3);
  for (std::size_t i = 0; i < model.names.size(); ++i)
    EXPECT_LT(relative_error(as_const(model.weights[i].view()), as_const(originals[i].view())),
              1e-6);
}

TEST(AdapterSet, HoldsRosaLayers) {
  HostCtx ctx;
  TinyModel model;
  AdapterSet<float, Cpu> set;
  for (std::size_t i = 0; i < model.names.size(); ++i)
    set.add_rosa(ctx, model.names[i], model.base.at(model.names[i]),
                 {.lora = {.r = 2, .init = LoraInit::gaussian, .seed = 9}, .density = 0.25});
  expect_error([&] { set.add_rosa(ctx, "lm_head", model.base.at("lm_head"), {}); },
               ErrorKind::invalid_argument, {"'lm_head' already has an adapter"});
  auto& head = set.get<FRosa>("lm_head");
  EXPECT_EQ(head.options().stream_id, fnv1a32("lm_head"));
  EXPECT_EQ(head.sparse_capacity(), 10);  // int(0.25 * 7 * 6)
  const auto params = set.parameters();
  ASSERT_EQ(params.size(), 9u);
  EXPECT_EQ(params[0].name, model.names[0] + ".lora_A");
  EXPECT_EQ(params[1].name, model.names[0] + ".lora_B");
  EXPECT_EQ(params[2].name, model.names[0] + ".rosa_S");
  EXPECT_EQ(params[8].value.cols(), 10);
  EXPECT_EQ(set.num_trainable(), 2 * (5 + 6) + 7 + 2 * (5 + 4) + 5 + 2 * (6 + 7) + 10);
  EXPECT_THROW(set.get<FLora>("lm_head"), Error);

  // Merging checks every weight first, as for LoRA, and adds s B A + S.
  CsrPattern mask{7, 6, {0, 1, 1, 3, 3, 3, 3, 3}, {4, 0, 5}};
  head.set_mask(ctx, mask);
  head.sparse().values().data()[1] = 0.5f;
  head.parameters()[1].value.data()[0] = 1.0f;  // B[0, 0]: a non-zero low-rank part
  head.parameters_updated(ctx);
  const auto original = converted<float>(as_const(model.weights[2].view()));
  Matrix<float, Cpu> other(7, 6);
  auto foreign = model.mutable_weights;
  foreign["lm_head"] = other.view();
  expect_error([&] { set.merge(ctx, foreign); }, ErrorKind::invalid_argument,
               {"'lm_head'", "not the memory"});
  EXPECT_FALSE(set.get<FRosa>(model.names[0]).merged());
  Matrix<float, Cpu> delta(7, 6);
  head.delta_weight(ctx, delta.view());
  EXPECT_EQ(set.merge(ctx, model.mutable_weights), 3);
  EXPECT_TRUE(head.merged());
  EXPECT_FLOAT_EQ(model.weights[2].view()(2, 0), original.view()(2, 0) + delta.view()(2, 0));
  EXPECT_NE(delta.view()(2, 0), 0.0f);
  EXPECT_EQ(set.unmerge(ctx, model.mutable_weights), 3);
  EXPECT_LT(relative_error(as_const(model.weights[2].view()), as_const(original.view())), 1e-6);
}

TEST(AdapterSet, HoldsEveryListedTypeThroughAdd) {
  // The variant's alternatives are the layers of AdapterFormats, in order.
  static_assert(std::variant_size_v<AnyAdapter<float, Cpu>> == AdapterFormats::size);
  static_assert(std::is_same_v<std::variant_alternative_t<0, AnyAdapter<float, Cpu>>, FLora>);
  static_assert(std::is_same_v<std::variant_alternative_t<1, AnyAdapter<float, Cpu>>, FRosa>);
  static_assert(AdapterFormats::has_layer<FRosa, float, Cpu>);
  static_assert(!AdapterFormats::has_layer<Lora<double, Cpu>, float, Cpu>);

  HostCtx ctx;
  TinyModel model;
  AdapterSet<float, Cpu> set;
  auto& lora = set.add<Lora>(ctx, model.names[0], model.base.at(model.names[0]), {.r = 3});
  auto& rosa = set.add<Rosa>(ctx, model.names[1], model.base.at(model.names[1]),
                             {.lora = {.r = 2}, .density = 0.5});
  EXPECT_EQ(&lora, &set.get<FLora>(model.names[0]));
  EXPECT_EQ(&rosa, &set.get<FRosa>(model.names[1]));
  EXPECT_EQ(lora.rank(), 3);
  EXPECT_EQ(rosa.sparse_capacity(), 10);  // int(0.5 * 4 * 5)
  EXPECT_EQ(rosa.options().stream_id, module_stream_id(model.names[1]));
  EXPECT_EQ(set.at(model.names[0]).index(), 0u);
  EXPECT_EQ(set.at(model.names[1]).index(), 1u);
  expect_error([&] { set.add<Lora>(ctx, model.names[1], model.base.at(model.names[1]), {}); },
               ErrorKind::invalid_argument, {"already has an adapter"});
}

}  // namespace
}  // namespace peft::test
