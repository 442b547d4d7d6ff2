#pragma once
// Names shared by the transformer example's files. Nothing here is part of peft-cpp's API.

#include <peft/peft.hpp>

#include <cstdint>

namespace tfm {

using peft::index_t;
using Ctx = peft::Context<peft::Cpu>;
template <class T>
using Mat = peft::Matrix<T, peft::Cpu>;
template <class T>
using View = peft::MatrixView<T, peft::Cpu>;
template <class T>
using CView = peft::MatrixView<const T, peft::Cpu>;
template <class T>
using Param = peft::Parameter<T, peft::Cpu>;

// Philox stream ids of the example, under RandomPurpose::user (the adapters' own streams use
// other purposes, so they cannot collide).
enum StreamId : std::uint32_t { kInitWeights = 1, kBatches, kSampling, kEvalWindows };

inline peft::RandomStream user_stream(std::uint64_t seed, StreamId id, std::uint32_t step = 0) {
  return peft::make_stream(seed, id, peft::RandomPurpose::user, step);
}

// C = alpha op(A) op(B) + beta C through the library's primitive.
template <class T>
void gemm(Ctx& ctx, peft::Op op_a, peft::Op op_b, double alpha, CView<T> a, CView<T> b, double beta,
          View<T> c) {
  peft::cpu::gemm(ctx, op_a, op_b, alpha, a, b, beta, c);
}

}  // namespace tfm
