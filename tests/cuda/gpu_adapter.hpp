#pragma once
// The adapter half of the CUDA tests' plain-C++ interface (gpu.hpp has the rules): any adapter
// layer on the device behind one interface, GpuAdapter, made by one harness (adapter_model.cuh)
// for every method; AdaLoRA's trainers on top (GpuAdaLora). RoSA's extras are in gpu_sparse.hpp
// (GpuRosa). No CUDA or Eigen type appears here.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <peft/adapters/adalora.hpp>
#include <peft/adapters/lora.hpp>
#include <peft/train/adamw.hpp>
#include <peft/train/rank_allocator.hpp>

#include "gpu.hpp"

namespace peft::gpu {

/// An adapter layer Layer<T, Cuda> (T from the dtype) with its frozen weight (and bias) in
/// device memory, plus optionally an AdamW<param_t<T>, Cuda> over its parameters. Matrices passed
/// in must have the layer's dtype; dx may be empty.
class GpuAdapter {
 public:
  virtual ~GpuAdapter() = default;
  virtual DType dtype() const = 0;
  /// The layer type's name (Lora, Rosa, AdaLora, ...).
  virtual std::string name() const = 0;
  virtual index_t in_features() const = 0;
  virtual index_t out_features() const = 0;
  virtual index_t num_trainable() const = 0;
  virtual index_t reserve_bytes(index_t rows) const = 0;
  virtual void preallocate(index_t max_rows) = 0;

  virtual void forward(const DeviceMatrix& x, DeviceMatrix& y) = 0;
  virtual void forward(const DeviceMatrix& x, DeviceMatrix& y, DeviceBytes& reserve) = 0;
  virtual void forward_delta(const DeviceMatrix& x, DeviceMatrix& y) = 0;
  virtual void forward_delta(const DeviceMatrix& x, DeviceMatrix& y, DeviceBytes& reserve) = 0;
  virtual void backward(const DeviceMatrix& x, const DeviceMatrix& dy, DeviceMatrix& dx) = 0;
  virtual void backward(const DeviceMatrix& x, const DeviceMatrix& dy, DeviceMatrix& dx,
                        DeviceBytes& reserve) = 0;
  virtual void backward_delta(const DeviceMatrix& x, const DeviceMatrix& dy, DeviceMatrix& dx) = 0;
  virtual void backward_delta(const DeviceMatrix& x, const DeviceMatrix& dy, DeviceMatrix& dx,
                              DeviceBytes& reserve) = 0;

  virtual std::vector<std::string> parameter_names() const = 0;
  /// Value and gradient of parameter i (in the order of parameters()), as double.
  virtual HostMatrix parameter(std::size_t i) const = 0;
  virtual HostMatrix gradient(std::size_t i) const = 0;
  /// Overwrites parameter i with `values` (rounded to param_t<T>); call parameters_updated after.
  virtual void set_parameter(std::size_t i, HostView values) = 0;
  virtual void parameters_updated() = 0;
  virtual void prepare_gradients() = 0;
  virtual void zero_grad() = 0;
  virtual void set_training(bool training) = 0;

  virtual bool merge() = 0;
  virtual bool safe_merge() = 0;
  virtual bool unmerge() = 0;
  virtual bool merged() const = 0;
  /// delta_weight into a fresh (NaN-filled: it must be overwritten) device matrix.
  virtual HostMatrix delta_weight() = 0;
  /// The frozen weight as it is now in device memory (changed by merge).
  virtual HostMatrix base_weight() const = 0;

  /// Creates the optimizer and adds the layer to it (once).
  virtual void add_to_optimizer(const AdamWOptions& options) = 0;
  virtual void optimizer_step() = 0;
};

/// Where a layer's frozen weight comes from: w0 is [out, in] ([in, out] with fan_in_fan_out),
/// bias 1 x out or empty; strided_w0 places the weight inside a larger device matrix.
struct AdapterArgs {
  HostView w0;
  LayerOptions options = {};
  HostView bias = {};
  bool strided_w0 = false;
};

/// Lora<T, Cuda>.
std::unique_ptr<GpuAdapter> make_adapter(DType dtype, const AdapterArgs& args,
                                         const LoraConfig& config);

/// A conformance case (tests/conformance/cases.hpp) by its name: Case::Layer<T, Cuda> with
/// Case::config(dropout, fan_in_fan_out). Every case of the CPU suite's list is available, so a
/// method added there is added here too.
std::unique_ptr<GpuAdapter> make_case_adapter(DType dtype, std::string_view case_name,
                                              const AdapterArgs& args, double dropout,
                                              bool fan_in_fan_out);

// ---- AdaLoRA ---------------------------------------------------------------------------------

/// An AdaLora<T, Cuda> with a RankAllocator<T, Cuda> over it (alone) on demand, and the
/// orthogonal regulariser.
class GpuAdaLora : public GpuAdapter {
 public:
  /// Creates the allocator and adds the layer under the name "layer" (once).
  virtual void start_rank_allocator(const RankAllocatorOptions& options) = 0;
  /// RankAllocator::update_and_allocate: returns the budget in force.
  virtual index_t update_and_allocate(std::int64_t step) = 0;
  /// The kept ranks (RankAllocator::rank_pattern of the one layer).
  virtual std::vector<bool> rank_pattern() = 0;
  /// Every tensor of the allocator's state (RankAllocator::state), downloaded, by name.
  virtual std::vector<std::pair<std::string, HostMatrix>> allocator_state() = 0;
  /// add_orthogonal_regularization over this layer: adds the gradient, returns the value.
  virtual double orthogonal_regularization(double weight) = 0;
};

std::unique_ptr<GpuAdaLora> make_adapter(DType dtype, const AdapterArgs& args,
                                         const AdaLoraConfig& config);

}  // namespace peft::gpu
