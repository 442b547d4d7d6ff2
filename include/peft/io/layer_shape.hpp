#pragma once
// What a format's loader derives for a layer from the file's adapter_config.json and the base it
// is loaded over: the layer config's LoRA-like fields (r, alpha, dropout, fan_in_fan_out, seed,
// under PEFT's file names), and the layer's in/out features with the bias checked against them.

#include "../core/view.hpp"
#include "../model/base_model.hpp"
#include "module_tensors.hpp"

namespace peft::detail {

/// A layer config with the fields every LoRA-like file config holds (r, lora_alpha,
/// lora_dropout, fan_in_fan_out, seed); the method's own fields keep Config's defaults, for the
/// caller to set.
template <class Config, class FileConfig>
Config low_rank_layer_config(const FileConfig& file) {
  Config c;
  c.r = file.r;
  c.alpha = file.lora_alpha;
  c.dropout = file.lora_dropout;
  c.fan_in_fan_out = file.fan_in_fan_out;
  c.seed = file.seed;
  return c;
}

/// in_features and out_features of a layer over a base weight (copy them into plain variables
/// where a lambda uses them: clang < 16 cannot capture a structured binding).
struct LayerFeatures {
  index_t in = 0;
  index_t out = 0;
};

/// The features of a layer over `base` (its weight [out, in], or [in, out] with
/// fan_in_fan_out); fails through `src` when the base has a bias of other than out elements.
template <class T, class B>
LayerFeatures checked_layer_features(const ModuleSource& src, const BaseLinear<T, B>& base,
                                     bool fan_in_fan_out) {
  const MatrixView<const T, B>& w = base.weight;
  const LayerFeatures f{.in = fan_in_fan_out ? w.rows() : w.cols(),
                        .out = fan_in_fan_out ? w.cols() : w.rows()};
  if (!base.bias.empty() && base.bias.size() != f.out)
    src.fail("the bias has ", base.bias.size(), " elements, out_features is ", f.out);
  return f;
}

}  // namespace peft::detail
