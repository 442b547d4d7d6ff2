// RoSA checkpoints in peft-rosa's layout: round trips (with and without masks, float and
// bfloat16 models, 16-bit files, rank/density/alpha patterns, partial masks, spmm's transposed
// tensors, dimensions above int16's reach), a file built here exactly as the reference writes
// one, the reference's pattern lookup, and every refusal of a malformed file.
//
// No file from the reference itself is used: peft-rosa is a GitHub fork of PEFT that is not on
// PyPI (and needs its spops CUDA kernels), so the reference layout is rebuilt from its source
// (src/peft/tuners/rosa/{config,layer,splinear,model}.py, src/peft/utils/save_and_load.py).

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

using json = nlohmann::ordered_json;
using FRosa = Rosa<float, Cpu>;
using Dropout = decltype(LoraConfig::dropout);  // float or double
using BRosa = Rosa<Eigen::bfloat16, Cpu>;

/// Frozen layers of the given [out, in] shapes, owned, by module name.
template <class T>
struct Base {
  std::vector<std::string> names;
  std::vector<Matrix<T, Cpu>> weights, biases;
  BaseModel<T, Cpu> model;

  Base(std::vector<std::string> modules, std::vector<std::pair<index_t, index_t>> shapes,
       std::uint32_t seed = 1)
      : names(std::move(modules)) {
    for (std::size_t i = 0; i < names.size(); ++i) {
      weights.push_back(
          random_matrix<T>(shapes[i].first, shapes[i].second, seed + std::uint32_t(i)));
      biases.push_back(random_matrix<T>(1, shapes[i].first, seed + 100 + std::uint32_t(i)));
    }
    for (std::size_t i = 0; i < names.size(); ++i)
      model[names[i]] = {weights[i].view(),
                         VectorView<const T, Cpu>(biases[i].data(), biases[i].cols())};
  }
};

const std::vector<std::string> kModules = {
    "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"};
const std::vector<std::pair<index_t, index_t>> kShapes = {{6, 9}, {5, 9}, {7, 9}, {6, 9}};

/// `nnz` distinct random positions of an out x in matrix as a CSR pattern.
CsrPattern random_pattern(index_t out, index_t in, index_t nnz, std::uint32_t seed) {
  std::vector<index_t> cells(static_cast<std::size_t>(out * in));
  std::iota(cells.begin(), cells.end(), 0);
  std::mt19937 gen(seed);
  std::shuffle(cells.begin(), cells.end(), gen);
  cells.resize(static_cast<std::size_t>(nnz));
  std::sort(cells.begin(), cells.end());
  CsrPattern p{out, in, std::vector<std::int32_t>(static_cast<std::size_t>(out + 1), 0), {}};
  for (index_t c : cells) {
    p.col_indices.push_back(static_cast<std::int32_t>(c % in));
    ++p.row_offsets[static_cast<std::size_t>(c / in + 1)];
  }
  std::partial_sum(p.row_offsets.begin(), p.row_offsets.end(), p.row_offsets.begin());
  return p;
}

/// Random A, B and (where a mask is set) S values; `round` rounds them to bfloat16 first.
template <class T>
void randomise(HostCtx& ctx, AdapterSet<T, Cpu>& set, std::uint32_t seed, bool round = false) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  set.for_each([&](const std::string&, auto& layer) {
    using L = std::remove_cvref_t<decltype(layer)>;
    if constexpr (std::is_same_v<L, Rosa<T, Cpu>>) {
      auto params = layer.parameters();
      for (std::size_t k = 0; k < params.size(); ++k) {
        const index_t n = k == 2 ? layer.sparse().nnz() : params[k].value.size();
        for (index_t i = 0; i < n; ++i) {
          float v = dist(gen);
          if (round) v = bfloat16_bits_to_float(float_to_bfloat16_bits(v));
          params[k].value.data()[i] = v;
        }
      }
      layer.parameters_updated(ctx);
    }
  });
}

/// RoSA over `base`: ranks {4, 4, 2, 6}, densities {0.1, 0.1, 0.2, 0.1}, alphas {8, 3, 8, 8};
/// full masks on the layers `masked` selects.
template <class T>
AdapterSet<T, Cpu> make_set(HostCtx& ctx, const Base<T>& base, std::vector<bool> masked,
                            RosaForward forward = RosaForward::automatic) {
  const index_t ranks[] = {4, 4, 2, 6};
  const double densities[] = {0.1, 0.1, 0.2, 0.1};
  const double alphas[] = {8, 3, 8, 8};
  AdapterSet<T, Cpu> set;
  for (std::size_t i = 0; i < base.names.size(); ++i) {
    auto& layer = set.add_rosa(
        ctx, base.names[i], base.model.at(base.names[i]),
        {.lora = {.r = ranks[i % 4], .alpha = alphas[i % 4], .dropout = 0.05, .seed = 3},
         .density = densities[i % 4],
         .forward = forward});
    if (masked[i % masked.size()])
      layer.set_mask(ctx, random_pattern(layer.out_features(), layer.in_features(),
                                         layer.sparse_capacity(), 40 + std::uint32_t(i)));
  }
  randomise(ctx, set, 9);
  return set;
}

template <class T>
void expect_same_parameters(AdapterSet<T, Cpu>& a, AdapterSet<T, Cpu>& b) {
  ASSERT_EQ(a.modules(), b.modules());
  auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].name, pb[i].name);
    EXPECT_TRUE(bitwise_equal(as_const(pa[i].value), as_const(pb[i].value))) << pa[i].name;
  }
}

