#pragma once
// float GEMMs with one small dimension (at most kSkinnyMax, a LoRA rank): the r-wide products of
// every low-rank method. A general BLAS packs both operands and blocks for large products; here
// the large operand is streamed once, straight from memory, through register tiles, and only
// the small operand is repacked (into a stack panel of at most 32 KiB). Threads split the large
// dimension; small products stay on one thread. AVX-512 and AVX2 (+FMA) kernels, chosen at run
// time (skinny_gemm_kernels.inl, compiled once per instruction set); other machines keep the
// BLAS.
//
//   small_k  C[m, N] = α X[m, k] op(Y)[k, N] + β C   op_a = N, k small  (y += s xa Bᵀ, dx += dxa A)
//   small_n  C[m, n] = α X[m, k] op(Y)[k, n] + β C   op_a = N, n small  (xa = x Aᵀ, dxa = s dy B)
//   few rows C[m, n] = α X[m, k] op(Y) + β C          m <= 32    (x W0ᵀ and dy W0 at n = 16)
//   outer    C = α Aᵀ B + β C, A [k, M], B [k, N]    op_a = T, op_b = N, M or N small
//                                                                   (dA += dxaᵀ x, dB += s dyᵀ xa)
//
// With β = 0, C is not read. Each element of C is summed in one fixed order by the thread that
// owns it, so results do not depend on the thread count.

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PEFT_SKINNY_X86 1
#endif

#include "../../core/view.hpp"
#include "context.hpp"

// Register tiles are arrays indexed by loop counters: fully unrolled, they live in registers.
// (nvcc's front end, which also reads host code, does not know the pragma: there it is left out
// and the host compiler unrolls what it sees fit; the results are the same.)
#define PEFT_SKINNY_PRAGMA(text) _Pragma(#text)
#if defined(__CUDACC__)
#define PEFT_SKINNY_UNROLL(n)
#elif defined(__clang__)
#define PEFT_SKINNY_UNROLL(n) PEFT_SKINNY_PRAGMA(unroll n)
#else
#define PEFT_SKINNY_UNROLL(n) PEFT_SKINNY_PRAGMA(GCC unroll n)
#endif

