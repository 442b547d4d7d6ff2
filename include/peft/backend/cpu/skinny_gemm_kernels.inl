// The skinny GEMM kernels of one instruction set (no include guard: skinny_gemm.hpp includes
// this file once per instruction set, inside a namespace that defines
//   PEFT_SKINNY_FN  the function attributes (the target) of every function here,
//   Vec             the vector register: V, W, zero, set1, load, store, fma, mul, add,
//                   load_n / store_n (the first `count` lanes),
//   kRows1/2/4      rows of a register tile of 1, 2 or 4 vectors of C,
//   kOuterSmall, kOuterVectors  the outer-product tile: small columns x vectors,
// so that every function carries that target and inlines the intrinsics.)
// Nothing here allocates: the repacked small operand lives in a stack panel of kSkinnyPanel
// floats.

/// C[0 .. count) = α acc + β C on the first pass over the depth (C unread when β = 0), or
/// C += α acc on later ones.
PEFT_SKINNY_FN void put(Vec::V acc, float* c, index_t count, float alpha, float beta, bool first) {
  Vec::V out = Vec::mul(Vec::set1(alpha), acc);
  if (!first)
    out = Vec::add(out, Vec::load_n(c, count));
  else if (beta != 0.0f)
    out = Vec::fma(Vec::set1(beta), Vec::load_n(c, count), out);
  Vec::store_n(c, out, count);
}

/// C[r, 0 .. cols) (+)= α Σ_kk x[r][kk] · panel[kk][0 .. cols) over `depth`, for the rows r of
/// one register tile of R rows and NV vectors (rows past `rows` repeat the last one and are not
/// stored; panel columns past `cols` are not read).
template <int R, int NV>
PEFT_SKINNY_FN void rows_tile(index_t rows, index_t depth, const float* x, index_t ldx,
                              const float* panel, index_t ldp, float* c, index_t ldc, index_t cols,
                              float alpha, float beta, bool first) {
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = x + std::min<index_t>(r, rows - 1) * ldx;
  Vec::V acc[R][NV];
  PEFT_SKINNY_UNROLL(16)
  for (int r = 0; r < R; ++r) PEFT_SKINNY_UNROLL(4)
  for (int v = 0; v < NV; ++v) acc[r][v] = Vec::zero();
  if (!first || beta != 0.0f) {  // C is read at the end: ask for it now
    PEFT_SKINNY_UNROLL(16)
    for (int r = 0; r < R; ++r) PEFT_SKINNY_UNROLL(4)
    for (int v = 0; v < NV; ++v)
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + v * Vec::W), _MM_HINT_T0);
  }
  const bool whole = cols >= NV * Vec::W;  // else the panel may end inside the last vector
  for (index_t kk = 0; kk < depth; ++kk) {
    const float* pk = panel + kk * ldp;
    Vec::V p[NV];
    PEFT_SKINNY_UNROLL(4)
    for (int v = 0; v < NV; ++v)
      p[v] = whole ? Vec::load(pk + v * Vec::W) : Vec::load_n(pk + v * Vec::W, cols - v * Vec::W);
    PEFT_SKINNY_UNROLL(16)
    for (int r = 0; r < R; ++r) {
      const Vec::V xb = Vec::set1(xr[r][kk]);
      PEFT_SKINNY_UNROLL(4)
      for (int v = 0; v < NV; ++v) acc[r][v] = Vec::fma(xb, p[v], acc[r][v]);
    }
  }
  // Unrolled with constant indices, so that acc stays in registers.
  PEFT_SKINNY_UNROLL(16)
  for (int r = 0; r < R; ++r) PEFT_SKINNY_UNROLL(4)
  for (int v = 0; v < NV; ++v)
    if (r < rows && v * Vec::W < cols)
      put(acc[r][v], c + r * ldc + v * Vec::W, cols - v * Vec::W, alpha, beta, first);
}

