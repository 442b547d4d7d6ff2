// Checkpoint files that are not what they claim to be. A FIFO, a socket, a device or a
// directory under the name of adapter_config.json or adapter_model.safetensors is refused by
// what it is, at once: a FIFO used to block the load forever, so every such load here runs on
// another thread with a deadline, and a regression fails the test instead of hanging CI. A
// config with NUL bytes after its JSON is refused.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <thread>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

using namespace std::chrono_literals;

/// Runs `load`, which must throw an io Error holding every needle, on another thread. If it
/// has not returned after 10 s the test fails, and `fifo` (if any) is opened for writing and
/// closed, which ends an open() or read() blocked on it.
void expect_refused_in_time(const std::function<void()>& load,
                            std::initializer_list<std::string> needles, const fs::path& fifo = {}) {
  auto outcome = std::make_shared<std::promise<std::string>>();
  std::future<std::string> done = outcome->get_future();
  std::thread worker([load, outcome] {
    try {
      load();
      outcome->set_value("accepted");
    } catch (const Error& e) {
      outcome->set_value(e.kind() == ErrorKind::io ? std::string(e.what())
                                                   : std::string("not an io error: ") + e.what());
    } catch (...) {
      outcome->set_value("an exception that is not peft::Error");
    }
  });
  if (done.wait_for(10s) == std::future_status::timeout) {
    ADD_FAILURE() << "the load has not returned after 10 s (blocked on " << fifo << "?)";
    for (int i = 0; i < 100 && !fifo.empty() && done.wait_for(100ms) != std::future_status::ready;
         ++i) {
      const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
    }
    if (done.wait_for(1s) != std::future_status::ready) {
      worker.detach();  // still blocked: leave it rather than hang
      return;
    }
  }
  worker.join();
  const std::string message = done.get();
  for (const std::string& needle : needles)
    EXPECT_NE(message.find(needle), std::string::npos)
        << "message \"" << message << "\" lacks \"" << needle << "\"";
}

void make_fifo(const fs::path& path) {
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0) << path << ": " << std::strerror(errno);
}

/// A listening Unix socket at `path`; the descriptor is closed by the caller.
int make_socket(const fs::path& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string name = path.string();
  EXPECT_LT(name.size(), sizeof(address.sun_path));
  std::memcpy(address.sun_path, name.c_str(), name.size() + 1);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0)
      << std::strerror(errno);
  return fd;
}

/// A saved LoRA adapter over one 5 x 9 layer, in `dir`.
struct SavedAdapter {
  Matrix<float, Cpu> weight = random_matrix<float>(5, 9, 3);
  BaseModel<float, Cpu> base;
  HostCtx ctx;

  explicit SavedAdapter(const fs::path& dir) {
    base["layer"] = weight.view();
    AdapterSet<float, Cpu> set;
    set.add_lora(ctx, "layer", base.at("layer"), {.r = 2, .alpha = 4, .init = LoraInit::none});
    save_adapter(dir, set, ctx);
  }
  void load(const fs::path& dir, const LoadOptions& options = {}) {
    (void)load_adapter(dir, base, ctx, options);
  }
};

const LoadOptions kStream{.access = SafetensorsAccess::stream};

TEST(CheckpointFileKinds, FifoConfigIsRefusedWithoutBlocking) {
  TempDir dir;
  SavedAdapter adapter(dir.path());
  const fs::path config = dir / kAdapterConfigName;
  fs::remove(config);
  make_fifo(config);
  expect_refused_in_time([&] { adapter.load(dir.path()); },
                         {config.string(), "is a FIFO (named pipe), not a regular file"}, config);
}

