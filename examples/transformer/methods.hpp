#pragma once
// The adaptation methods, each on the six projections of every layer (q, k, v, o, up, down) of
// the frozen base, at comparable trainable budgets (d = dim, h = hidden):
//   LoRA     r = 4:                          4 (2d) per attention projection, 4 (d + h) per MLP one
//   RoSA     r = 2 plus 2 (in + out) entries of a sparse S per projection: LoRA r = 4's count
//   AdaLoRA  r = 6 pruned to 4 on average (6/4 of LoRA's count trains, 4/6 of it remains)
//   NOLA     r = 8 from 2 x 768 basis coefficients per projection (LoRA r = 4's mean per module)
//   LoRA-XS  a 40 x 40 core per projection (within 5% of LoRA r = 4's count)
// Each method object gives the training loop before_step / zero_grad / update and owns its
// layers and optimizer; the model's projections are attached to its layers while it lives.

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "model.hpp"

namespace tfm {

using Cpu = peft::Cpu;

struct MethodSettings {
  std::uint64_t seed = 42;
  double lr = 2e-3;  // LoRA, RoSA (A, B and S) and AdaLoRA
  index_t lora_r = 4;
  index_t rosa_r = 2;
  index_t rosa_warmup = 0;  // LoRA-only steps before RoSA's masks; 0 = a tenth of the steps
  index_t adalora_init_r = 6;
  index_t adalora_target_r = 4;
  index_t nola_r = 8;
  index_t nola_bases = 768;
  double nola_lr = 2e-2;  // NOLA and LoRA-XS train few coefficients: a larger step
  index_t lora_xs_r = 40;
  double lora_xs_lr = 2e-2;
  index_t steps = 0;  // of the run (AdaLoRA's budget schedule, RoSA's warm-up)
};

// Every method's common face; `set` is the checkpointable AdapterSet (null for AdaLoRA, which
// has no checkpoint format yet).
template <class T>
struct Method {
  virtual ~Method() = default;
  virtual void before_step(Ctx&, index_t) {}
  virtual void zero_grad(Ctx& ctx) = 0;
  virtual void update(Ctx& ctx, index_t step) = 0;
  virtual void set_training(bool training) = 0;
  virtual index_t num_trainable() const = 0;
  virtual peft::AdapterSet<T, Cpu>* set() { return nullptr; }
};

// Routes every projection of the model through the set's layer of the same module name.
template <class T>
void attach(Transformer<T>& model, peft::AdapterSet<T, Cpu>& set) {
  for (auto& [name, proj] : model.named_projections()) proj->attach(set.at(name));
}

template <class T>
void detach(Transformer<T>& model) {
  for (auto& [name, proj] : model.named_projections()) proj->detach();
}

// The frozen projections by module name, as load_adapter takes them.
template <class T>
peft::BaseModel<T, Cpu> base_layers(Transformer<T>& model) {
  peft::BaseModel<T, Cpu> base;
  for (auto& [name, proj] : model.named_projections()) base.emplace(name, proj->weight());
  return base;
}

// LoRA, NOLA and LoRA-XS: an AdapterSet of method M, each layer in the optimizer (which pulls
// NOLA's and LoRA-XS's gradients back to their coefficients before each step).
template <class T, template <class, class> class M>
struct SetMethod : Method<T> {
  peft::AdapterSet<T, Cpu> layers;
  peft::AdamW<T, Cpu> optimizer;

  template <class MakeConfig>
  SetMethod(Ctx& ctx, Transformer<T>& model, double lr, MakeConfig&& config)
      : optimizer({.lr = lr, .weight_decay = 0.0}) {
    for (auto& [name, proj] : model.named_projections())
      optimizer.add(layers.template add<M>(ctx, name, proj->weight(),
                                           config(proj->weight().cols(), proj->weight().rows())));
    attach(model, layers);
  }
  void zero_grad(Ctx& ctx) override { layers.zero_grad(ctx); }
  void update(Ctx& ctx, index_t) override { optimizer.step(ctx); }
  void set_training(bool training) override { layers.set_training(training); }
  index_t num_trainable() const override { return layers.num_trainable(); }
  peft::AdapterSet<T, Cpu>* set() override { return &layers; }
};

template <class T>
std::unique_ptr<Method<T>> make_lora(Ctx& ctx, Transformer<T>& model, const MethodSettings& s) {
  const peft::LoraConfig config{.r = s.lora_r, .alpha = 2.0 * double(s.lora_r), .seed = s.seed};
  return std::make_unique<SetMethod<T, peft::Lora>>(ctx, model, s.lr,
                                                    [&](index_t, index_t) { return config; });
}

template <class T>
std::unique_ptr<Method<T>> make_nola(Ctx& ctx, Transformer<T>& model, const MethodSettings& s) {
  const peft::NolaConfig config{.r = s.nola_r,
                                .alpha = 2.0 * double(s.nola_r),
                                .num_basis_a = s.nola_bases,
                                .num_basis_b = s.nola_bases,
                                .seed = s.seed};
  return std::make_unique<SetMethod<T, peft::Nola>>(ctx, model, s.nola_lr,
                                                    [&](index_t, index_t) { return config; });
}

template <class T>
std::unique_ptr<Method<T>> make_lora_xs(Ctx& ctx, Transformer<T>& model, const MethodSettings& s) {
  const peft::LoraXsConfig config{.r = s.lora_xs_r, .alpha = 16, .seed = s.seed};
  return std::make_unique<SetMethod<T, peft::LoraXs>>(ctx, model, s.lora_xs_lr,
                                                      [&](index_t, index_t) { return config; });
}

// RoSA: LoRA alone for the warm-up steps; during the next step a RosaMaskBuilder collects the
// gradients of every W0, after it the masks are the largest entries; then A, B and S train.
template <class T>
struct RosaMethod : Method<T> {
  peft::AdapterSet<T, Cpu> layers;
  peft::AdamW<T, Cpu> optimizer;
  peft::RosaMaskBuilder<T, Cpu> builder;
  peft::RosaSchedule schedule;
  std::vector<std::size_t> sparse_groups;

