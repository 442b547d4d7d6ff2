#pragma once
// Helpers of the save-transaction tests: child processes (for crashes, other users and working
// directories), a pid that no process has, and the entries a save leaves beside its target.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <peft/io/directory_transaction.hpp>

namespace peft::test {

/// How a child process ended, and what it wrote to `out`.
struct ChildResult {
  bool exited = false;
  int code = -1;    // exit status, when exited
  int signal = 0;   // the signal that ended it, otherwise
  std::string out;  // what the child's function put in its string
};

/// Runs f(std::string& out) -> int in a child process; its return value is the exit status
/// (an escaping exception: 100, its what() appended to out). The child never returns to the
/// test framework (_exit).
template <class F>
ChildResult run_in_child(F&& f) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  const pid_t pid = ::fork();
  if (pid < 0) return {};
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    int code = 100;
    try {
      code = f(out);
    } catch (const std::exception& e) {
      out += e.what();
    }
    for (std::size_t done = 0; done < out.size();) {
      const ::ssize_t n = ::write(fds[1], out.data() + done, out.size() - done);
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  ChildResult result;
  char buffer[4096];
  for (::ssize_t n; (n = ::read(fds[0], buffer, sizeof buffer)) > 0;)
    result.out.append(buffer, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.exited = WIFEXITED(status);
  result.code = result.exited ? WEXITSTATUS(status) : -1;
  result.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  return result;
}

/// The pid of a process that has ended (and been reaped).
inline long dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return static_cast<long>(pid);
}

/// The names in `dir`, sorted.
inline std::vector<std::string> entries(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

/// Entries beside `target` named like a transaction's directories (.<name>.peft-...).
inline std::vector<std::string> transaction_leftovers(const std::filesystem::path& target) {
  std::vector<std::string> names;
  const std::string prefix = "." + target.filename().string() + ".peft-";
  for (const auto& name : entries(target.parent_path()))
    if (name.starts_with(prefix)) names.push_back(name);
  return names;
}

/// Sets DirectoryTransaction's test hooks for the scope.
class ScopedTransactionHooks {
 public:
  explicit ScopedTransactionHooks(detail::DirectoryTransactionHooks hooks) {
    detail::directory_transaction_hooks() = std::move(hooks);
  }
  ScopedTransactionHooks(const ScopedTransactionHooks&) = delete;
  ScopedTransactionHooks& operator=(const ScopedTransactionHooks&) = delete;
  ~ScopedTransactionHooks() { detail::directory_transaction_hooks() = {}; }
};

}  // namespace peft::test
