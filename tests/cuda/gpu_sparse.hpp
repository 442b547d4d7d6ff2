#pragma once
// The sparse half of the CUDA tests' plain-C++ interface (gpu.hpp has the dense half and the
// rules): CSR matrices in device memory, the sparse primitives of peft::gpu (spmm, sddmm,
// add_sparse_to_dense, gather, csr_transpose_pattern, accumulate_squares, topk_pattern), and
// RoSA's extras over the adapter interface of gpu_adapter.hpp (the mask, a
// RosaMaskBuilder<T, Cuda>). Host data goes in and out as Matrix<double, Cpu>
// and CsrPattern; no CUDA or Eigen type appears here.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include <peft/adapters/rosa.hpp>
#include <peft/sparse/csr.hpp>
#include <peft/train/rosa_mask.hpp>

#include "gpu.hpp"
#include "gpu_adapter.hpp"

namespace peft::gpu {

/// A rows x cols CSR matrix in device memory with room for `capacity` entries: a
/// CsrMatrix<V, Cuda> (V from the dtype), so with its transpose Sᵀ (pattern, permutation and
/// values, built on the device) and its SparseCache (cuSPARSE descriptors and SpMM buffers,
/// kept between calls). Move-only.
class DeviceCsr {
 public:
  DeviceCsr(DType dtype, index_t rows, index_t cols, index_t capacity);
  /// A matrix holding `pattern` (capacity = its nnz + extra) and `values` (1 x nnz).
  DeviceCsr(DType dtype, const CsrPattern& pattern, HostView values, index_t extra = 0);
  DeviceCsr(DeviceCsr&&) noexcept;
  DeviceCsr& operator=(DeviceCsr&&) noexcept;
  ~DeviceCsr();

  DType dtype() const;
  index_t rows() const;
  index_t cols() const;
  index_t nnz() const;
  index_t capacity() const;

