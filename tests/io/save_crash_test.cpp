// Crash consistency of save_adapter: a child process saving a new adapter over an old one is
// killed (SIGKILL) after every step of the save, with and without RENAME_EXCHANGE, and at
// random moments; each time the directory must load as exactly the old or exactly the new
// adapter (every tensor and scaling compared), keep the user's README, and the next save must
// remove what the crash left. Every save format goes through the same transaction.

#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <thread>

#include "io/io_test_util.hpp"
#include "io/save_test_util.hpp"

namespace peft::test {
namespace {

using FLora = Lora<float, Cpu>;

const std::vector<std::string> kModules = {
    "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"};
constexpr std::string_view kReadme = "# my adapter\n";

/// Frozen layers, and two LoRA adapters over them that differ in every tensor and scaling.
struct Versions {
  HostCtx ctx;
  std::vector<Matrix<float, Cpu>> weights;
  BaseModel<float, Cpu> model;
  std::vector<AdapterSet<float, Cpu>> sets;  // [0]: the old adapter, [1]: the new one

  Versions() {
    for (std::size_t i = 0; i < kModules.size(); ++i)
      weights.push_back(random_matrix<float>(5 + index_t(i % 3), 48, 1 + std::uint32_t(i)));
    for (std::size_t i = 0; i < kModules.size(); ++i) model[kModules[i]] = {weights[i].view()};
    sets.push_back(make(false, 1));
    sets.push_back(make(true, 2));
  }

  AdapterSet<float, Cpu> make(bool rslora, std::uint64_t seed) {
    const index_t ranks[] = {4, 4, 2, 6};
    AdapterSet<float, Cpu> set;
    for (std::size_t i = 0; i < kModules.size(); ++i)
      set.add_lora(
          ctx, kModules[i], model.at(kModules[i]),
          {.r = ranks[i], .alpha = 8, .use_rslora = rslora, .init = LoraInit::none, .seed = seed});
    return set;
  }

  /// The version `dir` loads as (0 or 1); -1 (and a failure) when it loads as neither.
  int loaded_version(const fs::path& dir) {
    try {
      auto loaded = load_adapter(dir, model, ctx);
      for (int v = 0; v < 2; ++v)
        if (same(loaded, sets[std::size_t(v)])) return v;
      ADD_FAILURE() << dir << " loads as neither the old nor the new adapter";
    } catch (const Error& e) {
      ADD_FAILURE() << dir << " does not load: " << e.what();
    }
    return -1;
  }

