#pragma once
// GpuRosa for one element type: a Rosa<T, Cuda> over a frozen weight (and bias) in device
// memory, an AdamW<param_t<T>, Cuda> and a RosaMaskBuilder<T, Cuda> on demand. Each
// rosa_<dtype>.cu instantiates it once.

#include <optional>

#include "sparse_device.cuh"

namespace peft::gpu {

template <class T>
class RosaModel final : public GpuRosa {
 public:
  using Layer = Rosa<T, Cuda>;
  using P = param_t<T>;
  static_assert(Adapter<Layer>);

  RosaModel(HostView w0, const RosaConfig& config, const LayerOptions& options, HostView bias,
            bool strided)
      : w0_(dtype_of<T>(), w0, strided),
        bias_(dtype_of<T>(), bias),
        layer_(context(), cview<T>(w0_), config, options, bias_vector()) {}

  DType dtype() const override { return dtype_of<T>(); }
  index_t reserve_bytes(index_t rows) const override { return layer_.reserve_bytes(rows); }

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
    for (const auto& p : const_cast<Layer&>(layer_).parameters()) names.push_back(p.name);
    return names;
  }
  HostMatrix parameter(std::size_t i) const override { return to_double(param(i).value); }
  HostMatrix gradient(std::size_t i) const override { return to_double(param(i).grad); }
  void zero_grad() override { layer_.zero_grad(context()); }
  void set_training(bool training) override { layer_.set_training(training); }

  bool merge() override { return layer_.merge(context(), view<T>(w0_)); }
  bool unmerge() override { return layer_.unmerge(context(), view<T>(w0_)); }
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

  RosaForward forward_mode() const override { return layer_.forward_mode(); }
  index_t sparse_capacity() const override { return layer_.sparse_capacity(); }
  bool has_mask() const override { return layer_.has_mask(); }
  void set_mask(const CsrPattern& pattern) override { layer_.set_mask(context(), pattern); }
  CsrPattern mask() const override {
    const CsrView<const P, Cuda> s = layer_.sparse().view();
    return CsrPattern{s.rows, s.cols, host_indices(s.row_offsets, s.rows + 1),
                      host_indices(s.col_indices, s.nnz)};
  }
  void set_sparse_values(HostView values) override {
    const index_t nnz = layer_.sparse().nnz();
    PEFT_CHECK_SHAPE(values.rows() == 1 && values.cols() == nnz,
                     "gpu test set_sparse_values: ", shape_string(values), " values for ", nnz,
                     " entries");
    Matrix<P, Cpu> host(1, nnz);
    for (index_t e = 0; e < nnz; ++e) host.data()[e] = static_cast<P>(values(0, e));
    gpu::upload(context(), as_const(host.view()),
                MatrixView<P, Cuda>(layer_.sparse().values().data(), 1, nnz));
    layer_.parameters_updated(context());
  }

  void start_mask_builder(const RosaMaskOptions& options, std::optional<double> density) override {
    builder_.emplace(options);
    builder_->add(layer_, density);
    builder_->start(context());
  }
  void finish_mask_builder() override {
    PEFT_CHECK(builder_.has_value(), ErrorKind::state, "gpu test: no mask builder");
    builder_->finish(context());
  }
  bool mask_builder_collecting() const override { return builder_ && builder_->collecting(); }

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
  Parameter<P, Cuda> param(std::size_t i) const {
    auto params = const_cast<Layer&>(layer_).parameters();
    PEFT_CHECK_ARG(i < params.size(), "gpu test: parameter ", i, " of ", params.size());
    return params[i];
  }
  static HostMatrix to_double(MatrixView<P, Cuda> v) {
    Matrix<P, Cpu> host(v.rows(), v.cols());
    gpu::download(context(), as_const(v), host.view());
    HostMatrix out(v.rows(), v.cols());
    for (index_t i = 0; i < out.size(); ++i) out.data()[i] = static_cast<double>(host.data()[i]);
    return out;
  }

  DeviceMatrix w0_;
  DeviceMatrix bias_;
  Layer layer_;
  std::optional<AdamW<P, Cuda>> optimizer_;
  std::optional<RosaMaskBuilder<T, Cuda>> builder_;  // declared last: destroyed before the layer
};

template <class T>
std::unique_ptr<GpuRosa> make_rosa_model(HostView w0, const RosaConfig& config,
                                         const LayerOptions& options, HostView bias, bool strided) {
  return std::make_unique<RosaModel<T>>(w0, config, options, bias, strided);
}

}  // namespace peft::gpu