template <class T>
void expect_same_layers(HostCtx& ctx, AdapterSet<T, Cpu>& a, AdapterSet<T, Cpu>& b) {
  a.set_training(false);
  b.set_training(false);
  std::uint32_t seed = 50;
  for (const auto& name : a.modules()) {
    auto& la = a.template get<Rosa<T, Cpu>>(name);
    auto& lb = b.template get<Rosa<T, Cpu>>(name);
    EXPECT_EQ(la.has_mask(), lb.has_mask()) << name;
    EXPECT_EQ(la.sparse().nnz(), lb.sparse().nnz()) << name;
    EXPECT_EQ(la.scaling(), lb.scaling()) << name;
    EXPECT_EQ(la.rank(), lb.rank()) << name;
    EXPECT_EQ(la.forward_mode(), lb.forward_mode()) << name;
    if (la.has_mask()) {
      const auto sa = la.sparse().view(), sb = lb.sparse().view();
      EXPECT_TRUE(std::equal(sa.row_offsets, sa.row_offsets + sa.rows + 1, sb.row_offsets));
      EXPECT_TRUE(std::equal(sa.col_indices, sa.col_indices + sa.nnz, sb.col_indices));
    }
    auto x = random_matrix<T>(3, la.in_features(), seed++);
    Matrix<T, Cpu> ya(3, la.out_features()), yb(3, la.out_features());
    la.forward(ctx, x.view(), ya.view());
    lb.forward(ctx, x.view(), yb.view());
    EXPECT_TRUE(bitwise_equal(as_const(ya.view()), as_const(yb.view()))) << name;
  }
}

std::vector<std::int32_t> read_ints(const SafetensorsReader& r, const std::string& name) {
  const auto m = r.read_matrix<std::int32_t>(name);
  return {m.data(), m.data() + m.size()};
}

std::string key(const std::string& module, const char* tensor) {
  return "base_model.model." + module + "." + tensor;
}

// ---- round trips ---------------------------------------------------------------------------

TEST(RosaFormat, RoundTripWithMasksIsBitIdentical) {
  HostCtx ctx;
  Base<float> base(kModules, kShapes);
  auto set = make_set(ctx, base, {true});
  TempDir dir;
  save_adapter(dir.path(), set, ctx, {.task_type = "CAUSAL_LM"},
               RosaSaveOptions{.schedule = "wl64"});
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  expect_same_parameters(set, loaded);
  expect_same_layers(ctx, set, loaded);
  for (const auto& name : kModules) {
    const auto& l = loaded.get<FRosa>(name);
    EXPECT_EQ(l.options().stream_id, module_stream_id(name));
    EXPECT_EQ(l.config().lora.dropout, Dropout(0.05));
    EXPECT_EQ(l.sparse_capacity(), set.get<FRosa>(name).sparse_capacity());
  }
  EXPECT_EQ(loaded.parameters()[2].name, kModules[0] + ".rosa_S");

  // The config the reference reads.
  const json config = json::parse(read_text(dir / "adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "ROSA");
  EXPECT_EQ(config["r"], 4);
  EXPECT_EQ(config["d"].dump(), "0.1");
  EXPECT_EQ(config["lora_alpha"], 8);
  EXPECT_EQ(config["lora_dropout"].dump(), "0.05");
  EXPECT_EQ(config["impl"], "auto");
  EXPECT_EQ(config["spa_store_transpose"], true);
  EXPECT_EQ(config["rosa_dtype"], "fp32");
  EXPECT_EQ(config["spa_num_grads"], 1);
  EXPECT_EQ(config["grad_acc_mode"], "mean_squared");
  EXPECT_EQ(config["schedule"], "wl64");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["bias"], "none");
  // Exactly the saved modules under re.fullmatch ("q_proj" in a list would also select
  // "x.q_proj").
  EXPECT_EQ(config["target_modules"], "model\\.layers\\.(?:0|1)\\.self_attn\\.(?:q_proj|v_proj)");
  EXPECT_EQ(config["rank_pattern"], json::parse(R"({"model.layers.1.self_attn.q_proj": 2,
                                                   "model.layers.1.self_attn.v_proj": 6})"));
  EXPECT_EQ(config["density_pattern"], json::parse(R"({"model.layers.1.self_attn.q_proj": 0.2})"));
  EXPECT_EQ(config["alpha_pattern"], json::parse(R"({"model.layers.0.self_attn.v_proj": 3})"));
  EXPECT_FALSE(config.contains(kRosaIndexDtypeKey));
  std::vector<std::string> keys;
  for (const auto& [k, v] : config.items()) keys.push_back(k);
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));

  // The tensors, with the reference's names, shapes and dtypes.
  const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
  EXPECT_EQ(r.tensors().size(), 6 * kModules.size());
  for (std::size_t i = 0; i < kModules.size(); ++i) {
    const std::string& m = kModules[i];
    const auto& layer = set.get<FRosa>(m);
    const index_t out = layer.out_features(), in = layer.in_features();
    const index_t nnz = layer.sparse().nnz();
    EXPECT_EQ(nnz, index_t(0.1 * (i == 2 ? 2 : 1) * double(out * in)));
    EXPECT_EQ(r.info(key(m, "rosa_A.weight")).shape, (std::vector<index_t>{layer.rank(), in}));
    EXPECT_EQ(r.info(key(m, "rosa_B.weight")).shape, (std::vector<index_t>{out, layer.rank()}));
    const auto& values = r.info(key(m, "rosa_spa.values"));
    EXPECT_EQ(values.dtype, SafetensorsDtype::F32);
    EXPECT_EQ(values.shape, std::vector<index_t>{nnz});
    const auto& offs = r.info(key(m, "rosa_spa.row_offs"));
    EXPECT_EQ(offs.dtype, SafetensorsDtype::I32);
    EXPECT_EQ(offs.shape, std::vector<index_t>{out + 1});
    const auto& rows = r.info(key(m, "rosa_spa.row_idx"));
    EXPECT_EQ(rows.dtype, SafetensorsDtype::I16);
    EXPECT_EQ(rows.shape, std::vector<index_t>{out});
    const auto& cols = r.info(key(m, "rosa_spa.col_idx"));
    EXPECT_EQ(cols.dtype, SafetensorsDtype::I16);
    EXPECT_EQ(cols.shape, std::vector<index_t>{nnz});
    // row_idx = argsort(-diff(row_offs)), ties in row order.
    const auto o = read_ints(r, offs.name);
    const auto order = read_ints(r, rows.name);
    std::vector<std::int32_t> expected(static_cast<std::size_t>(out));
    std::iota(expected.begin(), expected.end(), 0);
    std::stable_sort(expected.begin(), expected.end(),
                     [&](int a, int b) { return o[a + 1] - o[a] > o[b + 1] - o[b]; });
    EXPECT_EQ(order, expected);
  }
}

