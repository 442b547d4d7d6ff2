#pragma once
// NOLA's primitives on the CPU: linear combinations of a RandomBasis (core/random.hpp) and the
// projections of a gradient onto its members, without ever holding more than one tile of basis
// entries (a few KiB on the stack). The GPU twins are in backend/cuda/nola.cuh.
//
//   nola_combine:  out = beta · out + Σ_m c_m · basis_m
//   nola_project:  g_m += ⟨grad, basis_m⟩ = Σ_e grad_e · basis_m,e   for every m
//
// Philox runs over a tile of counters at once, lane by lane, so that the compiler vectorises it.
// Work is split by the problem's sizes only (never by the thread count), so results do not
// depend on the number of threads.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include "../../core/random.hpp"
#include "context.hpp"
#include "elementwise.hpp"

namespace peft::cpu {
namespace detail {

/// Elements of a tile (a multiple of 4: one Philox block gives 4 entries).
inline constexpr index_t kNolaTile = 512;
inline constexpr index_t kNolaTileBlocks = kNolaTile / 4;
/// nola_project: bases per task, the fewest elements per chunk, and the tasks it aims for.
inline constexpr index_t kNolaGroup = 64;
inline constexpr index_t kNolaMinChunk = 4096;
inline constexpr index_t kNolaTargetTasks = 64;

// A tile holds kNolaTile entries of one basis member in word-major order: position
// w * kNolaTileBlocks + l is word w of Philox block first_block + l, i.e. entry
// 4 (first_block + l) + w. The consumers convert to and from the row-major order once per tile,
// not once per member.

/// Position in a tile of entry 4 l + w of the tile.
constexpr index_t tile_position(index_t offset) {
  return (offset % 4) * kNolaTileBlocks + offset / 4;
}

inline constexpr std::uint32_t kPhiloxMul0 = 0xD2511F53u, kPhiloxMul1 = 0xCD9E8D57u;
inline constexpr std::uint32_t kPhiloxWeyl0 = 0x9E3779B9u, kPhiloxWeyl1 = 0xBB67AE85u;

/// The tile of `stream` from block first_block, as uniform_symmetric(bits, bound) (bit-identical
/// to it): Philox4x32-10 over the tile's counters with the lanes innermost, so that the
/// compiler vectorises it for any target. A tile at the end of a matrix is drawn whole (its tail
/// is finite and meets only zeros).
inline void basis_tile_portable(const RandomStream& stream, std::uint64_t first_block, float bound,
                                float* out) {
  alignas(64) std::uint32_t c0[kNolaTileBlocks], c1[kNolaTileBlocks], c2[kNolaTileBlocks],
      c3[kNolaTileBlocks];
  for (index_t l = 0; l < kNolaTileBlocks; ++l) {
    c0[l] = static_cast<std::uint32_t>(first_block + std::uint64_t(l));
    c1[l] = stream.step;
    c2[l] = stream.purpose;
    c3[l] = stream.stream_id;
  }
  std::uint32_t k0 = static_cast<std::uint32_t>(stream.seed);
  std::uint32_t k1 = static_cast<std::uint32_t>(stream.seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (index_t l = 0; l < kNolaTileBlocks; ++l) {
      const std::uint64_t p0 = std::uint64_t(kPhiloxMul0) * c0[l];
      const std::uint64_t p1 = std::uint64_t(kPhiloxMul1) * c2[l];
      const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
      const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
      c0[l] = n0;
      c1[l] = static_cast<std::uint32_t>(p1);
      c2[l] = n2;
      c3[l] = static_cast<std::uint32_t>(p0);
    }
    k0 += kPhiloxWeyl0;
    k1 += kPhiloxWeyl1;
  }
  // uniform_symmetric: 2 u − 1 = (j − 2²³) 2⁻²³ with j = bits >> 8 is exact; the product with
  // the bound is the only rounding.
  const std::uint32_t* words[4] = {c0, c1, c2, c3};
  for (int w = 0; w < 4; ++w)
    for (index_t l = 0; l < kNolaTileBlocks; ++l) {
      const auto j = static_cast<std::int32_t>(words[w][l] >> 8) - (std::int32_t{1} << 23);
      out[w * kNolaTileBlocks + l] = (static_cast<float>(j) * 0x1.0p-23f) * bound;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PEFT_NOLA_X86_SIMD 1

// GCC 12 warns about the deliberately undefined pass-through operand inside the AVX-512
// intrinsics (_mm512_undefined_epi32, GCC bug 105593) once they are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
/// basis_tile_portable with AVX-512: 16 blocks per register, each 32 x 32 -> 64-bit product as
/// two vpmuludq over the even and odd lanes.
__attribute__((target("avx512f"))) inline void basis_tile_avx512(const RandomStream& stream,
                                                                 std::uint64_t first_block,
                                                                 float bound, float* out) {
  const __m512i mul0 = _mm512_set1_epi32(static_cast<int>(kPhiloxMul0));
  const __m512i mul1 = _mm512_set1_epi32(static_cast<int>(kPhiloxMul1));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i offset = _mm512_set1_epi32(1 << 23);
  const __m512 scale = _mm512_set1_ps(0x1.0p-23f);
  const __m512 bound_v = _mm512_set1_ps(bound);
  const auto first = static_cast<std::uint32_t>(first_block);
  const auto seed0 = static_cast<std::uint32_t>(stream.seed);
  const auto seed1 = static_cast<std::uint32_t>(stream.seed >> 32);
  // Two groups of 16 blocks at once: their rounds are independent, so one group's multiplies
  // run while the other's wait for their results.
  constexpr int kGroups = 4;
  static_assert(kNolaTileBlocks % (16 * kGroups) == 0);
  for (index_t g = 0; g < kNolaTileBlocks; g += 16 * kGroups) {
    __m512i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
    for (int h = 0; h < kGroups; ++h) {
      c0[h] = _mm512_add_epi32(
          _mm512_set1_epi32(static_cast<int>(first + static_cast<std::uint32_t>(g + 16 * h))),
          lanes);
      c1[h] = _mm512_set1_epi32(static_cast<int>(stream.step));
      c2[h] = _mm512_set1_epi32(static_cast<int>(stream.purpose));
      c3[h] = _mm512_set1_epi32(static_cast<int>(stream.stream_id));
    }
    std::uint32_t k0 = seed0, k1 = seed1;
    for (int round = 0; round < 10; ++round) {
      const __m512i key0 = _mm512_set1_epi32(static_cast<int>(k0));
      const __m512i key1 = _mm512_set1_epi32(static_cast<int>(k1));
      for (int h = 0; h < kGroups; ++h) {
        const __m512i p0e = _mm512_mul_epu32(c0[h], mul0);
        const __m512i p0o = _mm512_mul_epu32(_mm512_srli_epi64(c0[h], 32), mul0);
        const __m512i p1e = _mm512_mul_epu32(c2[h], mul1);
        const __m512i p1o = _mm512_mul_epu32(_mm512_srli_epi64(c2[h], 32), mul1);
        const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(p0e, 32), p0o);
        const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, p0e, _mm512_slli_epi64(p0o, 32));
        const __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(p1e, 32), p1o);
        const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, p1e, _mm512_slli_epi64(p1o, 32));
        c0[h] = _mm512_ternarylogic_epi32(hi1, c1[h], key0, 0x96);
        c2[h] = _mm512_ternarylogic_epi32(hi0, c3[h], key1, 0x96);
        c1[h] = lo1;
        c3[h] = lo0;
      }
      k0 += kPhiloxWeyl0;
      k1 += kPhiloxWeyl1;
    }
    for (int h = 0; h < kGroups; ++h) {
      const __m512i words[4] = {c0[h], c1[h], c2[h], c3[h]};
      for (int w = 0; w < 4; ++w) {
        const __m512i j = _mm512_sub_epi32(_mm512_srli_epi32(words[w], 8), offset);
        const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(j), scale), bound_v);
        _mm512_storeu_ps(out + w * kNolaTileBlocks + g + 16 * h, v);
      }
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/// The same with AVX2: 8 blocks per register.
__attribute__((target("avx2"))) inline void basis_tile_avx2(const RandomStream& stream,
                                                            std::uint64_t first_block, float bound,
                                                            float* out) {
  const __m256i mul0 = _mm256_set1_epi32(static_cast<int>(kPhiloxMul0));
  const __m256i mul1 = _mm256_set1_epi32(static_cast<int>(kPhiloxMul1));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i offset = _mm256_set1_epi32(1 << 23);
  const __m256 scale = _mm256_set1_ps(0x1.0p-23f);
  const __m256 bound_v = _mm256_set1_ps(bound);
  const auto first = static_cast<std::uint32_t>(first_block);
  const auto seed0 = static_cast<std::uint32_t>(stream.seed);
  const auto seed1 = static_cast<std::uint32_t>(stream.seed >> 32);
  for (index_t g = 0; g < kNolaTileBlocks; g += 8) {
    __m256i c0 = _mm256_add_epi32(
        _mm256_set1_epi32(static_cast<int>(first + static_cast<std::uint32_t>(g))), lanes);
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(stream.step));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(stream.purpose));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(stream.stream_id));
    std::uint32_t k0 = seed0, k1 = seed1;
    for (int round = 0; round < 10; ++round) {
      const __m256i p0e = _mm256_mul_epu32(c0, mul0);
      const __m256i p0o = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), mul0);
      const __m256i p1e = _mm256_mul_epu32(c2, mul1);
      const __m256i p1o = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), mul1);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(p0e, 32), p0o, 0xAA);
      const __m256i lo0 = _mm256_blend_epi32(p0e, _mm256_slli_epi64(p0o, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(p1e, 32), p1o, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(p1e, _mm256_slli_epi64(p1o, 32), 0xAA);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += kPhiloxWeyl0;
      k1 += kPhiloxWeyl1;
    }
    const __m256i words[4] = {c0, c1, c2, c3};
    for (int w = 0; w < 4; ++w) {
      const __m256i j = _mm256_sub_epi32(_mm256_srli_epi32(words[w], 8), offset);
      const __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(j), scale), bound_v);
      _mm256_storeu_ps(out + w * kNolaTileBlocks + g, v);
    }
  }
}
#endif

