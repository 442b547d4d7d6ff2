#pragma once
// What benchmarks/peft_compare needs to repeat an adaptation in PyTorch + PEFT exactly: the
// characters of every training step and of the validation windows (adapt_data.safetensors,
// with the hyper-parameters in its metadata), and this program's results (cpp_results.json).
// The base is DIR/base.safetensors and LoRA's initial adapter DIR/compare/lora_init.

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "adapt.hpp"
#include "options.hpp"
#include "text.hpp"

namespace tfm {

inline void write_token_rows(peft::SafetensorsWriter& w, const std::string& name,
                             const std::vector<Batch>& batches, bool targets) {
  std::vector<std::int32_t> all;
  index_t rows = 0, seq = 0;
  for (const Batch& b : batches) {
    for (int t : targets ? b.targets : b.inputs) all.push_back(t);
    rows += b.batch;
    seq = b.seq;
  }
  w.add(name, peft::MatrixView<const std::int32_t, peft::Cpu>(all.data(), rows, seq));
}

inline void export_adaptation_data(const std::filesystem::path& dir, const Options& o,
                                   const std::vector<int>& train,
                                   const std::vector<Batch>& validation) {
  std::vector<Batch> steps;
  for (index_t s = 0; s < o.steps; ++s)
    steps.push_back(
        random_batch(train, o.batch, o.model.context, o.methods.seed, std::uint32_t(s)));
  peft::SafetensorsWriter w;
  write_token_rows(w, "train_inputs", steps, false);
  write_token_rows(w, "train_targets", steps, true);
  write_token_rows(w, "validation_inputs", validation, false);
  write_token_rows(w, "validation_targets", validation, true);
  const MethodSettings& m = o.methods;
  w.set_metadata("steps", std::to_string(o.steps));
  w.set_metadata("batch", std::to_string(o.batch));
  w.set_metadata("lr", std::to_string(m.lr));
  w.set_metadata("lora_r", std::to_string(m.lora_r));
  w.set_metadata("lora_alpha", std::to_string(2 * m.lora_r));
  w.set_metadata("adalora_init_r", std::to_string(m.adalora_init_r));
  w.set_metadata("adalora_target_r", std::to_string(m.adalora_target_r));
  w.set_metadata("adalora_alpha", std::to_string(2 * m.adalora_init_r));
  w.set_metadata("threads", std::to_string(o.threads));
  w.set_metadata("target", o.target);
  std::filesystem::create_directories(dir);
  w.write(dir / "adapt_data.safetensors");
}

inline void write_results(const std::filesystem::path& file, const std::vector<MethodResult>& rs,
                          const Options& o) {
  nlohmann::ordered_json j;
  j["threads"] = o.threads;
  j["steps"] = o.steps;
  j["batch"] = o.batch;
  for (const MethodResult& r : rs)
    j["methods"].push_back({{"method", r.name},
                            {"trainable", r.trainable},
                            {"validation_before", r.before},
                            {"validation_after", r.after},
                            {"ms_per_step", r.ms_per_step},
                            {"peak_rss_mib", r.peak_rss_mib}});
  std::ofstream(file) << j.dump(2) << "\n";
}

}  // namespace tfm
