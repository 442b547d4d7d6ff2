#pragma once
// Reading RoSA's sparse part S of one module from a ROSA checkpoint (layout in rosa_sparse.hpp),
// with every array checked: lengths, dtypes, offsets that are monotone and end at nnz, columns in
// range, sorted and unique, row_idx a valid row order.

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/sparse.hpp"
#include "module_tensors.hpp"
#include "rosa_sparse.hpp"

namespace peft::detail {

/// S of a module as read: its values, and its pattern (none: no mask yet).
template <class P>
struct RosaSparseRead {
  Matrix<P, Cpu> values;
  std::optional<CsrPattern> pattern;
};

/// The checks of S's tensors of one module.
class RosaSparseChecks {
 public:
  RosaSparseChecks(const ModuleSource& src, SafetensorsDtype index_dtype)
      : src_(src), index_dtype_(index_dtype) {}

  const SafetensorsTensorInfo* find(std::string_view key) const { return src_.tensors.find(key); }

  /// A vector of `length` elements of one of `dtypes` (`expected` describes them).
  void vector(const SafetensorsTensorInfo* t, index_t length,
              std::initializer_list<SafetensorsDtype> dtypes, std::string_view expected) const {
    const std::string_view name = std::string_view(t->name).substr(t->name.rfind("rosa_spa."));
    if (t->shape.size() != 1 || t->shape[0] != length)
      src_.fail(name, " is ", SafetensorsReader::shape_text(t->shape), ", expected [", length, "]");
    if (std::find(dtypes.begin(), dtypes.end(), t->dtype) == dtypes.end())
      src_.fail(name, " is ", to_string(t->dtype), ", expected ", expected);
  }
  void offsets(const SafetensorsTensorInfo* t, index_t length) const {
    vector(t, length, {SafetensorsDtype::I32}, "I32");
  }
  void indices(const SafetensorsTensorInfo* t, index_t length) const {
    const bool i16 = index_dtype_ == SafetensorsDtype::I16;
    vector(t, length, {index_dtype_},
           i16 ? "I16 (the reference's int16; int32 needs \"peft_cpp_index_dtype\": \"int32\" in "
                 "the config)"
               : "I32 (\"peft_cpp_index_dtype\": \"int32\")");
  }

 private:
  const ModuleSource& src_;
  SafetensorsDtype index_dtype_;
};

/// Checks that row_idx (`order`) lists every row once, by number of entries, most first.
inline void check_rosa_row_order(const ModuleSource& src, const std::int32_t* order,
                                 const std::vector<std::int32_t>& o, index_t out) {
  std::vector<char> seen(static_cast<std::size_t>(out), 0);
  for (index_t i = 0; i < out; ++i) {
    const std::int32_t row = order[i];
    if (row < 0 || row >= out || seen[std::size_t(row)])
      src.fail("rosa_spa.row_idx is not a permutation of the ", out, " rows (", row, " at ", i,
               ")");
    seen[std::size_t(row)] = 1;
    if (i > 0) {
      const std::int32_t prev = order[i - 1];
      if (o[row + 1] - o[row] > o[prev + 1] - o[prev])
        src.fail("rosa_spa.row_idx does not order the rows by number of entries, most first (row ",
                 row, " follows row ", prev, ")");
    }
  }
}

/// Reads S of an out x in module whose config gives density d (nnz = int(d * out * in)): none
/// when d = 0 (then the file must hold no rosa_spa tensors).
template <class P>
std::optional<RosaSparseRead<P>> read_rosa_sparse(const ModuleSource& src,
                                                  SafetensorsDtype index_dtype, double d,
                                                  index_t out, index_t in) {
  using Key = RosaSparseKey;
  const RosaSparseChecks check(src, index_dtype);
  const auto* values = check.find(Key::values);
  const auto* row_offs = check.find(Key::row_offs);
  const auto* row_idx = check.find(Key::row_idx);
  const auto* col_idx = check.find(Key::col_idx);
  const auto* tr_perm = check.find(Key::tr_perm);
  const auto* tr_row_offs = check.find(Key::tr_row_offs);
  const auto* tr_row_idx = check.find(Key::tr_row_idx);
  const auto* tr_col_idx = check.find(Key::tr_col_idx);
  const bool any_tr = tr_perm || tr_row_offs || tr_row_idx || tr_col_idx;
  if (d == 0) {
    if (values || row_offs || row_idx || col_idx || any_tr)
      src.fail(
          "the config gives d = 0 (d / density_pattern), which has no rosa_spa tensors, but "
          "the file has some");
    return std::nullopt;
  }
  if (!(values && row_offs && row_idx && col_idx))
    src.fail("rosa_spa needs values, row_offs, row_idx and col_idx; missing ",
             !values     ? "values"
             : !row_offs ? "row_offs"
             : !row_idx  ? "row_idx"
                         : "col_idx",
             " (d = ", d, ")");
  const index_t nnz = rosa_reference_nnz(d, out, in);
  if constexpr (std::is_same_v<P, double>)
    check.vector(values, nnz,
                 {SafetensorsDtype::F32, SafetensorsDtype::F16, SafetensorsDtype::BF16,
                  SafetensorsDtype::F64},
                 "F32, F16 or BF16 (F64 for a double model)");
  else
    check.vector(values, nnz,
                 {SafetensorsDtype::F32, SafetensorsDtype::F16, SafetensorsDtype::BF16},
                 "F32, F16 or BF16 (F64 for a double model)");
  check.offsets(row_offs, out + 1);
  check.indices(row_idx, out);
  check.indices(col_idx, nnz);
  if (any_tr) {
    if (!(tr_perm && tr_row_offs && tr_row_idx && tr_col_idx))
      src.fail("rosa_spa has some of tr_perm, tr_row_offs, tr_row_idx and tr_col_idx but not all");
    // S transposed, which the layer rebuilds itself: checked for form only.
    check.offsets(tr_perm, nnz);
    check.offsets(tr_row_offs, in + 1);
    check.indices(tr_row_idx, in);
    check.indices(tr_col_idx, nnz);
  }

  RosaSparseRead<P> s{src.reader.read_matrix<P>(values->name), std::nullopt};
  const Matrix<std::int32_t, Cpu> offs_matrix =
      src.reader.read_matrix<std::int32_t>(row_offs->name);
  const std::vector<std::int32_t> o(offs_matrix.data(), offs_matrix.data() + out + 1);
  if (o[out] == 0) {
    // No mask yet (the reference's exists() is row_offs[-1] != 0): all offsets are zero.
    for (index_t i = 0; i <= out; ++i)
      if (o[i] != 0)
        src.fail("rosa_spa.row_offs ends in 0 (no mask) but row_offs[", i, "] is ", o[i],
                 ": the offsets are not monotone");
    return s;
  }
  if (o[out] != nnz)
    src.fail("rosa_spa.row_offs ends in ", o[out], " entries, values and col_idx hold ", nnz,
             " (the reference's mask has exactly int(d * out * in) entries)");
  const Matrix<std::int32_t, Cpu> cols = src.reader.read_matrix<std::int32_t>(col_idx->name);
  CsrPattern pattern{out, in, o, std::vector<std::int32_t>(cols.data(), cols.data() + nnz)};
  try {
    pattern.validate("rosa_spa");
  } catch (const Error& e) {
    src.fail(e.what());
  }
  const Matrix<std::int32_t, Cpu> order = src.reader.read_matrix<std::int32_t>(row_idx->name);
  check_rosa_row_order(src, order.data(), o, out);
  s.pattern = std::move(pattern);
  return s;
}

}  // namespace peft::detail
