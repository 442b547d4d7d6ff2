#!/usr/bin/env python3
"""Writes the golden files of tests/io: LoRA adapters saved by Hugging Face PEFT itself, the
frozen base weights, fixed inputs and PEFT's outputs, and a safetensors file of every dtype
written by the `safetensors` package. The C++ tests (tests/io/peft_golden_test.cpp) load them
and must reproduce PEFT's numbers.

    python -m venv /tmp/venv && /tmp/venv/bin/pip install torch peft safetensors
    /tmp/venv/bin/python tests/data/make_golden.py            # rewrites tests/data/*
    /tmp/venv/bin/python tests/data/make_golden.py only CASE...  # rewrites these cases only
    /tmp/venv/bin/python tests/data/make_golden.py adalora    # rewrites tests/data/peft_adalora
    /tmp/venv/bin/python tests/data/make_golden.py verify DIR CASE
        # loads an adapter saved by peft-cpp (DIR) into PEFT over CASE's base model and checks
        # that PEFT's outputs on CASE's inputs equal the recorded ones

Layout of each case folder tests/data/peft_<case>/:
    adapter/adapter_config.json, adapter/adapter_model.safetensors   PEFT's save_pretrained
    base.safetensors   <module>.weight ([out, in]; Conv1D: [in, out]) and <module>.bias
    io.safetensors     <module>.x [n, in], <module>.y = the LoRA layer's output [n, out],
                       <module>.delta = get_delta_weight (orientation of the base weight),
                       <module>.lora_A / .lora_B = the factors as float32,
                       <module>.scaling = PEFT's scaling (a float64 scalar);
                       metadata "modules" = the LoRA modules in order, comma separated

peft_adalora/ (an AdaLoRA adapter trained by PEFT, pruned to its rank pattern) holds the same
files, io.safetensors with <module>.lora_A / .lora_E / .lora_B / .ranknum instead of the LoRA
factors, and allocator.safetensors: PEFT's RankAllocator on recorded inputs (see
write_adalora_allocator).

The output is byte-for-byte reproducible: the script re-runs itself with PYTHONHASHSEED=0
(PEFT keeps target_modules in a set) and writes at most one metadata key per file (the
safetensors package writes metadata in hash-map order).
"""

import copy
import json
import os
import sys

import torch
from torch import nn
from safetensors.torch import save_file, load_file

import peft
from peft import LoraConfig, PeftModel, get_peft_model

HERE = os.path.dirname(os.path.abspath(__file__))
N_ROWS = 5


class Attention(nn.Module):
    def __init__(self, hidden, kv):
        super().__init__()
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, kv)
        self.v_proj = nn.Linear(hidden, kv, bias=False)
        self.o_proj = nn.Linear(hidden, hidden)


class Layer(nn.Module):
    def __init__(self, hidden, kv):
        super().__init__()
        self.self_attn = Attention(hidden, kv)


class Inner(nn.Module):
    def __init__(self, hidden, kv, layers):
        super().__init__()
        self.layers = nn.ModuleList([Layer(hidden, kv) for _ in range(layers)])


class TinyLlama(nn.Module):
    """Module names as in Llama: model.layers.<i>.self_attn.{q,k,v,o}_proj."""

    def __init__(self, hidden=12, kv=8, layers=2):
        super().__init__()
        self.model = Inner(hidden, kv, layers)


