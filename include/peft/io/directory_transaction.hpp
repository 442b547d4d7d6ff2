#pragma once
// DirectoryTransaction: replaces files of a directory as a whole, so that after a crash at any
// moment (kill -9, power loss) the directory holds exactly its old files or exactly its new ones.
//
//   1. Leftovers of crashed transactions on the same target (sibling directories named
//      .<name>.peft-save-<pid>-<n> or .<name>.peft-old-<pid>-<n> whose process is gone) are
//      removed; only these names are touched.
//   2. The new files are written into a fresh sibling directory, <parent>/.<name>.peft-save-
//      <pid>-<n>, and fsynced.
//   3. commit(): every other entry of the target (README.md, a tokenizer, sub-directories, ...)
//      is hard-linked beside them (copied where a link is refused), except temporary files of
//      crashed AtomicFile writes (.<file>.tmp-<pid>-<n>, process gone); the directory takes the
//      target's permissions and is fsynced.
//   4. One renameat2(RENAME_EXCHANGE) swaps the two directories (a plain rename when the target
//      does not exist yet); the parent is fsynced; the old files, now at the sibling path, are
//      removed.
//
// File systems without RENAME_EXCHANGE (renameat2 fails with EINVAL or ENOSYS: some network and
// FUSE file systems, kernels before 3.15, non-Linux systems) get two renames instead: the target
// to .<name>.peft-old-<pid>-<n>, then the new directory to the target. A crash between the two
// leaves no directory under the target's name, both versions whole beside it; the next
// transaction on the target renames the old one back before anything else (step 1).
//
// The parent directory must be writable (the sibling lives there); a target that is a symbolic
// link, not a directory, or the current working directory (or holds it) is refused. Entries put
// into the target by another process during a commit may be lost: one writer at a time.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "file.hpp"

#if PEFT_IO_POSIX
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#endif

namespace peft::detail {

/// Test-only instrumentation of DirectoryTransaction: `step` is called after each step (with
/// its name), so a crash-injection test can kill the process at step k for every k;
/// `without_exchange` takes the path of file systems without RENAME_EXCHANGE.
struct DirectoryTransactionHooks {
  std::function<void(std::string_view)> step;
  bool without_exchange = false;
};

inline DirectoryTransactionHooks& directory_transaction_hooks() {
  static DirectoryTransactionHooks hooks;
  return hooks;
}

inline void transaction_step(std::string_view step) {
  const auto& hooks = directory_transaction_hooks();
  if (hooks.step) hooks.step(step);
}

/// The pid of a name `<prefix><pid>-<n>` (decimal, nothing after), or nothing.
inline std::optional<long> pid_after_prefix(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix)) return std::nullopt;
  const std::string_view rest = name.substr(prefix.size());
  const auto dash = rest.find('-');
  if (dash == std::string_view::npos || dash == 0 || dash > 10 || dash + 1 == rest.size())
    return std::nullopt;
  const std::string_view counter = rest.substr(dash + 1);
  if (!std::all_of(counter.begin(), counter.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  long pid = 0;
  const auto [end, error] = std::from_chars(rest.data(), rest.data() + dash, pid);
  if (error != std::errc() || end != rest.data() + dash) return std::nullopt;
  return pid;
}

/// Whether the process `pid` may still run (then its files are left alone).
inline bool process_may_run(long pid) {
#if PEFT_IO_POSIX
  if (pid <= 0 || pid != static_cast<long>(static_cast<pid_t>(pid))) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
#else
  (void)pid;
  return false;
#endif
}

/// A temporary file of an AtomicFile write (.<file>.tmp-<pid>-<n>) whose process is gone.
inline bool is_stale_atomic_file_temp(std::string_view name) {
  const auto tmp = name.rfind(".tmp-");
  if (!name.starts_with('.') || tmp == std::string_view::npos || tmp < 2) return false;
  const auto pid = pid_after_prefix(name.substr(tmp), ".tmp-");
  return pid && !process_may_run(*pid);
}

/// fsync of a file written by someone else (a copy). Best effort where unsupported.
inline void sync_file(const std::filesystem::path& path) {
#if PEFT_IO_POSIX
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  PEFT_CHECK(fd >= 0, ErrorKind::io, quoted(path), ": cannot open: ", errno_message(errno));
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  PEFT_CHECK(rc == 0 || error == EINVAL || error == ENOTSUP, ErrorKind::io, quoted(path),
             ": fsync failed: ", errno_message(error));
#else
  (void)path;
#endif
}

/// Swaps two paths atomically (renameat2 with RENAME_EXCHANGE): 0, or the errno; ENOSYS where
/// the system has no such call.
inline int exchange_paths(const std::filesystem::path& a, const std::filesystem::path& b) {
#if PEFT_IO_POSIX && defined(__linux__)
#ifdef RENAME_EXCHANGE
  constexpr unsigned kExchange = RENAME_EXCHANGE;
#else
  constexpr unsigned kExchange = 1u << 1;  // linux/fs.h
#endif
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 28))
  const int rc = ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), kExchange);
