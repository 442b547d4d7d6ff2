#pragma once
// The frozen layers of a base model, by module name, as AdapterSet and load_adapter take them.

#include <functional>
#include <map>
#include <string>
#include <type_traits>

#include "../core/view.hpp"

namespace peft {

/// A frozen linear layer of the base model: weight [out, in] ([in, out] for GPT-2's Conv1D,
/// with fan_in_fan_out) and an optional bias of out elements. Views: not owned.
template <class T, class B>
struct BaseLinear {
  MatrixView<const T, B> weight;
  VectorView<const T, B> bias = {};

  BaseLinear() = default;
  BaseLinear(MatrixView<const T, B> w, VectorView<const T, B> b = {})  // NOLINT: implicit
      : weight(w), bias(b) {}
  BaseLinear(MatrixView<T, B> w, VectorView<const T, B> b = {})  // NOLINT: implicit
      requires(!std::is_const_v<T>)
      : weight(w), bias(b) {}
};

/// The frozen layers of a base model by module name (e.g. "model.layers.0.self_attn.q_proj").
template <class T, class B>
using BaseModel = std::map<std::string, BaseLinear<T, B>, std::less<>>;

/// Mutable frozen weights by module name (merge and unmerge write into them).
template <class T, class B>
using WeightMap = std::map<std::string, MatrixView<T, B>, std::less<>>;

}  // namespace peft