  RosaMethod(Ctx& ctx, Transformer<T>& model, const MethodSettings& s)
      : optimizer({.lr = s.lr, .weight_decay = 0.0}),
        schedule{.mask_warmup_steps =
                     s.rosa_warmup > 0 ? s.rosa_warmup : std::max<index_t>(1, s.steps / 10)} {
    for (auto& [name, proj] : model.named_projections()) {
      const index_t out = proj->weight().rows(), in = proj->weight().cols();
      const index_t entries = (s.lora_r - s.rosa_r) * (in + out);  // LoRA's extra rank
      const peft::RosaConfig config{
          .lora = {.r = s.rosa_r, .alpha = 2.0 * double(s.rosa_r), .seed = s.seed},
          .density = peft::RosaConfig::density_for(entries, out, in)};
      auto& layer = layers.template add<peft::Rosa>(ctx, name, proj->weight(), config);
      optimizer.add(layer, {.names = {"lora_A", "lora_B"}});
      sparse_groups.push_back(optimizer.add(layer, {.names = {"rosa_S"}}));
      builder.add(layer);
    }
    attach(model, layers);
  }
  void before_step(Ctx& ctx, index_t step) override {
    if (schedule.phase(step) == peft::RosaSchedule::Phase::collect_gradients) builder.start(ctx);
  }
  void zero_grad(Ctx& ctx) override { layers.zero_grad(ctx); }
  void update(Ctx& ctx, index_t) override {
    optimizer.step(ctx);
    if (!builder.collecting()) return;
    builder.finish(ctx);  // every layer's mask; S starts at zero, its moments too
    for (std::size_t g : sparse_groups) optimizer.reset_state(ctx, g);
  }
  void set_training(bool training) override { layers.set_training(training); }
  index_t num_trainable() const override { return layers.num_trainable(); }
  peft::AdapterSet<T, Cpu>* set() override { return &layers; }
};

// AdaLoRA: after every update the RankAllocator scores each rank and zeroes E where the
// falling budget has no room; the orthogonal regulariser's gradient joins before the update.
template <class T>
struct AdaLoraMethod : Method<T> {
  std::vector<std::unique_ptr<peft::AdaLora<T, Cpu>>> layers;
  std::vector<peft::AdaLora<T, Cpu>*> pointers;
  peft::AdamW<T, Cpu> optimizer;
  peft::RankAllocator<T, Cpu> allocator;

  AdaLoraMethod(Ctx& ctx, Transformer<T>& model, const MethodSettings& s)
      : optimizer({.lr = s.lr, .weight_decay = 0.0}),
        allocator({.target_r = s.adalora_target_r,
                   .tinit = s.steps / 10,
                   .tfinal = s.steps / 10,
                   .delta_t = std::max<index_t>(1, s.steps / 50),
                   .total_step = s.steps}) {
    const peft::AdaLoraConfig config{
        .init_r = s.adalora_init_r, .alpha = 2.0 * double(s.adalora_init_r), .seed = s.seed};
    for (auto& [name, proj] : model.named_projections()) {
      layers.push_back(std::make_unique<peft::AdaLora<T, Cpu>>(
          ctx, proj->weight(), config,
          peft::LayerOptions{.stream_id = peft::module_stream_id(name)}));
      pointers.push_back(layers.back().get());
      optimizer.add(*layers.back());
      allocator.add(ctx, *layers.back(), name);
      proj->attach(*layers.back());
    }
  }
  void zero_grad(Ctx& ctx) override {
    for (auto* l : pointers) l->zero_grad(ctx);
  }
  void update(Ctx& ctx, index_t step) override {
    peft::add_orthogonal_regularization(ctx, pointers, 0.5);  // PEFT's orth_reg_weight
    optimizer.step(ctx);
    allocator.update_and_allocate(ctx, step);
  }
  void set_training(bool training) override {
    for (auto* l : pointers) l->set_training(training);
  }
  index_t num_trainable() const override {
    index_t n = 0;
    for (auto* l : pointers) n += l->num_trainable();
    return n;
  }
};

}  // namespace tfm
