#pragma once
// The frozen layers of a base model, by module name, as AdapterSet and load_adapter take them.

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <type_traits>

#include "../core/view.hpp"

namespace peft {

/// How a base layer stores its weight. PEFT takes it from the module's type (nn.Linear: [out,
/// in]; transformers' Conv1D, as in GPT-2: [in, out]) and overrides the config's fan_in_fan_out
/// with it; a checkpoint records one flag for all layers, so a model with both kinds needs
/// each layer's layout from the user.
enum class WeightLayout : std::uint8_t {
  from_config,  // the adapter's fan_in_fan_out says (one flag for every layer)
  out_in,       // nn.Linear: fan_in_fan_out = false
  in_out,       // Conv1D: fan_in_fan_out = true
};

/// The fan_in_fan_out of a layer of layout `layout` under an adapter whose flag is `flag`.
inline constexpr bool layout_fan_in_fan_out(WeightLayout layout, bool flag) noexcept {
  return layout == WeightLayout::from_config ? flag : layout == WeightLayout::in_out;
}

inline constexpr const char* to_string(WeightLayout layout) noexcept {
  return layout == WeightLayout::out_in   ? "[out, in] (nn.Linear, fan_in_fan_out = false)"
         : layout == WeightLayout::in_out ? "[in, out] (Conv1D, fan_in_fan_out = true)"
                                          : "as the adapter's fan_in_fan_out says";
}

/// A frozen linear layer of the base model: weight [out, in] ([in, out] for GPT-2's Conv1D,
/// with fan_in_fan_out) and an optional bias of out elements, and the weight's layout
/// (default: the adapter's fan_in_fan_out decides). Views: not owned.
template <class T, class B>
struct BaseLinear {
  MatrixView<const T, B> weight;
  VectorView<const T, B> bias = {};
  WeightLayout layout = WeightLayout::from_config;

  BaseLinear() = default;
  BaseLinear(MatrixView<const T, B> w, VectorView<const T, B> b = {},  // NOLINT: implicit
             WeightLayout l = WeightLayout::from_config)
      : weight(w), bias(b), layout(l) {}
  BaseLinear(MatrixView<T, B> w, VectorView<const T, B> b = {},  // NOLINT: implicit
             WeightLayout l = WeightLayout::from_config) requires(!std::is_const_v<T>)
      : weight(w), bias(b), layout(l) {}
};

/// The frozen layers of a base model by module name (e.g. "model.layers.0.self_attn.q_proj").
template <class T, class B>
using BaseModel = std::map<std::string, BaseLinear<T, B>, std::less<>>;

/// Mutable frozen weights by module name (merge and unmerge write into them).
template <class T, class B>
using WeightMap = std::map<std::string, MatrixView<T, B>, std::less<>>;

}  // namespace peft
