#pragma once
// InputFile: a file a checkpoint is read from, opened only once it is known to be a regular
// file. A FIFO named like a checkpoint file would block open() (and read()) forever, a device
// or socket may block or never end, and a directory opens fine but reports a size of 2^63 - 1
// bytes through a stream: each is refused by name, without blocking. Reads are positioned
// (pread), so several threads may read one file at once.

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "../core/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define PEFT_INPUT_FILE_POSIX 1
#else
#include <fstream>
#include <memory>
#include <mutex>
#define PEFT_INPUT_FILE_POSIX 0
#endif

namespace peft::detail {

#if PEFT_INPUT_FILE_POSIX
/// What a file of mode `mode` is, for "<path> is ..., not a regular file" messages; empty for
/// a regular file.
inline std::string non_regular_kind(mode_t mode) {
  if (S_ISREG(mode)) return {};
  if (S_ISDIR(mode)) return "a directory, not a file";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe), not a regular file";
  if (S_ISSOCK(mode)) return "a socket, not a regular file";
  if (S_ISCHR(mode)) return "a character device, not a regular file";
  if (S_ISBLK(mode)) return "a block device, not a regular file";
  return "not a regular file";
}
#endif

class InputFile {
 public:
  /// Opens `path` for reading; an io Error names the path and what it is when it is not a
  /// regular file (or cannot be opened).
  explicit InputFile(const std::filesystem::path& path) : path_(path) {
#if PEFT_INPUT_FILE_POSIX
    // stat first, so that a device is not even opened; then open without blocking (a FIFO
    // swapped in meanwhile opens at once) and check the descriptor itself.
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) refuse_unless_regular(st.st_mode);
    do {
      fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    } while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0) fail("cannot open: ", std::generic_category().message(errno));
    if (::fstat(fd_, &st) != 0) {
      const int error = errno;
      close_quietly();
      fail("cannot stat: ", std::generic_category().message(error));
    }
    if (!S_ISREG(st.st_mode)) close_quietly();
    refuse_unless_regular(st.st_mode);
    // O_NONBLOCK has no effect on a regular file: nothing to undo.
    size_ = static_cast<std::uint64_t>(st.st_size);
#else
    std::error_code error;
    const auto status = std::filesystem::status(path, error);
    if (error) fail("cannot open: ", error.message());
    if (std::filesystem::is_directory(status)) fail("is a directory, not a file");
    if (!std::filesystem::is_regular_file(status)) fail("is not a regular file");
    stream_ = std::make_unique<std::ifstream>(path, std::ios::binary);
    if (!stream_->is_open()) fail("cannot open for reading");
    size_ = std::filesystem::file_size(path, error);
    if (error) fail("cannot determine the size: ", error.message());
    mutex_ = std::make_unique<std::mutex>();
#endif
  }
  InputFile(InputFile&& o) noexcept
      : path_(std::move(o.path_)),
#if PEFT_INPUT_FILE_POSIX
        fd_(std::exchange(o.fd_, -1)),
#else
        stream_(std::move(o.stream_)),
        mutex_(std::move(o.mutex_)),
#endif
        size_(o.size_) {
  }
  InputFile& operator=(InputFile&&) = delete;
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() {
    close_quietly();
  }

  const std::filesystem::path& path() const noexcept {
    return path_;
  }
  /// The size when the file was opened.
  std::uint64_t size() const noexcept {
    return size_;
  }
#if PEFT_INPUT_FILE_POSIX
  int fd() const noexcept {
    return fd_;
  }
#endif

  /// Reads up to `size` bytes at `offset` into `out`; returns how many were read (fewer only
  /// at the end of the file). A read error is an io Error.
  std::size_t read_at(std::uint64_t offset, std::size_t size, std::byte* out) const {
    std::size_t done = 0;
#if PEFT_INPUT_FILE_POSIX
    while (done < size) {
      const ::ssize_t n =
          ::pread(fd_, out + done, size - done, static_cast<::off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail("read failed: ", std::generic_category().message(errno));
      if (n == 0) break;
      done += static_cast<std::size_t>(n);
    }
#else
    std::lock_guard<std::mutex> lock(*mutex_);
    stream_->clear();
    stream_->seekg(static_cast<std::streamoff>(offset));
    stream_->read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(size));
    done = static_cast<std::size_t>(stream_->gcount());
#endif
    return done;
  }

 private:
  template <class... What>
  [[noreturn]] void fail(const What&... what) const {
    throw Error(ErrorKind::io, concat("'", path_.string(), "': ", what...));
  }
#if PEFT_INPUT_FILE_POSIX
  void refuse_unless_regular(mode_t mode) const {
    const std::string kind = non_regular_kind(mode);
    if (!kind.empty()) fail("is ", kind);
  }
#endif
  void close_quietly() noexcept {
#if PEFT_INPUT_FILE_POSIX
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
#endif
  }

  std::filesystem::path path_;
#if PEFT_INPUT_FILE_POSIX
  int fd_ = -1;
#else
  std::unique_ptr<std::ifstream> stream_;
  std::unique_ptr<std::mutex> mutex_;
#endif
  std::uint64_t size_ = 0;
};

}  // namespace peft::detail
