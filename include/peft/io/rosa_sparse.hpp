#pragma once
// RoSA's sparse part S in a ROSA checkpoint, as the reference (IST-DASLab/peft-rosa) stores it
// per module under base_model.model.<module>.:
//
//   rosa_spa.values   [nnz]     the parameters' dtype      rosa_spa.row_offs [out + 1] I32
//   rosa_spa.row_idx  [out]     I16                        rosa_spa.col_idx  [nnz]     I16
//   (impl "spmm" adds tr_perm [nnz] I32, tr_row_offs [in + 1] I32, tr_row_idx [in] I16 and
//    tr_col_idx [nnz] I16: S transposed)
//
// S is CSR with int32 row offsets and int16 column indices; row_idx lists the rows by number
// of entries, most first (the reference's argsort(-diff(row_offs)); any order of equal rows is
// accepted). nnz is fixed when a layer is built, as int(d * out * in) in float64, and a saved
// mask always has exactly that many entries: a layer whose mask has fewer entries than its
// capacity is written with a d (a density_pattern entry) whose int(d * out * in) is its nnz.
// Before its mask exists a layer holds row_offs of zeros (and zero values, row_idx and
// col_idx); such layers are written the same way and load back without a mask. Modules with
// d = 0 have no rosa_spa tensors (the reference's nn.Identity).
//
// Extension (peft-cpp only): int16 indices cannot address a dimension larger than 32768. When
// a layer has one, save_adapter writes every index tensor (row_idx, col_idx, tr_row_idx,
// tr_col_idx) as I32 and adds "peft_cpp_index_dtype": "int32" to the config; it never writes
// wrapped int16 values. The loader reads both: without the field (or with "int16") index
// tensors must be I16, with "int32" they must be I32. The reference cannot use such files.
//
// This file holds the layout and the writing; rosa_sparse_read.hpp reads and checks.

#include <algorithm>
#include <array>
#include <cstdint>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "../adapters/rosa.hpp"
#include "module_tensors.hpp"
#include "safetensors.hpp"

namespace peft {

/// Largest dimension int16 indices can address (indices 0 ... 32767).
inline constexpr index_t kRosaInt16DimensionLimit = 32768;
/// adapter_config.json field of the int32-index extension.
inline constexpr const char* kRosaIndexDtypeKey = "peft_cpp_index_dtype";

namespace detail {

/// The key suffixes of S's tensors.
struct RosaSparseKey {
  static constexpr std::string_view values = "rosa_spa.values";
  static constexpr std::string_view row_offs = "rosa_spa.row_offs";
  static constexpr std::string_view row_idx = "rosa_spa.row_idx";
  static constexpr std::string_view col_idx = "rosa_spa.col_idx";
  static constexpr std::string_view tr_perm = "rosa_spa.tr_perm";
  static constexpr std::string_view tr_row_offs = "rosa_spa.tr_row_offs";
  static constexpr std::string_view tr_row_idx = "rosa_spa.tr_row_idx";
  static constexpr std::string_view tr_col_idx = "rosa_spa.tr_col_idx";
  static constexpr std::array<std::string_view, 8> all = {
      values, row_offs, row_idx, col_idx, tr_perm, tr_row_offs, tr_row_idx, tr_col_idx};
};

/// The reference's nnz of a layer: int(d * np.prod(shape)), a float64 product truncated.
inline index_t rosa_reference_nnz(double d, index_t out, index_t in) {
  return static_cast<index_t>(d * static_cast<double>(out * in));
}

/// A d whose reference nnz for an out x in layer is `nnz`: `preferred` when it fits, else the
/// plainest value that does.
inline double rosa_density_for(index_t nnz, index_t out, index_t in, double preferred) {
  const double total = static_cast<double>(out * in);
  if (rosa_reference_nnz(preferred, out, in) == nnz) return preferred;
  if (total == 0) return preferred;
  for (double d : {double(nnz) / total, (double(nnz) + 0.5) / total}) {
    if (d == 0 && preferred > 0) continue;  // d = 0 would drop the sparse part
    if (d >= 0 && d <= 1 && rosa_reference_nnz(d, out, in) == nnz) return d;
  }
  throw Error(ErrorKind::state, concat("save_adapter: no density gives ", nnz, " entries for a ",
                                       out, " x ", in, " layer"));
}

/// The rows by number of entries, most first; equal rows in ascending order.
inline std::vector<std::int32_t> rosa_row_order(const std::vector<std::int32_t>& row_offs) {
  const std::size_t rows = row_offs.empty() ? 0 : row_offs.size() - 1;
  std::vector<std::int32_t> order(rows);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return row_offs[a + 1] - row_offs[a] > row_offs[b + 1] - row_offs[b];
  });
  return order;
}

