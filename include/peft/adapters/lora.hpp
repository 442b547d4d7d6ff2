#pragma once
// LoRA (Hu et al. 2021) with Hugging Face PEFT's semantics:
//   y = x W0ᵀ + b + s · (dropout(x) Aᵀ) Bᵀ,   A [r, in], B [out, r],   s = alpha / r
// (alpha / sqrt(r) with rsLoRA). Written once against the backend primitives; ADL picks the
// CPU or CUDA ones from the Context type.

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/random.hpp"
#include "adapter.hpp"
#include "merging.hpp"

namespace peft {

/// PEFT's `init_lora_weights`.
enum class LoraInit {
  kaiming_uniform,  // default: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (the layer starts as a no-op)
  gaussian,         // A ~ N(0, std = 1/r), B = 0
  none,             // PEFT's False: A and B both random (kaiming uniform), for tests
};

/// PEFT's LoraConfig fields, with PEFT's defaults.
struct LoraConfig {
  index_t r = 8;
  double alpha = 8;             // lora_alpha
  float dropout = 0.0f;         // lora_dropout, on the adapter path only, in [0, 1)
  bool use_rslora = false;      // scale alpha / sqrt(r) instead of alpha / r
  bool fan_in_fan_out = false;  // the frozen weight is given [in, out] (GPT-2's Conv1D)
  LoraInit init = LoraInit::kaiming_uniform;
  std::uint64_t seed = 0;  // with LayerOptions::stream_id, keys init and dropout

  double scaling() const { return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }
};

template <class T, class B>
class Lora : public detail::MergeOps<Lora<T, B>, T, B>, public detail::HandleAnchor<Lora<T, B>> {
 public:
  static constexpr const char* name = "Lora";
  using value_type = T;
  using param_type = param_t<T>;
  using backend_type = B;
  using Ctx = Context<B>;
  using ConstView = MatrixView<const T, B>;
  using View = MatrixView<T, B>;
  using Reserve = VectorView<std::byte, B>;

  /// w0 is [out, in] ([in, out] with fan_in_fan_out) and is never copied: it must outlive the
  /// layer. bias, when given, has out elements.
  Lora(Ctx& ctx, ConstView w0, const LoraConfig& config, const LayerOptions& options = {},
       VectorView<const T, B> bias = {})
      : w0_(w0), bias_(bias), config_(config), options_(options) {
    validate_config(config);
    in_ = config.fan_in_fan_out ? w0.rows() : w0.cols();
    out_ = config.fan_in_fan_out ? w0.cols() : w0.rows();
    PEFT_CHECK_SHAPE(in_ > 0 && out_ > 0, "Lora: the frozen weight is ", shape_string(w0),
                     ", expected a non-empty matrix");
    PEFT_CHECK_SHAPE(bias.empty() || bias.size() == out_, "Lora: bias has ", bias.size(),
                     " elements, the frozen weight has ", out_, " (out_features)");
    scaling_ = config.scaling();
    a_ = Matrix<param_type, B>(config.r, in_);
    b_ = Matrix<param_type, B>(out_, config.r);
    grad_a_ = Matrix<param_type, B>(config.r, in_);
    grad_b_ = Matrix<param_type, B>(out_, config.r);
    if constexpr (has_gemm_copies) {
      a_gemm_ = Matrix<T, B>(config.r, in_);
      b_gemm_ = Matrix<T, B>(out_, config.r);
    }
    initialise(ctx);
  }

  Lora(const Lora&) = delete;
  Lora& operator=(const Lora&) = delete;
  Lora(Lora&&) noexcept = default;
  Lora& operator=(Lora&&) noexcept = default;

  // ---- sizes -----------------------------------------------------------------------------

  index_t in_features() const noexcept { return in_; }
  index_t out_features() const noexcept { return out_; }
  index_t rank() const noexcept { return config_.r; }
  double scaling() const noexcept { return scaling_; }
  const LoraConfig& config() const noexcept { return config_; }
  const LayerOptions& options() const noexcept { return options_; }
  bool training() const noexcept { return training_; }
  index_t num_trainable() const noexcept { return config_.r * (in_ + out_); }

