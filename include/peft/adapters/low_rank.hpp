#pragma once
// The low-rank path every method shares: s · (dropout(x) A_effᵀ) B_effᵀ over effective factors
// A_eff [r, in] and B_eff [out, r], and the gradients of those factors. A method (LoRA, AdaLoRA,
// NOLA, LoRA-XS) decides how its trainable tensors make the factors; this file does not care.
//
// As Hugging Face PEFT does over a 16-bit model, the path computes in the factors' type
// C = param_t<T> (fp32 for 16-bit T): x is converted to C, x A_effᵀ and its gradient are C, and
// only the path's result is rounded to T when it enters y or dx. The fp32 gradients of the
// factors are then fp32-accurate, not 16-bit-accurate.
//
// Per-call state follows cuDNN's reserve-space pattern: forward writes the dropout stream and
// x A_effᵀ [rows, r] into a reserve, backward reads them. Scratch comes from the Context's
// workspace; nothing here allocates once the reserve and the workspace are sized.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../core/random.hpp"
#include "adapter.hpp"

namespace peft::detail {

/// What the path needs to know of a method's configuration.
struct LowRankShape {
  index_t in = 0;
  index_t out = 0;
  index_t r = 0;
  double scaling = 1;
  double dropout = 0;  // on the path's input, in [0, 1)
  std::uint64_t seed = 0;
  std::uint32_t stream_id = 0;
};

template <class T, class B>
class LowRankPath {
 public:
  using C = param_t<T>;  // the factors' and the path's compute type
  using Ctx = Context<B>;
  using ConstView = MatrixView<const T, B>;
  using View = MatrixView<T, B>;
  using Reserve = VectorView<std::byte, B>;
  static constexpr index_t kHeaderBytes = 256;  // the dropout stream, padded for alignment
  static constexpr std::uintptr_t kReserveAlignment = 64;

  LowRankPath() = default;
  explicit LowRankPath(const LowRankShape& shape)
      : shape_(shape),
        a_(shape.r, shape.in),
        b_(shape.out, shape.r),
        grad_a_(shape.r, shape.in),
        grad_b_(shape.out, shape.r) {}

  /// A path of another shape (factors and gradients zero) that continues this one's dropout
  /// stream and mode: for a layer that changes its rank (AdaLora::keep_ranks).
  LowRankPath reshaped(Ctx& ctx, const LowRankShape& shape) const {
    LowRankPath p(shape);
    for (auto* m : {&p.a_, &p.b_, &p.grad_a_, &p.grad_b_}) fill(ctx, m->view(), 0.0);
    p.dropout_calls_ = dropout_calls_;
    p.training_ = training_;
    return p;
  }

  const LowRankShape& shape() const noexcept { return shape_; }
  index_t rank() const noexcept { return shape_.r; }
  double scaling() const noexcept { return shape_.scaling; }
  bool training() const noexcept { return training_; }
  void set_training(bool training) noexcept { training_ = training; }

  MatrixView<C, B> a() noexcept { return a_.view(); }
  MatrixView<C, B> b() noexcept { return b_.view(); }
  MatrixView<C, B> grad_a() noexcept { return grad_a_.view(); }
  MatrixView<C, B> grad_b() noexcept { return grad_b_.view(); }
  MatrixView<const C, B> a() const noexcept { return a_.view(); }
  MatrixView<const C, B> b() const noexcept { return b_.view(); }

  // ---- reserve and workspace ---------------------------------------------------------------

  index_t reserve_bytes(index_t rows) const {
    PEFT_CHECK_SHAPE(rows >= 0, "reserve_bytes: rows is ", rows, ", expected >= 0");
    return kHeaderBytes + align_up(rows * shape_.r * index_t(sizeof(C)));
  }

  /// Scratch one call of `rows` rows takes from the Context's workspace at most.
  index_t workspace_bytes(index_t rows) const {
    const index_t c = sizeof(C);
    return align_up(rows * shape_.in * c) + align_up(rows * shape_.out * c) +
           align_up(rows * shape_.r * c) + 4 * 256;
  }

