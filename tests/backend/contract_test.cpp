// The backend contract (backend/contract.hpp) and the argument checks every backend shares
// (backend/checks.hpp). The CPU backend satisfies the contract for every CPU element type (the
// CUDA backend asserts it in backend/cuda/cuda.hpp); a backend that lacks one primitive, or
// whose primitive returns the wrong kind of result, does not. The shared checks throw the
// documented peft::Error for each bad argument.

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include <peft/backend/checks.hpp>
#include <peft/backend/contract.hpp>
#include <peft/peft.hpp>

static_assert(peft::Backend<peft::Cpu, float, double, Eigen::bfloat16, Eigen::half>,
              "the CPU backend does not provide every primitive of backend/contract.hpp");

// ---- a fake backend whose primitives accept anything, less the one named by `Missing` --------

namespace fake {

enum class Missing { none, dropout, topk_pattern, adamw_update, upload, dot_result, truncated_svd };

template <Missing M>
struct Backend {};

template <Missing M>
using Ctx = peft::Context<Backend<M>>;

// Declarations only: the contract is checked in unevaluated contexts.
template <Missing M, class... A>
void gemm(Ctx<M>&, A&&...);
template <Missing M, class... A>
void fill(Ctx<M>&, A&&...);
template <Missing M, class... A>
void scale(Ctx<M>&, A&&...);
template <Missing M, class... A>
void axpy(Ctx<M>&, A&&...);
template <Missing M, class... A>
void copy(Ctx<M>&, A&&...);
template <Missing M, class... A>
requires(M != Missing::dropout) void dropout(Ctx<M>&, A&&...);
template <Missing M, class... A>
void broadcast_rows(Ctx<M>&, A&&...);
template <Missing M, class... A>
requires(M != Missing::dot_result) double dot(Ctx<M>&, A&&...);
template <Missing M, class... A>
requires(M == Missing::dot_result) void dot(Ctx<M>&, A&&...);
template <Missing M, class... A>
double norm(Ctx<M>&, A&&...);
template <Missing M, class... A>
bool all_finite(Ctx<M>&, A&&...);
template <Missing M, class... A>
void spmm(Ctx<M>&, A&&...);
template <Missing M, class... A>
void sddmm(Ctx<M>&, A&&...);
template <Missing M, class... A>
void add_sparse_to_dense(Ctx<M>&, A&&...);
template <Missing M, class... A>
void gather(Ctx<M>&, A&&...);
template <Missing M, class... A>
void csr_transpose_pattern(Ctx<M>&, A&&...);
template <Missing M, class... A>
void accumulate_squares(Ctx<M>&, A&&...);
template <Missing M, class... A>
requires(M != Missing::topk_pattern) void topk_pattern(Ctx<M>&, A&&...);
template <Missing M, class... A>
requires(M != Missing::adamw_update) void adamw_update(Ctx<M>&, A&&...);
template <Missing M, class... A>
void importance_update(Ctx<M>&, A&&...);
template <Missing M, class... A>
void multiply(Ctx<M>&, A&&...);
template <Missing M, class... A>
requires(M != Missing::upload) void upload(Ctx<M>&, A&&...);
template <Missing M, class... A>
void download(Ctx<M>&, A&&...);
template <Missing M, class... A>
void store_value(Ctx<M>&, A&&...);
template <Missing M, class... A>
void nola_combine(Ctx<M>&, A&&...);
template <Missing M, class... A>
void nola_project(Ctx<M>&, A&&...);
template <Missing M, class... A>
peft::index_t nola_project_workspace_bytes(Ctx<M>&, A&&...);
template <Missing M, class... A>
requires(M != Missing::truncated_svd) void truncated_svd(Ctx<M>&, A&&...);

}  // namespace fake

