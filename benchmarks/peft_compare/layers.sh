#!/usr/bin/env bash
# One LoRA layer, peft-cpp (bench_lora) against PyTorch + Hugging Face PEFT, at bench_lora's
# shapes, forward and forward+backward, alternating the two in the same run (not part of CI).
# Writes benchmarks/results/peft_compare_cpu.json (see layers.py for what is timed and how).
#
# Environment: PEFT_COMPARE_VENV  the virtual environment (default benchmarks/peft_compare/.venv;
#                                 made, with CPU PyTorch, PEFT and safetensors, when missing)
#              PEFT_BUILD_DIR     where bench_lora is built (default build/)
# Arguments go to layers.py, e.g. --rounds 7 --min-time 1 --filter '^512/'.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../scripts/lib/build.sh
source "$here/../../scripts/lib/build.sh"
# shellcheck source=venv.sh
source "$here/venv.sh"

venv="${PEFT_COMPARE_VENV:-$here/.venv}"
peft_prepare
peft_compare_venv "$venv"
peft_build bench_lora

# Both sides: 2 threads that sleep when idle (busy-waiting OpenMP threads on a shared 2-core
# machine cost peft-cpp 10x; PyTorch's OpenMP gets the same setting).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export OMP_WAIT_POLICY=passive
mkdir -p "$PEFT_ROOT/benchmarks/results"
peft_log "bench_lora and PyTorch + PEFT, alternating"
"$venv/bin/python" "$here/layers.py" "$PEFT_BUILD_DIR/benchmarks/bench_lora" \
  "$PEFT_ROOT/benchmarks/results/peft_compare_cpu.json" "$@"
