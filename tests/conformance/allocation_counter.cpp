// Replaces the global operator new of the conformance executable with one that counts.

#include "allocation_counter.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<std::size_t> g_heap_allocations{0};

void* counted_allocate(std::size_t bytes) {
  g_heap_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(bytes == 0 ? 1 : bytes)) return p;
  throw std::bad_alloc();
}
}  // namespace

std::size_t peft::test::heap_allocations() noexcept {
  return g_heap_allocations.load(std::memory_order_relaxed);
}

void* operator new(std::size_t bytes) {
  return counted_allocate(bytes);
}
void* operator new[](std::size_t bytes) {
  return counted_allocate(bytes);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
