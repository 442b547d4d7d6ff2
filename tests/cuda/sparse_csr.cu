// CSR matrices of the CUDA tests: DeviceCsr over CsrMatrix<V, Cuda>, the pattern builders
// (csr_transpose_pattern, topk_pattern) on uploaded inputs.

#include <algorithm>

#include "sparse_device.cuh"

namespace peft::gpu {

namespace {

/// An int32 array of n + slack elements on the device, all kIndexSentinel.
Vector<std::int32_t, Cuda> sentinel_indices(index_t n, index_t slack) {
  const std::vector<std::int32_t> host(static_cast<std::size_t>(n + slack), kIndexSentinel);
  return device_indices(host);
}

bool all_sentinel(const std::vector<std::int32_t>& v, std::size_t from) {
  return std::all_of(v.begin() + static_cast<std::ptrdiff_t>(from), v.end(),
                     [](std::int32_t i) { return i == kIndexSentinel; });
}

}  // namespace

// ---- DeviceCsr -------------------------------------------------------------------------------

DeviceCsr::DeviceCsr(DType dtype, index_t rows, index_t cols, index_t capacity) {
  dispatch(dtype, [&](auto tag) {
    using V = typename decltype(tag)::type;
    impl_ = std::make_unique<TypedCsr<V>>(rows, cols, capacity);
  });
}

DeviceCsr::DeviceCsr(DType dtype, const CsrPattern& pattern, HostView values, index_t extra)
    : DeviceCsr(dtype, pattern.rows, pattern.cols, pattern.nnz() + extra) {
  set_pattern(pattern);
  set_values(values);
}

DeviceCsr::DeviceCsr(DeviceCsr&&) noexcept = default;
DeviceCsr& DeviceCsr::operator=(DeviceCsr&&) noexcept = default;
DeviceCsr::~DeviceCsr() = default;

DType DeviceCsr::dtype() const {
  return impl_->dtype;
}

index_t DeviceCsr::rows() const {
  return dispatch(dtype(),
                  [&](auto tag) { return csr<typename decltype(tag)::type>(*this).rows(); });
}
index_t DeviceCsr::cols() const {
  return dispatch(dtype(),
                  [&](auto tag) { return csr<typename decltype(tag)::type>(*this).cols(); });
}
index_t DeviceCsr::nnz() const {
  return dispatch(dtype(),
                  [&](auto tag) { return csr<typename decltype(tag)::type>(*this).nnz(); });
}
index_t DeviceCsr::capacity() const {
  return dispatch(dtype(),
                  [&](auto tag) { return csr<typename decltype(tag)::type>(*this).capacity(); });
}

void DeviceCsr::set_pattern(const CsrPattern& pattern) {
  dispatch(dtype(), [&](auto tag) {
    using V = typename decltype(tag)::type;
    csr<V>(*this).set_pattern(context(), pattern);
  });
}

void DeviceCsr::set_values(HostView values) {
  dispatch(dtype(), [&](auto tag) {
    using V = typename decltype(tag)::type;
    auto& m = csr<V>(*this);
    PEFT_CHECK_SHAPE(values.rows() == 1 && values.cols() == m.nnz(),
                     "DeviceCsr::set_values: ", shape_string(values), " values for ", m.nnz(),
                     " entries");
    if (m.nnz() == 0) return;
    const DeviceMatrix staged(dtype(), values);
    gpu::copy(context(), cview<V>(staged), MatrixView<V, Cuda>(m.values().data(), 1, m.nnz()));
    m.refresh_transpose(context());
  });
}

HostMatrix DeviceCsr::values() const {
  return dispatch(dtype(), [&](auto tag) {
    using V = typename decltype(tag)::type;
    const auto& m = csr<V>(*this);
    DeviceMatrix out(dtype(), 1, m.capacity());
    gpu::copy(context(), m.values(), view<V>(out));
    return out.download();
  });
}

HostMatrix DeviceCsr::transposed_values() const {
  return dispatch(dtype(), [&](auto tag) {
    using V = typename decltype(tag)::type;
    const auto& m = csr<V>(*this);
    const CsrView<const V, Cuda> t = m.transposed_view();
    DeviceMatrix out(dtype(), 1, m.nnz());
    gpu::copy(context(), MatrixView<const V, Cuda>(t.values, 1, t.nnz), view<V>(out));
    return out.download();
  });
}

namespace {

template <class V>
CsrPattern download_pattern(const CsrView<V, Cuda>& s) {
  return CsrPattern{s.rows, s.cols, host_indices(s.row_offsets, s.rows + 1),
                    host_indices(s.col_indices, s.nnz)};
}

}  // namespace

CsrPattern DeviceCsr::pattern() const {
  return dispatch(dtype(), [&](auto tag) {
    using V = typename decltype(tag)::type;
    return download_pattern(csr<V>(*this).view());
  });
}

CsrPattern DeviceCsr::transposed_pattern() const {
  return dispatch(dtype(), [&](auto tag) {
    using V = typename decltype(tag)::type;
    return download_pattern(csr<V>(*this).transposed_view());
  });
}

std::vector<std::int32_t> DeviceCsr::transpose_permutation() const {
  return dispatch(dtype(), [&](auto tag) {
    using V = typename decltype(tag)::type;
    const auto perm = csr<V>(*this).transpose_permutation();
    return host_indices(perm.data(), perm.size());
  });
}

// ---- pattern builders ------------------------------------------------------------------------

PatternResult csr_transpose_pattern(const CsrPattern& s, index_t slack) {
  s.validate("gpu test csr_transpose_pattern");
  const auto offsets = device_indices(s.row_offsets);
  const auto cols = device_indices(s.col_indices);
  auto t_offsets = sentinel_indices(s.cols + 1, 0);
  auto t_cols = sentinel_indices(s.nnz(), slack);
  auto perm = sentinel_indices(s.nnz(), slack);
  // The values play no part: the view carries none.
  const CsrView<const float, Cuda> view{s.rows,         s.cols,      s.nnz(),
                                        offsets.data(), cols.data(), nullptr};
  gpu::csr_transpose_pattern(context(), view, t_offsets.view(), t_cols.view(), perm.view());
  PatternResult r;
  const auto all_cols = host_indices(t_cols.data(), t_cols.size());
  const auto all_perm = host_indices(perm.data(), perm.size());
  r.pattern = CsrPattern{s.cols, s.rows, host_indices(t_offsets.data(), s.cols + 1),
                         std::vector<std::int32_t>(all_cols.begin(), all_cols.begin() + s.nnz())};
  r.perm.assign(all_perm.begin(), all_perm.begin() + s.nnz());
  r.tail_untouched =
      all_sentinel(all_cols, std::size_t(s.nnz())) && all_sentinel(all_perm, std::size_t(s.nnz()));
  return r;
}

PatternResult topk_pattern(const DeviceMatrix& scores, index_t k, index_t slack) {
  PEFT_CHECK_ARG(scores.dtype() == DType::f32 || scores.dtype() == DType::f64,
                 "gpu test topk_pattern: scores are f32 or f64, not ", name(scores.dtype()));
  const index_t rows = scores.rows();
  const index_t k_room = std::max<index_t>(k, 0);
  auto offsets = sentinel_indices(rows + 1, 0);
  auto cols = sentinel_indices(k_room, slack);
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    gpu::topk_pattern(context(), cview<T>(scores), k, offsets.view(), cols.view());
  };
  if (scores.dtype() == DType::f32)
    run(Tag<float>{});
  else
    run(Tag<double>{});
  PatternResult r;
  const auto all_cols = host_indices(cols.data(), cols.size());
  r.pattern = CsrPattern{rows, scores.cols(), host_indices(offsets.data(), rows + 1),
                         std::vector<std::int32_t>(all_cols.begin(), all_cols.begin() + k_room)};
  r.tail_untouched = all_sentinel(all_cols, std::size_t(k_room));
  return r;
}

WorkspaceUse topk_pattern_on_fresh_context(const DeviceMatrix& scores, index_t k) {
  PEFT_CHECK_ARG(scores.dtype() == DType::f32 || scores.dtype() == DType::f64,
                 "gpu test topk_pattern_on_fresh_context: scores are f32 or f64, not ",
                 name(scores.dtype()));
  synchronize();  // the scores were uploaded on the shared context's stream
  Context<Cuda> ctx;
  const index_t rows = scores.rows();
  Vector<std::int32_t, Cuda> offsets(rows + 1), cols(std::max<index_t>(k, 0));
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    gpu::topk_pattern(ctx, cview<T>(scores), k, offsets.view(), cols.view());
  };
  if (scores.dtype() == DType::f32)
    run(Tag<float>{});
  else
    run(Tag<double>{});
  ctx.synchronize();
  WorkspaceUse use;
  use.capacity = ctx.workspace().capacity();
  use.allocations = ctx.workspace().allocations();
  use.result.pattern = CsrPattern{rows, scores.cols(), host_indices(offsets.data(), rows + 1),
                                  host_indices(cols.data(), cols.size())};
  return use;
}

}  // namespace peft::gpu