#elif defined(SYS_renameat2)
  const int rc = static_cast<int>(
      ::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), kExchange));
#else
  (void)a, (void)b, (void)kExchange;
  return ENOSYS;
#endif
  return rc == 0 ? 0 : errno;
#else
  (void)a, (void)b;
  return ENOSYS;
#endif
}

/// Whether an exchange failed because the file system or kernel cannot exchange at all.
inline bool exchange_unsupported(int error) {
  return error == EINVAL || error == ENOSYS || error == ENOTSUP || error == EOPNOTSUPP;
}

class DirectoryTransaction {
 public:
  /// Starts replacing the directory `target` (created with its parents if missing). `what`
  /// opens error messages (e.g. "save_adapter").
  DirectoryTransaction(const std::filesystem::path& target, std::string what)
      : what_(std::move(what)), shown_(target) {
    namespace fs = std::filesystem;
    std::error_code error;
    target_ = fs::absolute(target, error).lexically_normal();
    fail_if(error, quoted(shown_), ": cannot make the path absolute: ", error.message());
    if (!target_.has_filename() && target_.has_relative_path()) target_ = target_.parent_path();
    fail_if(!target_.has_relative_path() || target_.filename() == "..", quoted(shown_),
            ": not a directory that can be replaced (a save replaces the directory as a whole)");
    parent_ = target_.parent_path();
    name_ = target_.filename().string();
    fs::create_directories(parent_, error);
    fail_if(error, "cannot create ", quoted(parent_), ": ", error.message());
    recover_and_clean();
    inspect_target();
    create_staging();
  }
  DirectoryTransaction(const DirectoryTransaction&) = delete;
  DirectoryTransaction& operator=(const DirectoryTransaction&) = delete;
  ~DirectoryTransaction() {
    if (!discard_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(discard_, ignored);
    }
  }

  /// The directory the new files go to (the target's sibling until commit()).
  const std::filesystem::path& staging() const noexcept { return staging_; }
  const std::filesystem::path& target() const noexcept { return target_; }

  /// Writes the new file `name`: fill(sink) calls sink(std::span<const std::byte>) with its
  /// bytes in order. The file is fsynced before write returns.
  template <class Fill>
  requires(!std::is_convertible_v<Fill, std::string_view>) void write(const std::string& name,
                                                                      Fill&& fill) {
    PEFT_CHECK(!committed_, ErrorKind::state, what_, ": ", quoted(shown_), " is already committed");
    PEFT_CHECK(!name.empty() && name != "." && name != ".." &&
                   name.find('/') == std::string::npos && name.find('\\') == std::string::npos,
               ErrorKind::invalid_argument, what_, ": '", name, "' is not a plain file name");
    PEFT_CHECK(std::find(written_.begin(), written_.end(), name) == written_.end(),
               ErrorKind::state, what_, ": '", name, "' is written twice");
    AtomicFile file(staging_ / name);
    fill([&](std::span<const std::byte> bytes) {
      file.write(bytes);
      transaction_step(concat("wrote part of ", name));
    });
    file.commit();
    written_.push_back(name);
    transaction_step(concat("wrote ", name));
  }
  void write(const std::string& name, std::string_view text) {
    write(name, [&](auto&& sink) { sink(std::as_bytes(std::span(text.data(), text.size()))); });
  }

  /// Puts the new files in place of the old ones, keeping the target's other entries.
  void commit() {
    namespace fs = std::filesystem;
    PEFT_CHECK(!committed_, ErrorKind::state, what_, ": ", quoted(shown_), " is already committed");
    if (target_exists_) {
      check_replaced_entries();
      carry_over(target_, staging_, true);
      copy_permissions(target_, staging_);
    }
    sync_directory(staging_);
    transaction_step("synced the new directory");
    if (!target_exists_) {
      rename_or_fail(staging_, target_);
      discard_.clear();
      transaction_step("renamed into place");
    } else if (const int error = directory_transaction_hooks().without_exchange
                                     ? EINVAL
                                     : exchange_paths(staging_, target_);
               error == 0) {
      transaction_step("exchanged");  // discard_ (the staging path) holds the old files now
    } else {
      fail_if(!exchange_unsupported(error), "cannot exchange ", quoted(staging_), " and ",
              quoted(shown_), ": ", errno_message(error));
      swap_by_two_renames();
    }
    committed_ = true;
    sync_directory(parent_);
    transaction_step("synced the parent");
    if (!discard_.empty()) remove_old(std::exchange(discard_, {}));
  }