namespace peft::cpu {
namespace detail {

/// The largest small dimension that takes the skinny kernels.
inline constexpr index_t kSkinnyMax = 128;

/// Floats of the per-thread stack panel that holds a repacked block of the small operand.
inline constexpr index_t kSkinnyPanel = 8192;

/// The widest C (columns) of a small_n product computed as dot products along the depth (wider
/// ones broadcast x element by element against rows of op(Y)), and the most rows of a few-rows
/// product.
inline constexpr index_t kDotsMax = 32;

/// Rows of the large operand an outer-product tile walks per slice (see Kernels::outer).
inline constexpr index_t kOuterDepth = 64;

/// Rows ahead that an outer-product tile prefetches the large operand.
inline constexpr index_t kOuterPrefetch = 16;

/// Multiply-adds below which a skinny product runs on one thread: waking sleeping OpenMP
/// threads costs about as much as this much work on one core.
inline constexpr double kSkinnyParallelFma = double(1 << 22);

enum class SkinnyIsa { none, avx2, avx512 };

inline bool skinny_isa_supported(SkinnyIsa isa) {
#if defined(PEFT_SKINNY_X86)
  __builtin_cpu_init();  // needed when called before main
  switch (isa) {
    case SkinnyIsa::none:
      return true;
    case SkinnyIsa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SkinnyIsa::avx512:
      return __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return isa == SkinnyIsa::none;
#endif
}

inline SkinnyIsa best_skinny_isa() {
  static const SkinnyIsa best = skinny_isa_supported(SkinnyIsa::avx512) ? SkinnyIsa::avx512
                                : skinny_isa_supported(SkinnyIsa::avx2) ? SkinnyIsa::avx2
                                                                        : SkinnyIsa::none;
  return best;
}

/// panel[kk][j] = op(Y)[k0 + kk][j0 + j] for kk < depth, j < cols, zero up to ldp.
inline void skinny_pack(Op op_y, const float* y, index_t ldy, index_t k0, index_t depth, index_t j0,
                        index_t cols, float* panel, index_t ldp) {
  for (index_t kk = 0; kk < depth; ++kk) {
    float* row = panel + kk * ldp;
    if (op_y == Op::N) {
      std::copy_n(y + (k0 + kk) * ldy + j0, cols, row);
    } else {
      for (index_t j = 0; j < cols; ++j) row[j] = y[(j0 + j) * ldy + k0 + kk];
    }
    std::fill(row + cols, row + ldp, 0.0f);
  }
}

/// panel[j][kk] = op(Y)[k0 + kk][j] for j < cols, kk < depth: op(Y)ᵀ by depth, its rows padded
/// with zeros to a whole vector past the depth and to `rows` rows.
inline void skinny_pack_transposed(Op op_y, const float* y, index_t ldy, index_t k0, index_t depth,
                                   index_t cols, index_t rows, float* panel, index_t ldp) {
  const index_t padded = std::min(ldp, (depth + 15) / 16 * 16);
  for (index_t j = 0; j < rows; ++j) {
    float* row = panel + j * ldp;
    if (j >= cols) {
      std::fill(row, row + padded, 0.0f);
      continue;
    }
    if (op_y == Op::T) {
      std::copy_n(y + j * ldy + k0, depth, row);
    } else {
      for (index_t kk = 0; kk < depth; ++kk) row[kk] = y[(k0 + kk) * ldy + j];
    }
    std::fill(row + depth, row + padded, 0.0f);
  }
}

/// Calls part(first, last) for [0, items) split between as many threads as the work deserves.
template <class Part>
void skinny_parallel(Context<Cpu>& ctx, double fmas, index_t items, Part&& part) {
  const int threads = fmas < kSkinnyParallelFma
                          ? 1
                          : int(std::min<index_t>(ctx.threads(), std::max<index_t>(items, 1)));
  if (threads <= 1) return part(index_t(0), items);
#pragma omp parallel num_threads(threads)
  {
#if defined(_OPENMP)
    const index_t t = omp_get_thread_num(), count = omp_get_num_threads();
#else
    const index_t t = 0, count = 1;
#endif
    const index_t first = items * t / count, last = items * (t + 1) / count;
    if (first < last) part(first, last);
  }
}

#if defined(PEFT_SKINNY_X86)

// GCC 12 warns about the deliberately undefined pass-through operand inside the AVX-512
// intrinsics (_mm512_undefined_ps, GCC bug 105593) once they are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace skinny_avx512 {
#define PEFT_SKINNY_FN __attribute__((target("avx512f"))) inline
struct Vec {
  using V = __m512;
  static constexpr int W = 16;
  PEFT_SKINNY_FN static V zero() { return _mm512_setzero_ps(); }
  PEFT_SKINNY_FN static V set1(float x) { return _mm512_set1_ps(x); }
  PEFT_SKINNY_FN static V load(const float* p) { return _mm512_loadu_ps(p); }
  PEFT_SKINNY_FN static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  PEFT_SKINNY_FN static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  PEFT_SKINNY_FN static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  PEFT_SKINNY_FN static V add(V a, V b) { return _mm512_add_ps(a, b); }
  /// The sum of the lanes.
  PEFT_SKINNY_FN static float sum(V v) {
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));  // + the other 256-bit half
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));  // + the neighbouring 128 bits
    __m128 quarter = _mm512_castps512_ps128(v);
    quarter = _mm_hadd_ps(quarter, quarter);
    return _mm_cvtss_f32(_mm_hadd_ps(quarter, quarter));
  }
  /// The first `count` lanes; none when count <= 0 (a vector wholly past the operand's end).
  PEFT_SKINNY_FN static __mmask16 mask(index_t count) {
    return count >= W   ? __mmask16(0xFFFF)
           : count <= 0 ? __mmask16(0)
                        : __mmask16((1u << count) - 1);
  }
  PEFT_SKINNY_FN static V load_n(const float* p, index_t count) {
    return _mm512_maskz_loadu_ps(mask(count), p);
  }
  PEFT_SKINNY_FN static void store_n(float* p, V v, index_t count) {
    _mm512_mask_storeu_ps(p, mask(count), v);
  }
};
// 32 registers: tiles of up to 24 accumulators plus the operands.
inline constexpr int kRows1 = 16, kRows2 = 8, kRows4 = 6;
inline constexpr int kOuterSmall = 8, kOuterVectors = 3;
inline constexpr int kDotsRows = 4, kDotsCols = 4;
#include "skinny_gemm_kernels.inl"
#undef PEFT_SKINNY_FN
}  // namespace skinny_avx512
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace skinny_avx2 {
#define PEFT_SKINNY_FN __attribute__((target("avx2,fma"))) inline
struct Vec {
  using V = __m256;
  static constexpr int W = 8;
  PEFT_SKINNY_FN static V zero() { return _mm256_setzero_ps(); }
  PEFT_SKINNY_FN static V set1(float x) { return _mm256_set1_ps(x); }
  PEFT_SKINNY_FN static V load(const float* p) { return _mm256_loadu_ps(p); }
  PEFT_SKINNY_FN static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  PEFT_SKINNY_FN static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  PEFT_SKINNY_FN static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  PEFT_SKINNY_FN static V add(V a, V b) { return _mm256_add_ps(a, b); }
  PEFT_SKINNY_FN static float sum(V v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_hadd_ps(half, half);
    return _mm_cvtss_f32(_mm_hadd_ps(half, half));
  }
  /// The first `count` lanes; none when count <= 0.
  PEFT_SKINNY_FN static __m256i mask(index_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<index_t>(count, W))),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  PEFT_SKINNY_FN static V load_n(const float* p, index_t count) {
    return _mm256_maskload_ps(p, mask(count));
  }
  PEFT_SKINNY_FN static void store_n(float* p, V v, index_t count) {
    _mm256_maskstore_ps(p, mask(count), v);
  }
};
// 16 registers: tiles of up to 12 accumulators plus the operands.
inline constexpr int kRows1 = 12, kRows2 = 6, kRows4 = 3;
inline constexpr int kOuterSmall = 4, kOuterVectors = 3;
inline constexpr int kDotsRows = 3, kDotsCols = 3;
#include "skinny_gemm_kernels.inl"
#undef PEFT_SKINNY_FN
}  // namespace skinny_avx2