/// Rows [r0, r1) of C[:, 0 .. cols) (+)= α x panel, in register tiles: a few rows at a time,
/// across all of C's columns, so that C is written (and read) row after row.
PEFT_SKINNY_FN void rows_times_panel(index_t r0, index_t r1, index_t depth, const float* x,
                                     index_t ldx, const float* panel, index_t ldp, float* c,
                                     index_t ldc, index_t cols, float alpha, float beta,
                                     bool first) {
  const index_t vectors = (cols + Vec::W - 1) / Vec::W;
  // Tiles of 4 vectors when C is that wide, so every row takes the same tile height.
  const index_t step = vectors >= 4 ? kRows4 : vectors >= 2 ? kRows2 : kRows1;
  for (index_t r = r0; r < r1; r += step) {
    const index_t rows = std::min(step, r1 - r);
    const float* xr = x + r * ldx;
    float* cr = c + r * ldc;
    for (index_t v0 = 0; v0 < vectors;) {
      const index_t nv = vectors - v0 >= 4 ? 4 : vectors - v0 >= 2 ? 2 : 1;
      const index_t width = std::min<index_t>(cols - v0 * Vec::W, nv * Vec::W);
      const float* p = panel + v0 * Vec::W;
      float* cv = cr + v0 * Vec::W;
      // Tiles of the row step's height (a narrower group at the end keeps that height).
      if (step == kRows4 && nv == 4)
        rows_tile<kRows4, 4>(rows, depth, xr, ldx, p, ldp, cv, ldc, width, alpha, beta, first);
      else if (step == kRows4 && nv == 2)
        rows_tile<kRows4, 2>(rows, depth, xr, ldx, p, ldp, cv, ldc, width, alpha, beta, first);
      else if (step == kRows4)
        rows_tile<kRows4, 1>(rows, depth, xr, ldx, p, ldp, cv, ldc, width, alpha, beta, first);
      else if (step == kRows2 && nv == 2)
        rows_tile<kRows2, 2>(rows, depth, xr, ldx, p, ldp, cv, ldc, width, alpha, beta, first);
      else if (step == kRows2)
        rows_tile<kRows2, 1>(rows, depth, xr, ldx, p, ldp, cv, ldc, width, alpha, beta, first);
      else
        rows_tile<kRows1, 1>(rows, depth, xr, ldx, p, ldp, cv, ldc, width, alpha, beta, first);
      v0 += nv;
    }
  }
}

/// c[r · ldc_r + j · ldc_j] (+)= α Σ_kk x[r][kk] · p[j][kk] over `depth` (vectors along the depth,
/// summed across lanes at the end), for R rows (past `rows`: the last one again, not stored) and
/// J rows of the packed panel p (zero past the product's columns; rows padded to whole vectors).
template <int R, int J>
PEFT_SKINNY_FN void dots_tile(index_t rows, index_t count, index_t depth, const float* x,
                              index_t ldx, const float* p, index_t ldp, float* c, index_t ldc_r,
                              index_t ldc_j, float alpha, float beta, bool first) {
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = x + std::min<index_t>(r, rows - 1) * ldx;
  Vec::V acc[R][J];
  PEFT_SKINNY_UNROLL(8)
  for (int r = 0; r < R; ++r) PEFT_SKINNY_UNROLL(8)
  for (int j = 0; j < J; ++j) acc[r][j] = Vec::zero();
  const index_t whole = depth / Vec::W * Vec::W;
  for (index_t kk = 0; kk < depth; kk += Vec::W) {
    Vec::V xv[R], pv[J];
    if (kk < whole) {
      PEFT_SKINNY_UNROLL(8)
      for (int r = 0; r < R; ++r) xv[r] = Vec::load(xr[r] + kk);
    } else {
      PEFT_SKINNY_UNROLL(8)
      for (int r = 0; r < R; ++r) xv[r] = Vec::load_n(xr[r] + kk, depth - kk);
    }
    PEFT_SKINNY_UNROLL(8)
    for (int j = 0; j < J; ++j) pv[j] = Vec::load(p + j * ldp + kk);
    PEFT_SKINNY_UNROLL(8)
    for (int r = 0; r < R; ++r) PEFT_SKINNY_UNROLL(8)
    for (int j = 0; j < J; ++j) acc[r][j] = Vec::fma(xv[r], pv[j], acc[r][j]);
  }
  PEFT_SKINNY_UNROLL(8)
  for (int r = 0; r < R; ++r) PEFT_SKINNY_UNROLL(8)
  for (int j = 0; j < J; ++j)
    if (r < rows && j < count) {
      float& out = c[r * ldc_r + j * ldc_j];
      const float sum = alpha * Vec::sum(acc[r][j]);
      out = !first ? out + sum : beta == 0.0f ? sum : sum + beta * out;
    }
}

