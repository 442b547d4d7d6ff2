#!/usr/bin/env bash
# peft-cpp vs PyTorch + Hugging Face PEFT on the transformer example (not part of CI):
# builds and runs examples/transformer (its table, and what compare.py needs in its cache),
# then repeats LoRA and AdaLoRA in PyTorch + PEFT on the same base, modules, hyper-parameters,
# data order, steps and thread count. Writes benchmarks/results/peft_compare.{json,md}.
#
# Environment: PEFT_COMPARE_VENV  the virtual environment (default benchmarks/peft_compare/.venv;
#                                 made, with CPU PyTorch, PEFT and safetensors, when missing)
# Arguments go to transformer_demo (e.g. --steps 150 --threads 2).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../scripts/lib/build.sh
source "$here/../../scripts/lib/build.sh"
# shellcheck source=venv.sh
source "$here/venv.sh"

venv="${PEFT_COMPARE_VENV:-$here/.venv}"
peft_prepare
peft_ensure_packages fortunes
peft_compare_venv "$venv"
peft_build transformer_demo

# Both sides: threads that sleep when idle (busy-waiting OpenMP threads on a shared 2-core
# machine cost peft-cpp 10x; PyTorch's OpenMP gets the same setting).
export OMP_WAIT_POLICY=passive
cache="$PEFT_BUILD_DIR/transformer_cache"
peft_log "peft-cpp: transformer_demo"
"$PEFT_BUILD_DIR/examples/transformer_demo" --cache "$cache" --quiet --samples 0 "$@"
peft_log "PyTorch + PEFT"
"$venv/bin/python" "$here/compare.py" "$cache" "$PEFT_ROOT/benchmarks/results/peft_compare"
