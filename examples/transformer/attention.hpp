#pragma once
// Multi-head causal self-attention, the part between the projections: for each sequence b and
// head h, with Q, K, V the head's columns of the sequence's rows of q, k, v,
//   P = softmax(Q Kᵀ / sqrt(dh)) with position i attending to positions <= i,   O = P V.
// q, k, v and the output are [B·T, d] (sequence b in rows b·T ..), heads side by side in the
// columns; every product is one library gemm on strided views of them (no copies).

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.hpp"

namespace tfm {

struct AttentionShape {
  index_t batch = 0;  // sequences B
  index_t seq = 0;    // positions T
  index_t heads = 0;  // H; the head width dh is d / H
};

// P of head h of sequence b: rows (b H + h) T .. of probs [B H T, >= T].
template <class T>
View<T> head_probs(View<T> probs, const AttentionShape& s, index_t b, index_t h) {
  return probs.block((b * s.heads + h) * s.seq, 0, s.seq, s.seq);
}

// The columns of head h of sequence b in a [B T, d] matrix.
template <class T>
View<T> head_block(View<T> m, const AttentionShape& s, index_t b, index_t h) {
  const index_t dh = m.cols() / s.heads;
  return m.block(b * s.seq, h * dh, s.seq, dh);
}
template <class T>
CView<T> head_block(CView<T> m, const AttentionShape& s, index_t b, index_t h) {
  const index_t dh = m.cols() / s.heads;
  return m.block(b * s.seq, h * dh, s.seq, dh);
}

// Masked, numerically stable softmax of each row of the scores, in place: entries right of the
// diagonal get probability 0.
// The exponentials in T (expf for float), the sums in double.
template <class T>
void causal_softmax(View<T> p) {
  for (index_t i = 0; i < p.rows(); ++i) {
    T top = p(i, 0);
    for (index_t j = 1; j <= i; ++j) top = std::max(top, p(i, j));
    double sum = 0;
    for (index_t j = 0; j <= i; ++j) sum += double(p(i, j) = std::exp(p(i, j) - top));
    const T inv = T(1.0 / sum);
    for (index_t j = 0; j < p.cols(); ++j) p(i, j) = j <= i ? p(i, j) * inv : T(0);
  }
}

// out = attention(q, k, v); probs keeps every head's P for backward. Heads run in parallel,
// each product on one thread (the BLAS and Eigen stay sequential inside a parallel region).
template <class T>
void attention_forward(Ctx& ctx, const AttentionShape& s, CView<T> q, CView<T> k, CView<T> v,
                       View<T> probs, View<T> out) {
  const double scale = 1.0 / std::sqrt(double(q.cols() / s.heads));
#pragma omp parallel for num_threads(ctx.threads()) collapse(2)
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads; ++h) {
      const View<T> p = head_probs(probs, s, b, h);
      gemm<T>(ctx, peft::Op::N, peft::Op::T, scale, head_block(q, s, b, h), head_block(k, s, b, h),
              0.0, p);
      causal_softmax(p);
      gemm<T>(ctx, peft::Op::N, peft::Op::N, 1.0, p, head_block(v, s, b, h), 0.0,
              head_block(out, s, b, h));
    }
}

// From dout: dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP - rowsum(P ⊙ dP)), dQ = scale dS K,
// dK = scale dSᵀ Q (all written). scratch [B H T, >= T] holds each head's dP/dS.
template <class T>
void attention_backward(Ctx& ctx, const AttentionShape& s, CView<T> q, CView<T> k, CView<T> v,
                        CView<T> probs, CView<T> dout, View<T> dq, View<T> dk, View<T> dv,
                        View<T> scratch) {
  const double scale = 1.0 / std::sqrt(double(q.cols() / s.heads));
#pragma omp parallel for num_threads(ctx.threads()) collapse(2)
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads; ++h) {
      const View<T> ds = head_probs(scratch, s, b, h);
      const CView<T> p = probs.block((b * s.heads + h) * s.seq, 0, s.seq, s.seq);
      const CView<T> d_o = head_block(dout, s, b, h);
      gemm<T>(ctx, peft::Op::T, peft::Op::N, 1.0, p, d_o, 0.0, head_block(dv, s, b, h));
      gemm<T>(ctx, peft::Op::N, peft::Op::T, 1.0, d_o, head_block(v, s, b, h), 0.0, ds);
      for (index_t i = 0; i < s.seq; ++i) {
        double dot = 0;
        for (index_t j = 0; j <= i; ++j) dot += double(p(i, j)) * double(ds(i, j));
        for (index_t j = 0; j < s.seq; ++j)
          ds(i, j) = j <= i ? T(double(p(i, j)) * (double(ds(i, j)) - dot)) : T(0);
      }
      gemm<T>(ctx, peft::Op::N, peft::Op::N, scale, ds, head_block(k, s, b, h), 0.0,
              head_block(dq, s, b, h));
      gemm<T>(ctx, peft::Op::T, peft::Op::N, scale, ds, head_block(q, s, b, h), 0.0,
              head_block(dk, s, b, h));
    }
}

}  // namespace tfm
