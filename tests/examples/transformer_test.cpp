// The transformer example's own code (examples/transformer/): the whole model's gradients
// against central finite differences in double, for the base's parameters (pre-training) and
// for LoRA adapters on every projection (adaptation, the base frozen); the base checkpoint;
// the clear error when the text is missing.

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base_checkpoint.hpp"
#include "methods.hpp"
#include "model.hpp"
#include "text.hpp"

namespace {

using namespace tfm;

const ModelConfig kTiny{.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .context = 6, .hidden = 12};

// Two sequences of 5 positions (shorter than the context), fixed characters.
Batch tiny_batch() {
  Batch b{2, 5, {}, {}};
  for (int i = 0; i < 10; ++i) {
    b.inputs.push_back((3 * i + 1) % 11);
    b.targets.push_back((5 * i + 2) % 11);
  }
  return b;
}

// Every base tensor random (layer norms too, so that their gradients are not special).
void randomise(Transformer<double>& model) {
  const peft::RandomStream s = peft::make_stream(7, 1, peft::RandomPurpose::user);
  std::uint64_t k = 0;
  for (auto& p : model.parameters())
    for (index_t i = 0; i < p.value.rows(); ++i)
      for (index_t j = 0; j < p.value.cols(); ++j)
        p.value(i, j) =
            (p.name.find("ln_") != std::string::npos && p.name.ends_with("weight") ? 1.0 : 0.0) +
            0.4 * peft::normal_from_stream(s, k++);
}

// Checks every entry of each parameter's gradient against (L(v + h) - L(v - h)) / 2h;
// `updated` runs after each change of a value (adapters regenerate their factors).
template <class Updated>
void check_gradients(Transformer<double>& model, Activations<double>& act, const Batch& batch,
                     std::vector<Param<double>> params, Updated&& updated) {
  Ctx ctx(peft::CpuContextOptions{.threads = 2});
  const double h = 1e-5;
  for (auto& p : params) {
    double max_error = 0, max_grad = 0;
    for (index_t i = 0; i < p.value.rows(); ++i)
      for (index_t j = 0; j < p.value.cols(); ++j) {
        const double v = p.value(i, j);
        p.value(i, j) = v + h;
        updated(ctx);
        const double up = model.forward(ctx, batch, act, false);
        p.value(i, j) = v - h;
        updated(ctx);
        const double down = model.forward(ctx, batch, act, false);
        p.value(i, j) = v;
        updated(ctx);
        const double numeric = (up - down) / (2 * h);
        max_error = std::max(max_error, std::abs(numeric - p.grad(i, j)));
        max_grad = std::max(max_grad, std::abs(p.grad(i, j)));
      }
    EXPECT_GT(max_grad, 0.0) << p.name << ": a zero gradient checks nothing";
    EXPECT_LE(max_error, 1e-7 * std::max(1.0, max_grad)) << p.name;
  }
}

TEST(TransformerExample, BaseGradientsMatchFiniteDifferences) {
  Ctx ctx(peft::CpuContextOptions{.threads = 2});
  Transformer<double> model(kTiny, 3);
  randomise(model);
  Activations<double> act(kTiny, 2);
  const Batch batch = tiny_batch();
  model.set_train_base(true);
  model.zero_grad(ctx);
  model.forward(ctx, batch, act, true);
  model.backward(ctx, batch, act);
  const std::vector<Param<double>> params = model.parameters();
  ASSERT_EQ(params.size(), 2u + 2u * 10u + 3u);  // embeddings, 2 x (2 norms + 6 projections), ...
  check_gradients(model, act, batch, params, [](Ctx&) {});
}

TEST(TransformerExample, AdapterGradientsFlowThroughTheFrozenModel) {
  Ctx ctx(peft::CpuContextOptions{.threads = 2});
  Transformer<double> model(kTiny, 3);
  randomise(model);
  Activations<double> act(kTiny, 2);
  const Batch batch = tiny_batch();
  model.set_train_base(false);
  peft::AdapterSet<double, peft::Cpu> set;
  for (auto& [name, proj] : model.named_projections())  // B random too: every gradient non-zero
    set.add<peft::Lora>(ctx, name, proj->weight(),
                        peft::LoraConfig{.r = 2, .alpha = 4, .init = peft::LoraInit::none});
  attach(model, set);
  set.zero_grad(ctx);
  model.forward(ctx, batch, act, true);
  model.backward(ctx, batch, act);
  check_gradients(model, act, batch, set.parameters(), [&](Ctx& c) { set.parameters_updated(c); });
  detach(model);
}

TEST(TransformerExample, BaseCheckpointRoundTripsAndRefusesOtherSettings) {
  Transformer<float> saved(kTiny, 1), loaded(kTiny, 2);
  const auto dir = std::filesystem::temp_directory_path() / "transformer_test_base";
  const auto file = dir / "base.safetensors";
  const auto metadata = base_metadata(kTiny, 1, 10, "a b");
  save_base(file, saved, metadata);
  ASSERT_FALSE(load_base(file, loaded, base_metadata(kTiny, 1, 11, "a b")));  // other steps
  ASSERT_TRUE(load_base(file, loaded, metadata));
  const auto a = saved.parameters(), b = loaded.parameters();
  for (std::size_t k = 0; k < a.size(); ++k)
    for (index_t i = 0; i < a[k].value.size(); ++i)
      ASSERT_EQ(a[k].value.data()[i], b[k].value.data()[i]) << a[k].name;
  const peft::SafetensorsReader reader = peft::SafetensorsReader::open(file);
  EXPECT_EQ(reader.info("layers.1.ln_2.bias").shape, (std::vector<index_t>{8}));
  EXPECT_EQ(reader.info("layers.0.mlp.up_proj.weight").shape, (std::vector<index_t>{12, 8}));
  std::filesystem::remove_all(dir);
}

TEST(TransformerExample, MissingTextSaysWhatToInstall) {
  try {
    read_categories("/nonexistent/fortunes", {"startrek"});
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("apt-get install fortunes"), std::string::npos)
        << e.what();
  }
}

TEST(TransformerExample, QuotationsKeepTheirSeparatorsAndSplitForValidation) {
  const auto dir = std::filesystem::temp_directory_path() / "transformer_test_text";
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir / "cat");
    for (int i = 0; i < 20; ++i) f << "quote " << i << "\tx\n%\n";
  }
  const Text text = read_categories(dir, {"cat"});
  const std::string val(text.validation.begin(), text.validation.end());
  EXPECT_EQ(val, "quote 18 x\n%\nquote 19 x\n%\n");    // the last tenth; tab became a space
  EXPECT_EQ(text.train.size(), 10u * 12u + 8u * 13u);  // quotes 0-9 and 10-17
  std::filesystem::remove_all(dir);
}

}  // namespace
