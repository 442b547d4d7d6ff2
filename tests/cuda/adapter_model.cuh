#pragma once
// The one harness of the CUDA tests' adapters: AdapterModel<Layer> puts any adapter layer
// (Layer<T, Cuda>) behind GpuAdapter, with its frozen weight (and bias) in device memory and an
// AdamW on demand. Methods with more to test extend it: RoSA with its mask and mask builder
// (RosaModel), AdaLoRA with its rank allocator and orthogonal regulariser (AdaLoraModel).
// AdapterFactory<T> builds them, by config or by conformance case; include this header only
// from the adapters_<dtype>.cu files that instantiate it.
//
// The conformance cases come from the CPU suite's own list (tests/conformance/cases.hpp), which
// includes the CPU backend and so Eigen: the CUDA sources of the tests are compiled with
// EIGEN_NO_CUDA (cuda_tests.cmake), Eigen's switch for .cu files that use it on the host only.

#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "adapters.cuh"
#include "conformance/cases.hpp"
#include "sparse_device.cuh"

namespace peft::gpu {

template <class Layer, class Interface = GpuAdapter>
class AdapterModel : public Interface {
 public:
  using T = typename Layer::value_type;
  using P = typename Layer::param_type;
  static_assert(Adapter<Layer>);
  static_assert(std::is_same_v<typename Layer::backend_type, Cuda>);

  template <class Config>
  AdapterModel(const AdapterArgs& args, const Config& config)
      : w0_(dtype_of<T>(), args.w0, args.strided_w0),
        bias_(dtype_of<T>(), args.bias),
        layer_(context(), cview<T>(w0_), config, args.options, bias_vector()) {}

  DType dtype() const override { return dtype_of<T>(); }
  std::string name() const override { return Layer::name; }
  index_t in_features() const override { return layer_.in_features(); }
  index_t out_features() const override { return layer_.out_features(); }
  index_t num_trainable() const override { return layer_.num_trainable(); }
  index_t reserve_bytes(index_t rows) const override { return layer_.reserve_bytes(rows); }
  void preallocate(index_t max_rows) override { layer_.preallocate(context(), max_rows); }

  void forward(const DeviceMatrix& x, DeviceMatrix& y) override {
    layer_.forward(context(), cview<T>(x), view<T>(y));
  }
  void forward(const DeviceMatrix& x, DeviceMatrix& y, DeviceBytes& reserve) override {
    layer_.forward(context(), cview<T>(x), view<T>(y), bytes(reserve));
  }
  void forward_delta(const DeviceMatrix& x, DeviceMatrix& y) override {
    layer_.forward_delta(context(), cview<T>(x), view<T>(y));
  }
  void forward_delta(const DeviceMatrix& x, DeviceMatrix& y, DeviceBytes& reserve) override {
    layer_.forward_delta(context(), cview<T>(x), view<T>(y), bytes(reserve));
  }
  void backward(const DeviceMatrix& x, const DeviceMatrix& dy, DeviceMatrix& dx) override {
    layer_.backward(context(), cview<T>(x), cview<T>(dy), dx_view(dx));
  }
  void backward(const DeviceMatrix& x, const DeviceMatrix& dy, DeviceMatrix& dx,
                DeviceBytes& reserve) override {
    layer_.backward(context(), cview<T>(x), cview<T>(dy), dx_view(dx), bytes(reserve));
  }
  void backward_delta(const DeviceMatrix& x, const DeviceMatrix& dy, DeviceMatrix& dx) override {
    layer_.backward_delta(context(), cview<T>(x), cview<T>(dy), dx_view(dx));
  }
  void backward_delta(const DeviceMatrix& x, const DeviceMatrix& dy, DeviceMatrix& dx,
                      DeviceBytes& reserve) override {
    layer_.backward_delta(context(), cview<T>(x), cview<T>(dy), dx_view(dx), bytes(reserve));
  }

  std::vector<std::string> parameter_names() const override {
    std::vector<std::string> names;
    for (const auto& p : mutable_layer().parameters()) names.push_back(p.name);
    return names;
  }
  HostMatrix parameter(std::size_t i) const override { return to_double(param(i).value); }
  HostMatrix gradient(std::size_t i) const override { return to_double(param(i).grad); }
  void set_parameter(std::size_t i, HostView values) override {
    const MatrixView<P, Cuda> dst = param(i).value;
    PEFT_CHECK_SHAPE(values.rows() == dst.rows() && values.cols() == dst.cols(),
                     "gpu test set_parameter: ", shape_string(values), " values for ",
                     shape_string(dst));
    Matrix<P, Cpu> host(dst.rows(), dst.cols());
    for (index_t r = 0; r < dst.rows(); ++r)
      for (index_t c = 0; c < dst.cols(); ++c) host.view()(r, c) = static_cast<P>(values(r, c));
    gpu::upload(context(), as_const(host.view()), dst);
  }
  void parameters_updated() override { layer_.parameters_updated(context()); }
  void prepare_gradients() override { layer_.prepare_gradients(context()); }
  void zero_grad() override { layer_.zero_grad(context()); }
  void set_training(bool training) override { layer_.set_training(training); }