class Gpt2Block(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.c_attn = Conv1D(3 * hidden, hidden)  # weight [in, out]
        self.c_proj = Conv1D(hidden, hidden)


class MixedBlock(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.c_proj = Conv1D(hidden, hidden)  # square, weight [in, out]
        self.fc = nn.Linear(hidden, hidden)  # square, weight [out, in]


class TinyMixed(nn.Module):
    """Square Conv1D and square nn.Linear layers in one model: PEFT sets fan_in_fan_out per
    layer from the module's type, whatever the config says: h.<i>.{c_proj,fc}."""

    def __init__(self, hidden=6, layers=2):
        super().__init__()
        self.h = nn.ModuleList([MixedBlock(hidden) for _ in range(layers)])


class TinyGpt2(nn.Module):
    """GPT-2's Conv1D layers (weight [in, out]): transformer.h.<i>.attn.{c_attn,c_proj}."""

    def __init__(self, hidden=8, layers=2):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.h = nn.ModuleList([nn.Module() for _ in range(layers)])
        for block in self.transformer.h:
            block.attn = Gpt2Block(hidden)


def lora_layers(model):
    """(module name in the base model, LoRA layer) in the model's order."""
    out = []
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            out.append((name, module))
    return out


def base_tensors(model):
    tensors = {}
    for name, layer in lora_layers(model):
        base = layer.get_base_layer()
        tensors[name + ".weight"] = base.weight.detach().float().contiguous()
        if base.bias is not None:
            tensors[name + ".bias"] = base.bias.detach().float().contiguous()
    return tensors


ONLY = None  # the cases to write (make_golden.py only CASE...), or None for everything


def write_case(case, make_base, config, adapter_dtype=None):
    """Trains nothing: builds a random LoRA (init_lora_weights=False) over make_base(), saves it
    with save_pretrained, then reloads it with PeftModel.from_pretrained over a fresh copy of the
    base and records the reloaded model's numbers. The reload matters: PEFT writes
    adapter_config.json with sorted keys, so rank_pattern / alpha_pattern are matched in sorted
    order after a reload, which can differ from the order the config was built with."""
    if ONLY is not None and case not in ONLY:
        return
    folder = os.path.join(HERE, "peft_" + case)
    adapter_dir = os.path.join(folder, "adapter")
    os.makedirs(folder, exist_ok=True)
    base_model = make_base()
    base_state = copy.deepcopy(base_model.state_dict())
    model = get_peft_model(base_model, config)
    trained_scaling = {name: layer.scaling["default"] for name, layer in lora_layers(model)}
    if adapter_dtype is not None:
        # Round the factors to a 16-bit type: save_pretrained keeps the dtype.
        for _, layer in lora_layers(model):
            for adapter in (layer.lora_A, layer.lora_B):
                adapter["default"].to(adapter_dtype)
    model.save_pretrained(adapter_dir)
    readme = os.path.join(adapter_dir, "README.md")  # a model card template: not needed
    if os.path.exists(readme):
        os.remove(readme)

    fresh = make_base()
    fresh.load_state_dict(base_state)
    model = PeftModel.from_pretrained(fresh, adapter_dir)  # factors upcast to float32 exactly
    model.eval()  # dropout off: outputs are deterministic
    save_file(base_tensors(model), os.path.join(folder, "base.safetensors"))

    io = {}
    names = []
    metadata = {}
    with torch.no_grad():
        for name, layer in lora_layers(model):
            names.append(name)
            assert layer.lora_A["default"].weight.dtype == torch.float32
            x = torch.randn(N_ROWS, layer.in_features)
            io[name + ".x"] = x
            io[name + ".y"] = layer(x).contiguous()
            io[name + ".delta"] = layer.get_delta_weight("default").contiguous()
            io[name + ".lora_A"] = layer.lora_A["default"].weight.contiguous()
            io[name + ".lora_B"] = layer.lora_B["default"].weight.contiguous()
            scaling = float(layer.scaling["default"])
            io[name + ".scaling"] = torch.tensor(scaling, dtype=torch.float64)
            if scaling != trained_scaling[name]:
                print(f"  {name}: scaling {trained_scaling[name]} when built, {scaling} after "
                      "the reload (patterns matched in the saved, sorted key order)")
    metadata["modules"] = ",".join(names)
    save_file(io, os.path.join(folder, "io.safetensors"), metadata=metadata)
    print(f"{folder}: {len(names)} modules")


def adalora_layers(model):
    """(module name, AdaLoRA layer) in the model's order."""
    return [(name, module) for name, module in model.base_model.model.named_modules()
            if isinstance(module, peft.tuners.adalora.AdaLoraLayer)]


ADALORA_CONFIG = dict(init_r=6, target_r=3, lora_alpha=8, tinit=2, tfinal=3, deltaT=1,
                      total_step=12, target_modules=["q_proj", "v_proj", "o_proj"])


def write_adalora_case():
    """An AdaLoRA adapter trained by PEFT itself (AdamW on a regression loss per layer, with
    update_and_allocate after every step, until the rank pattern is final: each module keeps its
    own number of ranks), saved with save_pretrained (pruned to the kept ranks, rank_pattern in
    the config) and reloaded over a fresh base, whose numbers io.safetensors records:
    <module>.x, .y, .delta, .lora_A, .lora_E, .lora_B (as loaded), .scaling, .ranknum."""
    folder = os.path.join(HERE, "peft_adalora")
    adapter_dir = os.path.join(folder, "adapter")
    os.makedirs(folder, exist_ok=True)
    base_model = TinyLlama(layers=2)
    base_state = copy.deepcopy(base_model.state_dict())
    model = get_peft_model(base_model, peft.AdaLoraConfig(**ADALORA_CONFIG))
    layers = adalora_layers(model)
    inputs = {name: torch.randn(16, layer.in_features) for name, layer in layers}
    targets = {name: torch.randn(16, layer.out_features) for name, layer in layers}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(ADALORA_CONFIG["total_step"]):
        loss = sum(((layer(inputs[name]) - targets[name]) ** 2).mean() for name, layer in layers)
        loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    model.save_pretrained(adapter_dir)
    readme = os.path.join(adapter_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)

    fresh = TinyLlama(layers=2)
    fresh.load_state_dict(base_state)
    model = PeftModel.from_pretrained(fresh, adapter_dir)
    model.eval()
    tensors = {}
    for name, layer in adalora_layers(model):
        base = layer.get_base_layer()
        tensors[name + ".weight"] = base.weight.detach().float().contiguous()
        if base.bias is not None:
            tensors[name + ".bias"] = base.bias.detach().float().contiguous()
    save_file(tensors, os.path.join(folder, "base.safetensors"))
    io, names, ranks = {}, [], []
    with torch.no_grad():
        for name, layer in adalora_layers(model):
            names.append(name)
            ranks.append(layer.lora_A["default"].shape[0])
            x = torch.randn(N_ROWS, layer.in_features)
            io[name + ".x"] = x
            io[name + ".y"] = layer(x).contiguous()
            io[name + ".delta"] = layer.get_delta_weight("default").contiguous()
            for key in ("lora_A", "lora_E", "lora_B"):
                io[name + "." + key] = getattr(layer, key)["default"].detach().contiguous()
            io[name + ".scaling"] = torch.tensor(float(layer.scaling["default"]),
                                                 dtype=torch.float64)
            io[name + ".ranknum"] = layer.ranknum["default"].detach().double()
    save_file(io, os.path.join(folder, "io.safetensors"), metadata={"modules": ",".join(names)})
    print(f"{folder}: {len(names)} modules, kept ranks {ranks} of {ADALORA_CONFIG['init_r']}")
    write_adalora_allocator(folder)


ALLOCATOR_CONFIG = dict(init_r=4, target_r=2, lora_alpha=8, tinit=1, tfinal=2, deltaT=2,
                        beta1=0.7, beta2=0.8, total_step=9,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def write_adalora_allocator(folder):
    """PEFT's RankAllocator on given numbers: at every step, random values and gradients of
    lora_A, lora_E and lora_B are written into the layers, then update_and_allocate(step). The
    file records, per step s and module m: s.m.lora_{A,E,B}.value / .grad (the inputs),
    s.m.lora_E.after (E after PEFT's masking) and, while PEFT keeps them, the EMAs
    s.m.lora_{A,E,B}.sensitivity / .uncertainty after the update."""
    model = get_peft_model(TinyLlama(hidden=8, kv=4, layers=1),
                           peft.AdaLoraConfig(**ALLOCATOR_CONFIG))
    allocator = model.base_model.rankallocator
    record = {}
    for step in range(ALLOCATOR_CONFIG["total_step"]):
        for name, layer in adalora_layers(model):
            for key in ("lora_A", "lora_E", "lora_B"):
                p = getattr(layer, key)["default"]
                with torch.no_grad():
                    p.copy_(torch.randn_like(p))
                p.grad = torch.randn_like(p)
                record[f"{step}.{name}.{key}.value"] = p.detach().clone()
                record[f"{step}.{name}.{key}.grad"] = p.grad.clone()
        model.base_model.update_and_allocate(step)
        for name, layer in adalora_layers(model):
            record[f"{step}.{name}.lora_E.after"] = layer.lora_E["default"].detach().clone()
            for key in ("lora_A", "lora_E", "lora_B"):
                n = f"model.{name}.{key}.default" if not name.startswith("model.") else \
                    f"{name}.{key}.default"
                if n in allocator.exp_avg_ipt:
                    record[f"{step}.{name}.{key}.sensitivity"] = allocator.exp_avg_ipt[n].clone()
                    record[f"{step}.{name}.{key}.uncertainty"] = allocator.exp_avg_unc[n].clone()
    names = [name for name, _ in adalora_layers(model)]
    save_file(record, os.path.join(folder, "allocator.safetensors"),
              metadata={"modules": ",".join(names)})
    print(f"{folder}/allocator.safetensors: {len(record)} tensors")


def rounding_sources():
    """float32 values that exercise round-to-nearest-even into float16 and bfloat16."""
    special = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.0, 65520.0, -65520.0, 1e10, -1e-10,
               float("inf"), float("-inf"), 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-14,
               2.0**-14 - 2.0**-24, 3.0 * 2.0**-25, 1.0 + 2.0**-11, 1.0 + 3.0 * 2.0**-11,
               1.0 + 2.0**-8, 1.0 + 3.0 * 2.0**-8, 3.3895313892515355e38, 1e-40, -1e-45]
    values = torch.tensor(special, dtype=torch.float32)
    # Exact ties and near-ties of float16 and bfloat16 around many exponents.
    bits = torch.randint(0, 2**31 - 1, (200,), dtype=torch.int64)
    ties16 = (bits & ~0x1FFF) | 0x1000  # mantissa below float16's: exactly half an ulp
    tiesbf = (bits & ~0xFFFF) | 0x8000  # exactly half a bfloat16 ulp
    randoms = torch.randn(300) * torch.exp2(torch.randint(-30, 20, (300,)).float())
    tied = torch.cat([ties16, tiesbf]).to(torch.int32).view(torch.float32)
    tied = tied[torch.isfinite(tied)]
    return torch.cat([values, tied, randoms.float()])


def write_dtypes():
    f = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.140625, 65504.0, 6.1e-5, 5.96e-8, 1e-3,
                      float("inf"), float("-inf")], dtype=torch.float32)
    f16 = torch.cat([f.half(), torch.tensor([0x0001, 0x03FF, 0x0400, 0x7BFF, 0x8001, 0x7E00],
                                            dtype=torch.int32).to(torch.int16).view(torch.float16)])
    bf16 = torch.cat([f.bfloat16(), torch.tensor([0x0001, 0x007F, 0x0080, 0x7F7F, 0x8001, 0x7FC0],
                                                 dtype=torch.int32).to(torch.int16).view(torch.bfloat16)])
    src = rounding_sources()
    tensors = {
        "f64": torch.tensor([[1.0, -2.0, 1e-300], [3.5, 1e300, -0.0]], dtype=torch.float64),
        "f32": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 7,
        "f16": f16,
        "f16_as_f32": f16.float(),
        "bf16": bf16,
        "bf16_as_f32": bf16.float(),
        "i64": torch.tensor([[-(2**62), 2**62 + 5], [-1, 7]], dtype=torch.int64),
        "i32": torch.tensor([-(2**31), 2**31 - 1, 0], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, 3], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, -1], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
        "round_src": src,
        "round_f16": src.half(),
        "round_bf16": src.bfloat16(),
    }
    path = os.path.join(HERE, "dtypes.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    print(f"{path}: {len(tensors)} tensors")


def write_fuzz_corpus():
    """Seeds of the safetensors fuzzer (tests/fuzz/corpus): small valid files of every dtype
    and hand-made broken ones, each a few hundred bytes."""
    import struct

    folder = os.path.join(HERE, "..", "fuzz", "corpus")
    os.makedirs(folder, exist_ok=True)

    def raw(name, header, data=b"", length=None):
        h = header.encode()
        with open(os.path.join(folder, name), "wb") as out:
            out.write(struct.pack("<Q", len(h) if length is None else length) + h + data)

    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
              os.path.join(folder, "valid_f32.safetensors"))
    dtypes = [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool]
    save_file({str(d).split(".")[1]: (torch.arange(4) % 3).to(d) for d in dtypes},
              os.path.join(folder, "valid_dtypes.safetensors"), metadata={"format": "pt"})
    save_file({"scalar": torch.tensor(1.5), "empty": torch.zeros(0, 4),
               "cube": torch.ones(2, 1, 2, dtype=torch.float16)},
              os.path.join(folder, "valid_shapes.safetensors"))
    save_file({"base_model.model.q.lora_A.weight": torch.randn(2, 3),
               "base_model.model.q.lora_B.weight": torch.randn(4, 2)},
              os.path.join(folder, "valid_lora.safetensors"),
              metadata={"peft_cpp_config_sha256": "0" * 64})
    entry = '{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    raw("bad_length.bin", entry, b"\0" * 8, length=4096)
    raw("bad_json.bin", '{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}', b"\0" * 8)
    raw("bad_dtype.bin", entry.replace("F32", "F4"), b"\0" * 8)
    raw("bad_shape.bin", entry.replace("[2]", "[3]"), b"\0" * 8)
    raw("bad_negative.bin", entry.replace("[2]", "[-2]"), b"\0" * 8)
    raw("bad_beyond.bin", entry, b"\0" * 4)
    raw("bad_overlap.bin", '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
        '"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}', b"\1" * 6)
    raw("bad_duplicate.bin", '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"\1" * 2)
    raw("bad_metadata.bin", '{"__metadata__":{"a":1}}')
    raw("bad_bool.bin", '{"t":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}}', b"\1\2")
    raw("bad_overflow.bin", '{"t":{"dtype":"F64","shape":[4611686018427387904],'
        '"data_offsets":[0,8]}}', b"\0" * 8)
    # Found by the fuzzer: an empty tensor name is legal (the writer refused to copy it).
    raw("valid_empty_name.bin", '{"":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}',
        b"\1\2\3\4")
    print(f"{os.path.normpath(folder)}: {len(os.listdir(folder))} seeds")


def generate():
    torch.manual_seed(1234)
    write_case("lora_basic", TinyLlama,
               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          init_lora_weights=False))
    torch.manual_seed(1235)
    write_case("lora_patterns", lambda: TinyLlama(layers=3),
               LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, use_rslora=True,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          init_lora_weights=False,
                          # first match wins, in this order; keys match at a dot boundary
                          rank_pattern={"layers.1.self_attn.q_proj": 2,
                                        r"layers\.[02]\.self_attn\.k_proj": 3,
                                        "v_proj": 6,
                                        "proj": 7},  # matches nothing: "q_proj" != "*.proj"
                          alpha_pattern={"model.layers.0.self_attn.o_proj": 5.5,
                                         "q_proj": 12,
                                         "layers.2.self_attn.q_proj": 3}))  # shadowed
    torch.manual_seed(1236)
    write_case("lora_conv1d", TinyGpt2,
               LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn", "c_proj"],
                          fan_in_fan_out=True, init_lora_weights=False))
    torch.manual_seed(1237)
    write_case("lora_bf16", lambda: TinyLlama(layers=1),
               LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"],
                          init_lora_weights=False), adapter_dtype=torch.bfloat16)
    torch.manual_seed(1238)
    write_case("lora_f16", lambda: TinyLlama(layers=1),
               LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj"],
                          init_lora_weights=False), adapter_dtype=torch.float16)
    torch.manual_seed(1240)
    # fan_in_fan_out=False in the config: PEFT sets it per layer from the module's type.
    write_case("lora_mixed", TinyMixed,
               LoraConfig(r=2, lora_alpha=4, target_modules=["c_proj", "fc"],
                          init_lora_weights=False))
    torch.manual_seed(1241)
    # Selection by layer index and exclusion: q_proj and v_proj of layers 0 and 2, without
    # layer 2's v_proj.
    write_case("lora_select", lambda: TinyLlama(layers=3),
               LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                          layers_to_transform=[0, 2], layers_pattern="layers",
                          exclude_modules=["model.layers.2.self_attn.v_proj"],
                          init_lora_weights=False))
    torch.manual_seed(1242)
    # target_modules as a regular expression (re.fullmatch).
    write_case("lora_regex", lambda: TinyLlama(layers=3),
               LoraConfig(r=2, lora_alpha=4,
                          target_modules=r".*\.layers\.[12]\.self_attn\.(k|o)_proj",
                          init_lora_weights=False))
    if ONLY is not None:
        return
    torch.manual_seed(1239)
    write_dtypes()
    write_fuzz_corpus()
    generate_adalora()
    with open(os.path.join(HERE, "golden_versions.json"), "w") as out:
        import safetensors
        json.dump({"torch": torch.__version__, "peft": peft.__version__,
                   "safetensors": safetensors.__version__}, out, indent=2, sort_keys=True)
        out.write("\n")


