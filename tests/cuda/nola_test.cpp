// NOLA's GPU primitives against the CPU ones: the same (seed, stream, purpose, member, entry)
// gives the same basis entry bit for bit on both backends, one-hot combinations (the bases
// themselves) agree bit for bit for f32 and f64, and random combinations and projections agree
// to rounding, on strided views, across the kernels' tiles (32 lanes, 1024 coefficients in shared
// memory, several chunks per projection). The layer, Nola<T, Cuda> against Nola<double, Cpu>, runs
// in the GPU conformance suite (conformance_test.cpp over tests/conformance/cases.hpp).

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/nola.hpp"
#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

class CudaNola : public CudaTest {};

const RandomBasis kBases[] = {
    make_basis(0, 0, RandomPurpose::nola_basis_a, 1.0f),
    make_basis(42, 7, RandomPurpose::nola_basis_b, 0.125f),
    make_basis(0x0123456789ABCDEFull, 0xFFFFFFFFu, RandomPurpose::init, 0.0441941738f),
};

HostMatrix random_column(DType t, index_t k, std::uint32_t seed) {
  return random_matrix(t, k, 1, seed);
}

/// The CPU primitive on the same (rounded) values, as double.
HostMatrix cpu_combine(DType p, const RandomBasis& basis, HostView coefficients, double beta,
                       HostView start) {
  return with_host_type(p, [&](auto tag) {
    using P = typename decltype(tag)::type;
    if constexpr (std::is_same_v<P, float> || std::is_same_v<P, double>) {
      HostCtx ctx;
      auto c = to_typed<P>(coefficients);
      auto out = to_typed<P>(start);
      peft::cpu::nola_combine(ctx, basis, as_const(c.view()), beta, out.view());
      return to_double(as_const(out.view()));
    } else {
      ADD_FAILURE() << "f32 or f64 only";
      return HostMatrix();
    }
  });
}

HostMatrix cpu_project(DType p, const RandomBasis& basis, HostView grad, HostView start) {
  return with_host_type(p, [&](auto tag) {
    using P = typename decltype(tag)::type;
    if constexpr (std::is_same_v<P, float> || std::is_same_v<P, double>) {
      HostCtx ctx;
      auto g = to_typed<P>(grad);
      auto grads = to_typed<P>(start);
      peft::cpu::nola_project(ctx, basis, as_const(g.view()), grads.view());
      return to_double(as_const(grads.view()));
    } else {
      ADD_FAILURE() << "f32 or f64 only";
      return HostMatrix();
    }
  });
}

TEST_F(CudaNola, BasisEntriesMatchHostBitForBit) {
  std::vector<std::uint32_t> members;
  std::vector<std::uint64_t> elements;
  for (std::uint32_t m : {0u, 1u, 31u, 32u, 1023u, 1024u, 0xFFFFFFFFu})
    for (std::uint64_t e = 0; e < 3000; ++e) {
      members.push_back(m);
      elements.push_back(e);
    }
  std::mt19937_64 gen(3);
  std::uniform_int_distribution<std::uint64_t> any(0, kMaxStreamElements - 1);
  for (int i = 0; i < 20000; ++i) {
    members.push_back(static_cast<std::uint32_t>(gen()));
    elements.push_back(any(gen));
  }
  for (const RandomBasis& b : kBases) {
    const auto device = nola_basis_entries(b, members, elements);
    int bad = 0;
    for (std::size_t k = 0; k < members.size(); ++k) {
      const float host = b.entry(members[k], elements[k]);
      if (std::memcmp(&host, &device[k], sizeof(float)) != 0 && bad++ < 5)
        ADD_FAILURE() << "member " << members[k] << ", entry " << elements[k] << ": device "
                      << device[k] << ", host " << host;
    }
    EXPECT_EQ(bad, 0);
  }
}

// A one-hot combination is the basis member itself: the GPU and CPU primitives give the same
// bits, for f32 and f64, on strided views, and the float entry converted exactly.
TEST_F(CudaNola, OneHotCombinationsAreTheBasisBitForBit) {
  for (DType p : {DType::f32, DType::f64})
    for (const auto& [rows, cols] : kShapes)
      for (bool strided : {false, true})
        for (index_t member : {0, 33, 1030}) {
          SCOPED_TRACE(peft::detail::concat(describe(p, rows, cols, strided), " member ", member));
          const RandomBasis& b = kBases[std::size_t(member % 3)];
          HostMatrix c = filled(1100, 1, 0.0);
          c.view()(member, 0) = 1.0;
          const HostMatrix start = filled(rows, cols, 0.0);
          bool gaps = false;
          const HostMatrix gpu = nola_combine(p, b, c.view(), 0.0, start.view(), strided, &gaps);
          EXPECT_TRUE(gaps);
          EXPECT_TRUE(
              bitwise_equal(gpu.view(), cpu_combine(p, b, c.view(), 0.0, start.view()).view()));
          HostMatrix entries(rows, cols);
          for (index_t e = 0; e < rows * cols; ++e)
            entries.data()[e] = double(b.entry(std::uint32_t(member), std::uint64_t(e)));
          EXPECT_TRUE(bitwise_equal(gpu.view(), entries.view()));
        }
}