 private:
  /// Throws an io error when `failed` (a bool or a std::error_code) is set.
  template <class Failed, class... Args>
  void fail_if(const Failed& failed, const Args&... args) const {
    if (static_cast<bool>(failed)) throw Error(ErrorKind::io, concat(what_, ": ", args...));
  }

  std::string sibling_prefix(std::string_view kind) const {
    return concat(".", name_, ".peft-", kind, "-");
  }

  std::filesystem::path new_sibling(std::string_view kind) const {
    static std::atomic<unsigned> counter{0};
#if PEFT_IO_POSIX
    const long pid = static_cast<long>(::getpid());
#else
    const long pid = 0;
#endif
    return parent_ / concat(sibling_prefix(kind), pid, "-", counter++);
  }

  /// Step 1: the old directory of a crash between the two renames is put back when the target
  /// is missing; other leftovers of dead processes are removed.
  void recover_and_clean() {
    namespace fs = std::filesystem;
    std::vector<fs::path> staged, moved_aside;
    std::error_code error;
    for (fs::directory_iterator it(parent_, error), end; !error && it != end; it.increment(error)) {
      const std::string entry = it->path().filename().string();
      std::error_code status_error;
      if (!it->is_directory(status_error) || it->is_symlink(status_error)) continue;
      for (auto* kind : {"save", "old"}) {
        const auto pid = pid_after_prefix(entry, sibling_prefix(kind));
        if (pid && !process_may_run(*pid))
          (kind == std::string_view("save") ? staged : moved_aside).push_back(it->path());
      }
    }
    if (!moved_aside.empty() && !fs::exists(fs::symlink_status(target_, error))) {
      // The newest is the one a crash left between the two renames; older ones are stale.
      auto newest = std::max_element(
          moved_aside.begin(), moved_aside.end(), [](const fs::path& a, const fs::path& b) {
            std::error_code ignored;
            return fs::last_write_time(a, ignored) < fs::last_write_time(b, ignored);
          });
      rename_or_fail(*newest, target_);
      sync_directory(parent_);
      moved_aside.erase(newest);
      transaction_step("restored the old directory");
    }
    for (const auto* list : {&staged, &moved_aside})
      for (const fs::path& leftover : *list) {
        fs::remove_all(leftover, error);
        transaction_step(concat("removed leftover ", leftover.filename().string()));
      }
  }

  void inspect_target() {
    namespace fs = std::filesystem;
    std::error_code error;
    const fs::file_status status = fs::symlink_status(target_, error);
    if (status.type() == fs::file_type::not_found) return;
    fail_if(error, "cannot inspect ", quoted(shown_), ": ", error.message());
    if (status.type() == fs::file_type::symlink) {
      const fs::path to = fs::read_symlink(target_, error);
      fail_if(true, quoted(shown_), " is a symbolic link (to ", quoted(to),
              "): a save replaces the directory as a whole; give the directory itself");
    }
    fail_if(status.type() != fs::file_type::directory, quoted(shown_),
            " exists and is not a directory");
    const fs::path cwd = fs::current_path(error);
    const fs::path real = fs::canonical(target_, error);
    if (!error) {
      const auto mismatch = std::mismatch(real.begin(), real.end(), cwd.begin(), cwd.end());
      fail_if(mismatch.first == real.end(), quoted(shown_),
              " is (or holds) the current working directory, which a save would remove; save "
              "from another working directory");
    }
    target_exists_ = true;
  }

  void create_staging() {
    namespace fs = std::filesystem;
    for (int attempt = 0;; ++attempt) {
      const fs::path path = new_sibling("save");
      std::error_code error;
      if (fs::create_directory(path, error)) {
        staging_ = discard_ = path;
        break;
      }
      fail_if(error || attempt >= 100, "cannot create the new directory ", quoted(path), ": ",
              error ? error.message() : "the name is taken",
              " (a save writes a new directory beside ", quoted(shown_),
              " and swaps it in, so the parent ", quoted(parent_), " must be writable)");
    }
    transaction_step("created the new directory");
  }

  /// Names the transaction writes must not replace a directory or other non-file of the user.
  void check_replaced_entries() const {
    namespace fs = std::filesystem;
    for (const std::string& name : written_) {
      std::error_code error;
      const auto type = fs::symlink_status(target_ / name, error).type();
      fail_if(type != fs::file_type::not_found && type != fs::file_type::regular &&
                  type != fs::file_type::symlink,
              quoted(target_ / name), " is a ",
              type == fs::file_type::directory ? "directory" : "special file",
              ", not a file: a save replaces only files");
    }
  }

