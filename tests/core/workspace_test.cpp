// The scratch arena behind Context::workspace() (core/workspace.hpp).

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include <peft/core/workspace.hpp>

namespace {

using peft::Cpu;
using peft::ErrorKind;
using peft::index_t;
using Workspace = peft::detail::Workspace<Cpu>;
using Frame = Workspace::Frame;

std::uintptr_t addr(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

TEST(Workspace, StartsEmpty) {
  Workspace ws;
  EXPECT_EQ(ws.capacity(), 0u);
  EXPECT_EQ(ws.allocations(), 0u);
  Frame f(ws);
  EXPECT_EQ(f.take<float>(0), nullptr);  // nothing asked, nothing allocated
  EXPECT_EQ(ws.allocations(), 0u);
}

TEST(Workspace, ReserveGrowsOnlyAndCounts) {
  Workspace ws;
  ws.reserve(1000);
  EXPECT_GE(ws.capacity(), 1000u);
  EXPECT_EQ(ws.allocations(), 1u);
  ws.reserve(500);  // smaller: nothing happens
  EXPECT_EQ(ws.allocations(), 1u);
  ws.reserve(1000);
  EXPECT_EQ(ws.allocations(), 1u);
  ws.reserve(4096);
  EXPECT_GE(ws.capacity(), 4096u);
  EXPECT_EQ(ws.allocations(), 2u);
}

TEST(Workspace, ReserveWhileAFrameIsOpenThrows) {
  Workspace ws;
  {
    Frame f(ws);
    try {
      ws.reserve(1024);
      ADD_FAILURE() << "reserve inside a frame did not throw";
    } catch (const peft::Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::state);
      EXPECT_NE(std::string(e.what()).find("frame"), std::string::npos) << e.what();
    }
    {
      Frame inner(ws);
      EXPECT_THROW(ws.reserve(1), peft::Error);
    }
    EXPECT_THROW(ws.reserve(1), peft::Error);  // still open: the outer frame
  }
  EXPECT_NO_THROW(ws.reserve(1024));  // all frames closed
}

TEST(Workspace, TakesAreAlignedDisjointAndInsideTheArena) {
  Workspace ws;
  ws.reserve(1 << 16);
  const auto base = addr(Frame(ws).take<char>(1));  // the arena's first byte
  Frame f(ws);
  auto* a = f.take<char>(1);
  auto* b = f.take<double>(3);
  auto* c = f.take<float>(100);
  EXPECT_EQ(addr(a), base);  // a closed frame gave its memory back
  EXPECT_EQ(addr(b) - addr(a), Workspace::alignment);
  EXPECT_EQ(addr(c) - addr(b), Workspace::alignment);
  for (const void* p :
       {static_cast<const void*>(a), static_cast<const void*>(b), static_cast<const void*>(c)}) {
    EXPECT_EQ(addr(p) % 64, 0u);  // the allocator's alignment, and offsets of 256
    EXPECT_EQ((addr(p) - base) % Workspace::alignment, 0u);
  }
  // Writes to one take do not reach another.
  std::memset(c, 0x11, 100 * sizeof(float));
  b[0] = b[1] = b[2] = 1.5;
  EXPECT_EQ(b[2], 1.5);
  EXPECT_EQ(reinterpret_cast<unsigned char*>(c)[0], 0x11);
  EXPECT_EQ(ws.allocations(), 1u);  // everything came from the reserved arena
}

TEST(Workspace, MatrixViewsFromAFrame) {
  Workspace ws;
  ws.reserve(4096);
  Frame f(ws);
  auto m = f.matrix<double>(3, 7);
  EXPECT_EQ(m.rows(), 3);
  EXPECT_EQ(m.cols(), 7);
  EXPECT_EQ(m.stride(), 7);
  ASSERT_NE(m.data(), nullptr);
  m(2, 6) = 1.0;
  auto empty = f.matrix<float>(0, 9);
  EXPECT_EQ(empty.rows(), 0);
  EXPECT_EQ(empty.cols(), 9);
  EXPECT_THROW(f.matrix<float>(-1, 4), peft::Error);
}

TEST(Workspace, FramesNestAndInnerMemoryIsReused) {
  Workspace ws;
  ws.reserve(1 << 14);
  Frame outer(ws);
  float* a = outer.take<float>(10);
  float* inner_first = nullptr;
  {
    Frame inner(ws);
    inner_first = inner.take<float>(64);
    EXPECT_GT(addr(inner_first), addr(a));  // stacked above the outer frame's memory
    {
      Frame innermost(ws);
      float* deep = innermost.take<float>(8);
      EXPECT_GT(addr(deep), addr(inner_first));
    }
    // The innermost frame's memory is free again for the inner one.
    float* again = inner.take<float>(8);
    EXPECT_GT(addr(again), addr(inner_first));
  }
  // After the inner frame closes, the outer frame's next take starts where the inner one did.
  float* b = outer.take<float>(16);
  EXPECT_EQ(b, inner_first);
  EXPECT_EQ(ws.allocations(), 1u);
}

TEST(Workspace, OverflowAllocatesThenRegrowsSoTheSecondPassAllocatesNothing) {
  Workspace ws;
  ws.reserve(1024);
  const std::size_t before = ws.allocations();
  auto pass = [&ws] {
    Frame f(ws);
    double* x = f.take<double>(100);  // 800 -> 1024 bytes: fits
    {
      Frame inner(ws);
      float* y = inner.take<float>(1000);   // 4000 -> 4096 bytes: overflow
      double* z = inner.take<double>(300);  // 2400 -> 2560 bytes: overflow
      // Overflow blocks are real, distinct, writable memory.
      std::memset(y, 0, 1000 * sizeof(float));
      std::memset(z, 0, 300 * sizeof(double));
      EXPECT_NE(static_cast<void*>(y), static_cast<void*>(z));
      EXPECT_NE(static_cast<void*>(y), static_cast<void*>(x));
    }
    // The arena is full up to x: this 256-byte take overflows too, although y and z are gone.
    (void)f.take<char>(10);
  };

  pass();
  // Three overflow blocks, then one regrow of the arena to the peak once the outer frame closed.
  EXPECT_EQ(ws.allocations(), before + 4);
  EXPECT_GE(ws.capacity(), 1024u + 4096u + 2560u);
  const std::size_t after_first = ws.allocations();
  pass();
  EXPECT_EQ(ws.allocations(), after_first) << "a repeated sequence allocated again";
  pass();
  EXPECT_EQ(ws.allocations(), after_first);
}

TEST(Workspace, NoRegrowWhileAnOuterFrameIsOpen) {
  Workspace ws;
  Frame outer(ws);
  float* a = outer.take<float>(256);  // empty arena: overflow
  EXPECT_EQ(ws.allocations(), 1u);
  {
    Frame inner(ws);
    (void)inner.take<float>(256);
  }
  // The inner frame closed, but `a` still lives in an overflow block: it must stay valid.
  EXPECT_EQ(ws.allocations(), 2u);
  EXPECT_EQ(ws.capacity(), 0u);
  a[255] = 2.0f;
  EXPECT_EQ(a[255], 2.0f);
}

// A host backend whose allocations can be made to fail, to test out-of-memory paths.
struct FlakyHost {};

}  // namespace

