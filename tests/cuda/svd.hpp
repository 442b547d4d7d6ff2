#pragma once
// The truncated SVD and LoRA-XS's frozen factors on the GPU for the CUDA tests, behind plain C++
// (the rules of gpu.hpp): host matrices in double in and out, dtypes at run time.

#include <peft/adapters/lora_xs.hpp>
#include <peft/backend/svd.hpp>

#include "gpu.hpp"

namespace peft::gpu {

/// The outputs of one truncated SVD, in double: U [m, r], S [r, 1], Vt [r, n].
struct SvdFactors {
  HostMatrix u, s, vt;
};

/// gpu::truncated_svd(op, W, r, options) with W uploaded as `w_dtype` (its values rounded to it)
/// and U, S, Vt of dtype `compute` (f32 or f64, the compute type). W is given as stored: [m, n],
/// or [n, m] with op = T. With `strided`, W, U and Vt are views inside larger NaN-filled device
/// matrices and S has increment 2 inside NaN; *gaps_untouched (when given) reports whether all
/// those gaps still hold NaN.
SvdFactors svd_on_device(DType w_dtype, DType compute, Op op, HostView w, index_t r,
                         const SvdOptions& options, bool strided = false,
                         bool* gaps_untouched = nullptr);

/// gpu::truncated_svd on f32 device matrices of these (bad) shapes: throws its peft::Error.
void svd_on_device_with_shapes(Op op, index_t w_rows, index_t w_cols, index_t r,
                               const SvdOptions& options, index_t u_rows, index_t u_cols,
                               index_t s_size, index_t vt_rows, index_t vt_cols);

/// The frozen factors of a LoraXs<T, Cuda> layer (T from `dtype`), in double: a = Σ_r V_rᵀ
/// [r, in], b = U_r [out, r].
struct LoraXsDeviceFactors {
  HostMatrix a, b;
};

/// A LoraXs<T, Cuda> over `w0` (rounded to `dtype`; [out, in], or [in, out] with
/// config.fan_in_fan_out), its factors computed by the GPU's SVD.
LoraXsDeviceFactors lora_xs_factors_on_device(DType dtype, HostView w0, const LoraXsConfig& config);

/// The same layer built from given frozen factors (a reload): the factors it holds.
LoraXsDeviceFactors lora_xs_reload_on_device(DType dtype, HostView w0, const LoraXsConfig& config,
                                             HostView a, HostView b);

}  // namespace peft::gpu
