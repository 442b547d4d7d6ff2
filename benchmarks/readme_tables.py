#!/usr/bin/env python3
"""Prints the README's CPU benchmark tables (Markdown) from the result files.

  benchmarks/results/cpu.json               scripts/bench (bench_lora, repetitions' medians)
  benchmarks/results/peft_compare_cpu.json  benchmarks/peft_compare/layers.sh

usage: readme_tables.py [CPU_JSON [PEFT_COMPARE_JSON]]   (standard library only)
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def medians(report):
    """{run_name: counters} of the `median` aggregates (or of the single runs without them)."""
    out = {}
    for b in report["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        out[b.get("run_name", b["name"])] = b
    return out


def provider(context):
    """The base GEMM's provider and kernel, as the benchmark recorded them."""
    name = context.get("peft_gemm_provider") or context.get("peft_blas", "?")
    version = re.match(r"OpenBLAS [\d.]+", context.get("openblas_config", ""))
    if version and "OpenBLAS" in name:
        name = version.group(0)
    core = context.get("openblas_core")
    return f"{name} ({core})" if core else name


def lora_table(report):
    runs = medians(report)
    rows = ["| n / in / out / r | forward | floor | overhead / floor | forward+backward | floor "
            "| overhead / floor | base GEMM | provider |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, fwd in runs.items():
        m = re.fullmatch(r"BM_LoraForward/(\d+)/(\d+)/(\d+)/(\d+)", name)
        if not m:
            continue
        shape = "/".join(m.groups())
        both = runs.get(f"BM_LoraForwardBackward/{shape}")
        gemm = runs.get("BM_Gemm/" + "/".join(m.groups()[:3]))
        if both is None or gemm is None:
            sys.exit(f"cpu.json lacks the forward+backward or the base GEMM of {shape}")
        rows.append(f"| {shape.replace('/', ' / ')} | {fwd['overhead']:.3f} | {fwd['floor']:.3f} "
                    f"| {fwd['vs_floor']:.3f} | {both['overhead']:.3f} | {both['floor']:.3f} "
                    f"| {both['vs_floor']:.3f} | {gemm['GFLOPS']:.0f} GF/s "
                    f"| {provider(report['context'])} |")
    return "\n".join(rows)


def peft_table(compare):
    by_shape = {}
    for r in compare["results"]:
        by_shape.setdefault((r["n"], r["in"], r["out"], r["r"]), {})[r["pass"]] = r
    rows = ["| n / in / out / r | forward: peft-cpp ms | PEFT ms | speedup "
            "| forward+backward: peft-cpp ms | PEFT ms | speedup |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for shape, passes in by_shape.items():
        cells = []
        for label in ("forward", "forward+backward"):
            r = passes[label]
            cells.append(f"{r['peft_cpp_ms']:.2f} | {r['peft_ms']:.2f} | {r['speedup']:.2f}")
        rows.append(f"| {' / '.join(str(v) for v in shape)} | " + " | ".join(cells) + " |")
    torch = compare["pytorch"]
    rows.append("")
    rows.append(f"torch {torch['torch']}, peft {torch['peft']} ({torch['blas'].split(' Version')[0]}"
                f", {torch['cpu_capability']}); peft-cpp {provider(compare['peft_cpp'])}; "
                f"{torch['threads']} threads; load average {compare['load_average']['start'][0]:.1f}"
                f" at the start, {compare['load_average']['end'][0]:.1f} at the end; "
                f"{compare['rounds']} rounds; {compare['cpu']}.")
    return "\n".join(rows)


def main():
    results = os.path.join(HERE, "results")
    cpu = sys.argv[1] if len(sys.argv) > 1 else os.path.join(results, "cpu.json")
    cmp = sys.argv[2] if len(sys.argv) > 2 else os.path.join(results, "peft_compare_cpu.json")
    with open(cpu) as f:
        print(lora_table(json.load(f)))
    print()
    with open(cmp) as f:
        print(peft_table(json.load(f)))


if __name__ == "__main__":
    main()
