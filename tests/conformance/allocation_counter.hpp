#pragma once
// Counts heap allocations (operator new, replaced in allocation_counter.cpp for this executable)
// and the CPU backend's own allocations (aligned_alloc, which operator new does not see).

#include <cstddef>

#include <peft/core/buffer.hpp>

namespace peft::test {

struct AllocationCount {
  std::size_t heap = 0;
  std::size_t backend = 0;
};

std::size_t heap_allocations() noexcept;

inline AllocationCount count_allocations() noexcept {
  return {heap_allocations(), detail::Allocator<Cpu>::allocations()};
}

}  // namespace peft::test