/// The Philox kernels this machine can run (the best is used; tests check each against the
/// scalar definition).
enum class PhiloxKernel { portable, avx2, avx512 };

inline bool philox_kernel_supported(PhiloxKernel kernel) {
#if defined(PEFT_NOLA_X86_SIMD)
  __builtin_cpu_init();  // needed when called before main (a static layer's constructor)
  switch (kernel) {
    case PhiloxKernel::portable:
      return true;
    case PhiloxKernel::avx2:
      return __builtin_cpu_supports("avx2");
    case PhiloxKernel::avx512:
      return __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return kernel == PhiloxKernel::portable;
#endif
}

inline PhiloxKernel best_philox_kernel() {
  static const PhiloxKernel best =
      philox_kernel_supported(PhiloxKernel::avx512) ? PhiloxKernel::avx512
      : philox_kernel_supported(PhiloxKernel::avx2) ? PhiloxKernel::avx2
                                                    : PhiloxKernel::portable;
  return best;
}

/// The tile of `stream` from block first_block in word-major order, with the given kernel.
inline void basis_tile(const RandomStream& stream, std::uint64_t first_block, float bound,
                       float* out, PhiloxKernel kernel = best_philox_kernel()) {
#if defined(PEFT_NOLA_X86_SIMD)
  if (kernel == PhiloxKernel::avx512) return basis_tile_avx512(stream, first_block, bound, out);
  if (kernel == PhiloxKernel::avx2) return basis_tile_avx2(stream, first_block, bound, out);
#endif
  (void)kernel;
  basis_tile_portable(stream, first_block, bound, out);
}

/// Element i of a vector given as a [k, 1] or [1, k] matrix.
template <class P>
P& vector_at(MatrixView<P, Cpu> v, index_t i) {
  return v.cols() == 1 ? v.data()[i * v.stride()] : v.data()[i];
}

template <class P>
index_t vector_length(const char* who, const char* what, MatrixView<P, Cpu> v) {
  PEFT_CHECK_SHAPE(v.rows() == 1 || v.cols() == 1, who, ": ", what, " is ", shape_string(v),
                   ", expected a [k, 1] or [1, k] vector");
  return v.size();
}

inline void check_basis(const char* who, const RandomBasis& basis, index_t count,
                        index_t elements) {
  PEFT_CHECK_ARG(count >= 1 && std::uint64_t(count) <= std::uint64_t{0xFFFFFFFFu}, who, ": ", count,
                 " basis members, expected 1 to 4294967295 (the member index is 32 bits)");
  PEFT_CHECK_ARG(std::uint64_t(elements) <= kMaxStreamElements, who, ": a member has ", elements,
                 " entries, at most ", kMaxStreamElements, " can be drawn from one stream");
  PEFT_CHECK_ARG(basis.bound >= 0.0f && basis.bound <= 3.0e38f, who, ": basis bound is ",
                 basis.bound, ", expected a finite value >= 0");
}

/// How nola_project splits its work: `groups` groups of up to kNolaGroup members times `chunks`
/// chunks of `chunk` elements (a multiple of the tile). Depends on the sizes only.
struct NolaSplit {
  index_t groups, chunks, chunk;
};
inline NolaSplit nola_split(index_t count, index_t elements) {
  const index_t groups = (count + kNolaGroup - 1) / kNolaGroup;
  const index_t max_chunks = std::max<index_t>(1, elements / kNolaMinChunk);
  const index_t chunks =
      std::clamp<index_t>((kNolaTargetTasks + groups - 1) / groups, 1, max_chunks);
  index_t chunk = (elements + chunks - 1) / chunks;
  chunk = std::max<index_t>(kNolaTile, (chunk + kNolaTile - 1) / kNolaTile * kNolaTile);
  return {groups, (elements + chunk - 1) / chunk, chunk};
}

}  // namespace detail

