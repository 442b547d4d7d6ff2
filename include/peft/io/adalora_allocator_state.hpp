#pragma once
// The RankAllocator's state beside an AdaLoRA checkpoint, so that a resumed run makes the masks
// an uninterrupted one makes (PEFT does not save it: its resumed runs restart the importance
// EMAs from zero). One file, written atomically:
//
//   <dir>/adalora_allocator.safetensors
//     <layer>.lora_{A,E,B}.sensitivity, <layer>.lora_{A,E,B}.uncertainty   the EMAs (F32/F64)
//     rank_mask [1, Σ ranks]                                                1 kept, 0 pruned
//     __metadata__ {"peft_cpp_adalora_allocator": "{\"version\": 1, \"last_step\": 41,
//                   \"pattern_final\": false, \"options\": {...}, \"layers\": [[name, r], ...]}"}
//
// Resuming: save the adapter with every rank (save_adapter without a rank_pattern: pruned
// ranks stay, with E = 0, and may come back), and this file; load both, register the loaded
// layers with a new allocator of the same options in the same order, load_allocator_state,
// and continue at step last_step + 1. The optimizer's moments and dropout streams are not part
// of it. The file is checked against the allocator (options, layers, shapes) and for values an
// allocator can hold (finite EMAs >= 0, a 0/1 mask keeping the final budget once final) before
// anything is written into it.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../train/rank_allocator.hpp"
#include "checkpoint.hpp"
#include "file.hpp"
#include "json.hpp"
#include "module_tensors.hpp"
#include "safetensors.hpp"

namespace peft {

inline constexpr const char* kAdaLoraAllocatorName = "adalora_allocator.safetensors";
inline constexpr const char* kAdaLoraAllocatorKey = "peft_cpp_adalora_allocator";
inline constexpr std::int64_t kAdaLoraAllocatorVersion = 1;

namespace detail {

inline nlohmann::ordered_json allocator_options_json(const RankAllocatorOptions& o) {
  return {{"target_r", o.target_r},    {"tinit", o.tinit}, {"tfinal", o.tfinal},
          {"deltaT", o.delta_t},       {"beta1", o.beta1}, {"beta2", o.beta2},
          {"total_step", o.total_step}};
}

}  // namespace detail

/// Writes `allocator`'s state to <dir>/adalora_allocator.safetensors (dir is created).
template <class T, class B>
void save_allocator_state(const std::filesystem::path& dir, RankAllocator<T, B>& allocator,
                          Context<B>& ctx) {
  PEFT_CHECK(!allocator.compacted(), ErrorKind::state,
             "save_allocator_state: the allocator was compacted: its pattern is final and its "
             "layers hold the kept ranks only, there is nothing left to resume");
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& [name, r] : allocator.layers()) layers.push_back({name, r});
  const nlohmann::ordered_json meta = {
      {"version", kAdaLoraAllocatorVersion},
      {"last_step", allocator.last_step()},
      {"pattern_final", allocator.pattern_final()},
      {"options", detail::allocator_options_json(allocator.options())},
      {"layers", layers}};
  SafetensorsWriter writer;
  for (const auto& [name, view] : allocator.state(ctx))
    writer.add(name, as_const(detail::host_copy(ctx, view).view()));
  writer.set_metadata(kAdaLoraAllocatorKey, meta.dump());
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  PEFT_CHECK(!error, ErrorKind::io, "save_allocator_state: cannot create ", detail::quoted(dir),
             ": ", error.message());
  detail::AtomicFile file(dir / kAdaLoraAllocatorName);
  writer.write_to([&](std::span<const std::byte> bytes) { file.write(bytes); });
  file.commit();
  detail::sync_directory(dir);
}