/// The product through kernel set K, if its shape is one K serves.
template <class K>
bool skinny_gemm_with(Context<Cpu>& ctx, Op op_a, Op op_b, index_t m, index_t n, index_t k,
                      float alpha, const float* a, index_t lda, const float* b, index_t ldb,
                      float beta, float* c, index_t ldc) {
  const double fmas = double(m) * double(n) * double(k);
  if (op_a == Op::N && k <= kSkinnyMax) {
    const index_t block =
        std::max<index_t>(K::width, kSkinnyPanel / std::max<index_t>(k, 1) / K::width * K::width);
    skinny_parallel(ctx, fmas, (n + block - 1) / block, [&](index_t b0, index_t b1) {
      K::small_k(op_b, b0, b1, block, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    });
    return true;
  }
  if (op_a == Op::N && n <= kDotsMax) {
    skinny_parallel(ctx, fmas, m, [&](index_t r0, index_t r1) {
      K::small_n_dots(op_b, r0, r1, n, k, alpha, a, lda, b, ldb, beta, c, ldc, false);
    });
    return true;
  }
  if (op_a == Op::N && op_b == Op::T && m <= kDotsMax) {  // Cᵀ = B Aᵀ: few rows, x W0ᵀ at n = 16
    skinny_parallel(ctx, fmas, n, [&](index_t r0, index_t r1) {
      K::small_n_dots(Op::T, r0, r1, m, k, alpha, b, ldb, a, lda, beta, c, ldc, true);
    });
    return true;
  }
  if (op_a == Op::N && n <= kSkinnyMax) {
    skinny_parallel(ctx, fmas, m, [&](index_t r0, index_t r1) {
      K::small_n(op_b, r0, r1, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    });
    return true;
  }
  if (op_a == Op::N && op_b == Op::N && m <= kDotsMax) {  // dy W0 at n = 16
    skinny_parallel(ctx, fmas, (n + K::outer_block - 1) / K::outer_block,
                    [&](index_t b0, index_t b1) {
                      K::few_rows(b0, b1, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
                    });
    return true;
  }
  if (op_a == Op::T && op_b == Op::N && std::min(m, n) <= kSkinnyMax) {
    const bool small_is_a = m <= n;
    const index_t large = small_is_a ? n : m;
    skinny_parallel(ctx, fmas, (large + K::outer_block - 1) / K::outer_block,
                    [&](index_t b0, index_t b1) {
                      K::outer(b0, b1, small_is_a, small_is_a ? m : n, large, k, alpha,
                               small_is_a ? a : b, small_is_a ? lda : ldb, small_is_a ? b : a,
                               small_is_a ? ldb : lda, beta, c, ldc);
                    });
    return true;
  }
  return false;
}

#endif  // PEFT_SKINNY_X86

/// C = α op(A) op(B) + β C through a skinny kernel (m, n, k >= 1): false, with C untouched,
/// when the shape is not one of those above or the machine has neither AVX-512 nor AVX2.
inline bool skinny_gemm(Context<Cpu>& ctx, Op op_a, Op op_b, float alpha,
                        MatrixView<const float, Cpu> a, MatrixView<const float, Cpu> b, float beta,
                        MatrixView<float, Cpu> c, index_t k, SkinnyIsa isa = best_skinny_isa()) {
#if defined(PEFT_SKINNY_X86)
  const index_t m = c.rows(), n = c.cols();
  if (isa == SkinnyIsa::avx512)
    return skinny_gemm_with<skinny_avx512::Kernels>(ctx, op_a, op_b, m, n, k, alpha, a.data(),
                                                    a.stride(), b.data(), b.stride(), beta,
                                                    c.data(), c.stride());
  if (isa == SkinnyIsa::avx2)
    return skinny_gemm_with<skinny_avx2::Kernels>(ctx, op_a, op_b, m, n, k, alpha, a.data(),
                                                  a.stride(), b.data(), b.stride(), beta, c.data(),
                                                  c.stride());
#endif
  (void)ctx, (void)op_a, (void)op_b, (void)alpha, (void)a, (void)b, (void)beta, (void)c, (void)k,
      (void)isa;
  return false;
}

}  // namespace detail
}  // namespace peft::cpu