/// Workspace bytes one nola_project call over `count` members of `elements` entries takes.
inline index_t nola_project_workspace_bytes(const Context<Cpu>&, index_t count, index_t elements) {
  if (count <= 0 || elements <= 0) return 0;
  const auto split = detail::nola_split(count, elements);
  constexpr index_t align = index_t(peft::detail::Workspace<Cpu>::alignment);
  return (split.chunks * count * index_t(sizeof(double)) + align - 1) / align * align;
}

/// out = beta · out + Σ_m coefficients_m · basis_m, where member m is the matrix of out's shape
/// with entries basis.entry(m, i · cols + j). coefficients is a [k, 1] or [1, k] vector; beta = 0
/// does not read out. Members with a zero coefficient are skipped. Accumulates in P.
template <class P>
void nola_combine(Context<Cpu>& ctx, const RandomBasis& basis,
                  MatrixView<const P, Cpu> coefficients, double beta, MatrixView<P, Cpu> out) {
  static_assert(std::is_floating_point_v<P>, "nola_combine: float or double coefficients");
  const index_t count = detail::vector_length("nola_combine", "coefficients", coefficients);
  const index_t elements = out.size();
  detail::check_basis("nola_combine", basis, count, elements);
  if (elements == 0) return;
  const index_t cols = out.cols();
  const index_t tiles = (elements + detail::kNolaTile - 1) / detail::kNolaTile;
  const bool parallel = count * elements > detail::kParallelElements;
  const auto kernel = detail::best_philox_kernel();
#pragma omp parallel for num_threads(ctx.threads()) schedule(static) if (parallel)
  for (index_t t = 0; t < tiles; ++t) {
    const index_t e0 = t * detail::kNolaTile;
    const index_t n = std::min(detail::kNolaTile, elements - e0);
    alignas(64) P acc[detail::kNolaTile];
    alignas(64) float values[detail::kNolaTile];
    for (index_t l = 0; l < detail::kNolaTile; ++l) acc[l] = P(0);
    if (beta != 0.0)
      for (index_t l = 0; l < n; ++l) {
        const index_t e = e0 + l;
        acc[detail::tile_position(l)] = static_cast<P>(beta * double(out(e / cols, e % cols)));
      }
    for (index_t m = 0; m < count; ++m) {
      const P c = detail::vector_at(coefficients, m);
      if (c == P(0)) continue;
      detail::basis_tile(basis.member(static_cast<std::uint32_t>(m)), std::uint64_t(e0 / 4),
                         basis.bound, values, kernel);
      for (index_t l = 0; l < detail::kNolaTile; ++l) acc[l] += c * static_cast<P>(values[l]);
    }
    for (index_t l = 0; l < n; ++l) {
      const index_t e = e0 + l;
      out(e / cols, e % cols) = acc[detail::tile_position(l)];
    }
  }
}

