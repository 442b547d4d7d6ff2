// Philox on the device equals Philox on the host bit for bit, and the CUDA dropout primitive
// makes the CPU primitive's masks: same stream, same mask, same outputs (bitwise for every
// dtype: both sides scale kept values in the same precision and round once), also on strided
// views (the mask follows the logical index, not the memory layout) and in place.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

class CudaRandom : public CudaTest {};

std::vector<RandomStream> streams() {
  return {
      make_stream(0, 0, RandomPurpose::init, 0),
      make_stream(42, 7, RandomPurpose::dropout, 3),
      make_stream(0x0123456789ABCDEFull, 0xFFFFFFFFu, RandomPurpose::nola_basis_a, 123456),
      make_stream(~0ull, 1, RandomPurpose::nola_basis_b, 0xFFFFFFFFu),
  };
}

std::vector<std::uint64_t> indices() {
  std::vector<std::uint64_t> idx;
  for (std::uint64_t i = 0; i < 20000; ++i) idx.push_back(i);
  // Around the 32-bit block counter and the end of a stream, and random ones.
  for (std::uint64_t base :
       {std::uint64_t{1} << 32, std::uint64_t{1} << 34, kMaxStreamElements - 64})
    for (std::uint64_t d = 0; d < 64; ++d) idx.push_back(base - 32 + d);
  std::mt19937_64 gen(9);
  std::uniform_int_distribution<std::uint64_t> any(0, kMaxStreamElements - 1);
  for (int i = 0; i < 5000; ++i) idx.push_back(any(gen));
  return idx;
}

TEST_F(CudaRandom, PhiloxBitsMatchHostBitForBit) {
  const auto idx = indices();
  for (const RandomStream& s : streams()) {
    const std::vector<std::uint32_t> device = philox_bits(s, idx);
    ASSERT_EQ(device.size(), idx.size());
    int bad = 0;
    for (std::size_t k = 0; k < idx.size(); ++k)
      if (device[k] != s.bits(idx[k]) && bad++ < 5)
        ADD_FAILURE() << "seed " << s.seed << ", stream " << s.stream_id << ", index " << idx[k]
                      << ": device " << device[k] << ", host " << s.bits(idx[k]);
    EXPECT_EQ(bad, 0);
  }
}

TEST_F(CudaRandom, UniformsMatchHostBitForBit) {
  const auto idx = indices();
  for (const RandomStream& s : streams())
    for (const float bound : {1.0f, 0.0883883476f, 3.0f}) {
      const std::vector<float> device = philox_uniform_symmetric(s, bound, idx);
      int bad = 0;
      for (std::size_t k = 0; k < idx.size(); ++k) {
        const float host = uniform_symmetric(s.bits(idx[k]), bound);
        if (std::memcmp(&host, &device[k], sizeof(float)) != 0 && bad++ < 5)
          ADD_FAILURE() << "index " << idx[k] << ": device " << device[k] << ", host " << host;
      }
      EXPECT_EQ(bad, 0);
    }
}

/// The CPU dropout primitive on the same values and stream, as double.
HostMatrix cpu_dropout(DType t, const RandomStream& stream, double p, HostView values) {
  return with_host_type(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto x = to_typed<T>(values);
    Matrix<T, Cpu> out(values.rows(), values.cols());
    HostCtx ctx;
    cpu::dropout(ctx, &stream, p, as_const(x.view()), out.view());
    return to_double(as_const(out.view()));
  });
}

TEST_F(CudaRandom, DropoutMasksAndOutputsMatchCpu) {
  std::uint32_t seed = 1;
  std::uint32_t step = 0;
  for (DType t : kAllTypes)
    for (const auto& [rows, cols] : kShapes)
      for (bool strided : {false, true})
        for (const double p : {0.0, 0.1, 0.3, 0.5, 0.9}) {
          SCOPED_TRACE(peft::detail::concat(describe(t, rows, cols, strided), " p=", p));
          const RandomStream s = make_stream(17, 3, RandomPurpose::dropout, ++step);
          const HostMatrix values = random_matrix(t, rows, cols, ++seed);
          DeviceMatrix x(t, values.view(), strided), out(t, rows, cols, !strided);
          dropout(s, p, x, out);
          const HostMatrix expected = cpu_dropout(t, s, p, values.view());
          EXPECT_TRUE(bitwise_equal(out.download().view(), expected.view()));
          EXPECT_TRUE(x.gaps_untouched());
          EXPECT_TRUE(out.gaps_untouched());
          // In place (x and out the same view), as Lora's backward does.
          dropout(s, p, x, x);
          EXPECT_TRUE(bitwise_equal(x.download().view(), expected.view()));
          EXPECT_TRUE(x.gaps_untouched());
        }
}

TEST_F(CudaRandom, DropoutKeepsTheExpectedFraction) {
  const RandomStream s = make_stream(5, 0, RandomPurpose::dropout, 0);
  const HostMatrix ones = filled(300, 257, 1.0);
  DeviceMatrix x(DType::f32, ones.view()), out(DType::f32, 300, 257);
  dropout(s, 0.3, x, out);
  const HostMatrix got = out.download();
  index_t kept = 0;
  for (index_t i = 0; i < got.size(); ++i) {
    if (got.data()[i] != 0.0) {
      ++kept;
      // 1 - p in double (PyTorch's, for a Python float p), then the float scale.
      EXPECT_EQ(got.data()[i], double(1.0f * (1.0f / float(1.0 - 0.3))));
    }
  }
  EXPECT_NEAR(double(kept) / double(got.size()), 0.7, 0.01);
}

TEST_F(CudaRandom, DropoutScaleIsOneOverOneMinusPInDouble) {
  // p = 0.3 as a float is 0.30000001192...: a scale formed from it would differ from PyTorch's
  // double result by ~1e-8 relative. A double layer keeps exactly 1 / (1 - 0.3).
  const RandomStream s = make_stream(1, 2, RandomPurpose::dropout, 0);
  const HostMatrix ones = filled(64, 64, 1.0);
  DeviceMatrix x(DType::f64, ones.view()), out(DType::f64, 64, 64);
  dropout(s, 0.3, x, out);
  const HostMatrix got = out.download();
  index_t kept = 0;
  for (index_t i = 0; i < got.size(); ++i) {
    if (got.data()[i] == 0.0) continue;
    ++kept;
    EXPECT_EQ(got.data()[i], 1.0 / (1.0 - 0.3));
  }
  EXPECT_GT(kept, 0);
  EXPECT_NE(1.0 / (1.0 - 0.3), 1.0 / (1.0 - double(0.3f))) << "the test would not tell them apart";
}

TEST_F(CudaRandom, DifferentStepsGiveDifferentMasks) {
  const HostMatrix ones = filled(17, 129, 1.0);
  DeviceMatrix x(DType::f32, ones.view()), a(DType::f32, 17, 129), b(DType::f32, 17, 129);
  dropout(make_stream(5, 0, RandomPurpose::dropout, 0), 0.5, x, a);
  dropout(make_stream(5, 0, RandomPurpose::dropout, 1), 0.5, x, b);
  EXPECT_FALSE(bitwise_equal(a.download().view(), b.download().view()));
}

}  // namespace
}  // namespace peft::gpu::test