  template <class Where>
  void check_reserve(const Where& where, Reserve reserve, index_t rows) const {
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

  /// The layer's own reserve, for the simple order (each forward followed by its backward).
  Reserve own_reserve(index_t rows) {
    grow_own_reserve(rows);
    return own_reserve_.view();
  }
  void grow_own_reserve(index_t rows) {
    if (own_reserve_.size() < reserve_bytes(rows))
      own_reserve_ = Vector<std::byte, B>(reserve_bytes(rows));
  }

  // ---- products ------------------------------------------------------------------------------

  /// y = s (dropout(x) A_effᵀ) B_effᵀ + beta y; x A_effᵀ and the dropout stream go to the reserve.
  void forward(Ctx& ctx, ConstView x, View y, double beta, Reserve reserve) {
    const index_t n = x.rows();
    auto xa = xa_view(reserve, n);
    {
      typename Workspace<B>::Frame frame(ctx.workspace());
      if (dropout_active()) {
        const RandomStream stream =
            make_stream(shape_.seed, shape_.stream_id, RandomPurpose::dropout, dropout_calls_++);
        store_value(ctx, stream, stream_slot(reserve));
      }
      gemm(ctx, Op::N, Op::T, 1.0, input_in_c(ctx, frame, x, reserve), as_const(a_.view()), 0.0,
           xa);
    }
    if constexpr (std::is_same_v<T, C>) {
      gemm(ctx, Op::N, Op::T, shape_.scaling, as_const(xa), as_const(b_.view()), beta, y);
    } else {  // the C result is rounded to T once, when it enters y
      typename Workspace<B>::Frame frame(ctx.workspace());
      auto delta = frame.template matrix<C>(n, shape_.out);
      gemm(ctx, Op::N, Op::T, shape_.scaling, as_const(xa), as_const(b_.view()), 0.0, delta);
      enter(ctx, as_const(delta), y, beta);
    }
  }

  /// Accumulates dA_eff and dB_eff; dx = the path's part + beta dx unless dx is empty.
  void backward(Ctx& ctx, ConstView x, ConstView dy, View dx, double beta, Reserve reserve) {
    const index_t n = x.rows();
    const auto xa = as_const(xa_view(reserve, n));
    typename Workspace<B>::Frame frame(ctx.workspace());
    MatrixView<const C, B> dy_c;
    if constexpr (std::is_same_v<T, C>) {
      dy_c = dy;
    } else {
      auto converted = frame.template matrix<C>(n, shape_.out);
      copy(ctx, dy, converted);
      dy_c = as_const(converted);
    }
    auto dxa = frame.template matrix<C>(n, shape_.r);
    gemm(ctx, Op::T, Op::N, shape_.scaling, dy_c, xa, 1.0, grad_b_.view());  // dB += s dyᵀ xa
    gemm(ctx, Op::N, Op::N, shape_.scaling, dy_c, as_const(b_.view()), 0.0, dxa);  // s dy B
    const auto x_used = input_in_c(ctx, frame, x, reserve);
    gemm(ctx, Op::T, Op::N, 1.0, as_const(dxa), x_used, 1.0, grad_a_.view());  // dA += dxaᵀ x
    if (dx.empty()) return;

    if constexpr (std::is_same_v<T, C>) {
      if (beta == 0.0 || !dropout_active()) {  // straight into dx, masked in place
        gemm(ctx, Op::N, Op::N, 1.0, as_const(dxa), as_const(a_.view()), beta, dx);
        if (dropout_active()) dropout(ctx, stream_slot(reserve), shape_.dropout, as_const(dx), dx);
        return;
      }
    }
    // The dropped or converted x is no longer needed: its scratch takes the part.
    const bool x_used_is_scratch =
        static_cast<const void*>(x_used.data()) != static_cast<const void*>(x.data());
    auto part = x_used_is_scratch ? MatrixView<C, B>(const_cast<C*>(x_used.data()), n, shape_.in)
                                  : frame.template matrix<C>(n, shape_.in);
    gemm(ctx, Op::N, Op::N, 1.0, as_const(dxa), as_const(a_.view()), 0.0, part);
    if (dropout_active()) dropout(ctx, stream_slot(reserve), shape_.dropout, as_const(part), part);
    enter(ctx, as_const(part), dx, beta);
  }

  /// target += sign · s B_eff A_eff in the frozen weight's orientation ([out, in], or [in, out]
  /// with fan_in_fan_out). 16-bit targets get the product in C, rounded once.
  void add_delta(Ctx& ctx, View target, double sign, bool fan_in_fan_out) {
    const double s = sign * shape_.scaling;
    const Op op = fan_in_fan_out ? Op::T : Op::N;
    const auto a = as_const(a_.view());
    const auto b = as_const(b_.view());
    // [out, in]: B A;  [in, out]: Aᵀ Bᵀ.
    auto first = fan_in_fan_out ? a : b;
    auto second = fan_in_fan_out ? b : a;
    if constexpr (std::is_same_v<T, C>) {
      gemm(ctx, op, op, s, first, second, 1.0, target);
    } else {
      typename Workspace<B>::Frame frame(ctx.workspace());
      auto delta = frame.template matrix<C>(target.rows(), target.cols());
      gemm(ctx, op, op, s, first, second, 0.0, delta);
      axpy(ctx, 1.0, as_const(delta), target);
    }
  }

  void zero_grad(Ctx& ctx) {
    fill(ctx, grad_a_.view(), 0.0);
    fill(ctx, grad_b_.view(), 0.0);
  }

 private:
  bool dropout_active() const noexcept { return training_ && shape_.dropout > 0.0; }

  RandomStream* stream_slot(Reserve reserve) const {
    return reinterpret_cast<RandomStream*>(reserve.data());
  }
  MatrixView<C, B> xa_view(Reserve reserve, index_t rows) const {
    return MatrixView<C, B>(reinterpret_cast<C*>(reserve.data() + kHeaderBytes), rows, shape_.r);
  }

  /// dropout(x) in C: x itself when nothing is to be done, else a scratch copy in the frame.
  MatrixView<const C, B> input_in_c(Ctx& ctx, typename Workspace<B>::Frame& frame, ConstView x,
                                    Reserve reserve) const {
    if constexpr (std::is_same_v<T, C>) {
      if (!dropout_active()) return x;
    }
    auto xc = frame.template matrix<C>(x.rows(), x.cols());
    if (dropout_active())
      dropout(ctx, stream_slot(reserve), shape_.dropout, x, xc);
    else
      copy(ctx, x, xc);
    return as_const(xc);
  }

  /// out = part + beta out (beta is 0 or 1), rounding to out's type once.
  template <class TO>
  static void enter(Ctx& ctx, MatrixView<const C, B> part, MatrixView<TO, B> out, double beta) {
    if (beta == 0.0)
      copy(ctx, part, out);
    else
      axpy(ctx, 1.0, part, out);
  }

  LowRankShape shape_;
  Matrix<C, B> a_, b_, grad_a_, grad_b_;
  Vector<std::byte, B> own_reserve_;
  std::uint32_t dropout_calls_ = 0;
  bool training_ = true;
};

}  // namespace peft::detail
