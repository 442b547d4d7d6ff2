#pragma once
// The library's single exception type and the check macro that builds its messages.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace peft {

enum class ErrorKind {
  invalid_argument,  // a value outside its documented range
  shape,             // dimensions that do not fit together
  state,             // a call that the object's state does not allow (e.g. backward when merged)
  numeric,           // a non-finite result that was refused
  io,                // files and formats
  cuda,              // CUDA runtime, cuBLAS and cuSPARSE status codes
};

inline const char* to_string(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_argument:
      return "invalid argument";
    case ErrorKind::shape:
      return "shape mismatch";
    case ErrorKind::state:
      return "invalid state";
    case ErrorKind::numeric:
      return "numeric error";
    case ErrorKind::io:
      return "io error";
    case ErrorKind::cuda:
      return "cuda error";
  }
  return "error";
}

/// Every error the library raises. One std base only, so `catch (const std::exception&)` works.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

}  // namespace detail
}  // namespace peft

/// PEFT_CHECK(cond, kind, parts...): throws peft::Error(kind, parts concatenated) when cond is
/// false. The parts should name the function, the argument, the expected and the actual value.
#define PEFT_CHECK(cond, kind, ...)                                     \
  do {                                                                  \
    if (!(cond)) [[unlikely]]                                           \
      throw ::peft::Error((kind), ::peft::detail::concat(__VA_ARGS__)); \
  } while (false)

#define PEFT_CHECK_ARG(cond, ...) PEFT_CHECK(cond, ::peft::ErrorKind::invalid_argument, __VA_ARGS__)
#define PEFT_CHECK_SHAPE(cond, ...) PEFT_CHECK(cond, ::peft::ErrorKind::shape, __VA_ARGS__)
