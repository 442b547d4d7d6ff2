#pragma once
// PyRegex: the regular expressions of adapter configs (rank_pattern keys, target_modules, ...)
// with Python `re`'s meaning, matched in linear time. The patterns come from files an attacker
// writes, so nothing here recurses without a bound or backtracks: a pattern is parsed by
// recursive descent whose depth is capped (kMaxNesting), compiled to at most kMaxProgram
// instructions, and simulated as a Pike VM: O(program size x text length) time, one thread per
// instruction and position.
//
// Syntax (a subset of Python's, refused with an error otherwise): literals, escapes (\. \\ \n
// \t \xhh \uhhhh \Uhhhhhhhh \0 and octal), `.`, classes [...] with ranges and negation, \d \D
// \w \W \s \S, groups ( ) (?: ) (?P<name> ), comments (?#...), `|`, * + ? {m} {m,n} {m,} {,n}
// and their lazy forms (*? ...), ^ $ \A \Z. Refused: backreferences, lookaround, inline flags,
// atomic groups, possessive quantifiers, conditionals, \b \B and \N{...}. Python's rules for
// what is not a quantifier (`a{`, `a{x}` are literals) and its errors ("nothing to repeat",
// "multiple repeat", "bad escape") are followed.
//
// Texts are UTF-8 and matched by code point, as Python matches a str. \d \w \s are Unicode
// classes in Python; a non-ASCII code point met by one of them is an error, not a guess.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"

namespace peft {

class PyRegex {
 public:
  static constexpr std::size_t kMaxPatternLength = 8192;
  static constexpr int kMaxNesting = 64;             // groups inside groups
  static constexpr std::size_t kMaxProgram = 16384;  // instructions, counted repeats expanded
  static constexpr std::size_t kMaxText = 16384;     // bytes of a name matched

  /// Compiles `pattern`; an io Error "pattern '<p>' <why>" (at a position) when Python would
  /// refuse it, interpret it differently, or it is beyond the limits.
  explicit PyRegex(std::string_view pattern) : pattern_(pattern) {
    fail_if(pattern.size() > kMaxPatternLength, 0,
            detail::concat("is longer than ", kMaxPatternLength, " bytes"));
    text_ = decode(pattern, "the pattern");
    Parser p{*this};
    const int root = p.alternation(0);
    fail_if(p.pos < text_.size(), p.pos, "has an unbalanced ')'");
    emit_node(root);
    program_.push_back({Op::match});
    nodes_.clear();
    text_.clear();
  }

  const std::string& pattern() const noexcept { return pattern_; }
  /// Capturing groups, numbered from 1 as in Python.
  int groups() const noexcept { return groups_; }
  /// The number of the named group, or 0.
  int group_index(std::string_view name) const {
    for (const auto& [n, i] : names_)
      if (n == name) return i;
    return 0;
  }

  /// re.fullmatch(pattern, text) is not None.
  bool full_match(std::string_view text) const { return run(text, true, 0).matched; }
  /// re.match(pattern, text) is not None (anchored at the start, any end).
  bool prefix_match(std::string_view text) const { return run(text, false, 0).matched; }
  /// re.match(pattern, text).group(group): the text of capturing group `group` (>= 1) in the
  /// match Python finds, or nothing when there is no match or the group took no part in it.
  std::optional<std::string> prefix_match_group(std::string_view text, int group) const {
    PEFT_CHECK_ARG(group >= 1 && group <= groups_, "PyRegex: no group ", group);
    const Result r = run(text, false, group);
    if (!r.matched || r.begin < 0 || r.end < 0) return std::nullopt;
    return encode(r.begin, r.end, text);
  }

 private:
  // ---- classes ---------------------------------------------------------------------------
  struct Range {
    std::uint32_t lo, hi;
  };
  struct CharClass {
    std::vector<Range> ranges;
    bool negate = false;
    bool unicode_dependent = false;  // holds \d \w \s or their negations
  };

