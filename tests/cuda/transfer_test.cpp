// Device memory of the tests through the library's upload and download: values round to the
// dtype exactly as on the host (CUDA's and Eigen's conversions both round to nearest even),
// strided uploads leave the gaps alone, and the test context is usable.

#include <gtest/gtest.h>

#include <limits>

#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

class CudaTransfer : public CudaTest {};

TEST_F(CudaTransfer, DeviceIsReported) {
  EXPECT_GE(device_count(), 1);
  EXPECT_EQ(unavailable_reason(), "");
  EXPECT_NO_THROW(make_context(0));
  EXPECT_NO_THROW(synchronize());
}

TEST_F(CudaTransfer, UploadDownloadRoundsLikeTheHost) {
  // Not pre-rounded: the upload rounds, and must agree with Eigen's rounding bit for bit.
  HostMatrix values(3, 7);
  std::mt19937 gen(3);
  std::uniform_real_distribution<double> dist(-10.0, 10.0);
  for (index_t i = 0; i < values.size(); ++i) values.data()[i] = dist(gen);
  const double inf = std::numeric_limits<double>::infinity();
  values.data()[0] = 1.0 + 0x1.0p-8;   // a bf16 tie
  values.data()[1] = 1.0 + 0x1.0p-11;  // a half tie
  values.data()[2] = -0.0;
  values.data()[3] = inf;
  values.data()[4] = 7e4;   // beyond half
  values.data()[5] = 1e-6;  // a half subnormal
  values.data()[6] = kNaN;
  for (DType t : kAllTypes)
    for (bool strided : {false, true}) {
      SCOPED_TRACE(describe(t, 3, 7, strided));
      DeviceMatrix d(t, values.view(), strided, 2.5);
      EXPECT_TRUE(bitwise_equal(d.download().view(), round_to(t, values.view()).view()));
      EXPECT_TRUE(d.gaps_untouched());
      EXPECT_EQ(d.stride(), strided ? 12 : 7);
      // A second upload overwrites the view only.
      const HostMatrix other = random_matrix(t, 3, 7, 4);
      d.upload(other.view());
      EXPECT_TRUE(bitwise_equal(d.download().view(), other.view()));
      EXPECT_TRUE(d.gaps_untouched());
    }
}

TEST_F(CudaTransfer, NewMatricesHoldTheGapValue) {
  for (DType t : kAllTypes) {
    DeviceMatrix d(t, 4, 5, true);
    const HostMatrix got = d.download();
    for (index_t i = 0; i < got.size(); ++i) EXPECT_TRUE(std::isnan(got.data()[i]));
    EXPECT_FALSE(all_finite(d));
  }
}

}  // namespace
}  // namespace peft::gpu::test