TEST(RosaFormat, LayersWithoutMaskSaveAsTheReferenceBeforeItsMask) {
  HostCtx ctx;
  Base<float> base(kModules, kShapes);
  auto set = make_set(ctx, base, {false, true});  // layers 0 and 2 have no mask yet
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
  for (std::size_t i : {0, 2}) {
    const std::string& m = kModules[i];
    const auto& layer = set.get<FRosa>(m);
    ASSERT_FALSE(layer.has_mask());
    const index_t cap = layer.sparse_capacity();
    EXPECT_GT(cap, 0);
    EXPECT_EQ(read_ints(r, key(m, "rosa_spa.row_offs")),
              std::vector<std::int32_t>(std::size_t(layer.out_features() + 1), 0));
    EXPECT_EQ(read_ints(r, key(m, "rosa_spa.row_idx")),
              std::vector<std::int32_t>(std::size_t(layer.out_features()), 0));
    EXPECT_EQ(read_ints(r, key(m, "rosa_spa.col_idx")),
              std::vector<std::int32_t>(std::size_t(cap), 0));
    const auto values = r.read_matrix<float>(key(m, "rosa_spa.values"));
    EXPECT_EQ(values.size(), cap);
    EXPECT_TRUE(std::all_of(values.data(), values.data() + cap, [](float v) { return v == 0; }));
  }
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  expect_same_parameters(set, loaded);
  expect_same_layers(ctx, set, loaded);
  EXPECT_FALSE(loaded.get<FRosa>(kModules[0]).has_mask());
  EXPECT_TRUE(loaded.get<FRosa>(kModules[1]).has_mask());
  // The loaded layer takes its mask later, as a fresh one would.
  auto& l = loaded.get<FRosa>(kModules[0]);
  l.set_mask(ctx, random_pattern(l.out_features(), l.in_features(), l.sparse_capacity(), 5));
  EXPECT_TRUE(l.has_mask());
}

TEST(RosaFormat, Bfloat16ModelsAnd16BitFiles) {
  HostCtx ctx;
  using BF = Eigen::bfloat16;
  Base<BF> base(kModules, kShapes);
  auto set = make_set(ctx, base, {true, false});
  {  // float32 master values, saved as F32 by default: bit-identical
    TempDir dir;
    save_adapter(dir.path(), set, ctx);
    auto loaded = load_adapter(dir.path(), base.model, ctx);
    expect_same_parameters(set, loaded);
    expect_same_layers(ctx, set, loaded);
    EXPECT_EQ(loaded.get<BRosa>(kModules[0]).forward_mode(), RosaForward::spmm);
  }
  // Values representable in bfloat16 survive a BF16 file exactly (the reference's default
  // rosa_dtype); others are rounded to nearest even.
  randomise(ctx, set, 11, /*round=*/true);
  for (auto dtype : {SafetensorsDtype::BF16, SafetensorsDtype::F16}) {
    TempDir dir;
    save_adapter(dir.path(), set, ctx, {.dtype = dtype});
    const json config = json::parse(read_text(dir / "adapter_config.json"));
    EXPECT_EQ(config["rosa_dtype"], dtype == SafetensorsDtype::BF16 ? "bf16" : "fp16");
    const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
    EXPECT_EQ(r.info(key(kModules[0], "rosa_spa.values")).dtype, dtype);
    EXPECT_EQ(r.info(key(kModules[0], "rosa_A.weight")).dtype, dtype);
    auto loaded = load_adapter(dir.path(), base.model, ctx);
    if (dtype == SafetensorsDtype::BF16) {
      expect_same_parameters(set, loaded);
      expect_same_layers(ctx, set, loaded);
    } else {
      auto po = set.parameters(), pl = loaded.parameters();
      for (std::size_t i = 0; i < po.size(); ++i)
        for (index_t k = 0; k < po[i].value.size(); ++k)
          ASSERT_EQ(pl[i].value.data()[k],
                    half_bits_to_float(float_to_half_bits(po[i].value.data()[k])));
    }
  }
}

TEST(RosaFormat, SpmmWritesTheTransposedTensorsAndPartialMasksShrink) {
  HostCtx ctx;
  Base<float> base(kModules, kShapes);
  auto set = make_set(ctx, base, {true}, RosaForward::spmm);
  // A mask with fewer entries than the layer's capacity: the reference holds exactly
  // int(d * out * in) values, so the module is written with its own d.
  auto& partial = set.get<FRosa>(kModules[3]);
  const index_t out = partial.out_features(), in = partial.in_features();
  partial.set_mask(ctx, random_pattern(out, in, 3, 77));
  randomise(ctx, set, 12);
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  const json config = json::parse(read_text(dir / "adapter_config.json"));
  EXPECT_EQ(config["impl"], "spmm");
  const double d = config["density_pattern"][kModules[3]].get<double>();
  EXPECT_EQ(index_t(d * double(out * in)), 3);
  const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
  EXPECT_EQ(r.tensors().size(), 10 * kModules.size());
  const std::string& m = kModules[3];
  EXPECT_EQ(r.info(key(m, "rosa_spa.values")).shape, std::vector<index_t>{3});
  EXPECT_EQ(r.info(key(m, "rosa_spa.tr_perm")).dtype, SafetensorsDtype::I32);
  EXPECT_EQ(r.info(key(m, "rosa_spa.tr_row_offs")).shape, std::vector<index_t>{in + 1});
  EXPECT_EQ(r.info(key(m, "rosa_spa.tr_row_idx")).dtype, SafetensorsDtype::I16);
  EXPECT_EQ(r.info(key(m, "rosa_spa.tr_row_idx")).shape, std::vector<index_t>{in});
  EXPECT_EQ(r.info(key(m, "rosa_spa.tr_col_idx")).shape, std::vector<index_t>{3});
  // Zeros: the reference's state before its first product, which rebuilds them.
  EXPECT_EQ(read_ints(r, key(m, "rosa_spa.tr_row_offs")), std::vector<std::int32_t>(in + 1, 0));

  auto loaded = load_adapter(dir.path(), base.model, ctx);
  expect_same_layers(ctx, set, loaded);
  EXPECT_EQ(loaded.get<FRosa>(m).sparse_capacity(), 3);
  EXPECT_EQ(loaded.get<FRosa>(m).forward_mode(), RosaForward::spmm);
  // The used values are identical; the shrunk capacity holds exactly them.
  const auto vo = partial.sparse().values(), vl = loaded.get<FRosa>(m).sparse().values();
  EXPECT_TRUE(std::equal(vo.data(), vo.data() + 3, vl.data()));
  // Saving again gives the same files.
  TempDir again;
  save_adapter(again.path(), loaded, ctx);
  EXPECT_EQ(read_text(dir / "adapter_config.json"), read_text(again / "adapter_config.json"));
  EXPECT_EQ(read_file(dir / "adapter_model.safetensors"),
            read_file(again / "adapter_model.safetensors"));
}

