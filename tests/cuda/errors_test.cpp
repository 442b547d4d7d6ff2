// Bad input to the CUDA backend throws peft::Error with a message that names the problem:
// shape mismatches on device views, a Lora input with the wrong columns, a reserve that is too
// small, a merged layer asked for a delta, a dropout probability out of range, and a Context on
// a device that does not exist.

#include <gtest/gtest.h>

#include "cuda/gpu_adapter.hpp"
#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

class CudaErrors : public CudaTest {};

TEST_F(CudaErrors, GemmShapeMismatchOnDeviceViews) {
  DeviceMatrix a(DType::f32, 3, 4, true), b(DType::f32, 5, 6, true), c(DType::f32, 3, 6, true);
  expect_error([&] { gemm(Op::N, Op::N, 1.0, a, b, 0.0, c); }, ErrorKind::shape,
               {"gemm", "inner dimensions differ"});
  DeviceMatrix b2(DType::f32, 4, 6), c2(DType::f32, 3, 7);
  expect_error([&] { gemm(Op::N, Op::N, 1.0, a, b2, 0.0, c2); }, ErrorKind::shape,
               {"gemm: C is 3 x 7", "3 x 6"});
  DeviceMatrix h(DType::bf16, 3, 4), hb(DType::bf16, 6, 4), hc(DType::f32, 3, 5);
  expect_error([&] { gemm(Op::N, Op::T, 1.0, h, hb, 0.0, hc); }, ErrorKind::shape,
               {"gemm: C is 3 x 5"});
  EXPECT_TRUE(c.gaps_untouched());
}

TEST_F(CudaErrors, ElementwiseShapeMismatch) {
  DeviceMatrix x(DType::f32, 3, 4), y(DType::f16, 4, 3), b(DType::f32, 1, 5);
  expect_error([&] { axpy(1.0, x, y); }, ErrorKind::shape, {"axpy", "3 x 4", "4 x 3"});
  expect_error([&] { copy(x, y); }, ErrorKind::shape, {"copy"});
  expect_error([&] { (void)dot(x, y); }, ErrorKind::shape, {"dot"});
  expect_error([&] { broadcast_rows(b, false, x); }, ErrorKind::shape,
               {"broadcast_rows", "5 elements", "4 columns"});
  expect_error([&] { x.upload(filled(3, 5, 0.0).view()); }, ErrorKind::shape, {"upload"});
}

TEST_F(CudaErrors, DropoutProbabilityOutOfRange) {
  DeviceMatrix x(DType::f32, 2, 2), out(DType::f32, 2, 2);
  const RandomStream s = make_stream(1, 0, RandomPurpose::dropout);
  expect_error([&] { dropout(s, 1.0, x, out); }, ErrorKind::invalid_argument, {"dropout: p is 1"});
  expect_error([&] { dropout(s, -0.1, x, out); }, ErrorKind::invalid_argument, {"dropout: p is"});
}

TEST_F(CudaErrors, LoraBadInput) {
  const HostMatrix w0 = random_matrix(DType::f32, 11, 13, 1);
  auto layer = make_adapter(DType::f32, {w0.view()}, LoraConfig{.r = 4, .init = LoraInit::none});
  DeviceMatrix x(DType::f32, 9, 14), y(DType::f32, 9, 11), dy(DType::f32, 9, 11);
  expect_error([&] { layer->forward(x, y); }, ErrorKind::shape,
               {"Lora::forward: x has 14 columns", "13 (in_features)"});
  DeviceMatrix good_x(DType::f32, random_matrix(DType::f32, 9, 13, 2).view());
  DeviceMatrix bad_y(DType::f32, 9, 12);
  expect_error([&] { layer->forward(good_x, bad_y); }, ErrorKind::shape,
               {"Lora::forward: y has 12 columns", "11 (out_features)"});
  DeviceMatrix bad_dx(DType::f32, 9, 12);
  layer->forward(good_x, y);
  expect_error([&] { layer->backward(good_x, dy, bad_dx); }, ErrorKind::shape,
               {"Lora::backward: dx is 9 x 12"});
  DeviceBytes small(layer->reserve_bytes(9) - 1);
  expect_error([&] { layer->forward(good_x, y, small); }, ErrorKind::shape,
               {"Lora::forward: reserve has"});
  ASSERT_TRUE(layer->merge());
  expect_error([&] { layer->forward_delta(good_x, y); }, ErrorKind::state, {"merged"});
  DeviceMatrix dx(DType::f32, 9, 13);
  expect_error([&] { layer->backward(good_x, dy, dx); }, ErrorKind::state,
               {"Lora::backward", "unmerge it first"});
}

TEST_F(CudaErrors, ContextOnAMissingDevice) {
  const int count = device_count();
  expect_error([&] { make_context(count); }, ErrorKind::invalid_argument,
               {"Context<Cuda>: device", "does not exist"});
  expect_error([&] { make_context(-1); }, ErrorKind::invalid_argument, {"does not exist"});
}

}  // namespace
}  // namespace peft::gpu::test