TEST(CheckpointFileKinds, FifoWeightsAreRefusedWithoutBlocking) {
  TempDir dir;
  SavedAdapter adapter(dir.path());
  const fs::path weights = dir / kAdapterWeightsName;
  fs::remove(weights);
  make_fifo(weights);
  // The default access maps the file; a stream reads it.
  expect_refused_in_time([&] { adapter.load(dir.path()); }, {weights.string(), "is a FIFO"},
                         weights);
  expect_refused_in_time([&] { adapter.load(dir.path(), kStream); }, {"is a FIFO"}, weights);
  for (auto access : {SafetensorsAccess::mmap, SafetensorsAccess::stream})
    expect_refused_in_time([&] { SafetensorsReader::open(weights, {.access = access}); },
                           {weights.string(), "is a FIFO"}, weights);
}

TEST(CheckpointFileKinds, DirectoriesSayWhatTheyAre) {
  TempDir dir;
  SavedAdapter adapter(dir.path());
  const fs::path weights = dir / kAdapterWeightsName;
  fs::remove(weights);
  fs::create_directory(weights);
  for (const LoadOptions& options : {LoadOptions{}, kStream})
    expect_refused_in_time([&] { adapter.load(dir.path(), options); },
                           {weights.string(), "is a directory, not a file"});
  // The config: its size used to be reported as 9223372036854775807 bytes.
  const fs::path config = dir / kAdapterConfigName;
  fs::remove(config);
  fs::create_directory(config);
  expect_refused_in_time([&] { adapter.load(dir.path()); },
                         {config.string(), "is a directory, not a file"});
  expect_refused_in_time([&] { (void)read_adapter_config(dir.path()); },
                         {"is a directory, not a file"});
}

TEST(CheckpointFileKinds, SocketsAndDevicesAreRefused) {
  TempDir dir;
  SavedAdapter adapter(dir.path());
  const fs::path config = dir / kAdapterConfigName;
  fs::remove(config);
  const int listener = make_socket(config);
  expect_refused_in_time([&] { adapter.load(dir.path()); }, {config.string(), "is a socket"});
  ::close(listener);
  fs::remove(config);
  // A link to a device that never ends (it used to read as an empty file).
  fs::create_symlink("/dev/zero", config);
  expect_refused_in_time([&] { adapter.load(dir.path()); },
                         {config.string(), "is a character device, not a regular file"});
  for (auto access : {SafetensorsAccess::mmap, SafetensorsAccess::stream})
    expect_refused_in_time([&] { SafetensorsReader::open("/dev/zero", {.access = access}); },
                           {"/dev/zero", "is a character device"});
}

TEST(CheckpointFileKinds, RegularFilesThroughLinksStillLoad) {
  TempDir dir, elsewhere;
  SavedAdapter adapter(elsewhere.path());
  fs::create_symlink(elsewhere / kAdapterConfigName, dir / kAdapterConfigName);
  fs::create_symlink(elsewhere / kAdapterWeightsName, dir / kAdapterWeightsName);
  EXPECT_NO_THROW(adapter.load(dir.path()));
  EXPECT_NO_THROW(adapter.load(dir.path(), kStream));
}

TEST(AdapterConfigText, NulBytesAreRefused) {
  using namespace std::string_literals;  // "\0..."s keeps the NUL bytes
  // nlohmann's parser stops at a NUL byte: the config used to load, whatever followed it.
  TempDir dir;
  SavedAdapter adapter(dir.path());
  const fs::path config = dir / kAdapterConfigName;
  const std::string text = read_text(config);
  write_text(config, text + "\0\0\0{\"r\": 64}"s);
  // The config's hash in the weights would catch this change; a PEFT checkpoint has none.
  const LoadOptions unchecked{.verify_config_hash = false};
  expect_error([&] { adapter.load(dir.path(), unchecked); }, ErrorKind::io,
               {config.string(), "NUL byte at offset " + std::to_string(text.size())});
  write_text(config, "{\"peft_type\": \"LORA\"}\0"s);
  expect_error([&] { (void)read_adapter_config(dir.path()); }, ErrorKind::io,
               {config.string(), "it holds a NUL byte at offset 21, which JSON does not allow"});
}

}  // namespace
}  // namespace peft::test