  bool merge() override { return layer_.merge(context(), view<T>(w0_)); }
  bool safe_merge() override { return layer_.safe_merge(context(), view<T>(w0_)); }
  bool unmerge() override { return layer_.unmerge(context(), view<T>(w0_)); }
  bool merged() const override { return layer_.merged(); }
  HostMatrix delta_weight() override {
    DeviceMatrix out(dtype_of<T>(), w0_.rows(), w0_.cols());  // NaN: must be overwritten
    layer_.delta_weight(context(), view<T>(out));
    return out.download();
  }
  HostMatrix base_weight() const override { return w0_.download(); }

  void add_to_optimizer(const AdamWOptions& options) override {
    PEFT_CHECK(!optimizer_, ErrorKind::state, "gpu test: the optimizer exists already");
    optimizer_.emplace(options);
    optimizer_->add(layer_);
  }
  void optimizer_step() override {
    PEFT_CHECK(optimizer_.has_value(), ErrorKind::state, "gpu test: no optimizer");
    optimizer_->step(context());
  }

 protected:
  Layer& mutable_layer() const { return const_cast<Layer&>(layer_); }
  Parameter<P, Cuda> param(std::size_t i) const {
    auto params = mutable_layer().parameters();
    PEFT_CHECK_ARG(i < params.size(), "gpu test: parameter ", i, " of ", params.size());
    return params[i];
  }
  static HostMatrix to_double(MatrixView<P, Cuda> v) {
    Matrix<P, Cpu> host(v.rows(), v.cols());
    gpu::download(context(), as_const(v), host.view());
    HostMatrix out(v.rows(), v.cols());
    for (index_t r = 0; r < v.rows(); ++r)
      for (index_t c = 0; c < v.cols(); ++c)
        out.view()(r, c) = static_cast<double>(host.view()(r, c));
    return out;
  }

  DeviceMatrix w0_;
  DeviceMatrix bias_;
  Layer layer_;
  std::optional<AdamW<P, Cuda>> optimizer_;

 private:
  VectorView<const T, Cuda> bias_vector() const {
    if (bias_.empty()) return {};
    PEFT_CHECK_SHAPE(bias_.rows() == 1, "gpu test: bias must be 1 x out");
    const auto m = cview<T>(bias_);
    return VectorView<const T, Cuda>(m.data(), m.cols());
  }
  static VectorView<std::byte, Cuda> bytes(DeviceBytes& reserve) {
    return reserve.impl().bytes.view();
  }
  static MatrixView<T, Cuda> dx_view(DeviceMatrix& dx) {
    return dx.empty() ? MatrixView<T, Cuda>() : view<T>(dx);
  }
};

// ---- RoSA: the mask and the mask builder ------------------------------------------------------

template <class T>
class RosaModel final : public AdapterModel<Rosa<T, Cuda>, GpuRosa> {
  using Base = AdapterModel<Rosa<T, Cuda>, GpuRosa>;
  using P = typename Base::P;

 public:
  using Base::Base;

  RosaForward forward_mode() const override { return this->layer_.forward_mode(); }
  index_t sparse_capacity() const override { return this->layer_.sparse_capacity(); }
  bool has_mask() const override { return this->layer_.has_mask(); }
  void set_mask(const CsrPattern& pattern) override { this->layer_.set_mask(context(), pattern); }
  CsrPattern mask() const override {
    const CsrView<const P, Cuda> s = this->layer_.sparse().view();
    return CsrPattern{s.rows, s.cols, host_indices(s.row_offsets, s.rows + 1),
                      host_indices(s.col_indices, s.nnz)};
  }
  void set_sparse_values(HostView values) override {
    auto& layer = this->layer_;
    const index_t nnz = layer.sparse().nnz();
    PEFT_CHECK_SHAPE(values.rows() == 1 && values.cols() == nnz,
                     "gpu test set_sparse_values: ", shape_string(values), " values for ", nnz,
                     " entries");
    Matrix<P, Cpu> host(1, nnz);
    for (index_t e = 0; e < nnz; ++e) host.data()[e] = static_cast<P>(values(0, e));
    gpu::upload(context(), as_const(host.view()),
                MatrixView<P, Cuda>(layer.sparse().values().data(), 1, nnz));
    layer.parameters_updated(context());
  }