  /// Links (or copies) the entries of `from` into `to`, recursively; at the top level, not the
  /// files the transaction wrote nor stale AtomicFile temporaries.
  void carry_over(const std::filesystem::path& from, const std::filesystem::path& to,
                  bool top) const {
    namespace fs = std::filesystem;
    std::error_code error;
    std::vector<fs::path> entries;
    for (fs::directory_iterator it(from, error), end; !error && it != end; it.increment(error))
      entries.push_back(it->path());
    fail_if(error, "cannot list ", quoted(from),
            " to carry its other files over: ", error.message());
    for (const fs::path& entry : entries) {
      const std::string name = entry.filename().string();
      if (top && (std::find(written_.begin(), written_.end(), name) != written_.end() ||
                  is_stale_atomic_file_temp(name)))
        continue;
      const fs::path dest = to / name;
      const auto type = fs::symlink_status(entry, error).type();
      fail_if(error, "cannot inspect ", quoted(entry), ": ", error.message());
      if (type == fs::file_type::regular) {
        fs::create_hard_link(entry, dest, error);
        if (error) {
          std::error_code copy_error;
          fs::copy_file(entry, dest, copy_error);
          fail_if(copy_error, "cannot link (", error.message(), ") nor copy ", quoted(entry),
                  " into the new directory: ", copy_error.message());
          sync_file(dest);
        }
      } else if (type == fs::file_type::symlink) {
        fs::copy_symlink(entry, dest, error);
        fail_if(error, "cannot copy the symbolic link ", quoted(entry), ": ", error.message());
      } else if (type == fs::file_type::directory) {
        fs::create_directory(dest, error);
        fail_if(error, "cannot create ", quoted(dest), ": ", error.message());
        carry_over(entry, dest, false);
        copy_permissions(entry, dest);  // after filling it: entry may be read-only
        sync_directory(dest);
      } else {
        fail_if(true, quoted(entry),
                " is neither a file, a directory nor a symbolic link: cannot carry it over into "
                "the new directory");
      }
      if (top) transaction_step(concat("carried ", name));
    }
  }

  /// The swap where RENAME_EXCHANGE is unsupported: the old directory aside, the new in place.
  void swap_by_two_renames() {
    namespace fs = std::filesystem;
    fs::path aside;
    for (int attempt = 0; aside.empty(); ++attempt) {
      aside = new_sibling("old");
      std::error_code error;
      if (fs::exists(fs::symlink_status(aside, error)) && attempt < 100) aside.clear();
    }
    rename_or_fail(target_, aside);
    transaction_step("moved the old directory aside");
    std::error_code error;
    fs::rename(staging_, target_, error);
    if (error) {
      std::error_code back;
      fs::rename(aside, target_, back);
      fail_if(
          true, "cannot rename ", quoted(staging_), " to ", quoted(shown_), ": ", error.message(),
          back
              ? concat("; the old directory is at ", quoted(aside), " (the next save puts it back)")
              : std::string());
    }
    discard_ = aside;
    transaction_step("renamed into place");
  }

  void copy_permissions(const std::filesystem::path& from, const std::filesystem::path& to) const {
    std::error_code error;
    const auto status = std::filesystem::status(from, error);
    if (!error) std::filesystem::permissions(to, status.permissions(), error);
    fail_if(error, "cannot give ", quoted(to), " the permissions of ", quoted(from), ": ",
            error.message());
  }

  void rename_or_fail(const std::filesystem::path& from, const std::filesystem::path& to) const {
    std::error_code error;
    std::filesystem::rename(from, to, error);
    fail_if(error, "cannot rename ", quoted(from), " to ", quoted(to), ": ", error.message());
  }

  /// Removes the old files (best effort: what remains is a leftover the next save removes).
  static void remove_old(const std::filesystem::path& old) {
    namespace fs = std::filesystem;
    std::error_code error;
    fs::permissions(old, fs::perms::owner_all, fs::perm_options::add, error);
    std::vector<fs::path> entries;
    for (fs::directory_iterator it(old, error), end; !error && it != end; it.increment(error))
      entries.push_back(it->path());
    for (const fs::path& entry : entries) {
      fs::remove_all(entry, error);
      transaction_step(concat("removed old ", entry.filename().string()));
    }
    fs::remove_all(old, error);
    transaction_step("removed the old directory");
  }

  std::string what_;
  std::filesystem::path shown_;   // as given, for messages
  std::filesystem::path target_;  // absolute, normalised
  std::filesystem::path parent_;
  std::string name_;
  std::filesystem::path staging_;
  std::filesystem::path discard_;  // removed by the destructor: the staging directory, or the
                                   // old files once swapped out
  std::vector<std::string> written_;
  bool target_exists_ = false;
  bool committed_ = false;
};

}  // namespace peft::detail
