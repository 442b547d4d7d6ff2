#pragma once
// Philox4x32-10 (Salmon et al., SC'11): a counter-based generator, so any element of any
// random stream can be computed independently, on the host or inside a CUDA kernel, and both
// give the same bits. Only exact operations may follow the integer draws when results must
// match across devices (see DESIGN.md §5).
//
// Counter layout, written down once for the whole library:
//   key     = (seed low 32 bits, seed high 32 bits)
//   counter = (element block, step, purpose, stream_id)
// where element block = flat element index / 4 (each block yields 4 words), step is a call
// or optimizer-step counter, purpose separates independent uses (init, dropout, ...), and
// stream_id separates layers that share a seed.

#include <array>
#include <cmath>
#include <cstdint>

#include "config.hpp"

namespace peft {

enum class RandomPurpose : std::uint32_t {
  init = 1,
  dropout = 2,
  nola_basis_a = 3,
  nola_basis_b = 4,
  /// Values from here on are the application's (e.g. a trainer's data shuffling), never the
  /// library's: streams of the two cannot collide.
  user = 0x80000000u,
};

struct PhiloxCounter {
  std::uint32_t c[4];
};
struct PhiloxKeyWords {
  std::uint32_t k[2];
};

namespace detail {

PEFT_HOST_DEVICE inline void mulhilo32(std::uint32_t a, std::uint32_t b, std::uint32_t& hi,
                                       std::uint32_t& lo) {
  const std::uint64_t product = static_cast<std::uint64_t>(a) * b;
  hi = static_cast<std::uint32_t>(product >> 32);
  lo = static_cast<std::uint32_t>(product);
}

}  // namespace detail

/// One Philox4x32-10 block: 4 random words for (counter, key).
PEFT_HOST_DEVICE inline PhiloxCounter philox4x32_10(PhiloxCounter ctr, PhiloxKeyWords key) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    std::uint32_t hi0, lo0, hi1, lo1;
    detail::mulhilo32(kMul0, ctr.c[0], hi0, lo0);
    detail::mulhilo32(kMul1, ctr.c[2], hi1, lo1);
    ctr = PhiloxCounter{{hi1 ^ ctr.c[1] ^ key.k[0], lo1, hi0 ^ ctr.c[3] ^ key.k[1], lo0}};
    key.k[0] += kWeyl0;
    key.k[1] += kWeyl1;
  }
  return ctr;
}

/// A random stream: everything but the element index. Trivially copyable, so it can be stored in
/// a layer's reserve and read by a kernel.
struct RandomStream {
  std::uint64_t seed = 0;
  std::uint32_t stream_id = 0;
  std::uint32_t purpose = 0;
  std::uint32_t step = 0;
  std::uint32_t reserved = 0;

  PEFT_HOST_DEVICE PhiloxCounter block(std::uint64_t block_index) const {
    return philox4x32_10(
        PhiloxCounter{{static_cast<std::uint32_t>(block_index), step, purpose, stream_id}},
        PhiloxKeyWords{{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}});
  }

  /// The 32-bit word for flat element `index` (4 elements share one Philox block).
  PEFT_HOST_DEVICE std::uint32_t bits(std::uint64_t index) const {
    return block(index / 4).c[index % 4];
  }
};

inline RandomStream make_stream(std::uint64_t seed, std::uint32_t stream_id, RandomPurpose purpose,
                                std::uint32_t step = 0) {
  return RandomStream{seed, stream_id, static_cast<std::uint32_t>(purpose), step, 0};
}

/// Largest element count one stream addresses (the block index is 32 bits of the counter).
inline constexpr std::uint64_t kMaxStreamElements = std::uint64_t{4} << 32;

/// Uniform in [0, 1) with 24 random bits: exact in float, identical on host and device.
PEFT_HOST_DEVICE inline float uniform01(std::uint32_t bits) {
  return static_cast<float>(bits >> 8) * 0x1.0p-24f;
}

/// Uniform in [-bound, bound): 2u - 1 is exact, so the only rounding is the final product,
/// which is the same IEEE operation everywhere (no fused multiply-add can change it).
PEFT_HOST_DEVICE inline float uniform_symmetric(std::uint32_t bits, float bound) {
  return (2.0f * uniform01(bits) - 1.0f) * bound;
}

/// A seeded family of random matrices with i.i.d. U(-bound, bound) entries that is never stored
/// (NOLA's bases): entry `element` (flat row-major index) of member `index` is
/// uniform_symmetric(bits(element)) of the stream (seed, stream_id, purpose, step = index).
/// Integer draws and one IEEE product: every backend and every dtype (converted exactly from the
/// float) sees the same values.
struct RandomBasis {
  std::uint64_t seed = 0;
  std::uint32_t stream_id = 0;
  std::uint32_t purpose = 0;
  float bound = 1;

  PEFT_HOST_DEVICE RandomStream member(std::uint32_t index) const {
    return RandomStream{seed, stream_id, purpose, index, 0};
  }
  PEFT_HOST_DEVICE float entry(std::uint32_t index, std::uint64_t element) const {
    return uniform_symmetric(member(index).bits(element), bound);
  }
};

inline RandomBasis make_basis(std::uint64_t seed, std::uint32_t stream_id, RandomPurpose purpose,
                              float bound) {
  return RandomBasis{seed, stream_id, static_cast<std::uint32_t>(purpose), bound};
}

/// Standard normal pair by Box-Muller, host only: libm differs between host and device, so
/// normal initialisations are drawn on the host (DESIGN.md §5). Uses elements 2i and 2i + 1.
inline double normal_from_stream(const RandomStream& s, std::uint64_t index) {
  const std::uint64_t pair = index / 2;
  const PhiloxCounter r = s.block(pair / 2);
  const unsigned lane = static_cast<unsigned>(pair % 2) * 2;
  // u1 in (0, 1] keeps the logarithm finite.
  const double u1 = (static_cast<double>(r.c[lane]) + 1.0) * 0x1.0p-32;
  const double u2 = static_cast<double>(r.c[lane + 1]) * 0x1.0p-32;
  const double radius = std::sqrt(-2.0 * std::log(u1));
  const double angle = 6.283185307179586476925286766559 * u2;
  return index % 2 == 0 ? radius * std::cos(angle) : radius * std::sin(angle);
}

/// Dropout keeps an element when its bits are at or above this threshold: an integer compare,
/// so host and device make identical masks. Computed on the host from p in [0, 1).
inline std::uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(t);
}

}  // namespace peft