  void start_mask_builder(const RosaMaskOptions& options, std::optional<double> density) override {
    builder_.emplace(options);
    builder_->add(this->layer_, density);
    builder_->start(context());
  }
  void finish_mask_builder() override {
    PEFT_CHECK(builder_.has_value(), ErrorKind::state, "gpu test: no mask builder");
    builder_->finish(context());
  }
  bool mask_builder_collecting() const override { return builder_ && builder_->collecting(); }

 private:
  std::optional<RosaMaskBuilder<T, Cuda>> builder_;  // destroyed before the layer
};

// ---- AdaLoRA: the rank allocator and the orthogonal regulariser ------------------------------

template <class T>
class AdaLoraModel final : public AdapterModel<AdaLora<T, Cuda>, GpuAdaLora> {
  using Base = AdapterModel<AdaLora<T, Cuda>, GpuAdaLora>;

 public:
  using Base::Base;

  void start_rank_allocator(const RankAllocatorOptions& options) override {
    PEFT_CHECK(!allocator_, ErrorKind::state, "gpu test: the rank allocator exists already");
    allocator_.emplace(options);
    allocator_->add(context(), this->layer_, "layer");
  }
  index_t update_and_allocate(std::int64_t step) override {
    return allocator().update_and_allocate(context(), step);
  }
  std::vector<bool> rank_pattern() override {
    return allocator().rank_pattern(context()).at(0).second;
  }
  std::vector<std::pair<std::string, HostMatrix>> allocator_state() override {
    std::vector<std::pair<std::string, HostMatrix>> out;
    for (const auto& [name, tensor] : allocator().state(context()))
      out.emplace_back(name, Base::to_double(tensor));
    return out;
  }
  double orthogonal_regularization(double weight) override {
    return add_orthogonal_regularization<T, Cuda>(context(), {&this->layer_}, weight);
  }

 private:
  RankAllocator<T, Cuda>& allocator() {
    PEFT_CHECK(allocator_.has_value(), ErrorKind::state, "gpu test: no rank allocator");
    return *allocator_;
  }

  std::optional<RankAllocator<T, Cuda>> allocator_;  // destroyed before the layer
};

// ---- the factories ---------------------------------------------------------------------------

/// The model of a layer type: its extension where the method has one.
template <class Layer>
struct ModelFor {
  using type = AdapterModel<Layer>;
};
template <class T>
struct ModelFor<Rosa<T, Cuda>> {
  using type = RosaModel<T>;
};
template <class T>
struct ModelFor<AdaLora<T, Cuda>> {
  using type = AdaLoraModel<T>;
};

template <class Layer, class Config>
std::unique_ptr<typename ModelFor<Layer>::type> make_model(const AdapterArgs& args,
                                                           const Config& config) {
  return std::make_unique<typename ModelFor<Layer>::type>(args, config);
}

template <class T, class... Cases>
std::unique_ptr<GpuAdapter> make_from_cases(peft::test::CaseList<Cases...>,
                                            std::string_view case_name, const AdapterArgs& args,
                                            double dropout, bool fan_in_fan_out) {
  std::unique_ptr<GpuAdapter> made;
  const auto try_case = [&]<class Case>(Case) {
    if (made || case_name != Case::name) return;
    made = make_model<typename Case::template Layer<T, Cuda>>(
        args, Case::config(dropout, fan_in_fan_out));
  };
  (try_case(Cases{}), ...);
  PEFT_CHECK_ARG(made != nullptr, "gpu test: no conformance case is named ", case_name);
  return made;
}

template <class T>
std::unique_ptr<GpuAdapter> AdapterFactory<T>::make(const AdapterArgs& args,
                                                    const LoraConfig& config) {
  return make_model<Lora<T, Cuda>>(args, config);
}

template <class T>
std::unique_ptr<GpuRosa> AdapterFactory<T>::make(const AdapterArgs& args,
                                                 const RosaConfig& config) {
  return make_model<Rosa<T, Cuda>>(args, config);
}

template <class T>
std::unique_ptr<GpuAdaLora> AdapterFactory<T>::make(const AdapterArgs& args,
                                                    const AdaLoraConfig& config) {
  return make_model<AdaLora<T, Cuda>>(args, config);
}

template <class T>
std::unique_ptr<GpuAdapter> AdapterFactory<T>::make_case(std::string_view case_name,
                                                         const AdapterArgs& args, double dropout,
                                                         bool fan_in_fan_out) {
  return make_from_cases<T>(peft::test::AllCases{}, case_name, args, dropout, fan_in_fan_out);
}

}  // namespace peft::gpu
