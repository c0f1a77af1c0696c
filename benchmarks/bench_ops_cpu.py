"""Every op, forward and forward+backward, at AG-realistic sizes: providers reference (eager) vs
ops (and each op's named baseline). Writes benchmarks/results/ops_cpu.csv and prints a Markdown table.

    cd benchmarks && PYTHONPATH=../python python3 bench_ops_cpu.py [--quick] [--ops a,b]
"""

from __future__ import annotations

import argparse
import importlib
import pathlib

import torch

from fremure_ext.registry import MODULES

from _harness import run_cases, write_csv, write_plot

OPS = list(MODULES)  # one bench_<module>.py per op module of the registry


def markdown(rows: list[dict]) -> str:
    lines = ["| op | size | provider | fwd ms | fwd+bwd ms | fwd+bwd speed-up vs reference | memory MiB |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['size']} | {r['provider']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} "
                     f"| {r['speedup_fwd_bwd']:.2f}x | {r['memory_mib']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    rows = []
    for name in args.ops.split(","):
        module_path = pathlib.Path(__file__).with_name(f"bench_{name}.py")
        if not module_path.exists():
            print(f"skip {name}: {module_path.name} not present")
            continue
        module = importlib.import_module(f"bench_{name}")
        rows += run_cases(module.cases("cpu", torch.float32, args.quick), "cpu", 0.05 if args.quick else args.min_run_time)
    print(f"\nwrote {write_csv(rows, 'ops_cpu')} and {write_plot(rows, 'ops_cpu')}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
