#pragma once
// Mean softmax cross-entropy of each row of the logits against its target (next character).

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.hpp"

namespace tfm {

// Returns the mean loss over the rows; writes dlogits = (softmax - onehot) / rows, the gradient
// of that mean, unless dlogits is empty (evaluation).
template <class T>
double cross_entropy(Ctx& ctx, CView<T> logits, const std::vector<int>& targets, View<T> dlogits) {
  const index_t n = logits.rows(), v = logits.cols();
  double total = 0;
#pragma omp parallel for num_threads(ctx.threads()) reduction(+ : total) if (n * v > 8192)
  for (index_t i = 0; i < n; ++i) {
    T top = logits(i, 0);
    for (index_t j = 1; j < v; ++j) top = std::max(top, logits(i, j));
    double sum = 0;  // the exponentials in T (expf for float), the sums in double
    for (index_t j = 0; j < v; ++j) sum += double(std::exp(logits(i, j) - top));
    const int y = targets[std::size_t(i)];
    total += std::log(sum) - double(logits(i, y) - top);
    if (dlogits.empty()) continue;
    const T scale = T(1.0 / (sum * double(n))), one = T(1.0 / double(n));
    for (index_t j = 0; j < v; ++j)
      dlogits(i, j) = std::exp(logits(i, j) - top) * scale - (j == y ? one : T(0));
  }
  return total / double(n);
}

}  // namespace tfm