TEST(RosaFormat, DimensionsBeyondInt16UseTheInt32Extension) {
  HostCtx ctx;
  const index_t big = 40000;
  const std::vector<std::string> names = {"tall", "wide", "small"};
  Base<float> base(names, {{big, 3}, {2, big}, {4, 5}});
  AdapterSet<float, Cpu> set;
  // Entries in rows and columns beyond int16's reach.
  const auto pattern = [&](index_t out, index_t in,
                           std::vector<std::pair<index_t, std::vector<std::int32_t>>> rows) {
    CsrPattern p{out, in, std::vector<std::int32_t>(std::size_t(out + 1), 0), {}};
    for (auto& [row, cols] : rows) {
      p.row_offsets[std::size_t(row + 1)] = std::int32_t(cols.size());
      p.col_indices.insert(p.col_indices.end(), cols.begin(), cols.end());
    }
    std::partial_sum(p.row_offsets.begin(), p.row_offsets.end(), p.row_offsets.begin());
    return p;
  };
  const CsrPattern patterns[] = {
      pattern(big, 3, {{0, {0}}, {32767, {0, 1}}, {32768, {0, 1, 2}}, {39999, {1, 2}}}),
      pattern(2, big, {{0, {0, 100, 32767, 32768}}, {1, {5, 35000, 39999}}}),
      pattern(4, 5, {{1, {0, 4}}, {3, {2}}}),
  };
  for (std::size_t i = 0; i < names.size(); ++i) {
    const CsrPattern& p = patterns[i];
    auto& l = set.add_rosa(
        ctx, names[i], base.model.at(names[i]),
        {.lora = {.r = 1}, .density = RosaConfig::density_for(p.nnz(), p.rows, p.cols)});
    l.set_mask(ctx, p);
  }
  randomise(ctx, set, 13);
  expect_error(
      [&] {
        save_adapter("/nonexistent/never", set, ctx, {},
                     RosaSaveOptions{.index_dtype = SafetensorsDtype::I16});
      },
      ErrorKind::invalid_argument, {"32768", "int16"});
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  const json config = json::parse(read_text(dir / "adapter_config.json"));
  EXPECT_EQ(config[kRosaIndexDtypeKey], "int32");
  const auto r = SafetensorsReader::open(dir / "adapter_model.safetensors");
  for (const auto& m : names) {
    EXPECT_EQ(r.info(key(m, "rosa_spa.row_idx")).dtype, SafetensorsDtype::I32);
    EXPECT_EQ(r.info(key(m, "rosa_spa.col_idx")).dtype, SafetensorsDtype::I32);
    EXPECT_EQ(r.info(key(m, "rosa_spa.row_offs")).dtype, SafetensorsDtype::I32);
  }
  const auto tall_order = read_ints(r, key("tall", "rosa_spa.row_idx"));
  EXPECT_EQ(tall_order.front(), 32768);  // the fullest row
  const auto wide_cols = read_ints(r, key("wide", "rosa_spa.col_idx"));
  EXPECT_GT(*std::max_element(wide_cols.begin(), wide_cols.end()), 32767);
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  expect_same_parameters(set, loaded);
  expect_same_layers(ctx, set, loaded);

  // Small layers may use the extension too, when asked; int16 stays the default for them.
  AdapterSet<float, Cpu> small;
  small.add_rosa(ctx, "small", base.model.at("small"), {.lora = {.r = 1}, .density = 0.5});
  TempDir wide, narrow;
  save_adapter(wide.path(), small, ctx, {}, RosaSaveOptions{.index_dtype = SafetensorsDtype::I32});
  save_adapter(narrow.path(), small, ctx);
  EXPECT_EQ(json::parse(read_text(wide / "adapter_config.json"))[kRosaIndexDtypeKey], "int32");
  EXPECT_FALSE(json::parse(read_text(narrow / "adapter_config.json")).contains(kRosaIndexDtypeKey));
  for (const auto* d : {&wide, &narrow}) {
    auto l = load_adapter(d->path(), base.model, ctx);
    expect_same_parameters(small, l);
  }
  expect_error(
      [&] {
        save_adapter(wide.path(), small, ctx, {},
                     RosaSaveOptions{.index_dtype = SafetensorsDtype::I64});
      },
      ErrorKind::invalid_argument, {"I64"});
}

TEST(RosaFormat, RefusesMixedSetsAndMismatchedSharedFields) {
  HostCtx ctx;
  Base<float> base(kModules, kShapes);
  AdapterSet<float, Cpu> mixed;
  mixed.add_rosa(ctx, kModules[0], base.model.at(kModules[0]), {});
  mixed.add_lora(ctx, kModules[1], base.model.at(kModules[1]), {});
  TempDir dir;
  expect_error([&] { save_adapter(dir.path(), mixed, ctx); }, ErrorKind::invalid_argument,
               {"LoRA and RoSA"});
  AdapterSet<float, Cpu> modes;
  modes.add_rosa(ctx, kModules[0], base.model.at(kModules[0]), {});
  modes.add_rosa(ctx, kModules[1], base.model.at(kModules[1]), {.forward = RosaForward::spmm});
  expect_error([&] { save_adapter(dir.path(), modes, ctx); }, ErrorKind::invalid_argument,
               {"impl"});
}

