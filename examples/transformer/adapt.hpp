#pragma once
// One adaptation run: the method's layers on the frozen base, trained on the held-out
// category, evaluated, saved in PEFT format, loaded back over the same frozen weights (the
// reloaded model must give the same validation loss), and sampled.

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "memory.hpp"
#include "methods.hpp"
#include "sample.hpp"
#include "train_loop.hpp"

namespace tfm {

struct MethodResult {
  std::string name;
  index_t trainable = 0;
  double before = 0, after = 0;
  double reloaded = std::numeric_limits<double>::quiet_NaN();  // NaN: not saved
  double ms_per_step = 0;
  double peak_rss_mib = 0;
};

struct AdaptRun {
  LoopOptions loop;
  std::filesystem::path adapters;  // <adapters>/<method>/ gets each checkpoint
  index_t sample_count = 3, sample_length = 100;
};

template <class T>
MethodResult adapt(Ctx& ctx, Transformer<T>& model, Activations<T>& act, Method<T>& method,
                   const std::string& name, const std::vector<int>& train,
                   const std::vector<Batch>& validation, double before, const AdaptRun& run) {
  MethodResult r{.name = name, .trainable = method.num_trainable(), .before = before};
  LoopOptions loop = run.loop;
  loop.label = name.c_str();
  reset_peak_rss();
  method.set_training(true);
  r.ms_per_step = train_loop(ctx, model, act, train, loop, method).ms_per_step;
  method.set_training(false);
  r.after = validation_loss(ctx, model, act, validation);
  r.peak_rss_mib = peak_rss_mib();

  // Save, load into a fresh set over the same frozen weights, evaluate that one.
  if (peft::AdapterSet<T, Cpu>* set = method.set()) {
    const std::filesystem::path dir = run.adapters / name;
    peft::save_adapter(dir, *set, ctx);
    peft::AdapterSet<T, Cpu> loaded = peft::load_adapter(dir, base_layers(model), ctx);
    attach(model, loaded);
    r.reloaded = validation_loss(ctx, model, act, validation);
    attach(model, *set);
    if (!(std::abs(r.reloaded - r.after) <= 1e-6 * std::abs(r.after)))
      throw std::runtime_error(name + ": the adapter reloaded from " + dir.string() +
                               " gives validation loss " + std::to_string(r.reloaded) +
                               ", the trained one " + std::to_string(r.after));
  }
  if (run.sample_count > 0)
    print_samples(
        ("  " + name + " samples:").c_str(),
        sample(ctx, model, act, "%\n", run.sample_count, run.sample_length, 0.8, run.loop.seed), 2);
  detach(model);
  return r;
}

}  // namespace tfm
