#pragma once
// The typed factories behind make_adapter and make_case_adapter: AdapterFactory<T> makes every
// adapter of element type T. Its members are defined in adapter_model.cuh and instantiated once
// per element type, each in its own translation unit (adapters_<dtype>.cu), which keeps the
// build parallel; adapters.cu dispatches a runtime DType to them.

#include <memory>
#include <string_view>

#include "device.cuh"
#include "gpu_adapter.hpp"
#include "gpu_sparse.hpp"

namespace peft::gpu {

template <class T>
struct AdapterFactory {
  static std::unique_ptr<GpuAdapter> make(const AdapterArgs& args, const LoraConfig& config);
  static std::unique_ptr<GpuRosa> make(const AdapterArgs& args, const RosaConfig& config);
  static std::unique_ptr<GpuAdaLora> make(const AdapterArgs& args, const AdaLoraConfig& config);
  /// The conformance case named `case_name` (tests/conformance/cases.hpp).
  static std::unique_ptr<GpuAdapter> make_case(std::string_view case_name, const AdapterArgs& args,
                                               double dropout, bool fan_in_fan_out);
};

extern template struct AdapterFactory<float>;
extern template struct AdapterFactory<double>;
extern template struct AdapterFactory<__half>;
extern template struct AdapterFactory<__nv_bfloat16>;

}  // namespace peft::gpu
