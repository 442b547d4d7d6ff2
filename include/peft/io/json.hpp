#pragma once
// JSON parsing for checkpoint headers, safe on hostile input: objects keep the file's key order
// (nlohmann::ordered_json), duplicate keys are refused (nlohmann would keep the last one
// silently), nesting is limited, and the time is linear in the input. nlohmann's own
// ordered_json parser looks every new key up in a vector, which takes quadratic time on an
// object with many keys (100k keys: seconds; a 100 MB header: hours); this builder appends
// instead and checks duplicates with a hash set.

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace peft::detail {

class OrderedJsonBuilder {
 public:
  using json = nlohmann::ordered_json;
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  explicit OrderedJsonBuilder(int max_depth) : max_depth_(max_depth) {}

  bool null() { return put(json(nullptr)); }
  bool boolean(bool v) { return put(json(v)); }
  bool number_integer(number_integer_t v) { return put(json(v)); }
  bool number_unsigned(number_unsigned_t v) { return put(json(v)); }
  bool number_float(number_float_t v, const string_t&) { return put(json(v)); }
  bool string(string_t& v) { return put(json(std::move(v))); }
  bool binary(binary_t& v) { return put(json::binary(std::move(v))); }

  bool start_object(std::size_t) { return open(json::object()); }
  bool end_object() { return close(); }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_array() { return close(); }

  bool key(string_t& k) {
    if (!keys_.back().insert(k).second) {
      error_ = "the key '" + k + "' appears twice in one object";
      return false;
    }
    key_ = std::move(k);
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    error_ = std::string("not valid JSON: ") + e.what();
    return false;
  }

  json& result() { return root_; }
  const std::string& error() const { return error_; }

 private:
  /// Adds a value where the parser is: the root, the end of an array, or under key_ (appended
  /// to the object's vector: its uniqueness was checked in key()). Returns where it went.
  json* insert(json value) {
    if (stack_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.get_ref<json::array_t&>().push_back(std::move(value));
      return &parent.get_ref<json::array_t&>().back();
    }
    auto& object = parent.get_ref<json::object_t&>();
    // ordered_map is a std::vector of pairs; append without its linear-time lookup.
    auto& entries = static_cast<
        std::vector<std::pair<const std::string, json>, json::object_t::allocator_type>&>(object);
    entries.emplace_back(std::move(key_), std::move(value));
    return &entries.back().second;
  }
  bool put(json value) {
    insert(std::move(value));
    return true;
  }
  bool open(json container) {
    if (static_cast<int>(stack_.size()) >= max_depth_) {
      error_ = "it nests deeper than " + std::to_string(max_depth_) + " levels";
      return false;
    }
    const bool is_object = container.is_object();
    stack_.push_back(insert(std::move(container)));
    if (is_object) keys_.emplace_back();
    return true;
  }
  bool close() {
    if (stack_.back()->is_object()) keys_.pop_back();
    stack_.pop_back();
    return true;
  }

  int max_depth_;
  json root_;
  std::vector<json*> stack_;  // open containers; each lives in its parent, which does not
                              // grow while the child is open
  std::vector<std::unordered_set<std::string>> keys_;  // keys of the open objects
  std::string key_;
  std::string error_;
};

/// Parses `text`. Returns false and sets `error` on invalid JSON, a NUL byte, a duplicate key
/// or nesting deeper than max_depth.
inline bool parse_json_ordered(std::string_view text, int max_depth, nlohmann::ordered_json& out,
                               std::string& error) {
  // nlohmann's lexer takes a NUL byte outside a string for the end of the input and ignores
  // whatever follows; JSON allows none anywhere (inside strings it must be escaped).
  if (const auto nul = text.find('\0'); nul != std::string_view::npos) {
    error = "it holds a NUL byte at offset " + std::to_string(nul) + ", which JSON does not allow";
    return false;
  }
  OrderedJsonBuilder builder(max_depth);
  const bool ok = nlohmann::ordered_json::sax_parse(text.begin(), text.end(), &builder);
  if (!ok) {
    error = builder.error().empty() ? std::string("not valid JSON") : builder.error();
    return false;
  }
  out = std::move(builder.result());
  return true;
}

}  // namespace peft::detail
