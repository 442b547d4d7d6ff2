#pragma once
// Text from the model: `count` sequences grown one character at a time from a prompt, each
// drawn from softmax(logits / temperature) of the last position. The draws come from one
// Philox stream, so two models sampled with one seed differ only where their predictions do.

#include <cmath>
#include <string>
#include <vector>

#include "common.hpp"
#include "model.hpp"

namespace tfm {

template <class T>
std::vector<std::string> sample(Ctx& ctx, Transformer<T>& model, Activations<T>& act,
                                const std::string& prompt, index_t count, index_t length,
                                double temperature, std::uint64_t seed) {
  const index_t context = model.config().context;
  std::vector<std::string> texts(std::size_t(count), prompt);
  const peft::RandomStream stream = user_stream(seed, kSampling);
  for (index_t step = 0; step < length; ++step) {
    // The last `context` characters of each text (all texts have one length).
    const index_t size = index_t(texts[0].size()), seq = std::min(size, context);
    Batch b{count, seq, {}, std::vector<int>(std::size_t(count * seq), 0)};
    for (const std::string& t : texts)
      for (index_t i = size - seq; i < size; ++i) b.inputs.push_back(t[std::size_t(i)]);
    model.forward(ctx, b, act, false);
    for (index_t s = 0; s < count; ++s) {
      const CView<T> logits = act.logits.view().rows_range(s * seq + seq - 1, 1);
      double top = double(logits(0, 0)), sum = 0;
      for (index_t j = 1; j < logits.cols(); ++j) top = std::max(top, double(logits(0, j)));
      std::vector<double> p(std::size_t(logits.cols()));
      for (index_t j = 0; j < logits.cols(); ++j)
        sum += p[std::size_t(j)] = std::exp((double(logits(0, j)) - top) / temperature);
      const double u = peft::uniform01(stream.bits(std::uint64_t(step * count + s))) * sum;
      index_t pick = 0;
      for (double acc = p[0]; acc < u && pick + 1 < logits.cols();) acc += p[std::size_t(++pick)];
      texts[std::size_t(s)] += char(pick);
    }
  }
  return texts;
}

// Prints each text after the prompt up to its end of quotation ("%" line) or its last full
// line, indented.
inline void print_samples(const char* title, const std::vector<std::string>& texts,
                          std::size_t prompt_size) {
  std::printf("%s\n", title);
  for (const std::string& t : texts) {
    std::string body = t.substr(prompt_size);
    if (const auto end = body.find("\n%"); end != std::string::npos)
      body.resize(end);
    else if (const auto nl = body.rfind('\n'); nl != std::string::npos && nl > 0)
      body.resize(nl);
    std::string line;
    std::printf("    |");
    for (char c : body) {
      if (c == '\n')
        std::printf("\n    |");
      else
        std::putchar(c);
    }
    std::printf("\n");
  }
}

}  // namespace tfm
