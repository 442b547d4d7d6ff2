// DirectoryTransaction (what every save goes through): new and existing targets, the user's
// other entries carried over (links, not copies), leftovers of crashed saves removed (only
// ours, only of dead processes), the old directory put back after a crash between the two
// renames of file systems without RENAME_EXCHANGE, and every refusal.

#include <gtest/gtest.h>

#include <sys/stat.h>

#include "io/io_test_util.hpp"
#include "io/save_test_util.hpp"

namespace peft::test {
namespace {

using detail::DirectoryTransaction;

void commit_files(const fs::path& target, std::vector<std::pair<std::string, std::string>> files) {
  DirectoryTransaction t(target, "test");
  for (const auto& [name, text] : files) t.write(name, text);
  t.commit();
}

ino_t inode(const fs::path& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

TEST(DirectoryTransaction, CreatesAMissingTargetOnlyOnCommit) {
  TempDir root;
  const fs::path target = root / "a" / "b" / "adapter";
  {
    DirectoryTransaction t(target / "", "test");  // a trailing separator names the same target
    t.write("x.json", std::string_view("{}"));
    EXPECT_FALSE(fs::exists(target));
    EXPECT_EQ(read_text(t.staging() / "x.json"), "{}");
    t.commit();
  }
  EXPECT_EQ(entries(target), (std::vector<std::string>{"x.json"}));
  EXPECT_EQ(read_text(target / "x.json"), "{}");
  EXPECT_TRUE(transaction_leftovers(target).empty());
}

TEST(DirectoryTransaction, ReplacesItsFilesAndKeepsEverythingElse) {
  TempDir root;
  const fs::path target = root / "adapter";
  fs::create_directories(target / "tokenizer");
  write_text(target / "config.json", "old config");
  write_text(target / "README.md", "# my adapter");
  write_text(target / ".gitattributes", "*.safetensors lfs");
  write_text(target / "tokenizer" / "vocab.txt", "a b c");
  fs::permissions(target / "tokenizer", fs::perms(0700));
  fs::create_symlink("README.md", target / "latest");
  // Temporary files of crashed AtomicFile writes go (process gone); a live process's and a
  // user's look-alike stay.
  const std::string stale = detail::concat(".config.json.tmp-", dead_pid(), "-0");
  const std::string live = detail::concat(".weights.tmp-", ::getpid(), "-3");
  write_text(target / stale, "half");
  write_text(target / live, "in progress");
  write_text(target / ".notes.tmp-backup", "mine");
  fs::permissions(target, fs::perms(0750));
  const ino_t readme = inode(target / "README.md");

  commit_files(target, {{"config.json", "new config"}, {"weights.bin", "new weights"}});

  EXPECT_EQ(entries(target),
            (std::vector<std::string>{".gitattributes", ".notes.tmp-backup", live, "README.md",
                                      "config.json", "latest", "tokenizer", "weights.bin"}));
  EXPECT_EQ(read_text(target / "config.json"), "new config");
  EXPECT_EQ(read_text(target / "weights.bin"), "new weights");
  EXPECT_EQ(read_text(target / "README.md"), "# my adapter");
  EXPECT_EQ(inode(target / "README.md"), readme);  // linked, not copied
  EXPECT_EQ(read_text(target / ".gitattributes"), "*.safetensors lfs");
  EXPECT_EQ(read_text(target / "tokenizer" / "vocab.txt"), "a b c");
  EXPECT_EQ(fs::status(target / "tokenizer").permissions(), fs::perms(0700));
  EXPECT_EQ(fs::status(target).permissions(), fs::perms(0750));
  ASSERT_TRUE(fs::is_symlink(target / "latest"));
  EXPECT_EQ(fs::read_symlink(target / "latest"), "README.md");
  EXPECT_EQ(read_text(target / live), "in progress");
  EXPECT_TRUE(transaction_leftovers(target).empty());
}

TEST(DirectoryTransaction, WithoutCommitNothingChanges) {
  TempDir root;
  const fs::path target = root / "adapter";
  fs::create_directories(target);
  write_text(target / "config.json", "old");
  {
    DirectoryTransaction t(target, "test");
    t.write("config.json", std::string_view("new"));
    EXPECT_EQ(transaction_leftovers(target).size(), 1u);  // the new directory, until destroyed
  }
  EXPECT_EQ(entries(target), (std::vector<std::string>{"config.json"}));
  EXPECT_EQ(read_text(target / "config.json"), "old");
  EXPECT_TRUE(transaction_leftovers(target).empty());
}

TEST(DirectoryTransaction, RemovesLeftoversOfDeadProcessesAndNothingElse) {
  TempDir root;
  const fs::path target = root / "adapter";
  fs::create_directories(target);
  const long dead = dead_pid();
  const std::string gone_save = detail::concat(".adapter.peft-save-", dead, "-0");
  const std::string gone_old = detail::concat(".adapter.peft-old-", dead, "-4");
  const std::vector<std::string> kept = {
      detail::concat(".adapter.peft-save-", ::getpid(), "-99"),  // a save in progress
      ".adapter.peft-save-notes",                                // not our naming
      detail::concat(".adapter.peft-save-", dead, "-1x"),        // not our naming
      detail::concat(".other.peft-save-", dead, "-0"),           // another target's
      "adapter.peft-save-1-0",                                   // not hidden: not ours
  };
  for (const auto& name : kept) fs::create_directories(root / name / "inside");
  fs::create_directories(root / gone_save / "sub");
  write_text(root / gone_save / "sub" / "f", "x");
  fs::create_directories(root / gone_old);
  write_text(root / detail::concat(".adapter.peft-save-", dead, "-2"), "a file, not ours");
  std::vector<std::string> steps;
  {
    ScopedTransactionHooks hooks({.step = [&](std::string_view s) { steps.emplace_back(s); }});
    commit_files(target, {{"config.json", "{}"}});
  }
  for (const auto& name : kept) EXPECT_TRUE(fs::exists(root / name / "inside")) << name;
  EXPECT_FALSE(fs::exists(root / gone_save));
  EXPECT_FALSE(fs::exists(root / gone_old));
  EXPECT_TRUE(fs::exists(root / detail::concat(".adapter.peft-save-", dead, "-2")));
  EXPECT_EQ(std::count_if(steps.begin(), steps.end(),
                          [](const std::string& s) { return s.starts_with("removed leftover"); }),
            2);
  EXPECT_EQ(read_text(target / "config.json"), "{}");
}

TEST(DirectoryTransaction, WithoutExchangeTheResultIsTheSame) {
  TempDir root;
  const fs::path target = root / "adapter";
  fs::create_directories(target);
  write_text(target / "config.json", "old");
  write_text(target / "README.md", "keep");
  std::vector<std::string> steps;
  {
    ScopedTransactionHooks hooks(
        {.step = [&](std::string_view s) { steps.emplace_back(s); }, .without_exchange = true});
    commit_files(target, {{"config.json", "new"}});
  }
  EXPECT_NE(std::find(steps.begin(), steps.end(), "moved the old directory aside"), steps.end());
  EXPECT_EQ(std::find(steps.begin(), steps.end(), "exchanged"), steps.end());
  EXPECT_EQ(entries(target), (std::vector<std::string>{"README.md", "config.json"}));
  EXPECT_EQ(read_text(target / "config.json"), "new");
  EXPECT_EQ(read_text(target / "README.md"), "keep");
  EXPECT_TRUE(transaction_leftovers(target).empty());
}

TEST(DirectoryTransaction, PutsBackTheOldDirectoryOfACrashBetweenTwoRenames) {
  // What a crash between "moved the old directory aside" and "renamed into place" leaves: no
  // target, the old directory aside, the new one staged.
  TempDir root;
  const fs::path target = root / "adapter";
  const long dead = dead_pid();
  const fs::path aside = root / detail::concat(".adapter.peft-old-", dead, "-0");
  const fs::path staged = root / detail::concat(".adapter.peft-save-", dead, "-1");
  fs::create_directories(aside);
  fs::create_directories(staged);
  write_text(aside / "config.json", "old");
  write_text(aside / "README.md", "keep");
  write_text(staged / "config.json", "new, never committed");
  { DirectoryTransaction t(target, "test"); }  // a save that fails before its commit
  EXPECT_EQ(entries(target), (std::vector<std::string>{"README.md", "config.json"}));
  EXPECT_EQ(read_text(target / "config.json"), "old");
  EXPECT_TRUE(transaction_leftovers(target).empty());
  commit_files(target, {{"config.json", "newer"}});
  EXPECT_EQ(read_text(target / "config.json"), "newer");
  EXPECT_EQ(read_text(target / "README.md"), "keep");
}

TEST(DirectoryTransactionRefuses, SymlinksFilesAndEntriesItWouldDelete) {
  TempDir root;
  const fs::path real = root / "real";
  fs::create_directories(real);
  write_text(real / "config.json", "old");
  fs::create_directory_symlink("real", root / "link");
  expect_error(
      [&] {
        commit_files(root / "link", {{"config.json", "new"}});
      },
      ErrorKind::io, {"test: ", "link'", "is a symbolic link", "real'"});
  write_text(root / "file", "text");
  expect_error(
      [&] {
        commit_files(root / "file", {{"config.json", "new"}});
      },
      ErrorKind::io, {"file'", "exists and is not a directory"});
  expect_error(
      [&] {
        commit_files("/", {{"config.json", "new"}});
      },
      ErrorKind::io, {"'/'", "not a directory that can be replaced"});

  // A name the transaction writes is a directory of the user's: refused, not deleted.
  fs::create_directories(real / "weights.bin" / "mine");
  expect_error(
      [&] {
        commit_files(real, {{"config.json", "new"}, {"weights.bin", "new"}});
      },
      ErrorKind::io, {"weights.bin'", "is a directory, not a file"});
  // Entries that cannot be carried over: refused before anything changes.
  ASSERT_EQ(::mkfifo((real / "pipe").c_str(), 0600), 0);
  expect_error(
      [&] {
        commit_files(real, {{"config.json", "new"}});
      },
      ErrorKind::io, {"pipe'", "neither a file, a directory nor a symbolic link"});
  EXPECT_EQ(read_text(real / "config.json"), "old");
  EXPECT_TRUE(fs::exists(real / "weights.bin" / "mine"));
  EXPECT_TRUE(fs::is_symlink(root / "link"));
  EXPECT_TRUE(transaction_leftovers(real).empty());
  EXPECT_TRUE(transaction_leftovers(root / "link").empty());

  DirectoryTransaction t(root / "fresh", "test");
  expect_error([&] { t.write("a/b", std::string_view("x")); }, ErrorKind::invalid_argument,
               {"'a/b' is not a plain file name"});
  expect_error([&] { t.write("..", std::string_view("x")); }, ErrorKind::invalid_argument,
               {"'..' is not a plain file name"});
  t.write("a", std::string_view("x"));
  expect_error([&] { t.write("a", std::string_view("y")); }, ErrorKind::state,
               {"'a' is written twice"});
  t.commit();
  expect_error([&] { t.commit(); }, ErrorKind::state, {"already committed"});
}

TEST(DirectoryTransactionRefuses, TheWorkingDirectoryAndWhatHoldsIt) {
  TempDir root;
  fs::create_directories(root / "adapter" / "sub");
  for (const fs::path& cwd : {root / "adapter", root / "adapter" / "sub"}) {
    const ChildResult r = run_in_child([&](std::string& out) {
      fs::current_path(cwd);
      try {
        commit_files(cwd == root / "adapter" ? fs::path(".") : fs::path(".."), {{"a", "x"}});
      } catch (const Error& e) {
        out = e.what();
        return 0;
      }
      return 1;
    });
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("is (or holds) the current working directory"), std::string::npos)
        << r.out;
  }
  EXPECT_EQ(entries(root / "adapter"), (std::vector<std::string>{"sub"}));
  EXPECT_TRUE(transaction_leftovers(root / "adapter").empty());
}

TEST(DirectoryTransactionRefuses, AParentThatIsNotWritable) {
  // The target is writable, its parent is not: as another user when running as root (root
  // writes anywhere), else with the parent made read-only.
  TempDir root;
  const fs::path target = root / "adapter";
  fs::create_directories(target);
  write_text(target / "config.json", "old");
  const bool as_root = ::geteuid() == 0;
  constexpr uid_t kNobody = 65534;
  if (as_root) {
    fs::permissions(root.path(), fs::perms(0755));  // whatever the umask
    ASSERT_EQ(::chown(target.c_str(), kNobody, kNobody), 0);
  } else {
    fs::permissions(root.path(), fs::perms(0555));
  }
  const ChildResult r = run_in_child([&](std::string& out) {
    if (as_root && (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0)) return 2;
    try {
      commit_files(target, {{"config.json", "new"}});
    } catch (const Error& e) {
      out = e.what();
      return e.kind() == ErrorKind::io ? 0 : 3;
    }
    return 1;
  });
  fs::permissions(root.path(), fs::perms(0755));
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* needle :
       {"test: ", "cannot create the new directory", "Permission denied", "must be writable"})
    EXPECT_NE(r.out.find(needle), std::string::npos) << r.out << " lacks " << needle;
  EXPECT_EQ(read_text(target / "config.json"), "old");
  EXPECT_TRUE(transaction_leftovers(target).empty());
}

}  // namespace
}  // namespace peft::test
