// Context<Cuda> itself: the cuBLAS math mode it sets (fp32 split-K reductions, TF32 only when
// asked), and the shared test context, which must outlive the static destructors at exit.

#include <gtest/gtest.h>

#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

class CudaContext : public CudaTest {};

TEST_F(CudaContext, CublasKeepsSplitKReductionsInFp32) {
  // Without CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION, cuBLAS may add the partial sums of
  // a split-K GEMM in the output type: fp16/bf16 for 16-bit C, not the promised fp32.
  const CublasMathMode shared = cublas_math_mode();
  EXPECT_TRUE(shared.disallow_reduced_precision_reduction);
  EXPECT_FALSE(shared.tf32);
  for (bool allow_tf32 : {false, true}) {
    SCOPED_TRACE(allow_tf32 ? "allow_tf32" : "no tf32");
    const CublasMathMode mode = cublas_math_mode(allow_tf32);
    EXPECT_TRUE(mode.disallow_reduced_precision_reduction);
    EXPECT_EQ(mode.tf32, allow_tf32);
  }
}

TEST_F(CudaContext, SharedTestContextOutlivesStaticDestruction) {
  // A static Context would be destroyed at exit, when the CUDA runtime may be gone. The child
  // (a fresh process: CUDA does not survive fork) registers an atexit handler, creates the
  // context and exits; the handler, which runs after the statics constructed later are
  // destroyed, exits with 0 only if the context is still alive.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(exit_checking_context_outlives_statics(), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace peft::gpu::test
