#pragma once
// The command line of transformer_demo.

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "methods.hpp"
#include "model.hpp"
#include "text.hpp"

namespace tfm {

struct Options {
  ModelConfig model;
  MethodSettings methods;
  std::vector<std::string> method_names = {"LoRA", "RoSA", "AdaLoRA", "NOLA", "LoRA-XS"};
  std::string data = kFortunesDir;
  std::string target = "startrek";  // the held-out category
  std::string cache = "transformer_cache";
  index_t pretrain_steps = 800;
  double pretrain_lr = 3e-3;
  index_t steps = 150;  // adaptation steps of each method
  index_t batch = 8;
  index_t validation_windows = 32;
  index_t sample_count = 3;
  index_t sample_length = 100;
  int threads = 2;
  bool quiet = false;
};

// A model and run small enough for a test: seconds, not minutes.
inline void make_tiny(Options& o) {
  o.model = {.vocab = 128, .dim = 32, .layers = 2, .heads = 2, .context = 32, .hidden = 64};
  o.pretrain_steps = 30;
  o.steps = 10;
  o.batch = 4;
  o.validation_windows = 8;
  o.sample_count = 2;
  o.sample_length = 24;
  o.methods.nola_bases = 64;
  o.methods.lora_xs_r = 8;
}

inline void usage(std::FILE* out) {
  std::fprintf(
      out,
      "usage: transformer_demo [--quiet] [--tiny] [--methods LIST] [--steps N]\n"
      "                        [--pretrain-steps N] [--target CATEGORY] [--data DIR]\n"
      "                        [--cache DIR] [--batch B] [--samples N] [--threads T] [--seed S]\n"
      "Pre-trains a character-level transformer on the fortunes package's quotations (cached\n"
      "in DIR/base.safetensors), then adapts the frozen base to a held-out category with\n"
      "each method and prints one table.\n"
      "  --quiet            no progress lines\n"
      "  --tiny             a tiny model and a few steps (the test's run)\n"
      "  --methods LIST     comma-separated, of LoRA,RoSA,AdaLoRA,NOLA,LoRA-XS (default all)\n"
      "  --steps N          adaptation steps per method (default 150)\n"
      "  --pretrain-steps N pre-training steps (default 800)\n"
      "  --target CATEGORY  the held-out category (default startrek)\n"
      "  --data DIR         the fortunes files (default %s)\n"
      "  --cache DIR        base, adapters and comparison data (default transformer_cache)\n"
      "  --batch B          sequences per step (default %lld)\n"
      "  --samples N        lines sampled from each model (default 3; 0: none)\n"
      "  --threads T        CPU threads (default 2)\n"
      "  --seed S           (default 42)\n",
      kFortunesDir, static_cast<long long>(Options{}.batch));
}

inline std::vector<std::string> split_commas(std::string_view text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    out.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

inline bool parse_count(const char* text, long long lo, long long hi, index_t& out) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v < lo || v > hi) return false;
  out = v;
  return true;
}

// False (after saying why) when the command line is invalid. --tiny applies first, so other
// flags override its sizes.
inline bool parse_options(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--tiny") make_tiny(o);
  const std::vector<std::string> known = o.method_names;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      usage(stdout);
      std::exit(0);
    }
    if (flag == "--quiet" || flag == "--tiny") {
      o.quiet = o.quiet || flag == "--quiet";
      continue;
    }
    if (i + 1 == argc) {
      std::fprintf(stderr, "transformer_demo: '%s' needs a value\n", argv[i]);
      return false;
    }
    const char* value = argv[++i];
    index_t n = 0;
    bool ok = true;
    if (flag == "--methods") {
      o.method_names = split_commas(value);
      for (const auto& m : o.method_names)
        ok = ok && std::find(known.begin(), known.end(), m) != known.end();
    } else if (flag == "--steps") {
      ok = parse_count(value, 1, 1000000, o.steps);
    } else if (flag == "--pretrain-steps") {
      ok = parse_count(value, 1, 10000000, o.pretrain_steps);
    } else if (flag == "--batch") {
      ok = parse_count(value, 1, 4096, o.batch);
    } else if (flag == "--samples") {
      ok = parse_count(value, 0, 64, o.sample_count);
    } else if (flag == "--threads") {
      ok = parse_count(value, 1, 1024, n);
      o.threads = int(n);
    } else if (flag == "--seed") {
      ok = parse_count(value, 0, 1LL << 62, n);
      o.methods.seed = std::uint64_t(n);
    } else if (flag == "--target") {
      o.target = value;
    } else if (flag == "--data") {
      o.data = value;
    } else if (flag == "--cache") {
      o.cache = value;
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "transformer_demo: bad argument '%s %s'\n", argv[i - 1], value);
      usage(stderr);
      return false;
    }
  }
  o.methods.steps = o.steps;
  return true;
}

}  // namespace tfm
