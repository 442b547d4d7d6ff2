#pragma once
// The tensors of a checkpoint by module: PEFT names every tensor
// base_model.model.<module>.<suffix>, and a format knows its suffixes (lora_A.weight, ...).
// Loading groups the file's tensors by module and refuses any it does not know; ModuleSource
// reads one module's tensors with errors that name the file and the module.

#include <cstddef>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/buffer.hpp"
#include "../core/error.hpp"
#include "checkpoint.hpp"
#include "safetensors.hpp"

namespace peft {

inline constexpr std::string_view kTensorKeyPrefix = "base_model.model.";

/// base_model.model.<module>.<suffix>
inline std::string tensor_key(std::string_view module, std::string_view suffix) {
  return detail::concat(kTensorKeyPrefix, module, ".", suffix);
}

/// The tensors of one module in a checkpoint, by suffix.
class ModuleTensors {
 public:
  explicit ModuleTensors(std::string module) : module_(std::move(module)) {}

  const std::string& module() const noexcept { return module_; }
  /// The tensor with this suffix, or null.
  const SafetensorsTensorInfo* find(std::string_view suffix) const {
    for (const auto& [s, t] : tensors_)
      if (s == suffix) return t;
    return nullptr;
  }
  void add(std::string_view suffix, const SafetensorsTensorInfo& tensor) {
    tensors_.emplace_back(suffix, &tensor);
  }

 private:
  std::string module_;
  std::vector<std::pair<std::string_view, const SafetensorsTensorInfo*>> tensors_;
};

/// One module of a checkpoint being loaded: its tensors and the file's reader. `where` names
/// the call and the directory ("load_adapter: \"out/adapter\"").
struct ModuleSource {
  const std::string& where;
  const ModuleTensors& tensors;
  const SafetensorsReader& reader;

  const std::string& module() const noexcept { return tensors.module(); }

  /// An io error "<where>: module '<module>': <what>".
  template <class... What>
  [[noreturn]] void fail(const What&... what) const {
    throw Error(ErrorKind::io, detail::concat(where, ": module '", module(), "': ", what...));
  }
};

namespace detail {

/// Splits base_model.model.<module>.<suffix> into (module, suffix) for the first of `suffixes`
/// it ends with; nothing for keys of another form.
inline std::optional<std::pair<std::string, std::string_view>> parse_tensor_key(
    std::string_view key, std::span<const std::string_view> suffixes) {
  if (!key.starts_with(kTensorKeyPrefix)) return std::nullopt;
  for (std::string_view suffix : suffixes) {
    const std::size_t tail = suffix.size() + 1;  // ".<suffix>"
    if (key.size() > kTensorKeyPrefix.size() + tail && key.ends_with(suffix) &&
        key[key.size() - tail] == '.')
      return std::pair{std::string(key.substr(kTensorKeyPrefix.size(),
                                              key.size() - kTensorKeyPrefix.size() - tail)),
                       suffix};
  }
  return std::nullopt;
}

/// The file's tensors grouped by module, in the file's order. Every key must end in one of
/// `suffixes`; `unsupported` says what the format leaves out (for the refusal), `method` names
/// it ("no LoRA tensors").
inline std::vector<ModuleTensors> group_module_tensors(const SafetensorsReader& reader,
                                                       std::span<const std::string_view> suffixes,
                                                       const std::string& where,
                                                       std::string_view method,
                                                       std::string_view unsupported) {
  std::vector<ModuleTensors> modules;
  std::map<std::string, std::size_t, std::less<>> slot;
  for (const SafetensorsTensorInfo& t : reader.tensors()) {
    const auto parsed = parse_tensor_key(t.name, suffixes);
    if (!parsed) {
      std::string forms;
      for (std::size_t i = 0; i < suffixes.size(); ++i)
        forms += concat(i == 0 ? "" : i + 1 == suffixes.size() ? " or ." : ", .", suffixes[i]);
      throw Error(ErrorKind::io, concat(where, ": ", kAdapterWeightsName, " has the tensor '",
                                        t.name, "', which is not ", kTensorKeyPrefix, "<module>.",
                                        forms, " (", unsupported, ")"));
    }
    auto [it, added] = slot.emplace(parsed->first, modules.size());
    if (added) modules.emplace_back(parsed->first);
    modules[it->second].add(parsed->second, t);
  }
  PEFT_CHECK(!modules.empty(), ErrorKind::io, where, ": ", kAdapterWeightsName, " holds no ",
             method, " tensors");
  return modules;
}

/// A host copy of a (device or host) view.
template <class P, class B>
Matrix<std::remove_const_t<P>, Cpu> host_copy(Context<B>& ctx, MatrixView<P, B> view) {
  Matrix<std::remove_const_t<P>, Cpu> host(view.rows(), view.cols());
  if (view.size() > 0) download(ctx, as_const(view), host.view());
  return host;
}

}  // namespace detail
}  // namespace peft