  static bool same(AdapterSet<float, Cpu>& a, AdapterSet<float, Cpu>& b) {
    if (a.modules() != b.modules()) return false;
    auto pa = a.parameters(), pb = b.parameters();
    if (pa.size() != pb.size()) return false;
    for (std::size_t i = 0; i < pa.size(); ++i)
      if (pa[i].name != pb[i].name || !bitwise_equal(as_const(pa[i].value), as_const(pb[i].value)))
        return false;
    for (const auto& m : kModules)
      if (a.get<FLora>(m).scaling() != b.get<FLora>(m).scaling()) return false;
    return true;
  }
};

enum class State { old_adapter, new_adapter, missing };

/// What the directory holds after a crash right after steps[k].
State state_after(const std::vector<std::string>& steps, std::size_t k) {
  State state = State::old_adapter;
  for (std::size_t i = 0; i <= k; ++i) {
    if (steps[i] == "moved the old directory aside") state = State::missing;
    if (steps[i] == "exchanged" || steps[i] == "renamed into place") state = State::new_adapter;
  }
  return state;
}

void expect_state(Versions& v, const fs::path& dir, State state) {
  if (state == State::missing) {
    EXPECT_FALSE(fs::exists(dir));
    return;
  }
  EXPECT_EQ(v.loaded_version(dir), state == State::old_adapter ? 0 : 1);
  EXPECT_EQ(read_text(dir / "README.md"), kReadme);
}

/// Saves version `version` over `dir` in a child process killed right after the save's step
/// number `kill_at` (1-based; 0: never).
ChildResult save_in_child(Versions& v, const fs::path& dir, int version, std::size_t kill_at,
                          bool without_exchange) {
  return run_in_child([&](std::string&) {
    std::size_t step = 0;
    detail::directory_transaction_hooks() = {.step =
                                                 [&](std::string_view) {
                                                   if (++step == kill_at)
                                                     ::kill(::getpid(), SIGKILL);
                                                 },
                                             .without_exchange = without_exchange};
    save_adapter(dir, v.sets[std::size_t(version)], v.ctx);
    return 0;
  });
}

void kill_after_every_step(bool without_exchange) {
  Versions v;
  // The steps of a save of the new adapter over the old one, recorded on a copy.
  std::vector<std::string> steps;
  {
    TempDir scratch;
    save_adapter(scratch / "adapter", v.sets[0], v.ctx);
    write_text(scratch / "adapter" / "README.md", kReadme);
    ScopedTransactionHooks hooks({.step = [&](std::string_view s) { steps.emplace_back(s); },
                                  .without_exchange = without_exchange});
    save_adapter(scratch / "adapter", v.sets[1], v.ctx);
  }
  ASSERT_GT(steps.size(), 10u);
  const auto swap = std::find(steps.begin(), steps.end(),
                              without_exchange ? "moved the old directory aside" : "exchanged");
  ASSERT_NE(swap, steps.end()) << "the save never swapped the directories";

  TempDir root;
  const fs::path dir = root / "adapter";
  save_adapter(dir, v.sets[0], v.ctx);
  write_text(dir / "README.md", kReadme);
  int left_something = 0;
  for (std::size_t k = 0; k < steps.size(); ++k) {
    SCOPED_TRACE(detail::concat("killed after step ", k + 1, " of ", steps.size(), ": ", steps[k]));
    const State state = state_after(steps, k);
    const ChildResult first = save_in_child(v, dir, 1, k + 1, without_exchange);
    ASSERT_EQ(first.signal, SIGKILL) << first.out;
    expect_state(v, dir, state);
    if (!transaction_leftovers(dir).empty()) ++left_something;

    // The next save killed at its first step (removing those leftovers, or putting back the
    // old directory) changes nothing, but for putting back the missing directory.
    const ChildResult second = save_in_child(v, dir, 0, 1, without_exchange);
    ASSERT_EQ(second.signal, SIGKILL) << second.out;
    expect_state(v, dir, state == State::missing ? State::old_adapter : state);

    // A save that completes removes every leftover and keeps the README.
    ScopedTransactionHooks hooks({.step = {}, .without_exchange = without_exchange});
    save_adapter(dir, v.sets[0], v.ctx);
    EXPECT_TRUE(transaction_leftovers(dir).empty());
    EXPECT_EQ(entries(dir), (std::vector<std::string>{"README.md", "adapter_config.json",
                                                      "adapter_model.safetensors"}));
    expect_state(v, dir, State::old_adapter);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_GT(left_something, 2);
}

TEST(SaveCrash, KilledAfterEveryStepLoadsTheOldOrTheNewAdapter) {
  kill_after_every_step(false);
}

TEST(SaveCrash, KilledAfterEveryStepWithoutRenameExchange) {
  kill_after_every_step(true);
}

TEST(SaveCrash, KilledAtRandomMomentsLoadsTheOldOrTheNewAdapter) {
  // A child saves the two adapters in turn until it is killed at a random moment.
  Versions v;
  TempDir root;
  const fs::path dir = root / "adapter";
  save_adapter(dir, v.sets[0], v.ctx);
  write_text(dir / "README.md", kReadme);
  std::mt19937 gen(3);
  int versions_seen[2] = {0, 0};
  for (int round = 0; round < 12; ++round) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      try {
        for (int i = 1;; ++i) save_adapter(dir, v.sets[std::size_t(i % 2)], v.ctx);
      } catch (...) {
        ::_exit(1);
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(gen() % 40000));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    const int version = v.loaded_version(dir);
    ASSERT_GE(version, 0) << "round " << round;
    ++versions_seen[version];
    EXPECT_EQ(read_text(dir / "README.md"), kReadme);
  }
  EXPECT_EQ(versions_seen[0] + versions_seen[1], 12);
  save_adapter(dir, v.sets[1], v.ctx);
  EXPECT_TRUE(transaction_leftovers(dir).empty());
  EXPECT_EQ(entries(dir), (std::vector<std::string>{"README.md", "adapter_config.json",
                                                    "adapter_model.safetensors"}));
  EXPECT_EQ(v.loaded_version(dir), 1);
}

TEST(SaveCrash, EveryFormatSavesThroughTheTransaction) {
  // Each save path keeps the user's files and removes a crashed save's leftovers, which only
  // the transaction does.
  Versions v;
  HostCtx& ctx = v.ctx;
  auto each_module = [&](auto&& add) {
    AdapterSet<float, Cpu> set;
    for (const auto& m : kModules) add(set, m, v.model.at(m));
    return set;
  };
  auto rosa = each_module([&](auto& set, const std::string& m, const auto& base) {
    set.add_rosa(ctx, m, base, {.lora = {.r = 2}, .density = 0.2});
  });
  auto nola = each_module([&](auto& set, const std::string& m, const auto& base) {
    set.template add<Nola>(ctx, m, base, NolaConfig{.r = 2, .num_basis_a = 4, .num_basis_b = 4});
  });
  auto lora_xs = each_module([&](auto& set, const std::string& m, const auto& base) {
    set.template add<LoraXs>(ctx, m, base, LoraXsConfig{.r = 2});
  });
  const std::vector<std::pair<std::string, std::function<void(const fs::path&)>>> saves = {
      {"LORA", [&](const fs::path& d) { save_adapter(d, v.sets[0], ctx); }},
      {"ROSA", [&](const fs::path& d) { save_adapter(d, rosa, ctx); }},
      {"NOLA", [&](const fs::path& d) { save_adapter(d, nola, ctx); }},
      {"LORA_XS", [&](const fs::path& d) { save_adapter(d, lora_xs, ctx); }},
      {"export_as_lora", [&](const fs::path& d) { export_as_lora(d, nola, ctx); }},
  };
  for (const auto& [name, save] : saves) {
    SCOPED_TRACE(name);
    TempDir root;
    const fs::path dir = root / "adapter";
    fs::create_directories(dir);
    write_text(dir / "README.md", kReadme);
    const fs::path leftover = root / detail::concat(".adapter.peft-save-", dead_pid(), "-0");
    fs::create_directories(leftover);
    write_text(leftover / "adapter_config.json", "{}");
    std::vector<std::string> steps;
    {
      ScopedTransactionHooks hooks({.step = [&](std::string_view s) { steps.emplace_back(s); }});
      save(dir);
    }
    EXPECT_NE(std::find(steps.begin(), steps.end(), "carried README.md"), steps.end());
    EXPECT_EQ(read_text(dir / "README.md"), kReadme);
    EXPECT_TRUE(transaction_leftovers(dir).empty());
    EXPECT_EQ(entries(dir), (std::vector<std::string>{"README.md", "adapter_config.json",
                                                      "adapter_model.safetensors"}));
    EXPECT_NO_THROW(load_adapter(dir, v.model, ctx));
  }
}

}  // namespace
}  // namespace peft::test
