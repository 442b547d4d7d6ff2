# shellcheck shell=bash
# Shared by scripts/test, scripts/demo and scripts/bench (sourced, not run): installs what a
# fresh Debian machine lacks, then configures and builds peft in build/.
#
# Environment:
#   PEFT_BUILD_DIR    build directory (default: <repo>/build)
#   PEFT_BUILD_TYPE   CMAKE_BUILD_TYPE (default: Release)
#   PEFT_CMAKE_ARGS   extra arguments for the configure step (word-split)
#   PEFT_NO_INSTALL=1 never call apt-get; only report what is missing
#   CI=true           no prompts at all (sudo -n, quiet apt-get)

PEFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEFT_BUILD_DIR="${PEFT_BUILD_DIR:-$PEFT_ROOT/build}"
PEFT_BUILD_TYPE="${PEFT_BUILD_TYPE:-Release}"
export DEBIAN_FRONTEND=noninteractive

# What configuring and building everything (tests, benchmarks, examples) needs; fortunes is
# the text of the transformer example (its tiny run is a test).
PEFT_PACKAGES=(cmake make g++ libeigen3-dev libopenblas-openmp-dev nlohmann-json3-dev
               libgtest-dev libgmock-dev libbenchmark-dev fortunes)

peft_log() { printf '==> %s\n' "$*" >&2; }

peft_is_installed() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

# peft_ensure_packages PKG...: apt-get installs those of PKG that are not installed yet.
peft_ensure_packages() {
  if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
    peft_log "not a Debian system: install the equivalents of $* yourself"
    return 0
  fi
  local missing=() pkg
  for pkg in "$@"; do
    peft_is_installed "$pkg" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [[ "${PEFT_NO_INSTALL:-}" == 1 ]]; then
    peft_log "missing packages (PEFT_NO_INSTALL=1, not installing): ${missing[*]}"
    return 0
  fi

  local sudo=() quiet=()
  if [[ "${CI:-}" == true ]]; then
    quiet=(-qq)
  fi
  if ((EUID != 0)); then
    if ! command -v sudo >/dev/null; then
      peft_log "missing packages ${missing[*]}, and neither root nor sudo to install them"
      return 1
    fi
    sudo=(sudo)
    if [[ "${CI:-}" == true ]]; then
      sudo=(sudo -n)  # fail rather than wait for a password
    fi
  fi
  peft_log "installing: ${missing[*]}"
  if [[ -z "${PEFT_APT_UPDATED:-}" ]]; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${quiet[@]}" update
    export PEFT_APT_UPDATED=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${quiet[@]}" install -y --no-install-recommends "${missing[@]}"
}

peft_configure() {
  peft_log "configuring $PEFT_BUILD_DIR ($PEFT_BUILD_TYPE)"
  # shellcheck disable=SC2086  # PEFT_CMAKE_ARGS is a list of words
  cmake -S "$PEFT_ROOT" -B "$PEFT_BUILD_DIR" -DCMAKE_BUILD_TYPE="$PEFT_BUILD_TYPE" \
    ${PEFT_CMAKE_ARGS:-}
}

# peft_build [TARGET...]: builds the targets (all when none are given).
peft_build() {
  local targets=()
  if (($#)); then
    targets=(--target "$@")
  fi
  peft_log "building ${*:-all}"
  cmake --build "$PEFT_BUILD_DIR" -j"$(nproc)" "${targets[@]}"
}

# peft_prepare: what every script does before building.
peft_prepare() {
  peft_ensure_packages "${PEFT_PACKAGES[@]}"
  peft_configure
}
