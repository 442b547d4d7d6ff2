// The gemm provider (backend/cpu/gemm_provider.hpp): the one CMake's PEFT_GEMM_PROVIDER chose is
// the one the headers call, and the Context's thread count reaches it. Its results against a
// naive loop (every transpose pair, strides, alpha and beta, k = 0, float and double) are
// gemm_test.cpp's, which runs on whichever provider this build has.

#include <gtest/gtest.h>

#include <peft/backend/cpu/cpu.hpp>
#include <peft/core/buffer.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(PEFT_GEMM_PROVIDER_OPENBLAS)
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
#endif

namespace {

using peft::Context;
using peft::Cpu;
using peft::Matrix;
using peft::Op;

void small_gemm(Context<Cpu>& ctx) {
  Matrix<float, Cpu> a(8, 8), b(8, 8), c(8, 8);
  for (peft::index_t i = 0; i < a.size(); ++i) a.data()[i] = b.data()[i] = 0.5f;
  peft::cpu::gemm(ctx, Op::N, Op::T, 1.0, as_const(a.view()), as_const(b.view()), 0.0, c.view());
  EXPECT_FLOAT_EQ(c.data()[0], 2.0f);
}

TEST(GemmProvider, IsTheOneCMakeChose) {
  EXPECT_STREQ(peft::cpu::gemm_provider_name(), PEFT_TEST_GEMM_PROVIDER);
  EXPECT_FALSE(peft::cpu::gemm_provider_kernel().empty());
}

// OpenBLAS and BLIS keep a global thread count: each call sets it to the Context's.
TEST(GemmProvider, ContextThreadCountReachesTheProvider) {
  for (const int threads : {1, 2, 1}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    small_gemm(ctx);
#if defined(PEFT_GEMM_PROVIDER_OPENBLAS)
    ASSERT_NE(openblas_get_num_threads, nullptr);
    EXPECT_EQ(openblas_get_num_threads(), threads);
#elif defined(PEFT_GEMM_PROVIDER_BLIS)
    EXPECT_EQ(bli_thread_get_num_threads(), threads);
#endif
  }
}

#if defined(PEFT_GEMM_PROVIDER_ONEDNN)
// oneDNN reads OpenMP's thread count: dnnl_sgemm runs with the Context's set for the call only.
TEST(GemmProvider, OneDnnRunsOnTheContextThreadsForTheCallOnly) {
  const int caller = omp_get_max_threads();
  {
    const peft::cpu::detail::OmpThreadsForCall scope(caller + 2);
    EXPECT_EQ(omp_get_max_threads(), caller + 2);
  }
  EXPECT_EQ(omp_get_max_threads(), caller);
}
#endif

}  // namespace
