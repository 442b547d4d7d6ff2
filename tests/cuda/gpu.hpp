#pragma once
// The narrow, plain-C++ face of the GPU side of the CUDA tests. The .cu files behind it run the
// CUDA backend; the .cpp files (GoogleTest cases and the CPU references, with Eigen) see only
// this header (with gpu_adapter.hpp for the adapters and gpu_sparse.hpp for the sparse side):
// host Matrix<double, Cpu> in and out, element types as a runtime DType, device memory behind
// opaque handles. No CUDA or Eigen type appears here.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <peft/core/adamw_step.hpp>
#include <peft/core/backend.hpp>
#include <peft/core/buffer.hpp>
#include <peft/core/random.hpp>

namespace peft::gpu {

using HostMatrix = Matrix<double, Cpu>;
using HostView = MatrixView<const double, Cpu>;

/// Element types of device matrices: float, double, __half, __nv_bfloat16.
enum class DType { f32, f64, f16, bf16 };

inline const char* name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
  }
  return "?";
}

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- the device ------------------------------------------------------------------------------

/// True when a CUDA device can be used (peft::gpu::detail::device_available()).
bool device_available();
/// Why no device can be used, e.g. "cudaGetDeviceCount returned cudaErrorInsufficientDriver
/// (35): CUDA driver version is insufficient for CUDA runtime version"; empty when one can.
std::string unavailable_reason();
/// Number of CUDA devices (0 without a driver).
int device_count();
/// Builds (and drops) a Context<Cuda> on `device`: throws peft::Error for a bad index.
void make_context(int device);
/// Waits for the shared test context's stream.
void synchronize();
/// True when the shared test context still holds its stream and cuBLAS/cuSPARSE handles.
bool context_alive();
/// For a death test's child: registers an atexit handler, then creates the shared test context
/// and calls exit(0). The handler runs after the destructors of statics constructed after it was
/// registered, and ends the process with 0 when the context is still alive there, 3 when not.
[[noreturn]] void exit_checking_context_outlives_statics();

/// Allocations so far: device memory through the backend's allocator (cudaMalloc), and the
/// shared test context's workspace.
struct DeviceAllocations {
  std::size_t backend = 0;
  std::size_t workspace = 0;
};
DeviceAllocations device_allocations();

/// What cublasGetMathMode reports for a context's cuBLAS handle.
struct CublasMathMode {
  bool tf32 = false;                                  // CUBLAS_TF32_TENSOR_OP_MATH
  bool disallow_reduced_precision_reduction = false;  // the split-K reduction stays fp32
};
/// The math mode of the shared test context's handle.
CublasMathMode cublas_math_mode();
/// The math mode of a fresh context made with CudaContextOptions::allow_tf32 = allow_tf32.
CublasMathMode cublas_math_mode(bool allow_tf32);

// ---- device memory ---------------------------------------------------------------------------

/// A rows x cols matrix of `dtype` in device memory. Strided: the view is the block at (1, 2)
/// of a (rows + 3) x (cols + 5) device matrix whose other elements hold `gap`, so a kernel that
/// ignores the stride reads the gap (NaN by default) or writes over it. Move-only.
class DeviceMatrix {
 public:
  DeviceMatrix();  // empty (0 x 0), e.g. "no dx"
  DeviceMatrix(DType dtype, index_t rows, index_t cols, bool strided = false, double gap = kNaN);
  /// A device matrix holding `values` (rounded to dtype on the host, to nearest even).
  DeviceMatrix(DType dtype, HostView values, bool strided = false, double gap = kNaN);
  DeviceMatrix(DeviceMatrix&&) noexcept;
  DeviceMatrix& operator=(DeviceMatrix&&) noexcept;
  ~DeviceMatrix();

  DType dtype() const;
  index_t rows() const;
  index_t cols() const;
  index_t stride() const;
  bool strided() const;
  bool empty() const;

  /// Overwrites the view's elements (not the gaps) with `values`, rounded to dtype.
  void upload(HostView values);
  /// The view's elements, converted to double.
  HostMatrix download() const;
  /// True when every element outside the view still holds the gap value (NaN equals NaN).
  bool gaps_untouched() const;

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

/// `bytes` bytes of device memory (a caller-owned reserve).
class DeviceBytes {
 public:
  explicit DeviceBytes(index_t bytes);
  DeviceBytes(DeviceBytes&&) noexcept;
  DeviceBytes& operator=(DeviceBytes&&) noexcept;
  ~DeviceBytes();
  index_t size() const;

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// ---- primitives (peft::gpu::*) on the shared test context -----------------------------------

/// C = alpha op(A) op(B) + beta C. Supported: A, B, C of one dtype, or 16-bit A, B and f32 C.
void gemm(Op op_a, Op op_b, double alpha, const DeviceMatrix& a, const DeviceMatrix& b, double beta,
          DeviceMatrix& c);
void fill(DeviceMatrix& x, double value);
void scale(double alpha, DeviceMatrix& x);
void axpy(double alpha, const DeviceMatrix& x, DeviceMatrix& y);
void copy(const DeviceMatrix& src, DeviceMatrix& dst);
/// Every row of y = b, where b is row 0 of a 1 x cols matrix (increment 1) or, with
/// `column`, column 0 of a cols x 1 matrix (increment = its stride).
void broadcast_rows(const DeviceMatrix& b, bool column, DeviceMatrix& y);
double dot(const DeviceMatrix& x, const DeviceMatrix& y);
double norm(const DeviceMatrix& x);
bool all_finite(const DeviceMatrix& x);
/// out = dropout(x) with the stream stored in device memory first (store_value). x and out
/// may be the same matrix (pass it twice).
void dropout(const RandomStream& stream, double p, const DeviceMatrix& x, DeviceMatrix& out);
/// AdaLoRA's statistics: value and grad of one dtype, the three statistics of one dtype (f32 or
/// f64 each).
void importance_update(double beta1, double beta2, const DeviceMatrix& value,
                       const DeviceMatrix& grad, DeviceMatrix& sensitivity,
                       DeviceMatrix& uncertainty, DeviceMatrix& score);
/// y = x ⊙ y; any pair of dtypes.
void multiply(const DeviceMatrix& x, DeviceMatrix& y);

/// One tensor of a fused AdamW update: value, grad, m, v (value, m and v are updated).
struct AdamWDeviceTensors {
  DeviceMatrix* value;
  const DeviceMatrix* grad;
  DeviceMatrix* m;
  DeviceMatrix* v;
};
/// peft::gpu::adamw_update over all tensors in one call (dtype f32 or f64).
void adamw_update(const AdamWStep& step, std::span<const AdamWDeviceTensors> tensors);

/// A kernel's RandomStream::bits(index) for every index.
std::vector<std::uint32_t> philox_bits(const RandomStream& stream,
                                       std::span<const std::uint64_t> indices);
/// A kernel's uniform_symmetric(stream.bits(index), bound) for every index.
std::vector<float> philox_uniform_symmetric(const RandomStream& stream, float bound,
                                            std::span<const std::uint64_t> indices);

}  // namespace peft::gpu