  /// Bytes of reserve a forward of `rows` rows writes for its backward: the random stream
  /// of its dropout mask and x Aᵀ [rows, r].
  index_t reserve_bytes(index_t rows) const {
    PEFT_CHECK_SHAPE(rows >= 0, "Lora::reserve_bytes: rows is ", rows, ", expected >= 0");
    return kHeaderBytes + detail::align_up(rows * config_.r * index_t(sizeof(T)));
  }

  /// Sizes the internal reserve and the Context's workspace for batches of up to max_rows
  /// rows, so that no forward or backward allocates afterwards.
  void preallocate(Ctx& ctx, index_t max_rows) {
    grow_own_reserve(max_rows);
    ctx.workspace().reserve(static_cast<std::size_t>(workspace_bytes(max_rows)));
  }

  /// Scratch bytes one call of `rows` rows may take from the Context's workspace.
  index_t workspace_bytes(index_t rows) const {
    const index_t e = sizeof(T);
    index_t bytes = detail::align_up(rows * config_.r * e) + detail::align_up(rows * in_ * e);
    if constexpr (is_16bit_v<T> && std::is_same_v<B, Cpu>) {  // CPU 16-bit GEMMs stage via fp32
      const index_t wide = std::max(in_, out_);
      bytes +=
          4 * (detail::align_up(rows * wide * 4) + detail::align_up(in_ * out_ * 4) +
               detail::align_up(rows * config_.r * 4) + detail::align_up(wide * config_.r * 4));
    }
    return bytes + 8 * 256;
  }

  // ---- forward / backward ----------------------------------------------------------------

  /// y = x W0ᵀ + b + s (dropout(x) Aᵀ) Bᵀ, keeping what backward needs in the layer's own
  /// reserve (the simple order: each forward followed by its backward).
  void forward(Ctx& ctx, ConstView x, View y) { forward(ctx, x, y, own_reserve(x.rows())); }

  /// The same with a caller-owned reserve of at least reserve_bytes(x.rows()) bytes.
  void forward(Ctx& ctx, ConstView x, View y, Reserve reserve) {
    detail::check_activations("Lora::forward", "x", x, "y", y, in_, out_);
    if (this->merged()) {  // W0 already holds ΔW: the base alone is the layer
      base_forward(ctx, x, y);
      return;
    }
    check_reserve("Lora::forward", reserve, x.rows());
    compute_xa(ctx, x, reserve);
    // The adapter GEMM writes y first and the base GEMM accumulates with beta = 1: y is
    // rounded once and the extra read of y rides inside the large GEMM.
    double beta = 0;
    if (!bias_.empty()) {
      broadcast_rows(ctx, bias_, y);
      beta = 1;
    }
    gemm(ctx, Op::N, Op::T, scaling_, as_const(xa_view(reserve, x.rows())), b_for_gemm(), beta, y);
    gemm(ctx, Op::N, base_op(), 1.0, x, w0_, 1.0, y);
  }

  /// y += s (dropout(x) Aᵀ) Bᵀ: the adapter's contribution only, for a base computed elsewhere.
  void forward_delta(Ctx& ctx, ConstView x, View y) {
    forward_delta(ctx, x, y, own_reserve(x.rows()));
  }
  void forward_delta(Ctx& ctx, ConstView x, View y, Reserve reserve) {
    detail::check_activations("Lora::forward_delta", "x", x, "y", y, in_, out_);
    this->check_unmerged("Lora::forward_delta");
    check_reserve("Lora::forward_delta", reserve, x.rows());
    compute_xa(ctx, x, reserve);
    gemm(ctx, Op::N, Op::T, scaling_, as_const(xa_view(reserve, x.rows())), b_for_gemm(), 1.0, y);
  }

  /// Accumulates dA and dB; writes dx = dy W0 + adapter part unless dx is an empty view.
  void backward(Ctx& ctx, ConstView x, ConstView dy, View dx) {
    backward(ctx, x, dy, dx, own_reserve(x.rows()));
  }
  void backward(Ctx& ctx, ConstView x, ConstView dy, View dx, Reserve reserve) {
    backward_impl("Lora::backward", ctx, x, dy, dx, reserve, /*accumulate_dx=*/false);
  }

