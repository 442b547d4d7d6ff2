#pragma once
// The backend contract: what a backend must provide for the adapters, the sparse matrices, the
// trainers and the checkpoint code to run on it, as C++20 concepts. Each backend checks itself
// with a static_assert once all its primitives are declared (backend/cuda/cuda.hpp; the CPU in
// tests/backend/contract_test.cpp), so a primitive that is missing, or that takes other
// arguments than its callers pass, fails where the backend is defined rather than deep inside an
// adapter instantiation.
//
// A backend is a tag type B (core/backend.hpp) with
//   - Context<B> specialised, holding a Workspace<B> (the scratch arena of every call);
//   - detail::Allocator<B>: allocate(bytes) (zeroed), deallocate(p), allocations() (a counter
//     that tests use to prove hot paths allocate nothing);
//   - SparseCache<B>: per-CSR-matrix state between calls (may be empty);
//   - the primitives below as free functions in the tag's namespace, which argument-dependent
//     lookup finds through Context<B>: callers write gemm(ctx, ...) unqualified.
// Element types: T is the type of activations and frozen weights (float, double or a 16-bit
// type), C = param_t<T> the type of trainable parameters, their gradients and the adapters'
// low-rank path. Every requirement mirrors a call the library makes (the comments say where).
// Argument checks shared by all backends are in backend/checks.hpp.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "../core/adamw_step.hpp"
#include "../core/backend.hpp"
#include "../core/buffer.hpp"
#include "../core/dtype.hpp"
#include "../core/random.hpp"
#include "../core/sparse.hpp"
#include "../core/view.hpp"
#include "../core/workspace.hpp"
#include "svd.hpp"