/// tile[s][v W ..] += Σ_kk small[kk][s] · large[kk][v W ..] over k rows, for SN small columns
/// (those past `count` repeat the last one) and NV vectors of the large operand (zero past
/// `width`).
template <int SN, int NV>
PEFT_SKINNY_FN void outer_tile(index_t k, const float* small, index_t lds, index_t count,
                               const float* large, index_t ldl, index_t width,
                               float (&tile)[SN][NV * Vec::W]) {
  index_t col[SN];
  for (int s = 0; s < SN; ++s) col[s] = std::min<index_t>(s, count - 1);
  Vec::V acc[SN][NV];
  PEFT_SKINNY_UNROLL(8)
  for (int s = 0; s < SN; ++s) PEFT_SKINNY_UNROLL(4)
  for (int v = 0; v < NV; ++v) acc[s][v] = Vec::load(&tile[s][v * Vec::W]);
  const bool whole = width >= NV * Vec::W;
  for (index_t kk = 0; kk < k; ++kk) {
    const float* l = large + kk * ldl;
    // The walk goes down a column strip, one page per row: the hardware prefetchers do not
    // follow it, so the lines kOuterPrefetch rows ahead are asked for here.
    const float* ahead = l + std::min<index_t>(kOuterPrefetch, k - 1 - kk) * ldl;
    PEFT_SKINNY_UNROLL(4)
    for (int v = 0; v < NV; ++v)
      _mm_prefetch(reinterpret_cast<const char*>(ahead + v * Vec::W), _MM_HINT_T0);
    Vec::V p[NV];
    PEFT_SKINNY_UNROLL(4)
    for (int v = 0; v < NV; ++v)
      p[v] = whole ? Vec::load(l + v * Vec::W) : Vec::load_n(l + v * Vec::W, width - v * Vec::W);
    const float* sr = small + kk * lds;
    PEFT_SKINNY_UNROLL(8)
    for (int s = 0; s < SN; ++s) {
      const Vec::V sb = Vec::set1(sr[col[s]]);
      PEFT_SKINNY_UNROLL(4)
      for (int v = 0; v < NV; ++v) acc[s][v] = Vec::fma(sb, p[v], acc[s][v]);
    }
  }
  PEFT_SKINNY_UNROLL(8)
  for (int s = 0; s < SN; ++s) PEFT_SKINNY_UNROLL(4)
  for (int v = 0; v < NV; ++v) Vec::store(&tile[s][v * Vec::W], acc[s][v]);
}

/// What skinny_gemm.hpp calls, one thread's share at a time (no vector types cross this line,
/// so callers need no target of their own).
struct Kernels {
  static constexpr index_t width = Vec::W;
  static constexpr index_t outer_block = kOuterVectors * Vec::W;