  /// Accumulates dA and dB; dx += the adapter's part only (dx may be an empty view).
  void backward_delta(Ctx& ctx, ConstView x, ConstView dy, View dx) {
    backward_delta(ctx, x, dy, dx, own_reserve(x.rows()));
  }
  void backward_delta(Ctx& ctx, ConstView x, ConstView dy, View dx, Reserve reserve) {
    backward_impl("Lora::backward_delta", ctx, x, dy, dx, reserve, /*accumulate_dx=*/true);
  }

  // ---- training --------------------------------------------------------------------------

  std::vector<Parameter<param_type, B>> parameters() {
    return {{"lora_A", a_.view(), grad_a_.view()}, {"lora_B", b_.view(), grad_b_.view()}};
  }

  /// Call after changing A or B (an optimizer step does): refreshes the 16-bit GEMM copies.
  void parameters_updated(Ctx& ctx) {
    if constexpr (has_gemm_copies) {
      copy(ctx, as_const(a_.view()), a_gemm_.view());
      copy(ctx, as_const(b_.view()), b_gemm_.view());
    } else {
      (void)ctx;
    }
  }

  void zero_grad(Ctx& ctx) {
    fill(ctx, grad_a_.view(), 0.0);
    fill(ctx, grad_b_.view(), 0.0);
  }

  /// Training enables dropout; evaluation disables it. Do not switch between a forward and
  /// its backward.
  void set_training(bool training) noexcept { training_ = training; }

  // ---- merging (merge, safe_merge, unmerge, delta_weight, merged: detail::MergeOps) -----

  /// target += sign · ΔW in the frozen weight's orientation (for composite adapters such as RoSA
  /// and for exporting merged weights; does not change the merged state). 16-bit weights get ΔW
  /// computed from the fp32 factors and rounded once, as PEFT does.
  void add_delta(Ctx& ctx, View target, double sign) {
    PEFT_CHECK_SHAPE(target.rows() == w0_.rows() && target.cols() == w0_.cols(),
                     "Lora::add_delta: target is ", shape_string(target), ", the frozen weight is ",
                     shape_string(w0_));
    const double s = sign * scaling_;
    const Op op = config_.fan_in_fan_out ? Op::T : Op::N;
    // [out, in]: B A;  [in, out]: Aᵀ Bᵀ.
    auto first = [&](auto a, auto b) { return config_.fan_in_fan_out ? a : b; };
    if constexpr (has_gemm_copies) {
      typename detail::Workspace<B>::Frame frame(ctx.workspace());
      auto delta = frame.template matrix<param_type>(target.rows(), target.cols());
      gemm(ctx, op, op, s, first(as_const(a_.view()), as_const(b_.view())),
           first(as_const(b_.view()), as_const(a_.view())), 0.0, delta);
      axpy(ctx, 1.0, as_const(delta), target);
    } else {
      gemm(ctx, op, op, s, first(as_const(a_.view()), as_const(b_.view())),
           first(as_const(b_.view()), as_const(a_.view())), 1.0, target);
    }
  }

  /// The frozen weight and bias views the layer was built with.
  ConstView base_weight() const noexcept { return w0_; }
  VectorView<const T, B> bias() const noexcept { return bias_; }

 private:
  static constexpr bool has_gemm_copies = !std::is_same_v<T, param_type>;
  static constexpr index_t kHeaderBytes = 256;  // the dropout stream, padded for alignment
  static constexpr std::uintptr_t kReserveAlignment = 64;

  static void validate_config(const LoraConfig& c) {
    PEFT_CHECK_ARG(c.r >= 1, "Lora: r is ", c.r, ", expected >= 1");
    PEFT_CHECK_ARG(std::isfinite(c.alpha), "Lora: alpha is ", c.alpha, ", expected a finite value");
    PEFT_CHECK_ARG(c.dropout >= 0.0f && c.dropout < 1.0f, "Lora: dropout is ", c.dropout,
                   ", expected in [0, 1)");
  }

