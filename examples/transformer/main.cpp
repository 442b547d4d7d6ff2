// transformer_demo: a user's own trainer for a small decoder-only character-level transformer
// (model.hpp and the files it includes: embedding, layer norm, attention, GELU, written here
// over peft-cpp's views and gemm), pre-trained on the quotations of the Debian package
// `fortunes`, then frozen and adapted to a held-out category (startrek) with every method of
// peft-cpp on the six projections of each layer. Prints one table (method, trainable
// parameters, validation loss before/after and after reloading the saved adapter, time per
// step, peak resident memory) and lines sampled from the base and from each adapted model.
//
// Usage: transformer_demo [--quiet] [--tiny] [--methods LoRA,RoSA,...]; see --help.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "adapt.hpp"
#include "base_checkpoint.hpp"
#include "comparison.hpp"
#include "options.hpp"
#include "pretrain.hpp"

namespace {

using namespace tfm;
namespace fs = std::filesystem;

// Every category of the package but the target and the ASCII-art ones.
std::vector<std::string> pretraining_categories(const Options& o) {
  const std::vector<std::string> skip = {o.target, "art", "ascii-art", "translate-me"};
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(o.data, error)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name.find('.') == std::string::npos &&
        std::find(skip.begin(), skip.end(), name) == skip.end())
      names.push_back(name);
  }
  if (error || names.empty())
    throw std::runtime_error("no fortune files in " + o.data +
                             ": the example needs the Debian package 'fortunes' (apt-get "
                             "install fortunes; scripts/demo transformer installs it)");
  std::sort(names.begin(), names.end());
  return names;
}

std::unique_ptr<Method<float>> make_method(const std::string& name, Ctx& ctx,
                                           Transformer<float>& model, const MethodSettings& s) {
  if (name == "LoRA") return make_lora(ctx, model, s);
  if (name == "RoSA") return std::make_unique<RosaMethod<float>>(ctx, model, s);
  if (name == "AdaLoRA") return std::make_unique<AdaLoraMethod<float>>(ctx, model, s);
  if (name == "NOLA") return make_nola(ctx, model, s);
  return make_lora_xs(ctx, model, s);
}

void print_table(const std::vector<MethodResult>& results, const Options& o) {
  std::printf("\nAdapting to '%s': %lld steps of %lld x %lld characters, %d thread%s\n",
              o.target.c_str(), static_cast<long long>(o.steps), static_cast<long long>(o.batch),
              static_cast<long long>(o.model.context), o.threads, o.threads > 1 ? "s" : "");
  std::printf("  %-8s %10s %12s %12s %12s %12s %14s\n", "method", "trainable", "val before",
              "val after", "reloaded", "ms / step", "peak RSS MiB");
  for (const MethodResult& r : results) {
    char reloaded[32] = "(no format)";
    if (r.reloaded == r.reloaded) std::snprintf(reloaded, sizeof reloaded, "%.4f", r.reloaded);
    std::printf("  %-8s %10lld %12.4f %12.4f %12s %12.1f %14.0f\n", r.name.c_str(),
                static_cast<long long>(r.trainable), r.before, r.after, reloaded, r.ms_per_step,
                r.peak_rss_mib);
  }
}

int run(const Options& o) {
  const auto start = std::chrono::steady_clock::now();
  Ctx ctx(peft::CpuContextOptions{.threads = o.threads});
  const std::vector<std::string> categories = pretraining_categories(o);
  const Text general = read_categories(o.data, categories);
  const Text target = read_categories(o.data, {o.target});
  std::printf(
      "Text: %zu categories of fortunes, %zu characters to pre-train on; '%s': %zu to "
      "adapt on, %zu to validate\n",
      categories.size(), general.train.size(), o.target.c_str(), target.train.size(),
      target.validation.size());

  Transformer<float> model(o.model, o.methods.seed);
  Activations<float> act(o.model, std::max(o.batch, o.sample_count));
  std::string text_id;
  for (const auto& c : categories) text_id += c + " ";
  const auto metadata = base_metadata(o.model, o.methods.seed, o.pretrain_steps, text_id);
  const fs::path base_file = fs::path(o.cache) / "base.safetensors";
  if (load_base(base_file, model, metadata)) {
    std::printf("Base: loaded %s\n", base_file.c_str());
  } else {
    std::printf("Base: pre-training %lld steps (cached afterwards in %s)\n",
                static_cast<long long>(o.pretrain_steps), base_file.c_str());
    const LoopOptions loop{.label = "base",
                           .steps = o.pretrain_steps,
                           .batch = o.batch,
                           .seq = o.model.context,
                           .seed = o.methods.seed,
                           .first_draw = 1u << 30,
                           .quiet = o.quiet};
    const LoopResult r = pretrain(ctx, model, act, general.train, loop, o.pretrain_lr);
    std::printf("Base: %.1f ms per pre-training step\n", r.ms_per_step);
    save_base(base_file, model, metadata);
  }
  model.set_train_base(false);

  const std::vector<Batch> general_val =
      validation_batches(general.validation, o.batch, o.model.context, o.validation_windows);
  const std::vector<Batch> validation =
      validation_batches(target.validation, o.batch, o.model.context, o.validation_windows);
  const double before = validation_loss(ctx, model, act, validation);
  std::printf("Base: validation loss %.4f on the pre-training categories, %.4f on '%s'\n",
              validation_loss(ctx, model, act, general_val), before, o.target.c_str());
  const AdaptRun run{.loop = {.steps = o.steps,
                              .batch = o.batch,
                              .seq = o.model.context,
                              .seed = o.methods.seed,
                              .first_draw = 0,
                              .quiet = o.quiet},
                     .adapters = fs::path(o.cache) / "adapters",
                     .sample_count = o.sample_count,
                     .sample_length = o.sample_length};
  if (run.sample_count > 0)
    print_samples(
        "  base samples:",
        sample(ctx, model, act, "%\n", o.sample_count, o.sample_length, 0.8, o.methods.seed), 2);

  const fs::path compare = fs::path(o.cache) / "compare";
  export_adaptation_data(compare, o, target.train, validation);
  std::vector<MethodResult> results;
  for (const std::string& name : o.method_names) {
    std::printf("\n%s\n", name.c_str());
    const std::unique_ptr<Method<float>> method = make_method(name, ctx, model, o.methods);
    if (name == "LoRA") peft::save_adapter(compare / "lora_init", *method->set(), ctx);
    results.push_back(adapt(ctx, model, act, *method, name, target.train, validation, before, run));
  }
  print_table(results, o);
  write_results(compare / "cpp_results.json", results, o);
  std::printf("  total time %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!parse_options(argc, argv, options)) return 2;
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "transformer_demo: %s\n", e.what());
    return 1;
  }
}