// ---- the reference's pattern lookup --------------------------------------------------------

TEST(RosaFormat, PatternsResolveAsTheReference) {
  RosaPatterns p;
  p.add_rank("v_proj", 2);
  p.add_density("o_proj", 0.0);
  p.add_alpha("layers.0.self_attn.v_proj", 32);
  p.add_alpha("model.layers.1.self_attn.q_proj", 16);
  // The first matching key of rank, density, alpha (in that order) is used for all three.
  EXPECT_EQ(p.key_for("model.layers.0.self_attn.v_proj"), "v_proj");
  const auto v = p.resolve("model.layers.0.self_attn.v_proj", 4, 0.1, 8);
  EXPECT_EQ(v.r, 2);
  EXPECT_EQ(v.d, 0.1);
  EXPECT_EQ(v.alpha, 8);  // not 32: "v_proj" came first
  const auto o = p.resolve("model.layers.0.self_attn.o_proj", 4, 0.1, 8);
  EXPECT_EQ(o.r, 4);
  EXPECT_EQ(o.d, 0.0);
  // A full name does not match itself (".*\." needs a dot before it): the name is looked up.
  EXPECT_EQ(p.key_for("model.layers.1.self_attn.q_proj"), "model.layers.1.self_attn.q_proj");
  EXPECT_EQ(p.resolve("model.layers.1.self_attn.q_proj", 4, 0.1, 8).alpha, 16);
  EXPECT_EQ(p.resolve("x.model.layers.1.self_attn.q_proj", 4, 0.1, 8).alpha, 16);
  // re.match anchors at the start only: an alternation may match a prefix.
  RosaPatterns alt;
  alt.add_rank("a|b", 3);
  EXPECT_EQ(alt.resolve("x.a.y", 4, 0, 1).r, 3);
  expect_error([] { RosaPatterns().add_rank("(unclosed", 1); }, ErrorKind::io,
               {"not a regular expression"});
}

TEST(RosaFormat, ModuleNamesThatAreSuffixesOfEachOtherGetAnchoredKeys) {
  HostCtx ctx;
  // A key "layers.0.q" would also match "model.layers.0.q" (after a dot) and "x.layers_0_q"
  // (its dots match any character).
  const std::vector<std::string> names = {"layers.0.q", "model.layers.0.q", "x.layers_0_q",
                                          "other"};
  Base<float> base(names, {{4, 6}, {5, 6}, {4, 6}, {3, 6}});
  AdapterSet<float, Cpu> set;
  set.add_rosa(ctx, names[0], base.model.at(names[0]),
               {.lora = {.r = 3, .alpha = 5}, .density = 0.5});
  for (std::size_t i = 1; i < names.size(); ++i)
    set.add_rosa(ctx, names[i], base.model.at(names[i]), {.lora = {.r = 2}, .density = 0.25});
  randomise(ctx, set, 3);
  TempDir dir;
  save_adapter(dir.path(), set, ctx);
  const json config = json::parse(read_text(dir / "adapter_config.json"));
  EXPECT_EQ(config["rank_pattern"], json::parse(R"({"$|^layers\\.0\\.q": 3})"));
  EXPECT_EQ(config["alpha_pattern"], json::parse(R"({"$|^layers\\.0\\.q": 5})"));
  EXPECT_EQ(config["density_pattern"], json::parse(R"({"$|^layers\\.0\\.q": 0.5})"));
  auto loaded = load_adapter(dir.path(), base.model, ctx);
  expect_same_parameters(set, loaded);
  expect_same_layers(ctx, set, loaded);
}

// ---- a checkpoint in the reference's exact layout ------------------------------------------

struct Raw {
  SafetensorsDtype dtype;
  std::vector<index_t> shape;
  std::vector<std::byte> bytes;
};

template <class U>
Raw raw_ints(const std::vector<std::int32_t>& v, SafetensorsDtype dtype) {
  Raw r{dtype, {index_t(v.size())}, std::vector<std::byte>(v.size() * sizeof(U))};
  for (std::size_t i = 0; i < v.size(); ++i)
    detail::store_little_endian(r.bytes.data() + i * sizeof(U), static_cast<U>(v[i]));
  return r;
}
Raw i16(const std::vector<std::int32_t>& v) {
  return raw_ints<std::int16_t>(v, SafetensorsDtype::I16);
}
Raw i32(const std::vector<std::int32_t>& v) {
  return raw_ints<std::int32_t>(v, SafetensorsDtype::I32);
}
Raw bf16(const std::vector<float>& v, std::vector<index_t> shape) {
  Raw r{SafetensorsDtype::BF16, std::move(shape), std::vector<std::byte>(v.size() * 2)};
  for (std::size_t i = 0; i < v.size(); ++i)
    detail::store_little_endian(r.bytes.data() + 2 * i, float_to_bfloat16_bits(v[i]));
  return r;
}

/// One module as the reference holds it: bfloat16 factors and values, S of a given pattern.
struct RefModule {
  std::string name;
  index_t out, in, r;
  double alpha;
  std::vector<float> a, b, values;    // bfloat16-representable
  std::optional<CsrPattern> pattern;  // none: before the mask (or d = 0 without spa)
  index_t nnz = 0;                    // int(d * out * in)
  bool spa = true;
};

std::vector<float> bf16_values(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = bfloat16_bits_to_float(float_to_bfloat16_bits(dist(gen)));
  return v;
}

/// The reference's checkpoint of four layers (config text as PEFT's save_pretrained writes
/// it: sorted keys, two-space indent), with knobs for malformed variants.
struct RefCheckpoint {
  std::vector<RefModule> modules;
  json config;
  std::map<std::string, Raw> tensors;