  // ---- syntax tree (only while compiling) -------------------------------------------------
  enum class Node : std::uint8_t {
    empty,
    literal,
    any,
    cls,
    concat,
    alt,
    repeat,
    group,
    bol,
    eol,
    eos
  };
  struct TreeNode {
    Node kind;
    std::uint32_t value = 0;  // literal code point, class index, capture group (0: none)
    std::vector<int> kids = {};
    std::uint32_t min = 0, max = 0;  // repeat; max kUnbounded: no bound
    bool greedy = true;
  };
  static constexpr std::uint32_t kUnbounded = 0xFFFFFFFFu;

  // ---- program ----------------------------------------------------------------------------
  enum class Op : std::uint8_t { literal, any, cls, split, jump, save, bol, eol, eos, match };
  struct Inst {
    Op op;
    std::uint32_t value = 0;     // code point, class index, save slot
    std::uint32_t x = 0, y = 0;  // split: x preferred; jump: x
  };

  template <class... What>
  [[noreturn]] void fail(std::size_t at, const What&... what) const {
    throw Error(ErrorKind::io, detail::concat("pattern '", shorten(pattern_), "' ", what...,
                                              at == npos ? "" : " (at character ",
                                              at == npos ? std::string() : std::to_string(at),
                                              at == npos ? "" : ")"));
  }
  void fail_if(bool bad, std::size_t at, const std::string& what) const {
    if (bad) fail(at, what);
  }
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

  static std::string shorten(const std::string& p) {
    return p.size() <= 80 ? p : p.substr(0, 60) + "...(" + std::to_string(p.size()) + " bytes)";
  }