  /// small_n, rows [r0, r1): C = α X op(Y) + β C, n <= kSkinnyMax, op(Y) repacked by depth.
  PEFT_SKINNY_FN static void small_n(Op op_y, index_t r0, index_t r1, index_t n, index_t k,
                                     float alpha, const float* x, index_t ldx, const float* y,
                                     index_t ldy, float beta, float* c, index_t ldc) {
    const index_t ldp = (n + Vec::W - 1) / Vec::W * Vec::W;
    const index_t depth_max = kSkinnyPanel / ldp;
    alignas(64) float panel[kSkinnyPanel];
    for (index_t k0 = 0; k0 < k; k0 += depth_max) {
      const index_t depth = std::min(depth_max, k - k0);
      skinny_pack(op_y, y, ldy, k0, depth, 0, n, panel, ldp);
      rows_times_panel(r0, r1, depth, x + k0, ldx, panel, ldp, c, ldc, n, alpha, beta, k0 == 0);
    }
  }

  /// small_n for n <= kDotsMax, rows [r0, r1): dot products along the depth against op(Y)ᵀ
  /// repacked by depth (x is read as vectors, not element by element). With transpose_c, the
  /// result goes to Cᵀ: C[j, r] (for C = op(Y)ᵀ Xᵀ, a product with few rows).
  PEFT_SKINNY_FN static void small_n_dots(Op op_y, index_t r0, index_t r1, index_t n, index_t k,
                                          float alpha, const float* x, index_t ldx, const float* y,
                                          index_t ldy, float beta, float* c, index_t ldc,
                                          bool transpose_c) {
    const index_t rows_p = (n + kDotsCols - 1) / kDotsCols * kDotsCols;
    // Panel rows one vector longer than the depth, and not a power of two apart.
    const index_t depth_max = (kSkinnyPanel / rows_p) / Vec::W * Vec::W - 2 * Vec::W;
    const index_t ldp = depth_max + Vec::W;
    const index_t ldc_r = transpose_c ? 1 : ldc, ldc_j = transpose_c ? ldc : 1;
    alignas(64) float panel[kSkinnyPanel];
    for (index_t k0 = 0; k0 < k; k0 += depth_max) {
      const index_t depth = std::min(depth_max, k - k0);
      skinny_pack_transposed(op_y, y, ldy, k0, depth, n, rows_p, panel, ldp);
      for (index_t r = r0; r < r1; r += kDotsRows)
        for (index_t j = 0; j < n; j += kDotsCols)
          dots_tile<kDotsRows, kDotsCols>(
              std::min<index_t>(kDotsRows, r1 - r), std::min<index_t>(kDotsCols, n - j), depth,
              x + r * ldx + k0, ldx, panel + j * ldp, ldp, c + r * ldc_r + j * ldc_j, ldc_r, ldc_j,
              alpha, beta, k0 == 0);
    }
  }

  /// small_k, column blocks [b0, b1) of `block` columns: C = α X op(Y) + β C, k <= kSkinnyMax,
  /// op(Y) repacked by block.
  PEFT_SKINNY_FN static void small_k(Op op_y, index_t b0, index_t b1, index_t block, index_t m,
                                     index_t n, index_t k, float alpha, const float* x, index_t ldx,
                                     const float* y, index_t ldy, float beta, float* c,
                                     index_t ldc) {
    alignas(64) float panel[kSkinnyPanel];
    for (index_t b = b0; b < b1; ++b) {
      const index_t j0 = b * block, cols = std::min(block, n - j0);
      // Packed even when op(Y) = Y: rows of Y a power-of-two stride apart share cache sets.
      const index_t ldp = (cols + Vec::W - 1) / Vec::W * Vec::W;
      skinny_pack(op_y, y, ldy, 0, k, j0, cols, panel, ldp);
      rows_times_panel(0, m, k, x, ldx, panel, ldp, c + j0, ldc, cols, alpha, beta, true);
    }
  }

