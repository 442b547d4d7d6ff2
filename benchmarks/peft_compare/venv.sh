# shellcheck shell=bash
# Shared by run.sh and layers.sh (sourced after scripts/lib/build.sh): the virtual environment
# with CPU PyTorch, PEFT and safetensors, made when missing.
#
# peft_compare_venv DIR: ensures DIR holds that environment.
peft_compare_venv() {
  local venv="$1"
  peft_ensure_packages python3-venv
  if ! "$venv/bin/python" -c "import torch, peft, safetensors" 2>/dev/null; then
    peft_log "making $venv (PyTorch for the CPU, PEFT, safetensors)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --index-url https://download.pytorch.org/whl/cpu torch
    "$venv/bin/pip" install --quiet peft safetensors
  fi
}
