#pragma once
// The adapter methods the conformance suite runs over. Adding a method is one line here: a Case
// naming its layer template and a small config whose adapter contribution is non-zero.

#include <peft/peft.hpp>

namespace peft::test {

struct LoraCase {
  static constexpr const char* name = "Lora";
  template <class T, class B>
  using Layer = Lora<T, B>;
  static LoraConfig config(double dropout, bool fan_in_fan_out) {
    return {.r = 3,
            .alpha = 5,
            .dropout = dropout,
            .fan_in_fan_out = fan_in_fan_out,
            .init = LoraInit::none,
            .seed = 11};
  }
};

/// RoSA in one forward mode (the sparse part through W0 + S, or through a sparse product).
template <RosaForward Mode>
struct RosaCase {
  static constexpr const char* name = Mode == RosaForward::spmm ? "RosaSpmm" : "RosaDenseAdd";
  template <class T, class B>
  using Layer = Rosa<T, B>;
  static RosaConfig config(double dropout, bool fan_in_fan_out) {
    return {.lora = LoraCase::config(dropout, fan_in_fan_out), .density = 0.3, .forward = Mode};
  }
};
using RosaDenseAddCase = RosaCase<RosaForward::dense_add>;
using RosaSpmmCase = RosaCase<RosaForward::spmm>;

struct AdaLoraCase {
  static constexpr const char* name = "AdaLora";
  template <class T, class B>
  using Layer = AdaLora<T, B>;
  static AdaLoraConfig config(double dropout, bool fan_in_fan_out) {
    return {.init_r = 3,
            .alpha = 5,
            .dropout = dropout,
            .fan_in_fan_out = fan_in_fan_out,
            .init_weights = false,
            .seed = 11};
  }
};

struct NolaCase {
  static constexpr const char* name = "Nola";
  template <class T, class B>
  using Layer = Nola<T, B>;
  static NolaConfig config(double dropout, bool fan_in_fan_out) {
    return {.r = 3,
            .alpha = 5,
            .num_basis_a = 4,
            .num_basis_b = 5,
            .dropout = dropout,
            .fan_in_fan_out = fan_in_fan_out,
            .seed = 11};
  }
};

struct LoraXsCase {
  static constexpr const char* name = "LoraXs";
  template <class T, class B>
  using Layer = LoraXs<T, B>;
  static LoraXsConfig config(double dropout, bool fan_in_fan_out) {
    return {.r = 3, .alpha = 5, .dropout = dropout, .fan_in_fan_out = fan_in_fan_out, .seed = 11};
  }
};

template <class... Cases>
struct CaseList {};

using AllCases =
    CaseList<LoraCase, RosaDenseAddCase, RosaSpmmCase, AdaLoraCase, NolaCase, LoraXsCase>;

}  // namespace peft::test