  /// few rows, op(Y) = Y: C = α X Y + β C with X [m, k], m <= kDotsMax, C's columns in blocks
  /// [b0, b1) of outer_block. Y is walked in slices of kOuterDepth rows (Xᵀ's slice repacked on
  /// the stack), each slice by every group of X's rows while it is in cache; C accumulates the
  /// slices.
  PEFT_SKINNY_FN static void few_rows(index_t b0, index_t b1, index_t m, index_t n, index_t k,
                                      float alpha, const float* x, index_t ldx, const float* y,
                                      index_t ldy, float beta, float* c, index_t ldc) {
    constexpr int SN = kOuterSmall, NV = kOuterVectors;
    alignas(64) float xt[kOuterDepth * kDotsMax];
    for (index_t k0 = 0; k0 < k; k0 += kOuterDepth) {
      const index_t depth = std::min(kOuterDepth, k - k0);
      for (index_t kk = 0; kk < depth; ++kk)
        for (index_t i = 0; i < m; ++i) xt[kk * m + i] = x[i * ldx + k0 + kk];
      for (index_t blk = b0; blk < b1; ++blk) {
        const index_t l0 = blk * outer_block, w = std::min(outer_block, n - l0);
        for (index_t s0 = 0; s0 < m; s0 += SN) {
          const index_t count = std::min<index_t>(SN, m - s0);
          alignas(64) float tile[SN][outer_block] = {};
          outer_tile<SN, NV>(depth, xt + s0, m, count, y + k0 * ldy + l0, ldy, w, tile);
          for (index_t s = 0; s < count; ++s)
            for (int v = 0; v < NV && v * Vec::W < w; ++v)
              put(Vec::load(&tile[s][v * Vec::W]), c + (s0 + s) * ldc + l0 + v * Vec::W,
                  w - v * Vec::W, alpha, beta, k0 == 0);
        }
      }
    }
  }

  /// outer, blocks [b0, b1) of outer_block columns of the large operand: C = α Aᵀ B + β C.
  PEFT_SKINNY_FN static void outer(index_t b0, index_t b1, bool small_is_a, index_t small_count,
                                   index_t large_count, index_t k, float alpha, const float* small,
                                   index_t lds, const float* large, index_t ldl, float beta,
                                   float* c, index_t ldc) {
    constexpr int SN = kOuterSmall, NV = kOuterVectors;
    // The sums of one block of outer_block large columns by all small ones, on the stack.
    alignas(64) float sums[kSkinnyMax + SN][outer_block];
    for (index_t blk = b0; blk < b1; ++blk) {
      const index_t l0 = blk * outer_block, w = std::min(outer_block, large_count - l0);
      std::fill_n(&sums[0][0], (small_count + SN) * outer_block, 0.0f);
      // Down the large operand in slices of kOuterDepth rows, each used by every group of
      // small columns while it is in cache: rows whose stride is a power of two share a few
      // cache sets, so a walk down the whole depth per group would miss in every group.
      for (index_t k0 = 0; k0 < k; k0 += kOuterDepth) {
        const index_t depth = std::min(kOuterDepth, k - k0);
        for (index_t s0 = 0; s0 < small_count; s0 += SN)
          outer_tile<SN, NV>(depth, small + k0 * lds + s0, lds,
                             std::min<index_t>(SN, small_count - s0), large + k0 * ldl + l0, ldl, w,
                             *reinterpret_cast<float(*)[SN][outer_block]>(&sums[s0][0]));
      }
      if (small_is_a) {  // row s of C is sums[s]
        for (index_t s = 0; s < small_count; ++s)
          for (int v = 0; v < NV && v * Vec::W < w; ++v)
            put(Vec::load(&sums[s][v * Vec::W]), c + s * ldc + l0 + v * Vec::W, w - v * Vec::W,
                alpha, beta, true);
      } else {  // column s of C is sums[s]: transposed
        for (index_t l = 0; l < w; ++l) {
          float* cr = c + (l0 + l) * ldc;
          for (index_t s = 0; s < small_count; ++s)
            cr[s] = beta == 0.0f ? alpha * sums[s][l] : alpha * sums[s][l] + beta * cr[s];
        }
      }
    }
  }
};
