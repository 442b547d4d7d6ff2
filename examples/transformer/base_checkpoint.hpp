#pragma once
// The pre-trained base as one safetensors file, tensors named as in Hugging Face models
// (embed_tokens.weight, layers.0.attn.q_proj.weight, ..., lm_head.weight; layer norms as
// 1-D tensors), so PyTorch loads it with load_state_dict. The metadata records the model's
// shape and what it was trained on: a cache made with other settings is not reused.

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common.hpp"
#include "model.hpp"

namespace tfm {

// What identifies a base: the shape, the seed, the steps and the text it was trained on.
inline std::map<std::string, std::string> base_metadata(const ModelConfig& c, std::uint64_t seed,
                                                        index_t steps, const std::string& text) {
  return {{"vocab", std::to_string(c.vocab)},
          {"dim", std::to_string(c.dim)},
          {"layers", std::to_string(c.layers)},
          {"heads", std::to_string(c.heads)},
          {"context", std::to_string(c.context)},
          {"hidden", std::to_string(c.hidden)},
          {"seed", std::to_string(seed)},
          {"steps", std::to_string(steps)},
          {"text", text}};
}

template <class T>
void save_base(const std::filesystem::path& file, Transformer<T>& model,
               const std::map<std::string, std::string>& metadata) {
  peft::SafetensorsWriter writer;
  for (auto& p : model.parameters()) {
    const bool vector = p.name.find("ln_") != std::string::npos;  // nn.LayerNorm's are 1-D
    writer.add(p.name, as_const(p.value), peft::SafetensorsDtype::F32,
               vector ? std::optional(std::vector<index_t>{p.value.cols()}) : std::nullopt);
  }
  writer.set_metadata("format", "pt");
  for (const auto& [k, v] : metadata) writer.set_metadata(k, v);
  std::filesystem::create_directories(file.parent_path());
  writer.write(file);
}

// Loads the base when `file` exists and was made with `metadata`; false (model untouched) when
// there is no such file or it was made with other settings. A file that claims the settings
// but lacks a tensor or has a wrong shape is an error.
template <class T>
bool load_base(const std::filesystem::path& file, Transformer<T>& model,
               const std::map<std::string, std::string>& metadata) {
  if (!std::filesystem::exists(file)) return false;
  const peft::SafetensorsReader reader = peft::SafetensorsReader::open(file);
  for (const auto& [k, v] : metadata) {
    const auto it = reader.metadata().find(k);
    if (it == reader.metadata().end() || it->second != v) return false;
  }
  const std::vector<Param<T>> params = model.parameters();
  PEFT_CHECK(reader.tensors().size() == params.size(), peft::ErrorKind::io, file.string(), ": ",
             reader.tensors().size(), " tensors, the model has ", params.size());
  for (const auto& p : params) reader.read_into(p.name, p.value);  // checks name and shape
  return true;
}

}  // namespace tfm
