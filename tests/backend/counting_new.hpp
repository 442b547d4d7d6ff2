#pragma once
// Replaces the global operator new / delete with versions that count allocations while a
// CountNew scope is active (on every thread: OpenMP workers count too). Include from exactly
// one .cpp of a test executable: the replacements are definitions, and they apply to the whole
// program. Counts what C++ allocates with new (std::vector, std::function, std::string, ...);
// the library's Matrix, Vector and workspace arenas use aligned_alloc and are counted by
// Workspace::allocations() instead. Other files of the same executable define
// PEFT_COUNTING_NEW_CLASS_ONLY before including it to use CountNew alone.

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace peft::test {

inline std::atomic<bool> g_counting{false};
inline std::atomic<long> g_news{0};

/// Counts the operator new calls made (by any thread) during its lifetime.
class CountNew {
 public:
  CountNew() {
    g_news = 0;
    g_counting = true;
  }
  ~CountNew() { g_counting = false; }
  CountNew(const CountNew&) = delete;
  CountNew& operator=(const CountNew&) = delete;
  long count() const { return g_news.load(); }
};

inline void* counted_alloc(std::size_t size, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) ++g_news;
  if (size == 0) size = 1;
  void* p = align <= alignof(std::max_align_t)
                ? std::malloc(size)
                : std::aligned_alloc(align, (size + align - 1) / align * align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace peft::test

#if !defined(PEFT_COUNTING_NEW_CLASS_ONLY)
void* operator new(std::size_t size) {
  return peft::test::counted_alloc(size, 0);
}
void* operator new(std::size_t size, std::align_val_t align) {
  return peft::test::counted_alloc(size, static_cast<std::size_t>(align));
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
#endif