  void initialise(Ctx& ctx) {
    Matrix<param_type, Cpu> host_a(config_.r, in_), host_b(out_, config_.r);
    const auto stream_a = make_stream(config_.seed, options_.stream_id, RandomPurpose::init, 0);
    const auto stream_b = make_stream(config_.seed, options_.stream_id, RandomPurpose::init, 1);
    switch (config_.init) {
      case LoraInit::kaiming_uniform:
        fill_kaiming_uniform(host_a.view(), stream_a);
        break;
      case LoraInit::gaussian: {
        const double std_dev = 1.0 / double(config_.r);
        param_type* a = host_a.data();
        for (index_t i = 0; i < host_a.size(); ++i)
          a[i] = static_cast<param_type>(std_dev * normal_from_stream(stream_a, std::uint64_t(i)));
        break;
      }
      case LoraInit::none:
        fill_kaiming_uniform(host_a.view(), stream_a);
        fill_kaiming_uniform(host_b.view(), stream_b);
        break;
    }
    upload(ctx, as_const(host_a.view()), a_.view());
    upload(ctx, as_const(host_b.view()), b_.view());
    parameters_updated(ctx);
  }

  /// nn.Linear's kaiming_uniform_(a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  static void fill_kaiming_uniform(MatrixView<param_type, Cpu> m, const RandomStream& s) {
    const float bound = static_cast<float>(1.0 / std::sqrt(double(m.cols())));
    for (index_t i = 0; i < m.size(); ++i)
      m.data()[i] = static_cast<param_type>(uniform_symmetric(s.bits(std::uint64_t(i)), bound));
  }

  bool dropout_active() const noexcept { return training_ && config_.dropout > 0.0f; }
  Op base_op() const noexcept { return config_.fan_in_fan_out ? Op::N : Op::T; }

  MatrixView<const T, B> a_for_gemm() const {
    if constexpr (has_gemm_copies)
      return a_gemm_.view();
    else
      return a_.view();
  }
  MatrixView<const T, B> b_for_gemm() const {
    if constexpr (has_gemm_copies)
      return b_gemm_.view();
    else
      return b_.view();
  }

  RandomStream* stream_slot(Reserve reserve) const {
    return reinterpret_cast<RandomStream*>(reserve.data());
  }
  View xa_view(Reserve reserve, index_t rows) const {
    return View(reinterpret_cast<T*>(reserve.data() + kHeaderBytes), rows, config_.r);
  }

  Reserve own_reserve(index_t rows) {
    grow_own_reserve(rows);
    return own_reserve_.view();
  }
  void grow_own_reserve(index_t rows) {
    if (own_reserve_.size() < reserve_bytes(rows))
      own_reserve_ = Vector<std::byte, B>(reserve_bytes(rows));
  }

  void check_reserve(const char* where, Reserve reserve, index_t rows) const {
    PEFT_CHECK_SHAPE(reserve.size() >= reserve_bytes(rows) && reserve.inc() == 1, where,
                     ": reserve has ", reserve.size(), " bytes, ", reserve_bytes(rows),
                     " needed for ", rows, " rows (reserve_bytes)");
    // The dropout stream needs 8-byte alignment on the GPU, the x Aᵀ GEMM's vector loads 16;
    // 64 is what peft::Vector gives on the CPU (cudaMalloc gives 256).
    PEFT_CHECK_ARG(reinterpret_cast<std::uintptr_t>(reserve.data()) % kReserveAlignment == 0, where,
                   ": reserve starts at ", static_cast<const void*>(reserve.data()),
                   ", which is not ", kReserveAlignment,
                   "-byte aligned (peft::Vector and cudaMalloc memory is)");
  }

