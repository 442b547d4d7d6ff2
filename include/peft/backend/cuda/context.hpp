#pragma once
// Context<Cuda>: the device, a stream, cuBLAS and cuSPARSE handles bound to that stream, a
// cuBLAS workspace and the library's scratch workspace. RAII; the stream may be the user's.

#include <cstddef>

#include "../../core/backend.hpp"
#include "../../core/workspace.hpp"
#include "allocator.hpp"
#include "check.hpp"

namespace peft {

struct CudaContextOptions {
  int device = 0;
  /// Run on this stream (not owned). nullptr: the context creates and owns a stream.
  cudaStream_t stream = nullptr;
  /// Let fp32 GEMMs use TF32 tensor cores (faster, ~1e-3 relative error). Off by default.
  bool allow_tf32 = false;
  /// Bytes handed to cuBLAS as its workspace, so that it never allocates per call.
  std::size_t cublas_workspace_bytes = std::size_t{32} << 20;
};

template <>
class Context<Cuda> {
 public:
  using backend_type = Cuda;

  Context() : Context(CudaContextOptions{}) {}
  explicit Context(const CudaContextOptions& options) : options_(options) {
    int count = 0;
    PEFT_CUDA_CHECK(cudaGetDeviceCount(&count));
    PEFT_CHECK_ARG(options.device >= 0 && options.device < count, "Context<Cuda>: device ",
                   options.device, " does not exist (", count, " devices)");
    PEFT_CUDA_CHECK(cudaSetDevice(options.device));
    try {
      if (options.stream == nullptr) {
        PEFT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        owns_stream_ = true;
      } else {
        stream_ = options.stream;
      }
      PEFT_CUDA_CHECK(cublasCreate(&cublas_));
      PEFT_CUDA_CHECK(cublasSetStream(cublas_, stream_));
      // Without CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION, cuBLAS may sum split-K
      // partial results in the output type (fp16/bf16 for 16-bit C): accumulation would no
      // longer be fp32 throughout.
      const int base = options.allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
      PEFT_CUDA_CHECK(cublasSetMathMode(
          cublas_,
          static_cast<cublasMath_t>(base | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
      cublas_workspace_ = detail::Allocation<Cuda>(options.cublas_workspace_bytes);
      PEFT_CUDA_CHECK(
          cublasSetWorkspace(cublas_, cublas_workspace_.data(), cublas_workspace_.bytes()));
      PEFT_CUDA_CHECK(cusparseCreate(&cusparse_));
      PEFT_CUDA_CHECK(cusparseSetStream(cusparse_, stream_));
      reduction_ = detail::Allocation<Cuda>(64);
      PEFT_CUDA_CHECK(cudaMallocHost(&host_reduction_, 64));
    } catch (...) {
      release();
      throw;
    }
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() { release(); }

  int device() const noexcept { return options_.device; }
  cudaStream_t stream() const noexcept { return stream_; }
  cublasHandle_t cublas() const noexcept { return cublas_; }
  cusparseHandle_t cusparse() const noexcept { return cusparse_; }
  bool allow_tf32() const noexcept { return options_.allow_tf32; }
  detail::Workspace<Cuda>& workspace() noexcept { return workspace_; }

  /// Waits for all work queued on the context's stream.
  void synchronize() const { PEFT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  /// 64 bytes of device memory and 64 bytes of pinned host memory for scalar results of
  /// reductions (dot, norm, all_finite), so that they do not allocate.
  void* reduction_device() noexcept { return reduction_.data(); }
  void* reduction_host() noexcept { return host_reduction_; }

 private:
  void release() noexcept {
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
    if (host_reduction_ != nullptr) (void)cudaFreeHost(host_reduction_);
    host_reduction_ = nullptr;
    if (cusparse_ != nullptr) (void)cusparseDestroy(cusparse_);
    cusparse_ = nullptr;
    if (cublas_ != nullptr) (void)cublasDestroy(cublas_);
    cublas_ = nullptr;
    if (owns_stream_ && stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

  CudaContextOptions options_;
  cudaStream_t stream_ = nullptr;
  bool owns_stream_ = false;
  cublasHandle_t cublas_ = nullptr;
  cusparseHandle_t cusparse_ = nullptr;
  detail::Allocation<Cuda> cublas_workspace_;
  detail::Allocation<Cuda> reduction_;
  void* host_reduction_ = nullptr;
  detail::Workspace<Cuda> workspace_;
};

}  // namespace peft