  /// CsrMatrix::set_pattern: validates, uploads, zeroes the values and builds Sᵀ (throws
  /// peft::Error for a bad pattern).
  void set_pattern(const CsrPattern& pattern);
  /// Overwrites the first nnz values (1 x nnz, rounded to the dtype) and refreshes Sᵀ's values.
  void set_values(HostView values);
  /// All `capacity` values of S (1 x capacity: entries past nnz included).
  HostMatrix values() const;
  /// Sᵀ's values (1 x nnz).
  HostMatrix transposed_values() const;
  /// S's pattern and Sᵀ's, downloaded.
  CsrPattern pattern() const;
  CsrPattern transposed_pattern() const;
  /// values(Sᵀ)[k] = values(S)[perm[k]].
  std::vector<std::int32_t> transpose_permutation() const;

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// ---- sparse primitives (peft::gpu::*) on the shared test context ------------------------------

/// y = alpha x op(S) + beta y. x, S and y share one dtype (the GPU primitive's rule).
void spmm(double alpha, const DeviceMatrix& x, DeviceCsr& s, Op op, double beta, DeviceMatrix& y);
/// values(S) = alpha (op(A) op(B)) ⊙ pattern(S) + beta values(S). A and B share a dtype; S is
/// f32 or f64.
void sddmm(double alpha, Op op_a, const DeviceMatrix& a, Op op_b, const DeviceMatrix& b,
           double beta, DeviceCsr& s);
/// dense += alpha S (or alpha Sᵀ with `transposed`, through Sᵀ's pattern and values); any pair
/// of dtypes.
void add_sparse_to_dense(double alpha, const DeviceCsr& s, bool transposed, DeviceMatrix& dense);
/// dst[k] = src[index[k]] over row 0 of src (1 x m) and dst (1 x index.size()); any pair of
/// dtypes.
void gather(const DeviceMatrix& src, std::span<const std::int32_t> index, DeviceMatrix& dst);
/// dst += alpha src ⊙ src; any pair of dtypes.
void accumulate_squares(double alpha, const DeviceMatrix& src, DeviceMatrix& dst);

/// One S of spmm_through_one_cache: its pattern and values (1 x nnz), and those of Sᵀ.
struct CsrWithTranspose {
  const CsrPattern* s;
  HostView s_values;
  const CsrPattern* st;
  HostView st_values;
};

/// spmm on one SparseCache, call i with S = calls[i]: every call has index arrays of its own
/// (all kept alive, so their addresses differ), while the values of S and of Sᵀ are written in
/// place into one array each (their addresses stay). All S share a shape and nnz, so only the
/// index arrays tell the calls apart. Each call starts from y0; returns y after each.
std::vector<HostMatrix> spmm_through_one_cache(DType t, std::span<const CsrWithTranspose> calls,
                                               Op op, double alpha, HostView x, double beta,
                                               HostView y0);

/// Milliseconds per add_sparse_to_dense(alpha, S or Sᵀ, dense) on the device (CUDA events, the
/// mean of `repeats` calls after one warm-up call).
double time_add_sparse_to_dense_ms(double alpha, const DeviceCsr& s, bool transposed,
                                   DeviceMatrix& dense, int repeats);

/// What a pattern builder wrote: the pattern (and permutation), and whether the output arrays'
/// `slack` elements past what it should write still hold their fill value.
struct PatternResult {
  CsrPattern pattern;
  std::vector<std::int32_t> perm;
  bool tail_untouched = true;
};

/// The fill value of output index arrays before a pattern builder runs.
inline constexpr std::int32_t kIndexSentinel = -7;

/// peft::gpu::csr_transpose_pattern of `s` (uploaded): Sᵀ's pattern and the permutation, into
/// arrays `slack` elements longer than nnz, filled with kIndexSentinel first.
PatternResult csr_transpose_pattern(const CsrPattern& s, index_t slack = 3);
/// peft::gpu::topk_pattern of `scores` (f32 or f64), col_indices `slack` elements longer than k.
PatternResult topk_pattern(const DeviceMatrix& scores, index_t k, index_t slack = 3);

/// The workspace of a fresh Context<Cuda> after peft::gpu::topk_pattern ran on it once.
struct WorkspaceUse {
  std::size_t capacity = 0;     // bytes the workspace holds afterwards
  std::size_t allocations = 0;  // allocations it made
  PatternResult result;         // what topk_pattern wrote
};
WorkspaceUse topk_pattern_on_fresh_context(const DeviceMatrix& scores, index_t k);

// ---- Rosa<T, Cuda> ---------------------------------------------------------------------------

/// A Rosa<T, Cuda> (T from the dtype) with its frozen weight (and bias) in device memory: the
/// GpuAdapter interface (parameters lora_A, lora_B, rosa_S), plus the mask and a
/// RosaMaskBuilder<T, Cuda> over the layer.
class GpuRosa : public GpuAdapter {
 public:
  virtual RosaForward forward_mode() const = 0;
  virtual index_t sparse_capacity() const = 0;
  virtual bool has_mask() const = 0;
  /// Rosa::set_mask with a host pattern (throws peft::Error for a bad one).
  virtual void set_mask(const CsrPattern& pattern) = 0;
  /// The installed pattern, downloaded.
  virtual CsrPattern mask() const = 0;
  /// Writes S's first nnz values (1 x nnz, in param_t<T>) and calls parameters_updated.
  virtual void set_sparse_values(HostView values) = 0;

  /// Creates a RosaMaskBuilder<T, Cuda>, adds the layer (with `density` if given) and starts
  /// collecting; the next backwards feed it.
  virtual void start_mask_builder(const RosaMaskOptions& options,
                                  std::optional<double> density = std::nullopt) = 0;
  /// RosaMaskBuilder::finish: builds and installs the mask.
  virtual void finish_mask_builder() = 0;
  virtual bool mask_builder_collecting() const = 0;
};

/// Rosa<T, Cuda>.
std::unique_ptr<GpuRosa> make_adapter(DType dtype, const AdapterArgs& args,
                                      const RosaConfig& config);

}  // namespace peft::gpu
