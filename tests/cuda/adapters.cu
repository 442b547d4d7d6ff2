// make_adapter and make_case_adapter: a runtime DType to the typed factories, which are
// instantiated in adapters_<dtype>.cu.

#include "adapters.cuh"

namespace peft::gpu {

namespace {

template <class Made, class F>
std::unique_ptr<Made> make_typed(DType dtype, F&& f) {
  return dispatch(dtype, [&](auto tag) -> std::unique_ptr<Made> {
    return f(AdapterFactory<typename decltype(tag)::type>{});
  });
}

}  // namespace

std::unique_ptr<GpuAdapter> make_adapter(DType dtype, const AdapterArgs& args,
                                         const LoraConfig& config) {
  return make_typed<GpuAdapter>(dtype, [&](auto factory) { return factory.make(args, config); });
}

std::unique_ptr<GpuRosa> make_adapter(DType dtype, const AdapterArgs& args,
                                      const RosaConfig& config) {
  return make_typed<GpuRosa>(dtype, [&](auto factory) { return factory.make(args, config); });
}

std::unique_ptr<GpuAdaLora> make_adapter(DType dtype, const AdapterArgs& args,
                                         const AdaLoraConfig& config) {
  return make_typed<GpuAdaLora>(dtype, [&](auto factory) { return factory.make(args, config); });
}

std::unique_ptr<GpuAdapter> make_case_adapter(DType dtype, std::string_view case_name,
                                              const AdapterArgs& args, double dropout,
                                              bool fan_in_fan_out) {
  return make_typed<GpuAdapter>(dtype, [&](auto factory) {
    return factory.make_case(case_name, args, dropout, fan_in_fan_out);
  });
}

}  // namespace peft::gpu
