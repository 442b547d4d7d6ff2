#pragma once
// A linear map without bias, y = x Wᵀ with W [out, in] (nn.Linear(bias=False)): trainable
// while the base is pre-trained, frozen afterwards. An adapter attached to it (any peft-cpp
// layer built over weight()) replaces its forward and backward: the adapter computes
// x W0ᵀ + its own contribution, accumulates its own gradients and writes dx.

#include <functional>
#include <string>
#include <utility>
#include <variant>

#include "common.hpp"

namespace tfm {

template <class T>
class Projection {
 public:
  // W ~ N(0, std_dev²).
  Projection(index_t in, index_t out, double std_dev, std::uint64_t seed, std::uint32_t id)
      : w_(out, in), dw_(out, in) {
    const peft::RandomStream s = user_stream(seed, kInitWeights, id);
    for (index_t i = 0; i < w_.size(); ++i)
      w_.data()[i] = T(std_dev * peft::normal_from_stream(s, std::uint64_t(i)));
  }

  void forward(Ctx& ctx, CView<T> x, View<T> y) {
    if (adapter_forward_) return adapter_forward_(ctx, x, y);
    gemm<T>(ctx, peft::Op::N, peft::Op::T, 1.0, x, w_.view(), 0.0, y);
  }

  // Accumulates dW when the weight trains; writes dx unless it is empty.
  void backward(Ctx& ctx, CView<T> x, CView<T> dy, View<T> dx) {
    if (adapter_backward_) return adapter_backward_(ctx, x, dy, dx);
    if (trainable_) gemm<T>(ctx, peft::Op::T, peft::Op::N, 1.0, dy, x, 1.0, dw_.view());
    if (!dx.empty()) gemm<T>(ctx, peft::Op::N, peft::Op::N, 1.0, dy, w_.view(), 0.0, dx);
  }

  // Routes forward and backward through `layer` (a peft adapter, or an AdapterSet's variant of
  // adapters) until detach(). The layer must outlive the attachment.
  template <class Layer>
  void attach(Layer& layer) {
    adapter_forward_ = [&layer](Ctx& ctx, CView<T> x, View<T> y) {
      visit_layer(layer, [&](auto& l) { l.forward(ctx, x, y); });
    };
    adapter_backward_ = [&layer](Ctx& ctx, CView<T> x, CView<T> dy, View<T> dx) {
      visit_layer(layer, [&](auto& l) { l.backward(ctx, x, dy, dx); });
    };
  }
  void detach() {
    adapter_forward_ = nullptr;
    adapter_backward_ = nullptr;
  }

  void set_trainable(bool trainable) { trainable_ = trainable; }
  void zero_grad(Ctx& ctx) { peft::cpu::fill(ctx, dw_.view(), 0.0); }
  Param<T> parameter(std::string name) { return {std::move(name), w_.view(), dw_.view()}; }
  View<T> weight() { return w_.view(); }

 private:
  template <class Layer, class F>
  static void visit_layer(Layer& layer, F&& f) {
    if constexpr (requires { layer.index(); }) {  // a std::variant of adapter types
      std::visit(f, layer);
    } else {
      f(layer);
    }
  }

  Mat<T> w_;
  Mat<T> dw_;
  bool trainable_ = true;
  std::function<void(Ctx&, CView<T>, View<T>)> adapter_forward_;
  std::function<void(Ctx&, CView<T>, CView<T>, View<T>)> adapter_backward_;
};

}  // namespace tfm
