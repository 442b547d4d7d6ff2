#pragma once
// The scalars of one AdamW step, computed on the host by train/adamw.hpp and consumed by each
// backend's fused update (in double; a backend rounds them to its parameter type).

#include "view.hpp"

namespace peft {

struct AdamWStep {
  double lr = 0;
  double beta1 = 0;
  double beta2 = 0;
  double eps = 0;
  double weight_decay = 0;
  double bias_correction1 = 1;  // 1 - beta1^t
  double bias_correction2 = 1;  // 1 - beta2^t
};

/// One parameter's tensors for a fused AdamW update: value, gradient and both moments.
template <class P, class B>
struct AdamWTensors {
  MatrixView<P, B> value;
  MatrixView<const P, B> grad;
  MatrixView<P, B> m;
  MatrixView<P, B> v;
};

}  // namespace peft