/// Adds an index vector as I16 or I32 (the caller checked that the values fit).
inline void add_rosa_indices(SafetensorsWriter& writer, std::string name,
                             const std::vector<std::int32_t>& indices, SafetensorsDtype dtype) {
  const auto n = static_cast<index_t>(indices.size());
  if (dtype == SafetensorsDtype::I32) {
    writer.add(std::move(name), MatrixView<const std::int32_t, Cpu>(indices.data(), 1, n),
               std::nullopt, std::vector<index_t>{n});
    return;
  }
  std::vector<std::int16_t> narrow(indices.size());
  for (std::size_t i = 0; i < indices.size(); ++i) {
    PEFT_CHECK(indices[i] >= INT16_MIN && indices[i] <= INT16_MAX, ErrorKind::state,
               "save_adapter: tensor '", name, "': index ", indices[i], " does not fit int16");
    narrow[i] = static_cast<std::int16_t>(indices[i]);
  }
  writer.add(std::move(name), MatrixView<const std::int16_t, Cpu>(narrow.data(), 1, n),
             std::nullopt, std::vector<index_t>{n});
}

/// A host copy of a layer's S as the reference stores it, and its d.
template <class P>
struct RosaSparseSnapshot {
  index_t out = 0, in = 0, nnz = 0;
  bool mask = false;
  double d = 0;
  std::vector<std::int32_t> row_offs, col_idx;
  Matrix<P, Cpu> values;

  template <class T, class B>
  RosaSparseSnapshot(Context<B>& ctx, const Rosa<T, B>& layer)
      : out(layer.out_features()), in(layer.in_features()), mask(layer.sparse().has_pattern()) {
    const CsrMatrix<P, B>& sparse = layer.sparse();
    row_offs.assign(static_cast<std::size_t>(out + 1), 0);
    nnz = mask ? sparse.nnz() : sparse.capacity();
    col_idx.assign(static_cast<std::size_t>(nnz), 0);
    if (mask) {
      const auto view = sparse.view();
      download(ctx, MatrixView<const std::int32_t, B>(view.row_offsets, 1, out + 1),
               MatrixView<std::int32_t, Cpu>(row_offs.data(), 1, out + 1));
      if (nnz > 0)
        download(ctx, MatrixView<const std::int32_t, B>(view.col_indices, 1, nnz),
                 MatrixView<std::int32_t, Cpu>(col_idx.data(), 1, nnz));
    }
    values = host_copy(ctx, MatrixView<const P, B>(sparse.values().data(), 1, nnz));
    const double density = layer.config().density;
    d = density == 0 && nnz == 0 ? 0.0 : rosa_density_for(nnz, out, in, density);
  }
};

/// Writes S's tensors of `module` (none when d = 0); with `transposed` (impl "spmm") also the
/// transposed arrays, as zeros: the reference's state before its first product, which it
/// fills lazily.
template <class P>
void write_rosa_sparse(SafetensorsWriter& writer, std::string_view module,
                       const RosaSparseSnapshot<P>& s, SafetensorsDtype dtype,
                       SafetensorsDtype index_dtype, bool transposed) {
  using Key = RosaSparseKey;
  if (s.d == 0) return;  // the reference's nn.Identity: no sparse part
  writer.add(tensor_key(module, Key::values), as_const(s.values.view()), dtype,
             std::vector<index_t>{s.nnz});
  writer.add(tensor_key(module, Key::row_offs),
             MatrixView<const std::int32_t, Cpu>(s.row_offs.data(), 1, s.out + 1), std::nullopt,
             std::vector<index_t>{s.out + 1});
  const std::vector<std::int32_t> order =
      s.mask ? rosa_row_order(s.row_offs) : std::vector<std::int32_t>(std::size_t(s.out), 0);
  add_rosa_indices(writer, tensor_key(module, Key::row_idx), order, index_dtype);
  add_rosa_indices(writer, tensor_key(module, Key::col_idx), s.col_idx, index_dtype);
  if (!transposed) return;
  const std::vector<std::int32_t> perm(std::size_t(s.nnz), 0), offs(std::size_t(s.in + 1), 0),
      rows(std::size_t(s.in), 0);
  add_rosa_indices(writer, tensor_key(module, Key::tr_perm), perm, SafetensorsDtype::I32);
  add_rosa_indices(writer, tensor_key(module, Key::tr_row_offs), offs, SafetensorsDtype::I32);
  add_rosa_indices(writer, tensor_key(module, Key::tr_row_idx), rows, index_dtype);
  add_rosa_indices(writer, tensor_key(module, Key::tr_col_idx), perm, index_dtype);
}

}  // namespace detail
}  // namespace peft
