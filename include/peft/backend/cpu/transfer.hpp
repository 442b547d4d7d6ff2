#pragma once
// Moving data between host memory and the backend. On the CPU both sides are host memory.

#include "elementwise.hpp"

namespace peft::cpu {

/// dst (backend memory) = src (host memory).
template <class TS, class TD>
void upload(Context<Cpu>& ctx, MatrixView<TS, Cpu> host_src, MatrixView<TD, Cpu> dst) {
  copy(ctx, host_src, dst);
}

/// host_dst (host memory) = src (backend memory).
template <class TS, class TD>
void download(Context<Cpu>& ctx, MatrixView<TS, Cpu> src, MatrixView<TD, Cpu> host_dst) {
  copy(ctx, src, host_dst);
}

/// Writes one trivially copyable value to backend memory (a reserve header).
template <class T>
void store_value(Context<Cpu>&, const T& value, T* dst) {
  *dst = value;
}

}  // namespace peft::cpu
