#pragma once
// A lookup table: row ids[i] of the table is row i of the output. Used for the tokens and the
// (learned) positions; its backward adds each output row's gradient to the row it came from.

#include <cmath>
#include <vector>

#include "common.hpp"

namespace tfm {

template <class T>
class Embedding {
 public:
  // N(0, 0.02²), GPT-2's initialisation.
  Embedding(index_t num, index_t dim, std::uint64_t seed, std::uint32_t id)
      : table_(num, dim), grad_(num, dim) {
    const peft::RandomStream s = user_stream(seed, kInitWeights, id);
    for (index_t i = 0; i < table_.size(); ++i)
      table_.data()[i] = T(0.02 * peft::normal_from_stream(s, std::uint64_t(i)));
  }

  // out(i, :) (+)= table(ids[i], :); adds when accumulate is set.
  void forward(const std::vector<int>& ids, View<T> out, bool accumulate) const {
    for (index_t i = 0; i < out.rows(); ++i)
      for (index_t j = 0; j < out.cols(); ++j)
        out(i, j) = (accumulate ? out(i, j) : T(0)) + table_.view()(ids[std::size_t(i)], j);
  }

  // grad(ids[i], :) += dout(i, :).
  void backward(const std::vector<int>& ids, CView<T> dout) {
    for (index_t i = 0; i < dout.rows(); ++i)
      for (index_t j = 0; j < dout.cols(); ++j) grad_.view()(ids[std::size_t(i)], j) += dout(i, j);
  }

  void zero_grad(Ctx& ctx) { peft::cpu::fill(ctx, grad_.view(), 0.0); }
  Param<T> parameter(std::string name) { return {std::move(name), table_.view(), grad_.view()}; }
  View<T> table() { return table_.view(); }

 private:
  Mat<T> table_;
  Mat<T> grad_;
};

}  // namespace tfm