  /// UTF-8 to code points; `what` names the text in the error for invalid UTF-8.
  std::vector<std::uint32_t> decode(std::string_view s, std::string_view what) const {
    std::vector<std::uint32_t> out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
      const auto b = static_cast<unsigned char>(s[i]);
      const std::size_t n = b < 0x80 ? 0 : (b & 0xE0) == 0xC0 ? 1 : (b & 0xF0) == 0xE0 ? 2 : 3;
      std::uint32_t cp = b < 0x80 ? b : b & (0x3Fu >> n);
      bool ok = (b < 0x80 || (b >= 0xC2 && b <= 0xF4)) && i + n < s.size();
      for (std::size_t k = 1; ok && k <= n; ++k) {
        const auto c = static_cast<unsigned char>(s[i + k]);
        ok = (c & 0xC0) == 0x80;
        cp = (cp << 6) | (c & 0x3Fu);
      }
      constexpr std::uint32_t least[] = {0, 0x80, 0x800, 0x10000};
      if (!ok || cp < least[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        throw Error(ErrorKind::io, detail::concat(what, " '", shorten(std::string(s)),
                                                  "' is not valid UTF-8 (at byte ", i, ")"));
      out.push_back(cp);
      i += n + 1;
    }
    return out;
  }

  /// The bytes of code points [begin, end) of `text` (a valid UTF-8 string).
  static std::string encode(int begin, int end, std::string_view text) {
    std::size_t byte = 0, start = 0;
    for (int cp = 0; cp <= end; ++cp) {
      if (cp == begin) start = byte;
      if (cp == end) return std::string(text.substr(start, byte - start));
      const auto b = static_cast<unsigned char>(text[byte]);
      byte += b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : 4;
    }
    return {};
  }

  // ---- parser: Python's re._parser rules, recursion bounded by kMaxNesting ---------------
  struct Parser {
    PyRegex& re;
    std::size_t pos = 0;

    const std::vector<std::uint32_t>& t() const { return re.text_; }
    bool at_end() const { return pos >= t().size(); }
    std::uint32_t peek() const { return at_end() ? 0 : t()[pos]; }
    bool eat(std::uint32_t c) {
      if (at_end() || t()[pos] != c) return false;
      ++pos;
      return true;
    }

    int alternation(int depth) {
      std::vector<int> branches{concatenation(depth)};
      while (eat('|')) branches.push_back(concatenation(depth));
      if (branches.size() == 1) return branches.front();
      return re.add({Node::alt, 0, std::move(branches)});
    }

    int concatenation(int depth) {
      std::vector<int> items;
      bool last_is_repeat = false, last_is_assertion = false;
      while (!at_end() && peek() != '|' && peek() != ')') {
        const std::size_t start = pos;
        const std::uint32_t c = t()[pos++];
        if (c == '*' || c == '+' || c == '?' || c == '{') {
          std::uint32_t min = 0, max = kUnbounded;
          if (c == '?') max = 1;
          if (c == '+') min = 1;
          if (c == '{' && !counted(min, max)) {  // not a quantifier: a literal '{'
            items.push_back(re.add({Node::literal, '{'}));
            last_is_repeat = last_is_assertion = false;
            continue;
          }
          if (items.empty() || last_is_assertion) re.fail(start, "has nothing to repeat");
          if (last_is_repeat) re.fail(start, "has a multiple repeat");
          bool greedy = true;
          if (eat('?'))
            greedy = false;
          else if (peek() == '+')
            re.fail(pos, "has a possessive quantifier, which peft-cpp does not support");
          TreeNode n{Node::repeat, 0, {items.back()}};
          n.min = min;
          n.max = max;
          n.greedy = greedy;
          items.back() = re.add(std::move(n));
          last_is_repeat = true;
          continue;
        }
        if (c == '(') {
          const int g = group(start, depth);
          if (g < 0) continue;  // a comment: the previous item stays the one to repeat
          items.push_back(g);
          last_is_repeat = last_is_assertion = false;
          continue;
        }
        last_is_repeat = last_is_assertion = false;
        if (c == '[') {
          items.push_back(re.add({Node::cls, char_class(start)}));
        } else if (c == '.') {
          items.push_back(re.add({Node::any}));
        } else if (c == '^' || c == '$') {
          items.push_back(re.add({c == '^' ? Node::bol : Node::eol}));
          last_is_assertion = true;
        } else if (c == '\\') {
          items.push_back(escape(start, last_is_assertion));
        } else {
          items.push_back(re.add({Node::literal, c}));
        }
      }
      if (items.empty()) return re.add({Node::empty});
      if (items.size() == 1) return items.front();
      return re.add({Node::concat, 0, std::move(items)});
    }

    /// After '{': reads "m}", "m,n}", "m,}", ",n}" or ",}" into min/max; false (position
    /// restored) when what follows is no quantifier.
    bool counted(std::uint32_t& min, std::uint32_t& max) {
      const std::size_t here = pos;
      if (peek() == '}') return false;
      std::string lo, hi;
      while (!at_end() && peek() >= '0' && peek() <= '9')
        lo.push_back(static_cast<char>(t()[pos++]));
      if (eat(',')) {
        while (!at_end() && peek() >= '0' && peek() <= '9')
          hi.push_back(static_cast<char>(t()[pos++]));
      } else {
        hi = lo;
      }
      if (!eat('}')) {
        pos = here;
        return false;
      }
      auto number = [&](const std::string& digits) {
        const auto first = digits.find_first_not_of('0');
        if (digits.size() - (first == std::string::npos ? digits.size() : first) > 9)
          re.fail(here, "has a repetition count that is too large");
        return static_cast<std::uint32_t>(std::stoul(digits));
      };
      min = lo.empty() ? 0 : number(lo);
      max = hi.empty() ? kUnbounded : number(hi);
      if (max < min) re.fail(here, "has a minimum repeat greater than the maximum");
      return true;
    }

    /// After '(' at `start`: the group's node, or -1 for a comment.
    int group(std::size_t start, int depth) {
      std::uint32_t capture = 0;
      if (eat('?')) {
        if (at_end()) re.fail(start, "has an unterminated group");
        const std::uint32_t c = t()[pos++];
        if (c == ':') {
        } else if (c == '#') {
          while (!at_end() && peek() != ')') ++pos;
          if (!eat(')')) re.fail(start, "has an unterminated comment");
          return -1;
        } else if (c == 'P' && eat('<')) {
          std::string name;
          while (!at_end() && peek() != '>') {
            const std::uint32_t ch = t()[pos++];
            const bool ok = ch == '_' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                            (!name.empty() && ch >= '0' && ch <= '9');
            if (!ok) re.fail(start, "has a group name peft-cpp does not support (ASCII only)");
            name.push_back(static_cast<char>(ch));
          }
          if (!eat('>') || name.empty()) re.fail(start, "has a bad group name");
          if (re.group_index(name) != 0) re.fail(start, "redefines the group name '", name, "'");
          capture = static_cast<std::uint32_t>(++re.groups_);
          re.names_.emplace_back(name, re.groups_);
        } else {
          const char* what = c == '=' || c == '!' || c == '<' ? "a lookaround assertion"
                             : c == 'P'                       ? "a named backreference"
                             : c == '>'                       ? "an atomic group"
                             : c == '('                       ? "a conditional group"
                                                              : "inline flags";
          re.fail(start, "uses ", what, ", which peft-cpp does not support");
        }
      } else {
        capture = static_cast<std::uint32_t>(++re.groups_);
      }
      if (depth + 1 > kMaxNesting)
        re.fail(start, "nests groups deeper than ", kMaxNesting, " levels");
      const int inner = alternation(depth + 1);
      if (!eat(')')) re.fail(start, "has an unterminated group");
      return re.add({Node::group, capture, {inner}});
    }

    /// Parses the escape after '\' outside a class.
    int escape(std::size_t start, bool& is_assertion) {
      if (at_end()) re.fail(start, "ends with a lone backslash");
      const std::uint32_t c = t()[pos];
      if (c == 'A' || c == 'Z') {
        ++pos;
        is_assertion = true;
        return re.add({c == 'A' ? Node::bol : Node::eos});
      }
      if (c == 'b' || c == 'B')
        re.fail(start, "uses \\", static_cast<char>(c),
                " (a word boundary), which peft-cpp does not support");
      if (std::optional<CharClass> k = category(c)) {
        ++pos;
        return re.add({Node::cls, re.add_class(std::move(*k))});
      }
      if (c >= '1' && c <= '9') {
        // Three octal digits are a character; anything else is a group reference.
        if (pos + 2 < t().size() && is_octal(t()[pos]) && is_octal(t()[pos + 1]) &&
            is_octal(t()[pos + 2])) {
          const std::uint32_t v =
              (t()[pos] - '0') * 64 + (t()[pos + 1] - '0') * 8 + (t()[pos + 2] - '0');
          if (v > 0377) re.fail(start, "has an octal escape above \\377");
          pos += 3;
          return re.add({Node::literal, v});
        }
        re.fail(start, "uses a backreference, which peft-cpp does not support");
      }
      return re.add({Node::literal, literal_escape(start, false)});
    }

    /// \d \D \w \W \s \S as a class.
    static std::optional<CharClass> category(std::uint32_t c) {
      CharClass k;
      k.unicode_dependent = true;
      switch (c) {
        case 'd':
        case 'D':
          k.ranges = {{'0', '9'}};
          break;
        case 'w':
        case 'W':
          k.ranges = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
          break;
        case 's':
        case 'S':
          k.ranges = {{'\t', '\r'}, {0x1C, 0x20}};
          break;
        default:
          return std::nullopt;
      }
      k.negate = c == 'D' || c == 'W' || c == 'S';
      return k;
    }
    static bool is_octal(std::uint32_t c) { return c >= '0' && c <= '7'; }
    static int hex(std::uint32_t c) {
      if (c >= '0' && c <= '9') return static_cast<int>(c - '0');
      if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
      if (c >= 'A' && c <= 'F') return static_cast<int>(c - 'A' + 10);
      return -1;
    }

    /// A single-character escape at pos (after '\'): \a \f \n \r \t \v \xhh \uhhhh \Uhhhhhhhh,
    /// octal, an escaped non-letter; in a class \b is a backspace.
    std::uint32_t literal_escape(std::size_t start, bool in_class) {
      const std::uint32_t c = t()[pos++];
      switch (c) {
        case 'a':
          return 7;
        case 'f':
          return 12;
        case 'n':
          return 10;
        case 'r':
          return 13;
        case 't':
          return 9;
        case 'v':
          return 11;
        case 'b':
          if (in_class) return 8;
          break;
        case 'x':
        case 'u':
        case 'U': {
          const int digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
          std::uint32_t v = 0;
          for (int i = 0; i < digits; ++i) {
            if (at_end() || hex(peek()) < 0)
              re.fail(start, "has an incomplete escape \\", static_cast<char>(c));
            v = v * 16 + static_cast<std::uint32_t>(hex(t()[pos++]));
          }
          if (v > 0x10FFFF) re.fail(start, "has an escape beyond Unicode");
          return v;
        }
        default:
          break;
      }
      if (is_octal(c) && (c == '0' || in_class)) {  // up to three octal digits
        std::uint32_t v = c - '0';
        for (int i = 0; i < 2 && !at_end() && is_octal(peek()); ++i) v = v * 8 + (t()[pos++] - '0');
        if (v > 0377) re.fail(start, "has an octal escape above \\377");
        return v;
      }
      if (c < 0x80 &&
          ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) {
        if (c == 'N') re.fail(start, "uses \\N{...}, which peft-cpp does not support");
        re.fail(start, "has the bad escape \\", static_cast<char>(c));
      }
      return c;
    }

    /// After '[' at `start`: the class's index.
    std::uint32_t char_class(std::size_t start) {
      CharClass k;
      k.negate = eat('^');
      bool first = true;
      for (;;) {
        if (at_end()) re.fail(start, "has an unterminated character set");
        std::size_t item = pos;
        std::uint32_t c = t()[pos++];
        if (c == ']' && !first) break;
        first = false;
        std::optional<std::uint32_t> lo;
        if (c == '\\') {
          if (at_end()) re.fail(start, "has an unterminated character set");
          if (std::optional<CharClass> cat = category(peek())) {
            ++pos;
            add_category(k, *cat);
          } else {
            lo = literal_escape(item, true);
          }
        } else {
          lo = c;
        }
        if (eat('-')) {
          if (at_end()) re.fail(start, "has an unterminated character set");
          if (peek() == ']') {  // "x-]": '-' is a literal
            if (lo) k.ranges.push_back({*lo, *lo});
            k.ranges.push_back({'-', '-'});
            ++pos;
            break;
          }
          std::optional<std::uint32_t> hi;
          const std::size_t second = pos;
          std::uint32_t d = t()[pos++];
          if (d == '\\') {
            if (at_end()) re.fail(start, "has an unterminated character set");
            if (!category(peek())) hi = literal_escape(second, true);
          } else {
            hi = d;
          }
          if (!lo || !hi || *hi < *lo) re.fail(item, "has a bad character range");
          k.ranges.push_back({*lo, *hi});
        } else if (lo) {
          k.ranges.push_back({*lo, *lo});
        }
      }
      return re.add_class(std::move(k));
    }

    /// A category inside a class: its ranges, or (negated) the complement over ASCII plus a
    /// note that the class's non-ASCII answer is Unicode's.
    static void add_category(CharClass& k, const CharClass& cat) {
      k.unicode_dependent = true;
      if (!cat.negate) {
        k.ranges.insert(k.ranges.end(), cat.ranges.begin(), cat.ranges.end());
        return;
      }
      std::uint32_t next = 0;
      for (const Range& r : cat.ranges) {
        if (r.lo > next) k.ranges.push_back({next, r.lo - 1});
        next = r.hi + 1;
      }
      k.ranges.push_back({next, 0x7F});
    }
  };

  int add(TreeNode n) {
    fail_if(nodes_.size() >= kMaxProgram, npos, "is too complex");
    nodes_.push_back(std::move(n));
    return static_cast<int>(nodes_.size() - 1);
  }
  std::uint32_t add_class(CharClass k) {
    classes_.push_back(std::move(k));
    return static_cast<std::uint32_t>(classes_.size() - 1);
  }

  // ---- compiler: tree to program (depth bounded by the tree's, itself by kMaxNesting) ----
  std::uint32_t here() const { return static_cast<std::uint32_t>(program_.size()); }
  std::uint32_t push(Inst i) {
    fail_if(program_.size() >= kMaxProgram, npos,
            detail::concat("needs more than ", kMaxProgram, " instructions (counted repeats?)"));
    program_.push_back(i);
    return here() - 1;
  }

  void emit_node(int index) {
    const TreeNode& n = nodes_[static_cast<std::size_t>(index)];
    switch (n.kind) {
      case Node::empty:
        break;
      case Node::literal:
        push({Op::literal, n.value});
        break;
      case Node::any:
        push({Op::any});
        break;
      case Node::cls:
        push({Op::cls, n.value});
        break;
      case Node::bol:
        push({Op::bol});
        break;
      case Node::eol:
        push({Op::eol});
        break;
      case Node::eos:
        push({Op::eos});
        break;
      case Node::concat:
        for (int kid : n.kids) emit_node(kid);
        break;
      case Node::group: {
        if (n.value != 0) push({Op::save, 2 * n.value});
        emit_node(n.kids.front());
        if (n.value != 0) push({Op::save, 2 * n.value + 1});
        break;
      }
      case Node::alt: {
        std::vector<std::uint32_t> jumps;
        for (std::size_t i = 0; i < n.kids.size(); ++i) {
          if (i + 1 < n.kids.size()) {
            const std::uint32_t split = push({Op::split});
            program_[split].x = here();
            emit_node(n.kids[i]);
            jumps.push_back(push({Op::jump}));
            program_[split].y = here();
          } else {
            emit_node(n.kids[i]);
          }
        }
        for (std::uint32_t j : jumps) program_[j].x = here();
        break;
      }
      case Node::repeat:
        emit_repeat(n);
        break;
    }
  }

  /// `split` toward `body` first when greedy.
  void set_split(std::uint32_t split, std::uint32_t body, std::uint32_t skip, bool greedy) {
    program_[split].x = greedy ? body : skip;
    program_[split].y = greedy ? skip : body;
  }

  void emit_repeat(const TreeNode& n) {
    const int kid = n.kids.front();
    for (std::uint32_t i = 0; i < n.min; ++i) emit_node(kid);
    if (n.max == kUnbounded) {  // L: split body, end; body; jump L
      const std::uint32_t loop = push({Op::split});
      emit_node(kid);
      push({Op::jump, 0, loop});
      set_split(loop, loop + 1, here(), n.greedy);
      return;
    }
    // (body (body (...)?)?)?: each optional copy may be skipped to the end.
    std::vector<std::uint32_t> splits;
    for (std::uint32_t i = n.min; i < n.max; ++i) {
      splits.push_back(push({Op::split}));
      emit_node(kid);
    }
    for (std::uint32_t s : splits) set_split(s, s + 1, here(), n.greedy);
  }

  // ---- Pike VM --------------------------------------------------------------------------
  struct Result {
    bool matched = false;
    int begin = -1, end = -1;  // the tracked group's code points
  };
  struct Thread {
    std::uint32_t pc;
    int begin, end;
  };

  bool class_matches(const CharClass& k, std::uint32_t c) const {
    if (c >= 0x80 && k.unicode_dependent)
      throw Error(ErrorKind::io,
                  detail::concat("pattern '", shorten(pattern_),
                                 "': \\d, \\w or \\s met a non-ASCII character, whose class "
                                 "Python takes from Unicode tables peft-cpp does not have"));
    bool in = false;
    for (const Range& r : k.ranges) in = in || (c >= r.lo && c <= r.hi);
    return in != k.negate;
  }

  /// Runs the program over `text` anchored at its start; `full`: the match must end at the
  /// end. `group` (0: none) is the capturing group whose bounds the result carries, from the
  /// match a backtracking matcher (Python) finds first: threads are kept in priority order.
  Result run(std::string_view text_bytes, bool full, int group) const {
    if (text_bytes.size() > kMaxText)
      throw Error(ErrorKind::io, detail::concat("the name '", shorten(std::string(text_bytes)),
                                                "' is longer than ", kMaxText,
                                                " bytes, which pattern matching refuses"));
    const std::vector<std::uint32_t> text = decode(text_bytes, "the name");
    const std::size_t n = text.size(), size = program_.size();
    std::vector<Thread> current, next, stack;
    std::vector<std::size_t> seen(size, npos);  // the step that last added each pc
    Result best;
    const auto slot_begin = static_cast<std::uint32_t>(2 * group), slot_end = slot_begin + 1;

    // Adds the thread at pc and its epsilon closure to `list` in priority order, without
    // recursion: a stack of threads, the preferred branch on top.
    auto add = [&](std::vector<Thread>& list, Thread start, std::size_t step) {
      stack.push_back(start);
      while (!stack.empty()) {
        Thread th = stack.back();
        stack.pop_back();
        if (seen[th.pc] == step) continue;
        seen[th.pc] = step;
        const Inst& in = program_[th.pc];
        switch (in.op) {
          case Op::jump:
            stack.push_back({in.x, th.begin, th.end});
            break;
          case Op::split:
            stack.push_back({in.y, th.begin, th.end});
            stack.push_back({in.x, th.begin, th.end});
            break;
          case Op::save:
            if (group != 0 && in.value == slot_begin) th.begin = static_cast<int>(step);
            if (group != 0 && in.value == slot_end) th.end = static_cast<int>(step);
            stack.push_back({th.pc + 1, th.begin, th.end});
            break;
          case Op::bol:
            if (step == 0) stack.push_back({th.pc + 1, th.begin, th.end});
            break;
          case Op::eol:  // end, or before a final newline
            if (step == n || (step + 1 == n && text[step] == '\n'))
              stack.push_back({th.pc + 1, th.begin, th.end});
            break;
          case Op::eos:
            if (step == n) stack.push_back({th.pc + 1, th.begin, th.end});
            break;
          default:
            list.push_back(th);
            break;
        }
      }
    };

    add(current, {0, -1, -1}, 0);
    for (std::size_t step = 0;; ++step) {
      next.clear();
      const bool more = step < n;
      for (const Thread& th : current) {
        const Inst& in = program_[th.pc];
        if (in.op == Op::match) {
          if (full && step != n) continue;
          best = {true, th.begin, th.end};
          if (group == 0) return best;
          break;  // lower-priority threads lose to this match
        }
        if (!more) continue;
        const std::uint32_t c = text[step];
        const bool ok = in.op == Op::literal ? c == in.value
                        : in.op == Op::any   ? c != '\n'
                                             : class_matches(classes_[in.value], c);
        if (ok) add(next, {th.pc + 1, th.begin, th.end}, step + 1);
      }
      if (!more || next.empty()) return best;
      current.swap(next);
    }
  }

  std::string pattern_;
  std::vector<std::uint32_t> text_;  // the pattern's code points, while parsing
  std::vector<TreeNode> nodes_;
  std::vector<CharClass> classes_;
  std::vector<Inst> program_;
  std::vector<std::pair<std::string, int>> names_;
  int groups_ = 0;
};

}  // namespace peft