  RefCheckpoint() {
    // d = 0.125 by default; "v_proj" sets r = 2 and, as the first matching key, shadows the
    // alpha_pattern entry of layer 0's v_proj; "o_proj" sets d = 0 (no rosa_spa at all).
    modules = {
        {"model.layers.0.self_attn.q_proj", 6, 8, 4, 8, {}, {}, {}, {}, 6},
        {"model.layers.0.self_attn.v_proj", 5, 8, 2, 8, {}, {}, {}, {}, 5},
        {"model.layers.1.self_attn.q_proj", 6, 8, 4, 16, {}, {}, {}, {}, 6},  // no mask yet
        {"model.layers.0.self_attn.o_proj", 8, 6, 4, 8, {}, {}, {}, {}, 0, false},
    };
    std::uint32_t seed = 20;
    for (auto& m : modules) {
      m.a = bf16_values(std::size_t(m.r * m.in), seed++);
      m.b = bf16_values(std::size_t(m.out * m.r), seed++);
      if (m.name != "model.layers.1.self_attn.q_proj" && m.spa) {
        m.pattern = random_pattern(m.out, m.in, m.nnz, seed++);
        m.values = bf16_values(std::size_t(m.nnz), seed++);
      } else {
        m.values.assign(std::size_t(m.nnz), 0.0f);
      }
    }
    config = json::parse(R"({
  "alpha_pattern": {
    "layers.0.self_attn.v_proj": 32,
    "model.layers.1.self_attn.q_proj": 16
  },
  "auto_mapping": null,
  "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
  "bias": "none",
  "d": 0.125,
  "density_pattern": {
    "o_proj": 0
  },
  "fan_in_fan_out": false,
  "grad_acc_mode": "mean_squared",
  "impl": "spmm",
  "inference_mode": true,
  "init_lora_weights": true,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 8,
  "lora_dropout": 0.05,
  "mask_load_path": null,
  "mask_save_path": null,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "ROSA",
  "r": 4,
  "rank_pattern": {
    "v_proj": 2
  },
  "revision": null,
  "rosa_dtype": "bf16",
  "schedule": "wl64",
  "spa_num_grads": 1,
  "spa_store_transpose": true,
  "target_modules": [
    "v_proj",
    "q_proj",
    "o_proj"
  ],
  "task_type": "CAUSAL_LM",
  "terminate_after_mask_generation": false,
  "use_rslora": false
})");
    for (const auto& m : modules) {
      tensors[key(m.name, "rosa_A.weight")] = bf16(m.a, {m.r, m.in});
      tensors[key(m.name, "rosa_B.weight")] = bf16(m.b, {m.out, m.r});
      if (!m.spa) continue;
      tensors[key(m.name, "rosa_spa.values")] = bf16(m.values, {m.nnz});
      std::vector<std::int32_t> offs(std::size_t(m.out + 1), 0), cols(std::size_t(m.nnz), 0),
          order(std::size_t(m.out), 0), tr_perm(std::size_t(m.nnz), 0),
          tr_offs(std::size_t(m.in + 1), 0), tr_cols(std::size_t(m.nnz), 0),
          tr_order(std::size_t(m.in), 0);
      if (m.pattern) {
        offs = m.pattern->row_offsets;
        cols = m.pattern->col_indices;
        // argsort(-diff(row_offs)); torch's argsort is not stable: reverse ties to show any
        // order of equal rows is accepted.
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
          const int nx = offs[x + 1] - offs[x], ny = offs[y + 1] - offs[y];
          return nx != ny ? nx > ny : x > y;
        });
        // S transposed, as spops.csr_transpose fills it after the first product.
        for (auto c : cols) ++tr_offs[std::size_t(c + 1)];
        std::partial_sum(tr_offs.begin(), tr_offs.end(), tr_offs.begin());
        std::vector<std::int32_t> next(tr_offs.begin(), tr_offs.end() - 1);
        for (index_t row = 0; row < m.out; ++row)
          for (auto e = offs[row]; e < offs[row + 1]; ++e) {
            const auto slot = next[std::size_t(cols[e])]++;
            tr_perm[slot] = e;
            tr_cols[slot] = std::int32_t(row);
          }
        std::iota(tr_order.begin(), tr_order.end(), 0);
        std::stable_sort(tr_order.begin(), tr_order.end(), [&](int x, int y) {
          return tr_offs[x + 1] - tr_offs[x] > tr_offs[y + 1] - tr_offs[y];
        });
      }
      tensors[key(m.name, "rosa_spa.row_offs")] = i32(offs);
      tensors[key(m.name, "rosa_spa.row_idx")] = i16(order);
      tensors[key(m.name, "rosa_spa.col_idx")] = i16(cols);
      tensors[key(m.name, "rosa_spa.tr_perm")] = i32(tr_perm);
      tensors[key(m.name, "rosa_spa.tr_row_offs")] = i32(tr_offs);
      tensors[key(m.name, "rosa_spa.tr_row_idx")] = i16(tr_order);
      tensors[key(m.name, "rosa_spa.tr_col_idx")] = i16(tr_cols);
    }
  }

  void write(const fs::path& dir) const {
    write_text(dir / "adapter_config.json", config.dump(2));
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    for (const auto& [name, t] : tensors) w.add_raw(name, t.dtype, t.shape, t.bytes);
    w.write(dir / "adapter_model.safetensors");
  }
};

/// The frozen layers of the reference checkpoint's modules.
Base<float> ref_base(const RefCheckpoint& ref) {
  std::vector<std::string> names;
  std::vector<std::pair<index_t, index_t>> shapes;
  for (const auto& m : ref.modules) {
    names.push_back(m.name);
    shapes.emplace_back(m.out, m.in);
  }
  return Base<float>(names, shapes, 60);
}

