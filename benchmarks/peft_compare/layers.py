"""One LoRA layer in peft-cpp (bench_lora) against Hugging Face PEFT, at bench_lora's shapes.

For every shape (n, in, out, r) that bench_lora registers, alternates, `--rounds` times, a run
of bench_lora filtered to that shape (its forward and forward+backward cases) with the same two
passes timed here in PyTorch + PEFT; the order flips every round so that drift on a shared
machine hits both sides alike. Each side's figure for a round is the median of its
per-iteration times (bench_lora's `median_ms` counter); the result is the median over rounds.

The PEFT layer: nn.Linear(in, out, bias=False) wrapped by peft.get_peft_model with
LoraConfig(r, lora_alpha=2r, lora_dropout=0, target_modules=[...]), base frozen, fp32, PEFT's
default initialisation (B = 0, like bench_lora's layer), train mode.
  forward           y = model(x) with autograd recording: PEFT keeps what backward needs, as
                    bench_lora's Lora::forward (training mode) keeps x A^T. Timed under
                    torch.no_grad it would skip that bookkeeping, which bench_lora does not.
  forward+backward  y = model(x); y.backward(dy) with x.requires_grad, so dx is computed as in
                    bench_lora's backward; the LoRA gradients accumulate across iterations (as
                    bench_lora's do) and x.grad is dropped before each iteration (bench_lora
                    overwrites dx).

usage: layers.py BENCH_LORA OUT_JSON [--rounds R] [--min-time S] [--filter REGEX]
Needs OMP_NUM_THREADS and OMP_WAIT_POLICY set before it starts (layers.sh sets both).
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as PeftLoraLinear

PASSES = {"forward": "BM_LoraForward", "forward+backward": "BM_LoraForwardBackward"}


def bench_lora_shapes(bench):
    """The (n, in, out, r) of every BM_LoraForward case bench_lora registers."""
    names = subprocess.run([bench, "--benchmark_list_tests=true"], check=True,
                           capture_output=True, text=True).stdout.split()
    shapes = []
    for name in names:
        m = re.fullmatch(r"BM_LoraForward/(\d+)/(\d+)/(\d+)/(\d+)", name)
        if m:
            shapes.append(tuple(int(v) for v in m.groups()))
    if not shapes:
        sys.exit(f"{bench} lists no BM_LoraForward case")
    return shapes


def shape_name(shape):
    return "/".join(str(v) for v in shape)


def run_bench_lora(bench, shape, min_time):
    """One run of bench_lora's two cases at `shape`: {pass: its counters}, and the context."""
    pattern = "^(" + "|".join(PASSES.values()) + ")/" + shape_name(shape) + "$"
    out = subprocess.run([bench, f"--benchmark_filter={pattern}",
                          f"--benchmark_min_time={min_time}", "--benchmark_format=json"],
                         check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    by_name = {b["name"]: b for b in report["benchmarks"]}
    cases = {}
    for label, family in PASSES.items():
        name = f"{family}/{shape_name(shape)}"
        if name not in by_name:
            sys.exit(f"bench_lora did not run {name}")
        cases[label] = by_name[name]
    return cases, report["context"]


def expected_floor(shape, label):
    """The FLOP-floor ratio, computed here independently of bench_lora's counter."""
    n, fan_in, fan_out, r = shape
    products = 1.0 if label == "forward" else 1.5  # r-wide GEMMs per base GEMM: 2/2, 6/4
    return 1.0 + products * r * (fan_in + fan_out) / (fan_in * fan_out)


class Net(nn.Module):
    def __init__(self, fan_in, fan_out):
        super().__init__()
        self.proj = nn.Linear(fan_in, fan_out, bias=False)

    def forward(self, x):
        return self.proj(x)


class PeftLayer:
    """PEFT's LoRA on one bias-free linear layer, with its inputs, at one shape."""

    def __init__(self, shape):
        n, fan_in, fan_out, r = shape
        torch.manual_seed(0)
        config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["proj"])
        self.model = get_peft_model(Net(fan_in, fan_out), config)
        self.model.train()
        layer = self.model.get_base_model().proj
        if not isinstance(layer, PeftLoraLinear):
            sys.exit(f"PEFT did not wrap the layer: {type(layer)}")
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if sum(p.numel() for p in trainable) != r * (fan_in + fan_out) or \
                layer.base_layer.weight.requires_grad:
            sys.exit("PEFT's trainable parameters are not exactly A and B")
        self.trainable = trainable
        self.x = (torch.rand(n, fan_in) * 2 - 1).requires_grad_(True)
        self.dy = torch.rand(n, fan_out) * 2 - 1

    def forward(self):
        y = self.model(self.x)
        del y

    def forward_backward(self):
        self.x.grad = None
        y = self.model(self.x)
        y.backward(self.dy)
        del y

    def zero_grad(self):
        for p in self.trainable:
            p.grad = None


