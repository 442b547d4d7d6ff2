// The checks every adapter method passes on the GPU against the same method on the CPU in
// double (adapter_pair.hpp), over the cases each method's file instantiates: lora_test.cpp,
// rosa_test.cpp, adalora_test.cpp.

#include "cuda/adapter_pair.hpp"

namespace peft::gpu::test {
namespace {

TEST_P(CudaAdapter, SameInitialParametersAsCpu) {
  with_pair(
      GetParam(), [](auto& s) { check_same_parameters(s); }, Init::library);
}

TEST_P(CudaAdapter, ForwardBackwardMatchCpu) {
  // The second round accumulates into the gradients and draws a new dropout mask.
  with_pair(GetParam(), [](auto& s) {
    check_forward_backward(s, "round 0");
    check_forward_backward(s, "round 1");
  });
}

TEST_P(CudaAdapter, BackwardWithoutDxMatchesCpu) {
  with_pair(GetParam(), [](auto& s) { check_backward_without_dx(s); });
}

TEST_P(CudaAdapter, DeltaMatchesCpu) {
  with_pair(GetParam(), [](auto& s) { check_delta(s); });
}

TEST_P(CudaAdapter, CallerOwnedReservesOutOfOrderMatchCpu) {
  with_pair(GetParam(), [](auto& s) { check_reserves_out_of_order(s); });
}

TEST_P(CudaAdapter, DeltaWeightMergeUnmergeMatchCpu) {
  with_pair(GetParam(), [](auto& s) { check_merge(s); });
}

TEST_P(CudaAdapter, OptimizerStepReachesTheProducts) {
  with_pair(GetParam(), [](auto& s) { check_optimizer_step(s); });
}

}  // namespace
}  // namespace peft::gpu::test