TEST(RosaFormat, LoadsTheReferenceLayoutAndReproducesItsWeights) {
  HostCtx ctx;
  const RefCheckpoint ref;
  TempDir dir;
  ref.write(dir.path());
  Base<float> base = ref_base(ref);
  auto set = load_adapter(dir.path(), base.model, ctx);
  ASSERT_EQ(set.size(), ref.modules.size());
  for (std::size_t i = 0; i < ref.modules.size(); ++i) {
    const RefModule& m = ref.modules[i];
    auto& layer = set.get<FRosa>(m.name);
    EXPECT_EQ(layer.rank(), m.r) << m.name;
    EXPECT_EQ(layer.scaling(), m.alpha / double(m.r)) << m.name;
    EXPECT_EQ(layer.has_mask(), m.pattern.has_value()) << m.name;
    EXPECT_EQ(layer.sparse_capacity(), m.nnz) << m.name;
    EXPECT_EQ(layer.forward_mode(), RosaForward::spmm);
    EXPECT_EQ(layer.config().lora.dropout, Dropout(0.05));
    EXPECT_FALSE(layer.training());

    // W0 + S + s B A, densely in double, from the reference's arrays.
    const MatrixView<const float, Cpu> w0 = base.model.at(m.name).weight;
    Matrix<double, Cpu> w(m.out, m.in), delta_ref(m.out, m.in);
    const double s = m.alpha / double(m.r);
    for (index_t o = 0; o < m.out; ++o)
      for (index_t k = 0; k < m.in; ++k) {
        double ba = 0;
        for (index_t q = 0; q < m.r; ++q)
          ba += double(m.b[std::size_t(o * m.r + q)]) * double(m.a[std::size_t(q * m.in + k)]);
        delta_ref.view()(o, k) = s * ba;
      }
    if (m.pattern)
      for (index_t o = 0; o < m.out; ++o)
        for (auto e = m.pattern->row_offsets[o]; e < m.pattern->row_offsets[o + 1]; ++e)
          delta_ref.view()(o, m.pattern->col_indices[e]) += double(m.values[std::size_t(e)]);
    for (index_t o = 0; o < m.out; ++o)
      for (index_t k = 0; k < m.in; ++k) w.view()(o, k) = double(w0(o, k)) + delta_ref.view()(o, k);

    Matrix<float, Cpu> delta(m.out, m.in);
    layer.delta_weight(ctx, delta.view());
    EXPECT_LT(relative_error(as_const(delta.view()), as_const(delta_ref.view())), 1e-6) << m.name;

    auto x = random_matrix<float>(4, m.in, 70 + std::uint32_t(i));
    Matrix<float, Cpu> y(4, m.out);
    layer.forward(ctx, x.view(), y.view());
    Matrix<double, Cpu> y_ref(4, m.out);
    const auto bias = base.model.at(m.name).bias;
    for (index_t n = 0; n < 4; ++n)
      for (index_t o = 0; o < m.out; ++o) {
        double acc = double(bias[o]);
        for (index_t k = 0; k < m.in; ++k) acc += double(x.view()(n, k)) * w.view()(o, k);
        y_ref.view()(n, o) = acc;
      }
    EXPECT_LT(relative_error(as_const(y.view()), as_const(y_ref.view())), 1e-5) << m.name;
  }

  // Saved again as bfloat16: the same tensors the reference holds (the transposed ones reset
  // to zeros, which the reference rebuilds), and the same layers once more.
  TempDir again;
  save_adapter(again.path(), set, ctx, {.dtype = SafetensorsDtype::BF16});
  const auto r1 = SafetensorsReader::open(dir / "adapter_model.safetensors");
  const auto r2 = SafetensorsReader::open(again / "adapter_model.safetensors");
  EXPECT_EQ(r1.tensors().size(), r2.tensors().size());
  for (const auto& t : r1.tensors()) {
    ASSERT_TRUE(r2.contains(t.name)) << t.name;
    EXPECT_EQ(r2.info(t.name).dtype, t.dtype) << t.name;
    EXPECT_EQ(r2.info(t.name).shape, t.shape) << t.name;
    if (t.name.find(".tr_") == std::string::npos && t.name.find("row_idx") == std::string::npos) {
      EXPECT_EQ(r2.read_bytes(t.name), r1.read_bytes(t.name)) << t.name;
    }
  }
  auto reloaded = load_adapter(again.path(), base.model, ctx);
  expect_same_parameters(set, reloaded);
  expect_same_layers(ctx, set, reloaded);
}

// ---- malformed files -----------------------------------------------------------------------

void expect_refused(const RefCheckpoint& ref, std::initializer_list<std::string> needles) {
  HostCtx ctx;
  TempDir dir;
  ref.write(dir.path());
  Base<float> base = ref_base(ref);
  expect_error([&] { load_adapter(dir.path(), base.model, ctx); }, ErrorKind::io, needles);
}

const std::string kQ0 = "model.layers.0.self_attn.q_proj";
const std::string kQ1 = "model.layers.1.self_attn.q_proj";

std::vector<std::int32_t> ints_of(const RefCheckpoint& ref, const std::string& name) {
  const Raw& t = ref.tensors.at(name);
  std::vector<std::int32_t> v;
  const std::size_t es = element_size(t.dtype);
  for (std::size_t i = 0; i < t.bytes.size() / es; ++i)
    v.push_back(es == 2 ? detail::load_little_endian<std::int16_t>(t.bytes.data() + 2 * i)
                        : detail::load_little_endian<std::int32_t>(t.bytes.data() + 4 * i));
  return v;
}

