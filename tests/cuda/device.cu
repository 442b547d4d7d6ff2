// The device side of the CUDA tests' plumbing: availability, the shared context, device
// matrices (through the library's upload and download).

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "device.cuh"

namespace peft::gpu {

bool device_available() {
  return gpu::detail::device_available();
}

std::string unavailable_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return peft::detail::concat("cudaGetDeviceCount returned ", cudaGetErrorName(status), " (",
                                static_cast<int>(status), "): ", cudaGetErrorString(status));
  }
  if (count == 0) return "cudaGetDeviceCount found 0 devices";
  return {};
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

void make_context(int device) {
  Context<Cuda> ctx(CudaContextOptions{.device = device});
}

Context<Cuda>& context() {
  // Leaked on purpose: a static Context would be destroyed at exit, after the CUDA runtime may
  // have been torn down (its teardown is registered when it initialises, before the first test
  // creates the context), and ~Context synchronises the stream and calls cublasDestroy, which
  // synchronises the device. The process exit returns the memory and the handles.
  static Context<Cuda>* const ctx = new Context<Cuda>();
  return *ctx;
}

bool context_alive() {
  const Context<Cuda>& ctx = context();
  return ctx.cublas() != nullptr && ctx.cusparse() != nullptr && ctx.stream() != nullptr;
}

namespace {

// Runs after the destructors of the statics whose construction completed after it was
// registered (exit runs both in reverse order of registration).
void exit_with_context_state() {
  std::_Exit(context_alive() ? 0 : 3);
}

}  // namespace

void exit_checking_context_outlives_statics() {
  std::atexit(exit_with_context_state);
  (void)context();  // created after the handler was registered
  std::exit(0);
}

namespace {

CublasMathMode math_mode_of(cublasHandle_t handle) {
  cublasMath_t mode{};
  PEFT_CUDA_CHECK(cublasGetMathMode(handle, &mode));
  const unsigned bits = static_cast<unsigned>(mode);
  CublasMathMode m;
  m.tf32 = (bits & 0xFu) == static_cast<unsigned>(CUBLAS_TF32_TENSOR_OP_MATH);
  m.disallow_reduced_precision_reduction =
      (bits & static_cast<unsigned>(CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)) != 0;
  return m;
}

}  // namespace

CublasMathMode cublas_math_mode() {
  return math_mode_of(context().cublas());
}

CublasMathMode cublas_math_mode(bool allow_tf32) {
  Context<Cuda> ctx(CudaContextOptions{.allow_tf32 = allow_tf32});
  return math_mode_of(ctx.cublas());
}

void synchronize() {
  context().synchronize();
}

DeviceAllocations device_allocations() {
  return {peft::detail::Allocator<Cuda>::allocations(), context().workspace().allocations()};
}

namespace {

template <class T>
void upload_converted(HostView values, MatrixView<T, Cuda> dst) {
  Matrix<T, Cpu> host(values.rows(), values.cols());
  for (index_t i = 0; i < values.rows(); ++i)
    for (index_t j = 0; j < values.cols(); ++j)
      host.view()(i, j) = gpu::detail::convert<T>(values(i, j));
  gpu::upload(context(), as_const(host.view()), dst);
}

template <class T>
HostMatrix download_converted(MatrixView<const T, Cuda> src) {
  Matrix<T, Cpu> host(src.rows(), src.cols());
  gpu::download(context(), src, host.view());
  HostMatrix out(src.rows(), src.cols());
  for (index_t i = 0; i < src.rows(); ++i)
    for (index_t j = 0; j < src.cols(); ++j)
      out.view()(i, j) = gpu::detail::convert<double>(host.view()(i, j));
  return out;
}

}  // namespace

// ---- DeviceMatrix ----------------------------------------------------------------------------

DeviceMatrix::DeviceMatrix() : impl_(std::make_unique<Impl>()) {}

DeviceMatrix::DeviceMatrix(DType dtype, index_t rows, index_t cols, bool strided, double gap)
    : impl_(std::make_unique<Impl>()) {
  PEFT_CHECK_SHAPE(rows >= 0 && cols >= 0, "DeviceMatrix: negative size ", rows, " x ", cols);
  Impl& m = *impl_;
  m.dtype = dtype;
  m.rows = rows;
  m.cols = cols;
  m.strided = strided;
  m.gap = gap;
  m.full_rows = rows + (strided ? 3 : 0);
  m.full_cols = cols + (strided ? 5 : 0);
  m.offset = strided ? 1 * m.full_cols + 2 : 0;
  dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    m.storage = peft::detail::Allocation<Cuda>(
        peft::detail::checked_bytes(m.full_rows * m.full_cols, sizeof(T), "DeviceMatrix"));
    if (m.full_rows * m.full_cols == 0) return;
    // Every element starts as the gap value: outputs begin as NaN unless told otherwise.
    HostMatrix all(m.full_rows, m.full_cols);
    for (index_t i = 0; i < all.size(); ++i) all.data()[i] = gap;
    upload_converted<T>(as_const(all.view()), m.full<T>());
  });
}

DeviceMatrix::DeviceMatrix(DType dtype, HostView values, bool strided, double gap)
    : DeviceMatrix(dtype, values.rows(), values.cols(), strided, gap) {
  upload(values);
}

DeviceMatrix::DeviceMatrix(DeviceMatrix&&) noexcept = default;
DeviceMatrix& DeviceMatrix::operator=(DeviceMatrix&&) noexcept = default;
DeviceMatrix::~DeviceMatrix() = default;

DType DeviceMatrix::dtype() const {
  return impl_->dtype;
}
index_t DeviceMatrix::rows() const {
  return impl_->rows;
}
index_t DeviceMatrix::cols() const {
  return impl_->cols;
}
index_t DeviceMatrix::stride() const {
  return impl_->full_cols;
}
bool DeviceMatrix::strided() const {
  return impl_->strided;
}
bool DeviceMatrix::empty() const {
  return impl_->rows == 0 || impl_->cols == 0;
}

void DeviceMatrix::upload(HostView values) {
  dispatch(impl_->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    upload_converted<T>(values, impl_->view<T>());
  });
}

HostMatrix DeviceMatrix::download() const {
  return dispatch(impl_->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return download_converted<T>(impl_->view<const T>());
  });
}

bool DeviceMatrix::gaps_untouched() const {
  const Impl& m = *impl_;
  if (!m.strided) return true;
  const HostMatrix all = dispatch(m.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return download_converted<T>(m.full<const T>());
  });
  // The gap as it was stored (rounded to the dtype).
  const double gap = dispatch(m.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return gpu::detail::convert<double>(gpu::detail::convert<T>(m.gap));
  });
  for (index_t i = 0; i < m.full_rows; ++i)
    for (index_t j = 0; j < m.full_cols; ++j) {
      const bool inside = i >= 1 && i < 1 + m.rows && j >= 2 && j < 2 + m.cols;
      if (inside) continue;
      const double v = all.view()(i, j);
      if (!(v == gap || (std::isnan(v) && std::isnan(gap)))) return false;
    }
  return true;
}

// ---- DeviceBytes -----------------------------------------------------------------------------

DeviceBytes::DeviceBytes(index_t bytes) : impl_(std::make_unique<Impl>()) {
  impl_->bytes = Vector<std::byte, Cuda>(bytes);
}
DeviceBytes::DeviceBytes(DeviceBytes&&) noexcept = default;
DeviceBytes& DeviceBytes::operator=(DeviceBytes&&) noexcept = default;
DeviceBytes::~DeviceBytes() = default;
index_t DeviceBytes::size() const {
  return impl_->bytes.size();
}

}  // namespace peft::gpu