template <>
struct peft::detail::Allocator<FlakyHost> {
  static inline bool fail = false;
  static void* allocate(std::size_t bytes) {
    if (fail) throw peft::Error(peft::ErrorKind::cuda, "FlakyHost: out of memory (injected)");
    return peft::detail::Allocator<Cpu>::allocate(bytes);
  }
  static void deallocate(void* p) noexcept { peft::detail::Allocator<Cpu>::deallocate(p); }
};

namespace {

TEST(Workspace, ClosingAFrameNeverThrowsAndAFailedRegrowIsRetriedByTheNextFrame) {
  using Flaky = peft::detail::Workspace<FlakyHost>;
  using Alloc = peft::detail::Allocator<FlakyHost>;
  Flaky ws;
  {
    Flaky::Frame frame(ws);
    (void)frame.take<float>(1000);  // empty arena: an overflow block
    Alloc::fail = true;             // the regrow when the frame closes runs out of memory
  }                                 // before the fix: the destructor threw, std::terminate
  EXPECT_EQ(ws.capacity(), 0u);
  // The next frame retries the regrow and reports the failure as a peft::Error.
  EXPECT_THROW({ Flaky::Frame again(ws); }, peft::Error);
  Alloc::fail = false;
  {
    Flaky::Frame again(ws);
    EXPECT_GE(ws.capacity(), 4000u);  // regrown before the frame's first take
    const std::size_t allocations = ws.allocations();
    (void)again.take<float>(1000);
    EXPECT_EQ(ws.allocations(), allocations);
  }
}

TEST(Workspace, ClosingAFrameDuringUnwindingWithAFailingRegrowKeepsTheFirstError) {
  using Flaky = peft::detail::Workspace<FlakyHost>;
  using Alloc = peft::detail::Allocator<FlakyHost>;
  Flaky ws;
  try {
    Flaky::Frame frame(ws);
    (void)frame.take<double>(500);
    Alloc::fail = true;
    throw peft::Error(ErrorKind::shape, "the call's own error");
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("the call's own error"), std::string::npos);
  }
  Alloc::fail = false;
  ws.reserve(16);  // the pending regrow happens here
  EXPECT_GE(ws.capacity(), 4000u);
}

}  // namespace
