#pragma once
// FormatList<Formats...>: a list of adapter types, each named by its checkpoint format traits
// (io/<method>_format.hpp, whose `Layer<T, B>` is the layer type). It gives the variant an
// AdapterSet holds and lets the checkpoint code visit the formats in order.

#include <cstddef>
#include <type_traits>
#include <variant>

namespace peft {

template <class... Formats>
struct FormatList {
  static constexpr std::size_t size = sizeof...(Formats);

  /// A layer of any of the listed types, for one element type and backend; alternative i is
  /// the layer of the i-th format.
  template <class T, class B>
  using Variant = std::variant<typename Formats::template Layer<T, B>...>;

  /// Whether L is the layer type of one of the formats.
  template <class L, class T, class B>
  static constexpr bool has_layer = (std::is_same_v<L, typename Formats::template Layer<T, B>> ||
                                     ...);

  /// Whether O is the MethodOptions (own save options) of one of the formats.
  template <class O>
  static constexpr bool has_method_options = (std::is_same_v<O, typename Formats::MethodOptions> ||
                                              ...);

  /// f.template operator()<F>() for every format F, in order.
  template <class F>
  static void for_each(F&& f) {
    (f.template operator()<Formats>(), ...);
  }

  /// f.template operator()<F>() for the index-th format (the Variant's alternative `index`).
  template <class F>
  static void visit(std::size_t index, F&& f) {
    std::size_t i = 0;
    for_each([&]<class Format>() {
      if (i++ == index) f.template operator()<Format>();
    });
  }
};

}  // namespace peft
