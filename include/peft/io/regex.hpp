#pragma once
// <regex>, for the pattern dictionaries of adapter configs. GCC 12 reports a false
// -Wmaybe-uninitialized inside libstdc++'s regex compiler at -O2/-O3 (std::function copied in
// _Compiler::_M_assertion); it is silenced for the library's code, which includes <regex> only
// through this header.

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <regex>  // IWYU pragma: export
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
