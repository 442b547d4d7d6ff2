#pragma once
// The scalars of one AdamW step, computed on the host by train/adamw.hpp and consumed by each
// backend's fused update.

namespace peft {

struct AdamWStep {
  float lr = 0;
  float beta1 = 0;
  float beta2 = 0;
  float eps = 0;
  float weight_decay = 0;
  float bias_correction1 = 1;  // 1 - beta1^t
  float bias_correction2 = 1;  // 1 - beta2^t
};

}  // namespace peft
