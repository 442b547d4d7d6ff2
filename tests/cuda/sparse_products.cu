// spmm and sddmm of the CUDA tests: runtime dtypes to peft::gpu's static ones, on the CsrMatrix
// (and so the SparseCache) of a DeviceCsr.

#include <vector>

#include "sparse_device.cuh"

namespace peft::gpu {

void spmm(double alpha, const DeviceMatrix& x, DeviceCsr& s, Op op, double beta, DeviceMatrix& y) {
  dispatch(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto& m = csr<T>(s);
    const auto& cm = m;
    const SparseOperand<T, Cuda> operand{cm.view(), cm.transposed_view(), &m.cache()};
    gpu::spmm(context(), alpha, cview<T>(x), operand, op, beta, view<T>(y));
  });
}

std::vector<HostMatrix> spmm_through_one_cache(DType t, std::span<const CsrWithTranspose> calls,
                                               Op op, double alpha, HostView x, double beta,
                                               HostView y0) {
  PEFT_CHECK_ARG(!calls.empty(), "gpu test spmm_through_one_cache: no calls");
  const CsrPattern& first = *calls.front().s;
  const index_t nnz = first.nnz();
  for (const CsrWithTranspose& c : calls) {
    c.s->validate("gpu test spmm_through_one_cache (S)");
    c.st->validate("gpu test spmm_through_one_cache (Sᵀ)");
    PEFT_CHECK_SHAPE(c.s->rows == first.rows && c.s->cols == first.cols && c.s->nnz() == nnz &&
                         c.st->rows == first.cols && c.st->cols == first.rows &&
                         c.st->nnz() == nnz && c.s_values.cols() == nnz &&
                         c.st_values.cols() == nnz,
                     "gpu test spmm_through_one_cache: every S must have one shape and nnz");
  }
  return dispatch(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SparseCache<Cuda> cache;
    const DeviceMatrix dx(t, x);
    DeviceMatrix s_values(t, 1, nnz), st_values(t, 1, nnz);
    std::vector<Vector<std::int32_t, Cuda>> indices;  // every call's arrays, alive to the end
    std::vector<HostMatrix> results;
    for (const CsrWithTranspose& c : calls) {
      indices.push_back(device_indices(c.s->row_offsets));
      indices.push_back(device_indices(c.s->col_indices));
      indices.push_back(device_indices(c.st->row_offsets));
      indices.push_back(device_indices(c.st->col_indices));
      const std::size_t n = indices.size();
      s_values.upload(c.s_values);
      st_values.upload(c.st_values);
      const CsrView<const T, Cuda> sv{first.rows,
                                      first.cols,
                                      nnz,
                                      indices[n - 4].data(),
                                      indices[n - 3].data(),
                                      cview<T>(s_values).data()};
      const CsrView<const T, Cuda> stv{first.cols,
                                       first.rows,
                                       nnz,
                                       indices[n - 2].data(),
                                       indices[n - 1].data(),
                                       cview<T>(st_values).data()};
      DeviceMatrix dy(t, y0);
      gpu::spmm(context(), alpha, cview<T>(dx), SparseOperand<T, Cuda>{sv, stv, &cache}, op, beta,
                view<T>(dy));
      results.push_back(dy.download());
    }
    return results;
  });
}

void sddmm(double alpha, Op op_a, const DeviceMatrix& a, Op op_b, const DeviceMatrix& b,
           double beta, DeviceCsr& s) {
  PEFT_CHECK_ARG(a.dtype() == b.dtype(), "gpu test sddmm: A is ", name(a.dtype()), ", B is ",
                 name(b.dtype()));
  PEFT_CHECK_ARG(s.dtype() == DType::f32 || s.dtype() == DType::f64,
                 "gpu test sddmm: S is f32 or f64, not ", name(s.dtype()));
  dispatch(a.dtype(), [&](auto ta) {
    using A = typename decltype(ta)::type;
    auto run = [&](auto tv) {
      using V = typename decltype(tv)::type;
      gpu::sddmm(context(), alpha, op_a, cview<A>(a), op_b, cview<A>(b), beta, csr<V>(s).view());
    };
    if (s.dtype() == DType::f32)
      run(Tag<float>{});
    else
      run(Tag<double>{});
  });
}

}  // namespace peft::gpu