def median_ms(step, min_time, min_iterations=3, warm_up=2):
    for _ in range(warm_up):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < min_iterations or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_peft(layer, min_time):
    out = {"forward": median_ms(layer.forward, min_time),
           "forward+backward": median_ms(layer.forward_backward, min_time)}
    layer.zero_grad()  # the gradients accumulated; keep them bounded across rounds
    return out


def torch_blas():
    for line in torch.__config__.show().splitlines():
        if "Math Kernel Library" in line or "OpenBLAS" in line or "BLAS_INFO" in line:
            return line.strip(" -")
    return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench_lora")
    parser.add_argument("out_json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds each side times a pass per round (bench_lora's "
                             "--benchmark_min_time)")
    parser.add_argument("--filter", default="", help="only shapes whose n/in/out/r matches")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        if var not in os.environ:
            sys.exit(f"{var} is not set (layers.sh sets it for both sides)")
    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)

    shapes = [s for s in bench_lora_shapes(args.bench_lora)
              if re.search(args.filter, shape_name(s))]
    load_start = os.getloadavg()
    rows, context = [], {}
    for shape in shapes:
        layer = PeftLayer(shape)
        cpp_rounds = {label: [] for label in PASSES}
        peft_rounds = {label: [] for label in PASSES}
        counters = {label: [] for label in PASSES}
        for round_index in range(args.rounds):
            order = ("cpp", "peft") if round_index % 2 == 0 else ("peft", "cpp")
            for side in order:
                if side == "cpp":
                    cases, context = run_bench_lora(args.bench_lora, shape, args.min_time)
                    for label, case in cases.items():
                        cpp_rounds[label].append(case["median_ms"])
                        counters[label].append(case)
                else:
                    for label, ms in time_peft(layer, args.min_time).items():
                        peft_rounds[label].append(ms)
        for label in PASSES:
            floor = counters[label][0]["floor"]
            if abs(floor - expected_floor(shape, label)) > 1e-9:
                sys.exit(f"bench_lora's floor {floor} for {label} at {shape_name(shape)} is not "
                         f"{expected_floor(shape, label)}")
            cpp_ms = statistics.median(cpp_rounds[label])
            peft_ms = statistics.median(peft_rounds[label])
            overhead = statistics.median(c["overhead"] for c in counters[label])
            rows.append({
                "n": shape[0], "in": shape[1], "out": shape[2], "r": shape[3], "pass": label,
                "peft_cpp_ms": cpp_ms, "peft_ms": peft_ms, "speedup": peft_ms / cpp_ms,
                "peft_cpp_overhead": overhead, "floor": floor, "overhead_vs_floor": overhead / floor,
                "peft_cpp_ms_rounds": cpp_rounds[label], "peft_ms_rounds": peft_rounds[label]})
            print(f"{shape_name(shape):>20s} {label:16s} peft-cpp {cpp_ms:9.3f} ms  "
                  f"PEFT {peft_ms:9.3f} ms  speedup {peft_ms / cpp_ms:5.2f}", flush=True)
        del layer

    peft_cpp_context = {k: v for k, v in context.items()
                        if k.startswith(("peft_", "openblas_", "onednn", "dnnl", "blis"))}
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "cpu": cpu_model(),
        "num_cpus": os.cpu_count(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "environment": {v: os.environ[v] for v in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
        "rounds": args.rounds,
        "min_time_s": args.min_time,
        "statistic": "per side and round: median per-iteration time; then median over rounds",
        "forward": "training-mode forward that keeps what backward needs (autograd on, PEFT; "
                   "Lora::forward, peft-cpp)",
        "peft_cpp": peft_cpp_context,
        "pytorch": {"torch": torch.__version__, "peft": __import__("peft").__version__,
                    "blas": torch_blas(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "threads": torch.get_num_threads(), "python": platform.python_version()},
        "results": rows,
    }
    with open(args.out_json, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    main()
