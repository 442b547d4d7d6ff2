"""The transformer example's adaptation repeated in PyTorch + Hugging Face PEFT.

Reads what `transformer_demo` left in its cache directory: the base (base.safetensors, Hugging
Face names), the characters of every training step and of the validation windows
(compare/adapt_data.safetensors, hyper-parameters in its metadata), LoRA's initial adapter
(compare/lora_init, PEFT format: both sides start from the same A and B) and peft-cpp's results
(compare/cpp_results.json). Builds the same model in PyTorch, applies PEFT's LoRA and AdaLoRA
to the same modules with the same hyper-parameters, data order and steps, on the same number
of threads, and writes both tables together.

usage: compare.py CACHE_DIR OUT_PREFIX   (writes OUT_PREFIX.json and OUT_PREFIX.md)
"""

import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import AdaLoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        o = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                           split(self.v_proj(x)), is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """examples/transformer/model.hpp in PyTorch: the same tensors under the same names."""

    def __init__(self, vocab, dim, layers, heads, context, hidden):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.embed_positions = nn.Embedding(context, dim)
        self.layers = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        x = self.embed_tokens(ids) + self.embed_positions(torch.arange(ids.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.ln_f(x))


def load_base(cache):
    path = f"{cache}/base.safetensors"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    shape = {k: int(meta[k]) for k in ("vocab", "dim", "layers", "heads", "context", "hidden")}
    model = Transformer(**shape)
    model.load_state_dict(load_file(path), strict=True)
    return model, shape


def loss_of(model, inputs, targets):
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def validation_loss(model, data, batch):
    model.eval()
    x, y = data["validation_inputs"].long(), data["validation_targets"].long()
    total = sum(loss_of(model, x[i:i + batch], y[i:i + batch]).item() * y[i:i + batch].numel()
                for i in range(0, x.shape[0], batch))
    model.train()
    return total / y.numel()


def orthogonal_regularization(model, weight):
    """PEFT adds this to outputs.loss only for models that return a loss; ours returns logits."""
    total, count = 0.0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            total = total + torch.norm(cov - torch.eye(*cov.shape), p="fro")
            count += 1
    return weight * total / count


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def train(name, model, data, meta, adalora=False):
    steps, batch, lr = int(meta["steps"]), int(meta["batch"]), float(meta["lr"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    x, y = data["train_inputs"].long(), data["train_targets"].long()
    before = validation_loss(model, data, batch)
    reset_peak_rss()
    elapsed = 0.0
    for step in range(steps):
        xs, ys = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
        t0 = time.perf_counter()
        loss = loss_of(model, xs, ys)
        if adalora:
            loss = loss + orthogonal_regularization(model, 0.5)
        loss.backward()
        opt.step()
        if adalora:
            model.base_model.update_and_allocate(step)
        opt.zero_grad(set_to_none=True)
        elapsed += time.perf_counter() - t0
        if (step + 1) % max(1, steps // 10) == 0:
            print(f"  {name:16s} step {step + 1:5d}/{steps}  loss {loss.item():.4f}", flush=True)
    return {"method": name, "trainable": sum(p.numel() for p in trainable),
            "validation_before": before, "validation_after": validation_loss(model, data, batch),
            "ms_per_step": 1000 * elapsed / steps, "peak_rss_mib": peak_rss_mib()}


def main(cache, out_prefix):
    data = load_file(f"{cache}/compare/adapt_data.safetensors")
    with safe_open(f"{cache}/compare/adapt_data.safetensors", "pt") as f:
        meta = f.metadata()
    threads = int(meta["threads"])
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    targets = [f"layers.{l}.{'attn' if m.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{m}"
               for l in range(load_base(cache)[1]["layers"]) for m in MODULES]
    results = []

    base, _ = load_base(cache)  # LoRA: peft-cpp's initial A and B, loaded by PEFT
    model = PeftModel.from_pretrained(base, f"{cache}/compare/lora_init", is_trainable=True)
    results.append(train("PyTorch+PEFT LoRA", model, data, meta))

    steps = int(meta["steps"])
    base, _ = load_base(cache)
    config = AdaLoraConfig(init_r=int(meta["adalora_init_r"]), target_r=int(meta["adalora_target_r"]),
                           lora_alpha=float(meta["adalora_alpha"]), lora_dropout=0.0,
                           tinit=steps // 10, tfinal=steps // 10, deltaT=max(1, steps // 50),
                           total_step=steps, orth_reg_weight=0.5, target_modules=targets)
    results.append(train("PyTorch+PEFT AdaLoRA", get_peft_model(base, config), data, meta,
                         adalora=True))

    with open(f"{cache}/compare/cpp_results.json") as f:
        cpp = json.load(f)
    rows = [dict(r, method="peft-cpp " + r["method"]) for r in cpp["methods"]] + results
    out = {"threads": threads, "steps": steps, "batch": int(meta["batch"]),
           "torch": torch.__version__, "peft": __import__("peft").__version__, "methods": rows}
    with open(out_prefix + ".json", "w") as f:
        json.dump(out, f, indent=2)
    lines = ["| method | trainable | val loss before | val loss after | ms / step | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['trainable']} | {r['validation_before']:.4f} | "
              f"{r['validation_after']:.4f} | {r['ms_per_step']:.1f} | {r['peak_rss_mib']:.0f} |"
              for r in rows]
    with open(out_prefix + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