  /// x Aᵀ (through dropout when training) into the reserve, with the dropout stream.
  void compute_xa(Ctx& ctx, ConstView x, Reserve reserve) {
    View xa = xa_view(reserve, x.rows());
    if (!dropout_active()) {
      gemm(ctx, Op::N, Op::T, 1.0, x, a_for_gemm(), 0.0, xa);
      return;
    }
    const RandomStream stream =
        make_stream(config_.seed, options_.stream_id, RandomPurpose::dropout, dropout_calls_++);
    store_value(ctx, stream, stream_slot(reserve));
    typename detail::Workspace<B>::Frame frame(ctx.workspace());
    View x_dropped = frame.template matrix<T>(x.rows(), x.cols());
    dropout(ctx, stream_slot(reserve), config_.dropout, x, x_dropped);
    gemm(ctx, Op::N, Op::T, 1.0, as_const(x_dropped), a_for_gemm(), 0.0, xa);
  }

  void base_forward(Ctx& ctx, ConstView x, View y) {
    double beta = 0;
    if (!bias_.empty()) {
      broadcast_rows(ctx, bias_, y);
      beta = 1;
    }
    gemm(ctx, Op::N, base_op(), 1.0, x, w0_, beta, y);
  }

  void backward_impl(const char* where, Ctx& ctx, ConstView x, ConstView dy, View dx,
                     Reserve reserve, bool accumulate_dx) {
    detail::check_activations(where, "x", x, "dy", dy, in_, out_);
    PEFT_CHECK_SHAPE(dx.empty() || (dx.rows() == x.rows() && dx.cols() == in_), where, ": dx is ",
                     shape_string(dx), ", expected ", x.rows(), " x ", in_,
                     " (the shape of x) or an empty view");
    this->check_unmerged(where);
    check_reserve(where, reserve, x.rows());
    const index_t n = x.rows();
    const auto xa = as_const(xa_view(reserve, n));
    typename detail::Workspace<B>::Frame frame(ctx.workspace());
    View dxa = frame.template matrix<T>(n, config_.r);

    gemm(ctx, Op::T, Op::N, scaling_, dy, xa, 1.0, grad_b_.view());  // dB += s dyᵀ (x Aᵀ)
    gemm(ctx, Op::N, Op::N, scaling_, dy, b_for_gemm(), 0.0, dxa);   // d(xAᵀ) = s dy B
    View x_dropped;
    if (dropout_active()) {
      x_dropped = frame.template matrix<T>(n, in_);
      dropout(ctx, stream_slot(reserve), config_.dropout, x, x_dropped);
      gemm(ctx, Op::T, Op::N, 1.0, as_const(dxa), as_const(x_dropped), 1.0, grad_a_.view());
    } else {
      gemm(ctx, Op::T, Op::N, 1.0, as_const(dxa), x, 1.0, grad_a_.view());  // dA += d(xAᵀ)ᵀ x
    }
    if (dx.empty()) return;

    if (!accumulate_dx) {
      // dx = mask ⊙ (d(xAᵀ) A) first, then the base accumulates into it with beta = 1.
      gemm(ctx, Op::N, Op::N, 1.0, as_const(dxa), a_for_gemm(), 0.0, dx);
      if (dropout_active()) dropout(ctx, stream_slot(reserve), config_.dropout, as_const(dx), dx);
      gemm(ctx, Op::N, config_.fan_in_fan_out ? Op::T : Op::N, 1.0, dy, w0_, 1.0, dx);
    } else if (dropout_active()) {
      View part = x_dropped;  // reuse: the dropped x is no longer needed
      gemm(ctx, Op::N, Op::N, 1.0, as_const(dxa), a_for_gemm(), 0.0, part);
      dropout(ctx, stream_slot(reserve), config_.dropout, as_const(part), part);
      axpy(ctx, 1.0, as_const(part), dx);
    } else {
      gemm(ctx, Op::N, Op::N, 1.0, as_const(dxa), a_for_gemm(), 1.0, dx);
    }
  }

  ConstView w0_;
  VectorView<const T, B> bias_;
  LoraConfig config_;
  LayerOptions options_;
  index_t in_ = 0;
  index_t out_ = 0;
  double scaling_ = 1;
  Matrix<param_type, B> a_, b_, grad_a_, grad_b_;
  Matrix<T, B> a_gemm_, b_gemm_;  // 16-bit copies of A and B for the GEMMs
  Vector<std::byte, B> own_reserve_;
  std::uint32_t dropout_calls_ = 0;
  bool training_ = true;
};

}  // namespace peft
