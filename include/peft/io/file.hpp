#pragma once
// The file system side of checkpoints: read-only memory maps, bounded whole-file reads and
// atomic writes (temporary file in the target's directory, fsync, rename, fsync of the
// directory), so that an interrupted save never leaves a half-written file under the final name.

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <system_error>
#include <utility>

#include "../core/error.hpp"
#include "input_file.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define PEFT_IO_POSIX 1
#else
#define PEFT_IO_POSIX 0
#endif

namespace peft::detail {

inline std::string errno_message(int error) {
  return std::generic_category().message(error);
}

/// `path` in quotes, for messages.
inline std::string quoted(const std::filesystem::path& path) {
  return concat("'", path.string(), "'");
}

/// A whole file mapped read-only. Move-only; unmaps on destruction. The bytes may change (or
/// the process get SIGBUS) if another process truncates the file while it is mapped: map only
/// files nobody writes to.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path) {
#if PEFT_IO_POSIX
    const InputFile file(path);  // refuses FIFOs, devices and directories without blocking
    size_ = static_cast<std::size_t>(file.size());
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, file.fd(), 0);
      const int error = errno;
      PEFT_CHECK(p != MAP_FAILED, ErrorKind::io, quoted(path), ": cannot map ", size_,
                 " bytes: ", errno_message(error));
      data_ = static_cast<const std::byte*>(p);
    }
#else
    throw Error(ErrorKind::io, concat(quoted(path), ": memory maps need a POSIX system"));
#endif
  }
  MappedFile(MappedFile&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  MappedFile& operator=(MappedFile&& o) noexcept {
    if (this != &o) {
      unmap();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    unmap();
  }

  std::span<const std::byte> bytes() const noexcept {
    return {data_, size_};
  }

 private:
  void unmap() noexcept {
#if PEFT_IO_POSIX
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
#endif
    data_ = nullptr;
    size_ = 0;
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

/// The whole file as a string; refuses files larger than max_bytes and anything but a regular
/// file (see InputFile).
inline std::string read_file_text(const std::filesystem::path& path, std::uint64_t max_bytes) {
  const InputFile file(path);
  PEFT_CHECK(file.size() <= max_bytes, ErrorKind::io, quoted(path), ": ", file.size(),
             " bytes, more than the limit of ", max_bytes);
  std::string text(static_cast<std::size_t>(file.size()), '\0');
  const std::size_t n = file.read_at(0, text.size(), reinterpret_cast<std::byte*>(text.data()));
  PEFT_CHECK(n == text.size(), ErrorKind::io, quoted(path), ": read ", n, " of ", text.size(),
             " bytes (the file shrank while read?)");
  return text;
}

/// fsync of a directory, so that a rename inside it is durable. Best effort where the file
/// system does not support it.
inline void sync_directory(const std::filesystem::path& dir) {
#if PEFT_IO_POSIX
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  PEFT_CHECK(rc == 0 || error == EINVAL || error == ENOTSUP, ErrorKind::io, quoted(dir),
             ": fsync of the directory failed: ", errno_message(error));
#else
  (void)dir;
#endif
}

/// Writes `target` atomically: the bytes go to a new temporary file beside it; finish() flushes
/// them to the disk (fsync), commit() renames the file over the target. Until commit() the
/// target is untouched; a writer destroyed before commit() removes its temporary file.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target) : target_(std::move(target)) {
    static std::atomic<unsigned> counter{0};
    const std::filesystem::path dir = target_.parent_path();
    for (int attempt = 0;; ++attempt) {
#if PEFT_IO_POSIX
      const long pid = static_cast<long>(::getpid());
#else
      const long pid = 0;
#endif
      temp_ = dir / concat(".", target_.filename().string(), ".tmp-", pid, "-", counter++);
#if PEFT_IO_POSIX
      do {
        fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      } while (fd_ < 0 && errno == EINTR);
      if (fd_ >= 0) break;
      const int error = errno;
      PEFT_CHECK(error == EEXIST && attempt < 100, ErrorKind::io, quoted(target_),
                 ": cannot create the temporary file ", quoted(temp_), ": ", errno_message(error));
#else
      if (std::filesystem::exists(temp_) && attempt < 100) continue;
      out_.open(temp_, std::ios::binary | std::ios::trunc);
      PEFT_CHECK(out_.is_open(), ErrorKind::io, quoted(target_),
                 ": cannot create the temporary file ", quoted(temp_));
      break;
#endif
    }
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    close_quietly();
    if (!committed_) {
      std::error_code ignored;
      std::filesystem::remove(temp_, ignored);
    }
  }

  const std::filesystem::path& temp_path() const noexcept {
    return temp_;
  }
  const std::filesystem::path& target() const noexcept {
    return target_;
  }

  void write(std::span<const std::byte> bytes) {
    PEFT_CHECK(!finished_, ErrorKind::state, "AtomicFile::write: ", quoted(target_),
               " is already finished");
#if PEFT_IO_POSIX
    const std::byte* p = bytes.data();
    std::size_t left = bytes.size();
    while (left > 0) {
      const ::ssize_t n = ::write(fd_, p, left);
      if (n < 0 && errno == EINTR) continue;
      PEFT_CHECK(n > 0, ErrorKind::io, quoted(temp_),
                 ": write failed: ", n < 0 ? errno_message(errno) : std::string("no progress"));
      p += n;
      left -= static_cast<std::size_t>(n);
    }
#else
    out_.write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    PEFT_CHECK(out_.good(), ErrorKind::io, quoted(temp_), ": write failed");
#endif
  }
  void write(std::string_view text) {
    write(std::as_bytes(std::span(text.data(), text.size())));
  }

  /// Flushes the data to the disk and closes the temporary file.
  void finish() {
    if (finished_) return;
#if PEFT_IO_POSIX
    PEFT_CHECK(::fsync(fd_) == 0, ErrorKind::io, quoted(temp_),
               ": fsync failed: ", errno_message(errno));
    const int fd = std::exchange(fd_, -1);
    PEFT_CHECK(::close(fd) == 0, ErrorKind::io, quoted(temp_),
               ": close failed: ", errno_message(errno));
#else
    out_.close();
    PEFT_CHECK(!out_.fail(), ErrorKind::io, quoted(temp_), ": close failed");
#endif
    finished_ = true;
  }

  /// Renames the finished temporary file over the target (atomic on POSIX file systems).
  /// Call sync_directory on the target's directory afterwards to make the rename durable.
  void commit() {
    finish();
    std::error_code error;
    std::filesystem::rename(temp_, target_, error);
    PEFT_CHECK(!error, ErrorKind::io, quoted(target_), ": cannot rename ", quoted(temp_),
               " over it: ", error.message());
    committed_ = true;
  }

 private:
  void close_quietly() noexcept {
#if PEFT_IO_POSIX
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
#else
    if (out_.is_open()) out_.close();
#endif
  }

  std::filesystem::path target_;
  std::filesystem::path temp_;
#if PEFT_IO_POSIX
  int fd_ = -1;
#else
  std::ofstream out_;
#endif
  bool finished_ = false;
  bool committed_ = false;
};

}  // namespace peft::detail