/// Reads <dir>/adalora_allocator.safetensors into `allocator` (its layers registered, in the
/// saved order, none updated yet); returns the step to continue at (last_step + 1). On any error
/// the allocator is unchanged.
template <class T, class B>
std::int64_t load_allocator_state(const std::filesystem::path& dir, RankAllocator<T, B>& allocator,
                                  Context<B>& ctx,
                                  SafetensorsAccess access = SafetensorsAccess::mmap) {
  using P = param_t<T>;
  const std::filesystem::path path = dir / kAdaLoraAllocatorName;
  const std::string where = detail::concat("load_allocator_state: ", detail::quoted(path));
  const auto fail = [&](const auto&... what) {
    throw Error(ErrorKind::io, detail::concat(where, ": ", what...));
  };
  PEFT_CHECK(!allocator.compacted(), ErrorKind::state, where,
             ": the allocator was compacted already");
  const SafetensorsReader reader = SafetensorsReader::open(path, {.access = access});

  // The metadata: version, options and layers must be the allocator's.
  const auto it = reader.metadata().find(kAdaLoraAllocatorKey);
  if (it == reader.metadata().end()) fail("no ", kAdaLoraAllocatorKey, " metadata");
  nlohmann::ordered_json meta;
  std::string error;
  if (!detail::parse_json_ordered(it->second, 8, meta, error) || !meta.is_object())
    fail(kAdaLoraAllocatorKey, " is not a JSON object: ", error);
  const auto field = [&](const char* key) -> const nlohmann::ordered_json& {
    if (!meta.contains(key)) fail(kAdaLoraAllocatorKey, " has no ", key);
    return meta[key];
  };
  if (field("version") != kAdaLoraAllocatorVersion)
    fail("version ", field("version").dump(), " is not supported (", kAdaLoraAllocatorVersion, ")");
  const auto& options = field("options");
  const auto expected = detail::allocator_options_json(allocator.options());
  if (options != expected)
    fail("saved with the allocator options ", options.dump(), ", this allocator has ",
         expected.dump(), ": a run resumes with its own schedule");
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& [name, r] : allocator.layers()) layers.push_back({name, r});
  if (field("layers") != layers)
    fail("saved for the layers (name, rank) ", field("layers").dump(), ", this allocator has ",
         layers.dump(), " (register the same layers in the same order)");
  const auto& step = field("last_step");
  const auto& is_final = field("pattern_final");
  if (!step.is_number_integer() || step.template get<std::int64_t>() < -1 ||
      step.template get<std::int64_t>() >= std::int64_t{1} << 53)
    fail("last_step must be an integer >= -1, got ", step.dump());
  if (!is_final.is_boolean()) fail("pattern_final must be true or false, got ", is_final.dump());

  // The tensors: exactly the allocator's, of its shapes, with values it can hold.
  auto state = allocator.state(ctx);
  if (reader.tensors().size() != state.size())
    fail("it holds ", reader.tensors().size(), " tensors, the allocator's state has ",
         state.size());
  std::vector<Matrix<P, Cpu>> values;
  for (const auto& [name, view] : state) {
    const SafetensorsTensorInfo* t = reader.find(name);
    if (t == nullptr) fail("it has no tensor '", name, "'");
    if (t->shape != std::vector<index_t>{view.rows(), view.cols()})
      fail("'", name, "' is ", SafetensorsReader::shape_text(t->shape), ", expected [", view.rows(),
           ", ", view.cols(), "]");
    Matrix<P, Cpu> m(view.rows(), view.cols());
    reader.read_into(name, m.view());
    const bool mask = name == "rank_mask";
    for (index_t i = 0; i < m.size(); ++i) {
      const double v = static_cast<double>(m.data()[i]);
      if (mask ? !(v == 0.0 || v == 1.0) : !(std::isfinite(v) && v >= 0.0))
        fail("'", name, "' holds ", v, " at element ", i,
             mask ? ", expected 0 or 1" : ", expected a finite value >= 0");
    }
    values.push_back(std::move(m));
  }
  if (is_final.template get<bool>()) {
    const auto& mask = values.back();
    index_t kept = 0;
    for (index_t i = 0; i < mask.size(); ++i) kept += mask.data()[i] != 0 ? 1 : 0;
    const index_t budget =
        allocator.budget_schedule(allocator.options().total_step - allocator.options().tfinal)
            .budget;
    if (kept != budget)
      fail("the final rank_mask keeps ", kept, " ranks, the final budget is ", budget);
  }

  for (std::size_t i = 0; i < state.size(); ++i)
    upload(ctx, as_const(values[i].view()), state[i].second);
  allocator.set_pattern_final(is_final.template get<bool>());
  allocator.set_last_step(step.template get<std::int64_t>());
  return step.template get<std::int64_t>() + 1;
}

}  // namespace peft
