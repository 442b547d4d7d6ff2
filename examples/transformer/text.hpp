#pragma once
// The text: quotations of the Debian package `fortunes` (/usr/share/games/fortunes), one file
// per category, quotations separated by lines holding "%". Characters are bytes 0..127; tabs
// become spaces and every other byte outside printable ASCII and '\n' becomes '?'.
//
// Each category's quotations are split (the last tenth for validation, the rest for training)
// and kept in the file's format, "%" lines included, so that the model learns where a
// quotation ends.

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.hpp"
#include "model.hpp"

namespace tfm {

inline const char* const kFortunesDir = "/usr/share/games/fortunes";

struct Text {
  std::vector<int> train;
  std::vector<int> validation;
};

inline int encode_char(unsigned char c) {
  if (c == '\t') return ' ';
  if (c == '\n' || (c >= 32 && c < 127)) return c;
  return '?';
}

// The quotations of one category file, each with its trailing "%\n".
inline std::vector<std::string> read_quotations(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw std::runtime_error(
        "cannot read " + file.string() +
        ": the example needs the text of the Debian package 'fortunes' "
        "(apt-get install fortunes; scripts/demo transformer installs it), or --data DIR");
  std::vector<std::string> quotes;
  std::string line, current;
  while (std::getline(in, line)) {
    if (line == "%") {
      if (!current.empty()) quotes.push_back(current + "%\n");
      current.clear();
    } else {
      current += line + "\n";
    }
  }
  if (!current.empty()) quotes.push_back(current + "%\n");
  if (quotes.empty()) throw std::runtime_error(file.string() + " holds no quotations");
  return quotes;
}

// The categories' text: each category's last tenth of quotations (at least one) validates.
inline Text read_categories(const std::filesystem::path& dir,
                            const std::vector<std::string>& categories) {
  Text text;
  for (const std::string& name : categories) {
    const std::vector<std::string> quotes = read_quotations(dir / name);
    const std::size_t held_out = std::max<std::size_t>(1, quotes.size() / 10);
    for (std::size_t i = 0; i < quotes.size(); ++i) {
      std::vector<int>& out = i + held_out >= quotes.size() ? text.validation : text.train;
      for (unsigned char c : quotes[i]) out.push_back(encode_char(c));
    }
  }
  return text;
}

// `batch` windows of seq + 1 characters at Philox-drawn offsets of `tokens` (draw `step` of the
// stream): inputs are the first seq characters of each window, targets the next ones.
inline Batch random_batch(const std::vector<int>& tokens, index_t batch, index_t seq,
                          std::uint64_t seed, std::uint32_t step) {
  const index_t span = index_t(tokens.size()) - seq - 1;
  PEFT_CHECK_ARG(span > 0, "random_batch: ", tokens.size(), " characters, windows of ", seq + 1);
  const peft::RandomStream s = user_stream(seed, kBatches, step);
  Batch b{batch, seq, {}, {}};
  for (index_t i = 0; i < batch; ++i) {
    const index_t start = index_t(s.bits(std::uint64_t(i)) % std::uint64_t(span));
    for (index_t t = 0; t < seq; ++t) {
      b.inputs.push_back(tokens[std::size_t(start + t)]);
      b.targets.push_back(tokens[std::size_t(start + t + 1)]);
    }
  }
  return b;
}

// Consecutive windows of the validation text (at most max_windows), in batches of `batch`.
inline std::vector<Batch> validation_batches(const std::vector<int>& tokens, index_t batch,
                                             index_t seq, index_t max_windows) {
  std::vector<Batch> out;
  const index_t windows = std::min(max_windows, (index_t(tokens.size()) - 1) / seq);
  PEFT_CHECK_ARG(windows > 0, "validation_batches: ", tokens.size(), " characters, windows of ",
                 seq + 1);
  for (index_t w = 0; w < windows; w += batch) {
    Batch b{std::min(batch, windows - w), seq, {}, {}};
    for (index_t i = 0; i < b.batch; ++i)
      for (index_t t = 0; t < seq; ++t) {
        const std::size_t at = std::size_t((w + i) * seq + t);
        b.inputs.push_back(tokens[at]);
        b.targets.push_back(tokens[at + 1]);
      }
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace tfm