namespace peft {

/// The context, the allocator and the sparse cache of backend B.
template <class B>
concept BackendResources = std::default_initializable<SparseCache<B>> &&
    std::movable<SparseCache<B>> && requires(Context<B>& ctx, std::size_t bytes, void* p) {
  { ctx.workspace() } -> std::same_as<detail::Workspace<B>&>;
  { detail::Allocator<B>::allocate(bytes) } -> std::same_as<void*>;
  detail::Allocator<B>::deallocate(p);
  { detail::Allocator<B>::allocations() } -> std::convertible_to<std::size_t>;
};

/// Dense products and element-wise primitives over T and C = param_t<T>.
template <class B, class T, class C = param_t<T>>
concept DensePrimitives = requires(Context<B>& ctx, Op op, MatrixView<T, B> t,
                                   MatrixView<const T, B> ct, MatrixView<C, B> c,
                                   MatrixView<const C, B> cc, VectorView<const T, B> bias,
                                   const RandomStream* stream, double p) {
  // C = alpha op(A) op(B) + beta C: the frozen base (T), the low-rank path and the trainers (C),
  // and fp32 gradients of 16-bit activations (T into C; RoSA's mask builder).
  gemm(ctx, op, op, 1.0, ct, ct, 0.0, t);
  gemm(ctx, op, op, 1.0, ct, ct, 0.0, c);
  gemm(ctx, op, op, 1.0, cc, cc, 0.0, c);
  fill(ctx, t, 0.0);
  fill(ctx, c, 0.0);
  scale(ctx, 1.0, c);              // RoSA's mask builder (mean of the gradients)
  axpy(ctx, 1.0, cc, t);           // the path's C result entering y or dx
  axpy(ctx, 1.0, cc, c);           // merging, AdaLoRA's pull-back, regularisers
  copy(ctx, ct, c);                // x to C for the path
  copy(ctx, cc, t);                // the path's C result into y or dx (beta = 0)
  copy(ctx, ct, t);                // merging, RoSA's dense W0 + S
  copy(ctx, cc, c);                // AdaLoRA's diag(E)
  dropout(ctx, stream, p, ct, c);  // dropout(x) into the path
  dropout(ctx, stream, p, cc, c);  // the path's dx, masked in place
  broadcast_rows(ctx, bias, t);    // the bias into y
  { dot(ctx, cc, cc) } -> std::convertible_to<double>;
  { norm(ctx, cc) } -> std::convertible_to<double>;      // AdaLoRA's orthogonal regulariser
  { all_finite(ctx, ct) } -> std::convertible_to<bool>;  // safe_merge
};

/// CSR primitives (RoSA's sparse part, its masks; AdaLoRA's rank budget) over T and C.
template <class B, class T, class C = param_t<T>>
concept SparsePrimitives = requires(Context<B>& ctx, Op op, index_t k, MatrixView<T, B> t,
                                    MatrixView<const T, B> ct, MatrixView<C, B> c,
                                    MatrixView<const C, B> cc, const SparseOperand<T, B>& operand,
                                    const CsrView<C, B>& s, const CsrView<const C, B>& cs,
                                    VectorView<const C, B> values, VectorView<T, B> t_values,
                                    VectorView<C, B> c_values,
                                    VectorView<const std::int32_t, B> index,
                                    VectorView<std::int32_t, B> indices) {
  spmm(ctx, 1.0, ct, operand, op, 1.0, t);  // y += x Sᵀ, dx += dy S
  sddmm(ctx, 1.0, op, ct, op, ct, 1.0, s);  // dS += (dyᵀ x) ⊙ mask
  add_sparse_to_dense(ctx, 1.0, cs, t);     // W0 + S, merging
  add_sparse_to_dense(ctx, 1.0, cs, c);     // AdaLoRA's rank mask
  gather(ctx, values, index, t_values);     // Sᵀ's 16-bit value copies
  gather(ctx, values, index, c_values);     // Sᵀ's values
  csr_transpose_pattern(ctx, s, indices, indices, indices);
  accumulate_squares(ctx, 1.0, cc, c);         // RoSA's mean of squared gradients
  topk_pattern(ctx, cc, k, indices, indices);  // RoSA's masks, AdaLoRA's budget
};

/// What the trainers (train/) run on the parameters, in C.
template <class B, class T, class C = param_t<T>>
concept TrainingPrimitives = requires(Context<B>& ctx, const AdamWStep& step,
                                      std::span<const AdamWTensors<C, B>> tensors,
                                      MatrixView<C, B> c, MatrixView<const C, B> cc) {
  adamw_update(ctx, step, tensors);                     // AdamW, one call per group
  importance_update(ctx, 0.85, 0.85, cc, cc, c, c, c);  // AdaLoRA's sensitivity EMAs
  multiply(ctx, cc, c);                                 // AdaLoRA's rank mask on E
};

/// Moving data between host memory and the backend (initialisation, checkpoints, masks).
template <class B, class T, class C = param_t<T>>
concept TransferPrimitives = requires(Context<B>& ctx, MatrixView<const C, Cpu> host_src,
                                      MatrixView<C, Cpu> host_dst, MatrixView<C, B> c,
                                      MatrixView<const C, B> cc,
                                      MatrixView<const std::int32_t, Cpu> host_indices,
                                      MatrixView<std::int32_t, B> indices,
                                      MatrixView<const std::int32_t, B> c_indices,
                                      MatrixView<std::int32_t, Cpu> host_indices_dst,
                                      const RandomStream& stream, RandomStream* slot) {
  upload(ctx, host_src, c);
  download(ctx, cc, host_dst);
  upload(ctx, host_indices, indices);          // CSR patterns
  download(ctx, c_indices, host_indices_dst);  // checkpoints of CSR patterns
  store_value(ctx, stream, slot);              // the dropout stream into a reserve
};

/// What particular methods add: NOLA's combinations of and projections onto random bases, and
/// LoRA-XS's truncated SVD of the frozen weight.
template <class B, class T, class C = param_t<T>>
concept MethodPrimitives = requires(Context<B>& ctx, const RandomBasis& basis, Op op, index_t r,
                                    MatrixView<const T, B> ct, MatrixView<C, B> c,
                                    MatrixView<const C, B> cc, VectorView<C, B> values,
                                    const SvdOptions& options) {
  nola_combine(ctx, basis, cc, 0.0, c);  // NOLA: A_eff and B_eff from the coefficients
  nola_project(ctx, basis, cc, c);       // NOLA: the coefficients' gradients
  { nola_project_workspace_bytes(ctx, r, r) } -> std::convertible_to<index_t>;
  truncated_svd(ctx, op, ct, r, options, c, values, c);  // LoRA-XS: the frozen factors
};

/// Everything the library needs of backend B for element type T.
template <class B, class T>
concept BackendFor = DensePrimitives<B, T> && SparsePrimitives<B, T> && TrainingPrimitives<B, T> &&
    TransferPrimitives<B, T> && MethodPrimitives<B, T>;

/// Backend B, for each of the element types Ts its layers may have. (Unformatted: clang-format
/// 14 mangles the fold expression.)
// clang-format off
template <class B, class... Ts>
concept Backend = BackendResources<B> && (BackendFor<B, Ts> && ...);
// clang-format on

}  // namespace peft