/// coefficient_grads_m += ⟨grad, basis_m⟩ = Σ_e grad_e · basis.entry(m, e) for every member m,
/// e the row-major index in grad's shape. Products in P, sums of a tile in P across 16 lanes,
/// everything above in double; the result is rounded to P once. Takes
/// nola_project_workspace_bytes(ctx, k, grad.size()) bytes of the workspace.
template <class P>
void nola_project(Context<Cpu>& ctx, const RandomBasis& basis, MatrixView<const P, Cpu> grad,
                  MatrixView<P, Cpu> coefficient_grads) {
  static_assert(std::is_floating_point_v<P>, "nola_project: float or double gradients");
  const index_t count =
      detail::vector_length("nola_project", "coefficient_grads", coefficient_grads);
  const index_t elements = grad.size();
  detail::check_basis("nola_project", basis, count, elements);
  if (elements == 0) return;
  const auto split = detail::nola_split(count, elements);
  typename peft::detail::Workspace<Cpu>::Frame frame(ctx.workspace());
  double* partial = frame.take<double>(split.chunks * count);  // [chunk][member]
  const index_t cols = grad.cols();
  const index_t tasks = split.groups * split.chunks;
  const bool parallel = count * elements > detail::kParallelElements;
  const auto kernel = detail::best_philox_kernel();
#pragma omp parallel for num_threads(ctx.threads()) schedule(dynamic) if (parallel)
  for (index_t task = 0; task < tasks; ++task) {
    const index_t chunk = task / split.groups;
    const index_t m0 = (task % split.groups) * detail::kNolaGroup;
    const index_t m1 = std::min(count, m0 + detail::kNolaGroup);
    double* sums = partial + chunk * count;
    for (index_t m = m0; m < m1; ++m) sums[m] = 0.0;
    const index_t c0 = chunk * split.chunk;
    const index_t c1 = std::min(elements, c0 + split.chunk);
    alignas(64) P g[detail::kNolaTile];
    alignas(64) float values[detail::kNolaTile];
    constexpr index_t kLanes = 16;
    for (index_t e0 = c0; e0 < c1; e0 += detail::kNolaTile) {
      const index_t n = std::min(detail::kNolaTile, c1 - e0);
      for (index_t l = 0; l < detail::kNolaTile; ++l) g[l] = P(0);
      for (index_t l = 0; l < n; ++l) {
        const index_t e = e0 + l;
        g[detail::tile_position(l)] = grad(e / cols, e % cols);
      }
      for (index_t m = m0; m < m1; ++m) {
        detail::basis_tile(basis.member(static_cast<std::uint32_t>(m)), std::uint64_t(e0 / 4),
                           basis.bound, values, kernel);
        P lanes[kLanes] = {};
        for (index_t l = 0; l < detail::kNolaTile; l += kLanes)
          for (index_t j = 0; j < kLanes; ++j) lanes[j] += g[l + j] * static_cast<P>(values[l + j]);
        double tile_sum = 0.0;
        for (index_t j = 0; j < kLanes; ++j) tile_sum += double(lanes[j]);
        sums[m] += tile_sum;
      }
    }
  }
  for (index_t m = 0; m < count; ++m) {
    double total = 0.0;
    for (index_t c = 0; c < split.chunks; ++c) total += partial[c * count + m];
    P& target = detail::vector_at(coefficient_grads, m);
    target = static_cast<P>(double(target) + total);
  }
}

}  // namespace peft::cpu