namespace peft {

template <fake::Missing M>
class Context<fake::Backend<M>> {
 public:
  detail::Workspace<fake::Backend<M>>& workspace();
};

template <fake::Missing M>
class SparseCache<fake::Backend<M>> {};

namespace detail {
template <fake::Missing M>
struct Allocator<fake::Backend<M>> {
  static void* allocate(std::size_t bytes);
  static void deallocate(void* p) noexcept;
  static std::size_t allocations() noexcept;
};
}  // namespace detail

}  // namespace peft

namespace peft {
namespace {

using fake::Missing;

static_assert(Backend<fake::Backend<Missing::none>, float, double, Eigen::bfloat16>,
              "a backend with every primitive satisfies the contract");
static_assert(!Backend<fake::Backend<Missing::dropout>, float>, "dropout is required");
static_assert(!Backend<fake::Backend<Missing::topk_pattern>, float>, "topk_pattern is required");
static_assert(!Backend<fake::Backend<Missing::adamw_update>, float>, "adamw_update is required");
static_assert(!Backend<fake::Backend<Missing::upload>, float>, "upload is required");
static_assert(!Backend<fake::Backend<Missing::dot_result>, float>,
              "dot must return its result (convertible to double)");
// The parts name the missing piece.
static_assert(!DensePrimitives<fake::Backend<Missing::dropout>, float> &&
              SparsePrimitives<fake::Backend<Missing::dropout>, float>);
static_assert(DensePrimitives<fake::Backend<Missing::topk_pattern>, float> &&
              !SparsePrimitives<fake::Backend<Missing::topk_pattern>, float>);
static_assert(!TrainingPrimitives<fake::Backend<Missing::adamw_update>, float>);
static_assert(!TransferPrimitives<fake::Backend<Missing::upload>, float>);
static_assert(!Backend<fake::Backend<Missing::truncated_svd>, float> &&
              !MethodPrimitives<fake::Backend<Missing::truncated_svd>, float>);

template <class F>
void expect_error(F&& f, ErrorKind kind, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected peft::Error containing \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

using V = MatrixView<const float, Cpu>;

TEST(BackendChecks, SameShape) {
  float data[12] = {};
  detail::check_same_shape("axpy", V(data, 3, 4), V(data, 3, 4));
  expect_error([&] { detail::check_same_shape("axpy", V(data, 3, 4), V(data, 4, 3)); },
               ErrorKind::shape, "axpy: shapes differ, 3 x 4");
  detail::check_same_shapes("importance_update", V(data, 2, 2), V(data, 2, 2), V(data, 2, 2));
  expect_error(
      [&] {
        detail::check_same_shapes("importance_update", V(data, 2, 2), V(data, 2, 2), V(data, 2, 3));
      },
      ErrorKind::shape, "importance_update: shapes differ");
}

TEST(BackendChecks, GemmShapes) {
  float data[64] = {};
  const auto s = detail::check_gemm(Op::N, V(data, 3, 4), Op::T, V(data, 5, 4),
                                    MatrixView<float, Cpu>(data, 3, 5));
  EXPECT_EQ(s.m, 3);
  EXPECT_EQ(s.n, 5);
  EXPECT_EQ(s.k, 4);
  expect_error(
      [&] {
        detail::check_gemm(Op::N, V(data, 3, 4), Op::N, V(data, 5, 6),
                           MatrixView<float, Cpu>(data, 3, 6));
      },
      ErrorKind::shape, "gemm: op(A) is 3 x 4 but op(B) is 5 x 6 (inner dimensions differ)");
  expect_error(
      [&] {
        detail::check_gemm(Op::T, V(data, 4, 3), Op::N, V(data, 4, 6),
                           MatrixView<float, Cpu>(data, 3, 7));
      },
      ErrorKind::shape, "gemm: C is 3 x 7, op(A) op(B) is 3 x 6");
}

TEST(BackendChecks, SparseShapes) {
  float data[64] = {};
  const std::int32_t offsets[4] = {0, 0, 0, 0};
  const CsrView<const float, Cpu> s{3, 5, 0, offsets, offsets, data};
  detail::check_spmm(V(data, 2, 5), s, Op::T, MatrixView<float, Cpu>(data, 2, 3));
  detail::check_spmm(V(data, 2, 3), s, Op::N, MatrixView<float, Cpu>(data, 2, 5));
  expect_error(
      [&] { detail::check_spmm(V(data, 2, 4), s, Op::T, MatrixView<float, Cpu>(data, 2, 3)); },
      ErrorKind::shape, "spmm (X Sᵀ): the sparse matrix is 3 x 5, expected 3 x 4");
  expect_error(
      [&] { detail::check_spmm(V(data, 2, 3), s, Op::N, MatrixView<float, Cpu>(data, 4, 5)); },
      ErrorKind::shape, "spmm: Y has 4 rows, X has 2");
  EXPECT_EQ(detail::check_sddmm(Op::T, V(data, 7, 3), Op::N, V(data, 7, 5), s).k, 7);
  expect_error([&] { detail::check_sddmm(Op::N, V(data, 3, 7), Op::N, V(data, 6, 5), s); },
               ErrorKind::shape, "sddmm: op(A) is 3 x 7 but op(B) is 6 x 5");
  expect_error([&] { detail::check_sddmm(Op::N, V(data, 3, 7), Op::N, V(data, 7, 4), s); },
               ErrorKind::shape, "sddmm: the sparse matrix is 3 x 5, expected 3 x 4");
  std::int32_t out[8] = {};
  const VectorView<std::int32_t, Cpu> six(out, 6), two(out, 2);
  detail::check_csr_transpose_outputs(s, six, two, two);
  expect_error([&] { detail::check_csr_transpose_outputs(s, two, two, two); }, ErrorKind::shape,
               "csr_transpose_pattern: output sizes do not fit a 3 x 5 matrix with 0 entries");
  detail::check_gather(VectorView<const std::int32_t, Cpu>(out, 2),
                       VectorView<float, Cpu>(data, 2));
  expect_error(
      [&] {
        detail::check_gather(VectorView<const std::int32_t, Cpu>(out, 2),
                             VectorView<float, Cpu>(data, 3));
      },
      ErrorKind::shape, "gather: 2 indices for 3 outputs");
}

TEST(BackendChecks, TopkDropoutBroadcast) {
  std::int32_t out[8] = {};
  const VectorView<std::int32_t, Cpu> four(out, 4), two(out, 2);
  detail::check_topk(2, 3, 5, four, two);
  expect_error([&] { detail::check_topk(16, 3, 5, four, two); }, ErrorKind::invalid_argument,
               "topk_pattern: k is 16, expected in [0, 15]");
  expect_error([&] { detail::check_topk(3, 3, 5, four, two); }, ErrorKind::shape,
               "topk_pattern: output sizes do not fit 3 rows and 3 entries");

  const RandomStream stream = make_stream(1, 2, RandomPurpose::dropout, 3);
  detail::check_dropout(0.0, &stream, 3, 4);
  detail::check_dropout(0.999, &stream, 3, 4);
  expect_error([&] { detail::check_dropout(1.0, &stream, 3, 4); }, ErrorKind::invalid_argument,
               "dropout: p is 1, expected in [0, 1)");
  expect_error([&] { detail::check_dropout(-0.1, &stream, 3, 4); }, ErrorKind::invalid_argument,
               "dropout: p is -0.1");
  expect_error([&] { detail::check_dropout(0.1, nullptr, 3, 4); }, ErrorKind::invalid_argument,
               "dropout: null random stream");

  float data[12] = {};
  detail::check_broadcast_rows(VectorView<const float, Cpu>(data, 4),
                               MatrixView<float, Cpu>(data, 3, 4));
  expect_error(
      [&] {
        detail::check_broadcast_rows(VectorView<const float, Cpu>(data, 5),
                                     MatrixView<float, Cpu>(data, 2, 4));
      },
      ErrorKind::shape, "broadcast_rows: vector has 5 elements, matrix has 4 columns");
}

}  // namespace
}  // namespace peft