def generate_adalora():
    """The AdaLoRA case alone (added after the LoRA cases: their files stay as they are)."""
    torch.manual_seed(1240)
    write_adalora_case()


def build_base(case):
    """A fresh base model of CASE with the recorded base weights."""
    model = {"lora_basic": lambda: TinyLlama(), "lora_patterns": lambda: TinyLlama(layers=3),
             "lora_conv1d": lambda: TinyGpt2(), "lora_bf16": lambda: TinyLlama(layers=1),
             "lora_f16": lambda: TinyLlama(layers=1), "lora_mixed": lambda: TinyMixed(),
             "lora_select": lambda: TinyLlama(layers=3),
             "lora_regex": lambda: TinyLlama(layers=3),
             "adalora": lambda: TinyLlama(layers=2)}[case]()
    state = load_file(os.path.join(HERE, "peft_" + case, "base.safetensors"))
    missing = model.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    return model


def verify(adapter_dir, case):
    """Loads adapter_dir (saved by peft-cpp) with PEFT, and CASE's own adapter (saved by PEFT)
    beside it: the two must give bit-identical outputs in this process, and match the recorded
    outputs to 1e-6 (torch itself is not bitwise reproducible across processes)."""
    io = load_file(os.path.join(HERE, "peft_" + case, "io.safetensors"))
    outputs = []
    for folder in (adapter_dir, os.path.join(HERE, "peft_" + case, "adapter")):
        model = PeftModel.from_pretrained(build_base(case), folder)
        model.eval()
        with torch.no_grad():
            outputs.append({name: layer(io[name + ".x"]) for name, layer in lora_layers(model)})
    ours, theirs = outputs
    expected = sorted(k[:-2] for k in io if k.endswith(".y"))
    assert sorted(ours) == expected, f"PEFT built {sorted(ours)}, the case has {expected}"
    worst = 0.0
    for name, y in ours.items():
        assert torch.equal(y, theirs[name]), f"{name}: outputs differ from PEFT's own adapter"
        ref = io[name + ".y"]
        worst = max(worst, float((y - ref).norm() / ref.norm()))
    print(f"{adapter_dir}: PEFT {peft.__version__} loaded {len(ours)} modules, outputs equal to "
          f"PEFT's own adapter's; worst relative error to the recorded outputs {worst:.3g}")
    assert worst < 1e-6, worst


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    if len(sys.argv) == 4 and sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 1:
        generate()
    elif len(sys.argv) > 2 and sys.argv[1] == "only":
        ONLY = set(sys.argv[2:])
        generate()
    elif len(sys.argv) == 2 and sys.argv[1] == "adalora":
        generate_adalora()
    else:
        sys.exit(__doc__)