TEST_F(CudaNola, CombinationsMatchCpu) {
  std::uint32_t seed = 1;
  for (DType p : {DType::f32, DType::f64})
    for (const auto& [rows, cols] : kShapes)
      for (index_t k : {1, 5, 70, 1100})
        for (double beta : {0.0, 1.0}) {
          const bool strided = (seed % 2) == 1;
          SCOPED_TRACE(
              peft::detail::concat(describe(p, rows, cols, strided), " k=", k, " beta=", beta));
          const RandomBasis& b = kBases[seed % 3];
          HostMatrix c = random_column(p, k, ++seed);
          if (k > 3) c.view()(2, 0) = 0.0;  // skipped
          const HostMatrix start = random_matrix(p, rows, cols, ++seed);
          bool gaps = false;
          const HostMatrix gpu = nola_combine(p, b, c.view(), beta, start.view(), strided, &gaps);
          EXPECT_TRUE(gaps);
          const HostMatrix cpu = cpu_combine(p, b, c.view(), beta, start.view());
          EXPECT_LT(relative_error(gpu.view(), cpu.view()), p == DType::f64 ? 1e-13 : 1e-5);
        }
}

TEST_F(CudaNola, ProjectionsMatchCpu) {
  std::uint32_t seed = 100;
  for (DType p : {DType::f32, DType::f64})
    for (const auto& [rows, cols] : kShapes)
      for (index_t k : {1, 5, 70, 1100})
        for (bool strided : {false, true}) {
          SCOPED_TRACE(peft::detail::concat(describe(p, rows, cols, strided), " k=", k));
          const RandomBasis& b = kBases[seed % 3];
          const HostMatrix g = random_matrix(p, rows, cols, ++seed);
          const HostMatrix start = random_column(p, k, ++seed);
          const HostMatrix gpu = nola_project(p, b, g.view(), start.view(), strided);
          const HostMatrix cpu = cpu_project(p, b, g.view(), start.view());
          EXPECT_LT(relative_error(gpu.view(), cpu.view()), p == DType::f64 ? 1e-13 : 1e-5);
        }
}

// Factors large enough for several chunks per projection and many CUDA blocks per combination.
TEST_F(CudaNola, LargeFactorsMatchCpu) {
  const RandomBasis b = kBases[1];
  for (DType p : {DType::f32, DType::f64}) {
    const index_t rows = 8, cols = 4099, k = 300;
    const HostMatrix c = random_column(p, k, 5);
    const HostMatrix zero = filled(rows, cols, 0.0);
    const HostMatrix gpu = nola_combine(p, b, c.view(), 0.0, zero.view(), false);
    const HostMatrix cpu = cpu_combine(p, b, c.view(), 0.0, zero.view());
    EXPECT_LT(relative_error(gpu.view(), cpu.view()), p == DType::f64 ? 1e-13 : 1e-5);
    const HostMatrix g = random_matrix(p, rows, cols, 6);
    const HostMatrix start = filled(k, 1, 0.0);
    EXPECT_LT(relative_error(nola_project(p, b, g.view(), start.view(), true).view(),
                             cpu_project(p, b, g.view(), start.view()).view()),
              p == DType::f64 ? 1e-13 : 1e-5);
  }
  EXPECT_GT(nola_project_workspace_bytes(300, 8 * 4099), 0);
}

TEST_F(CudaNola, BadArgumentsThrow) {
  const HostMatrix square = filled(3, 3, 1.0), out = filled(4, 5, 0.0), empty(0, 1);
  expect_error([&] { nola_combine(DType::f32, kBases[0], square.view(), 0.0, out.view(), false); },
               ErrorKind::shape, {"nola_combine", "coefficients", "[k, 1] or [1, k]"});
  expect_error([&] { nola_project(DType::f32, kBases[0], out.view(), square.view(), false); },
               ErrorKind::shape, {"nola_project", "coefficient_grads", "[k, 1] or [1, k]"});
  expect_error([&] { nola_combine(DType::f64, kBases[0], empty.view(), 0.0, out.view(), false); },
               ErrorKind::invalid_argument, {"nola_combine", "0 basis members"});
}

}  // namespace
}  // namespace peft::gpu::test