TEST(RosaFormat, RefusesMalformedSparseParts) {
  const std::string offs = key(kQ0, "rosa_spa.row_offs"), cols = key(kQ0, "rosa_spa.col_idx");
  const std::string rows = key(kQ0, "rosa_spa.row_idx"), values = key(kQ0, "rosa_spa.values");
  {  // offsets that decrease
    RefCheckpoint ref;
    auto o = ints_of(ref, offs);
    std::size_t row = 1;
    while (o[row] == 0) ++row;
    ASSERT_LT(row + 1, o.size() - 1);
    o[row + 1] = o[row] - 1;
    ref.tensors[offs] = i32(o);
    expect_refused(ref, {kQ0, "row_offsets decrease at row"});
  }
  {  // an offset far beyond nnz that falls back: refused before col_idx is indexed with it
    RefCheckpoint ref;
    auto o = ints_of(ref, offs);
    o[1] = 100000;
    ref.tensors[offs] = i32(o);
    expect_refused(ref, {kQ0, "row_offsets decrease at row 1", "(100000 > "});
  }
  {  // a mask-less layer whose offsets are not all zero
    RefCheckpoint ref;
    auto o = ints_of(ref, key(kQ1, "rosa_spa.row_offs"));
    o[2] = 3;
    ref.tensors[key(kQ1, "rosa_spa.row_offs")] = i32(o);
    expect_refused(ref, {kQ1, "not monotone"});
  }
  {  // offsets that do not start at 0
    RefCheckpoint ref;
    auto o = ints_of(ref, offs);
    o[0] = 1;
    ref.tensors[offs] = i32(o);
    expect_refused(ref, {kQ0, "row_offsets[0]"});
  }
  {  // nnz (the last offset) not the number of values
    RefCheckpoint ref;
    auto o = ints_of(ref, offs);
    o.back() -= 1;
    ref.tensors[offs] = i32(o);
    expect_refused(ref, {kQ0, "ends in 5 entries", "hold 6"});
  }
  {  // values of another length than int(d * out * in)
    RefCheckpoint ref;
    ref.tensors[values] = bf16(std::vector<float>(7, 0.5f), {7});
    expect_refused(ref, {kQ0, "values is [7], expected [6]"});
  }
  {  // col_idx of another length
    RefCheckpoint ref;
    auto c = ints_of(ref, cols);
    c.push_back(0);
    ref.tensors[cols] = i16(c);
    expect_refused(ref, {kQ0, "col_idx is [7], expected [6]"});
  }
  {  // a column out of range
    RefCheckpoint ref;
    auto c = ints_of(ref, cols);
    c.back() = 8;
    ref.tensors[cols] = i16(c);
    expect_refused(ref, {kQ0, "column index 8", "outside [0, 8)"});
  }
  {  // a negative column (int16 wrap-around)
    RefCheckpoint ref;
    auto c = ints_of(ref, cols);
    c.front() = -3;
    ref.tensors[cols] = i16(c);
    expect_refused(ref, {kQ0, "column index -3"});
  }
  {  // unsorted columns in a row
    RefCheckpoint ref;
    const auto& p = *ref.modules[0].pattern;
    auto c = ints_of(ref, cols);
    index_t row = 0;
    while (p.row_offsets[row + 1] - p.row_offsets[row] < 2) ++row;
    std::swap(c[p.row_offsets[row]], c[p.row_offsets[row] + 1]);
    ref.tensors[cols] = i16(c);
    expect_refused(ref, {kQ0, "not sorted and unique"});
  }
  {  // row_idx that is not a permutation
    RefCheckpoint ref;
    auto r = ints_of(ref, rows);
    r[1] = r[0];
    ref.tensors[rows] = i16(r);
    expect_refused(ref, {kQ0, "row_idx is not a permutation"});
  }
  {  // row_idx not by number of entries
    RefCheckpoint ref;
    auto r = ints_of(ref, rows);
    std::reverse(r.begin(), r.end());
    ref.tensors[rows] = i16(r);
    expect_refused(ref, {kQ0, "row_idx does not order the rows"});
  }
}

TEST(RosaFormat, RefusesWrongDtypesAndMissingTensors) {
  const std::string offs = key(kQ0, "rosa_spa.row_offs"), cols = key(kQ0, "rosa_spa.col_idx");
  {
    RefCheckpoint ref;
    ref.tensors[offs] = i16(ints_of(ref, offs));
    expect_refused(ref, {kQ0, "row_offs is I16, expected I32"});
  }
  {  // int32 columns without the extension's field
    RefCheckpoint ref;
    ref.tensors[cols] = i32(ints_of(ref, cols));
    expect_refused(ref, {kQ0, "col_idx is I32, expected I16", "peft_cpp_index_dtype"});
  }
  {  // the field, with int16 tensors
    RefCheckpoint ref;
    ref.config[kRosaIndexDtypeKey] = "int32";
    expect_refused(ref, {"row_idx is I16, expected I32"});
  }
  {
    RefCheckpoint ref;
    ref.config[kRosaIndexDtypeKey] = "int8";
    expect_refused(ref, {"peft_cpp_index_dtype must be"});
  }
  {  // integer values
    RefCheckpoint ref;
    ref.tensors[key(kQ0, "rosa_spa.values")] = i32(std::vector<std::int32_t>(6, 1));
    expect_refused(ref, {kQ0, "values is I32"});
  }
  {
    RefCheckpoint ref;
    ref.tensors.erase(cols);
    expect_refused(ref, {kQ0, "missing col_idx"});
  }
  {
    RefCheckpoint ref;
    ref.tensors.erase(key(kQ0, "rosa_spa.tr_perm"));
    expect_refused(ref, {kQ0, "tr_perm", "but not all"});
  }
  {
    RefCheckpoint ref;
    ref.tensors.erase(key(kQ0, "rosa_B.weight"));
    expect_refused(ref, {kQ0, "rosa_A but no rosa_B"});
  }
  {  // a sparse part where the config gives d = 0
    RefCheckpoint ref;
    ref.tensors[key("model.layers.0.self_attn.o_proj", "rosa_spa.values")] =
        bf16(std::vector<float>(1, 0.f), {1});
    expect_refused(ref, {"o_proj", "d = 0"});
  }
  {  // an embedding layer's factors
    RefCheckpoint ref;
    ref.tensors["base_model.model.model.embed_tokens.rosa_embedding_A"] =
        bf16(std::vector<float>(4, 0.f), {2, 2});
    expect_refused(ref, {"rosa_embedding_A", "not supported"});
  }
  {  // the rank from the config differs from the file's
    RefCheckpoint ref;
    ref.config["rank_pattern"] = json::object();
    expect_refused(ref, {"model.layers.0.self_attn.v_proj", "rank 4"});
  }
}

TEST(RosaFormat, RefusesUnsupportedConfigs) {
  const std::pair<const char*, json> cases[] = {
      {"r", 0},
      {"d", 1.5},
      {"impl", "dense"},
      {"bias", "all"},
      {"init_lora_weights", "loftq"},
      {"modules_to_save", json::array({"lm_head"})},
      {"grad_acc_mode", "max"},
      {"lora_dropout", 1.0},
      {"spa_store_transpose", "yes"},
  };
  for (const auto& [field, value] : cases) {
    RefCheckpoint ref;
    ref.config[field] = value;
    expect_refused(ref, {field});
  }
  RefCheckpoint ref;
  ref.config["density_pattern"]["o_proj"] = -1;
  expect_refused(ref, {"density_pattern['o_proj']"});
}

}  // namespace
}  // namespace peft::test
