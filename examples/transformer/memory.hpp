#pragma once
// Peak resident memory of this process (Linux): VmHWM of /proc/self/status, which writing "5"
// to /proc/self/clear_refs resets to the current resident size, so that each method's peak
// is measured on its own.

#include <fstream>
#include <string>

namespace tfm {

inline void reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}

// MiB; 0 when /proc is not there.
inline double peak_rss_mib() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmHWM:") {
      double kib = 0;
      status >> kib;
      return kib / 1024.0;
    }
    std::getline(status, key);
  }
  return 0;
}

}  // namespace tfm
