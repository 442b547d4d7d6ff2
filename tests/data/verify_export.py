#!/usr/bin/env python3
"""Checks peft-cpp's export_as_lora with Hugging Face PEFT: loads each exported adapter (NOLA,
LoRA-XS, ... written as a plain LoRA) with PeftModel.from_pretrained over its golden case's base
model (make_golden.py's) and compares PEFT's outputs with the ones peft-cpp's own layers gave.

    cmake --build build -j1 --target io_test
    rm -rf /tmp/peft_exports
    PEFT_TEST_EXPORT_DIR=/tmp/peft_exports build/tests/io_test --gtest_filter='ExportAsLoraGolden.*'
    /tmp/venv/bin/python tests/data/verify_export.py /tmp/peft_exports/*

Each DIR (written by tests/io/lora_export_test.cpp) holds
    adapter/                  the export (adapter_config.json, adapter_model.safetensors)
    expected.safetensors      <module>.x = the case's inputs, <module>.y = peft-cpp's outputs
                              (eval mode), metadata "case" = the golden case of the base model
Exits non-zero unless every module's max |PEFT - peft-cpp| / max |peft-cpp| is below 1e-5 and
the adapter visibly changes the base model's outputs.
"""

import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import peft
from peft import PeftModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import build_base, lora_layers  # noqa: E402

TOLERANCE = 1e-5


def verify(export_dir):
    path = os.path.join(export_dir, "expected.safetensors")
    with safe_open(path, framework="pt") as f:
        case = f.metadata()["case"]
    expected = load_file(path)
    modules = sorted(k[:-2] for k in expected if k.endswith(".y"))
    model = PeftModel.from_pretrained(build_base(case), os.path.join(export_dir, "adapter"))
    model.eval()
    layers = dict(lora_layers(model))
    assert sorted(layers) == modules, f"PEFT built {sorted(layers)}, peft-cpp wrote {modules}"
    worst_abs = worst_rel = 0.0
    smallest_change = float("inf")
    with torch.no_grad():
        for name in modules:
            x, ours = expected[name + ".x"], expected[name + ".y"]
            theirs = layers[name](x)
            with model.disable_adapter():
                base = layers[name](x)
            scale = float(ours.abs().max())
            diff = float((theirs - ours).abs().max())
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / scale)
            smallest_change = min(smallest_change, float((ours - base).abs().max()) / scale)
    print(f"{export_dir}: PEFT {peft.__version__} loaded {len(modules)} modules over {case}'s "
          f"base; max abs difference {worst_abs:.3g}, max relative {worst_rel:.3g} "
          f"(the adapter changes the outputs by at least {smallest_change:.3g} relative)")
    assert worst_rel < TOLERANCE, f"{export_dir}: PEFT's outputs differ from peft-cpp's"
    assert smallest_change > 1e-3, f"{export_dir}: the adapter changes too little to be checked"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for folder in sys.argv[1:]:
        verify(folder)
