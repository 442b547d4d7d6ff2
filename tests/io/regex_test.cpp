// PyRegex (io/regex.hpp): Python re's answers on a table written by Python itself
// (tests/data/make_regex_cases.py), bounded time and depth on hostile patterns, and refusals
// that name the key.

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include <nlohmann/json.hpp>
#include <peft/io/module_selection.hpp>
#include <peft/io/patterns.hpp>
#include <peft/io/regex.hpp>
#include <peft/io/rosa_patterns.hpp>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

bool has_non_ascii(const std::string& s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return true;
  return false;
}

TEST(PyRegex, AnswersAsPythonReOnTheTable) {
  std::ifstream in(data_dir() / "regex_cases.json");
  ASSERT_TRUE(in.good());
  const nlohmann::json table = nlohmann::json::parse(in);
  std::size_t checked = 0, refused_by_python = 0;
  for (const auto& c : table.at("cases")) {
    const std::string pattern = c.at(0);
    if (c.size() == 1) {  // Python refuses it: so must we
      EXPECT_THROW(PyRegex{pattern}, Error) << pattern;
      ++refused_by_python;
      continue;
    }
    const std::string text = c.at(1);
    try {
      const PyRegex re(pattern);
      EXPECT_EQ(re.full_match(text), c.at(2).get<bool>()) << pattern << " fullmatch " << text;
      EXPECT_EQ(re.prefix_match(text), c.at(3).get<bool>()) << pattern << " match " << text;
      if (const int g = re.group_index("idx"); g != 0) {
        const auto idx = re.prefix_match_group(text, g);
        if (c.at(4).is_null())
          EXPECT_FALSE(idx.has_value()) << pattern << " idx " << text;
        else
          EXPECT_EQ(idx.value_or("<none>"), c.at(4).get<std::string>()) << pattern << " " << text;
      }
      ++checked;
    } catch (const Error& e) {
      // The one refusal of a pattern Python accepts that the table may hold: \d \w \s against
      // a non-ASCII character (Unicode classes).
      EXPECT_TRUE(has_non_ascii(text) &&
                  std::string(e.what()).find("non-ASCII") != std::string::npos)
          << pattern << " on " << text << ": " << e.what();
    }
  }
  EXPECT_GT(checked, 3000u);
  EXPECT_GT(refused_by_python, 30u);
}

TEST(PyRegex, RefusesWhatItDoesNotImplementByName) {
  const std::pair<const char*, const char*> refused[] = {
      {"(a)\\1", "backreference"},    {"(?P<n>a)(?P=n)", "named backreference"},
      {"a(?=b)", "lookaround"},       {"(?<!a)b", "lookaround"},
      {"(?i)q_proj", "inline flags"}, {"(?i:q)", "inline flags"},
      {"a*+", "possessive"},          {"(?>a)", "atomic group"},
      {"(?(1)a|b)", "conditional"},   {"\\bq", "word boundary"},
      {"\\N{EM DASH}", "\\N{...}"},
  };
  for (const auto& [pattern, why] : refused)
    expect_error([&] { PyRegex{pattern}; }, ErrorKind::io, {pattern, why});
}

// A key of 100 000 characters and one of 20 000 nested groups overflowed std::regex's
// recursive compiler (SIGSEGV); both are refused by their limits, naming the key.
TEST(PyRegex, HostileKeysAreRefusedWithinLimits) {
  const std::string long_key(100000, 'a');
  expect_error([&] { PatternMap<index_t>().add(long_key, 2); }, ErrorKind::io,
               {"pattern key 'aaaa", "(100000 bytes)", "longer than"});
  const std::string nested = std::string(20000, '(') + "q" + std::string(20000, ')');
  expect_error([&] { PatternMap<index_t>().add(nested, 2); }, ErrorKind::io,
               {"pattern key '((((", "(40001 bytes)", "longer than"});
  const std::string deep = std::string(100, '(') + "q" + std::string(100, ')');
  expect_error([&] { PatternMap<index_t>().add(deep, 2); }, ErrorKind::io,
               {"pattern key '((((", "nests groups deeper than 64"});
  expect_error([&] { RosaPatterns().add_rank(deep, 2); }, ErrorKind::io,
               {"pattern key '((((", "nests groups deeper than 64"});
  // Counted repeats expand: their program is bounded too.
  expect_error([&] { PatternMap<index_t>().add("((a{100}){100}){100}", 2); }, ErrorKind::io,
               {"pattern key '((a{100}){100}){100}'", "instructions"});
  // The largest accepted pattern is fine.
  EXPECT_NO_THROW(PyRegex(std::string(PyRegex::kMaxPatternLength, 'a')));
}

// Keys that backtrack catastrophically in Python and std::regex (minutes) are answered in
// linear time: the Pike VM keeps one thread per instruction.
TEST(PyRegex, CatastrophicBacktrackingKeysAnswerAtOnce) {
  const std::string module = "model.layers.10.self_attn.q_proj.base_layer.lora_dropout";
  PatternMap<index_t> p;
  p.add("(.|.)*!", 2);
  p.add("(.*)*!", 3);
  p.add("(a|aa)*b", 4);
  EXPECT_EQ(p.value_for(module, 8), 8);
  EXPECT_EQ(p.value_for(std::string(5000, 'a'), 8), 8);
  RosaPatterns r;
  r.add_rank("(.|.)*!", 2);
  r.add_rank("(.*)*!", 3);
  EXPECT_EQ(r.resolve(module, 8, 0.1, 16).r, 8);
  EXPECT_EQ(r.resolve(std::string(5000, '.'), 8, 0.1, 16).r, 8);
  // ...and still match where they should.
  EXPECT_EQ(p.value_for("x.aaaab", 8), 4);
}

TEST(PyRegex, NamesAreMatchedByCodePoint) {
  EXPECT_TRUE(
      PyRegex("a.b").full_match("a\xc3\xa9"
                                "b"));  // é is one character, as in Python
  EXPECT_TRUE(PyRegex("[^x]").full_match("\xc3\xa9"));
  expect_error([] { (void)PyRegex("\\w").full_match("\xc3\xa9"); }, ErrorKind::io, {"non-ASCII"});
  expect_error([] { (void)PyRegex("a").full_match("\xff"); }, ErrorKind::io, {"UTF-8"});
  expect_error([] { (void)PyRegex("a").full_match(std::string(PyRegex::kMaxText + 1, 'a')); },
               ErrorKind::io, {"longer than"});
}

}  // namespace
}  // namespace peft::test
