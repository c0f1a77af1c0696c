"""Tiny benchmark harness shared by the per-op scripts (benchmarks/bench_<op>.py).

A per-op script defines ``cases(device, dtype, quick) -> list[Case]``; ``run_cases`` times every
provider forward (under no_grad) and forward+backward, and measures memory:
- CUDA: ``torch.cuda.max_memory_allocated`` during forward+backward;
- CPU: bytes kept alive for backward (saved tensors, via saved_tensors_hooks) plus output bytes,
  which is where eager and fused implementations differ (CPU has no peak-allocation counter).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import pathlib
import platform
from typing import Any, Callable

import torch
import torch.utils.benchmark as tbench

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Case:
    op: str
    size: str                                    # label, e.g. "N=600 D=1936"
    inputs: list[torch.Tensor]                   # leaves that receive gradients in fwd+bwd
    providers: dict[str, Callable[[], Any]]      # name -> zero-arg callable returning tensor(s)
    bytes_moved: int | None = None               # minimal HBM/DRAM traffic of one forward, for bandwidth


def _outputs(result: Any) -> list[torch.Tensor]:
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [t for t in items if isinstance(t, torch.Tensor) and t.requires_grad]


def _fwd_bwd(fn: Callable[[], Any], inputs: list[torch.Tensor]) -> None:
    outs = _outputs(fn())
    loss = sum(o.float().sum() for o in outs)
    torch.autograd.grad(loss, [i for i in inputs if i.requires_grad], allow_unused=True)


def _median_seconds(stmt: Callable[[], Any], min_run_time: float) -> float:
    timer = tbench.Timer(stmt="stmt()", globals={"stmt": stmt})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _memory_bytes(fn: Callable[[], Any], inputs: list[torch.Tensor], device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _fwd_bwd(fn, inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not any(t is i for i in inputs):
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    items = result if isinstance(result, (tuple, list)) else (result,)
    return sum(saved) + sum(t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor))


def copy_bandwidth_gbps(device: str, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second), the roofline that
    memory-bound ops are compared with."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: (dst.copy_(src), _sync(device)), 0.5)
    return 2 * nbytes / seconds / 1e9


def with_compiled(providers: dict[str, Callable[[], Any]]) -> dict[str, Callable[[], Any]]:
    """Adds provider "compiled": torch.compile of the reference (max-autotune-no-cudagraphs)."""
    if "reference" not in providers:
        return providers
    compiled = torch.compile(providers["reference"], mode="max-autotune-no-cudagraphs", dynamic=False)
    out = {"reference": providers["reference"], "compiled": compiled,
           **{k: v for k, v in providers.items() if k != "reference"}}
    return out


def run_cases(cases: list[Case], device: str, min_run_time: float = 0.5, compiled: bool = False) -> list[dict]:
    """Times every case and provider; returns one row per (case, provider). With ``compiled`` a
    torch.compile'd reference is timed too; on CUDA, bandwidth is also given as a fraction of the
    measured copy bandwidth."""
    rows = []
    copy_gbps = copy_bandwidth_gbps(device) if device.startswith("cuda") else None
    for case in cases:
        base_fwd = base_fb = None
        providers = with_compiled(case.providers) if compiled else case.providers
        for name, fn in providers.items():
            with torch.no_grad():
                fwd = _median_seconds(lambda: (fn(), _sync(device)), min_run_time)
            fb = _median_seconds(lambda: (_fwd_bwd(fn, case.inputs), _sync(device)), min_run_time)
            mem = _memory_bytes(fn, case.inputs, device)
            if base_fwd is None:
                base_fwd, base_fb = fwd, fb
            row = dict(op=case.op, size=case.size, provider=name, device=device_name(device),
                       fwd_ms=fwd * 1e3, fwd_bwd_ms=fb * 1e3, speedup_fwd=base_fwd / fwd,
                       speedup_fwd_bwd=base_fb / fb, memory_mib=mem / 2**20)
            if case.bytes_moved is not None:
                row["fwd_gbps"] = case.bytes_moved / fwd / 1e9
                if copy_gbps:
                    row["fwd_fraction_of_copy_bw"] = row["fwd_gbps"] / copy_gbps
            rows.append(row)
            print(f"{case.op:22s} {case.size:28s} {name:12s} fwd {fwd*1e3:9.3f} ms  fwd+bwd {fb*1e3:9.3f} ms"
                  f"  x{base_fb/fb:5.2f}  mem {mem/2**20:8.2f} MiB", flush=True)
    return rows


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def write_csv(rows: list[dict], name: str) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_plot(rows: list[dict], name: str) -> pathlib.Path:
    """Bar chart of forward+backward speed-up over the reference per case and provider (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["op"], r["size"]) for r in rows))
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != "reference"]
    width = 0.8 / max(len(providers), 1)
    fig, ax = plt.subplots(figsize=(min(30, max(6, 0.6 * len(cases))), 5))
    for i, provider in enumerate(providers):
        values = [next((r["speedup_fwd_bwd"] for r in rows if (r["op"], r["size"]) == c and r["provider"] == provider),
                       0.0) for c in cases]
        ax.bar([j + i * width for j in range(len(cases))], values, width, label=provider)
    ax.set_yscale("log")  # speed-ups span 0.5x to 50x
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(providers) - 1) / 2 for j in range(len(cases))])
    ax.set_xticklabels([f"{op}\n{size}" for op, size in cases], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("fwd+bwd speed-up vs eager reference")
    ax.set_title(f"{name} on {rows[0]['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(cases_fn: Callable[..., list[Case]], name: str) -> None:
    """Command line of a per-op script: --device, --dtype, --quick, --min-run-time."""
    parser = argparse.ArgumentParser(description=f"Benchmark {name}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--quick", action="store_true", help="small sizes, short timing (smoke test)")
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.compile of the reference (default: on for CUDA)")
    args = parser.parse_args()
    compiled = args.device.startswith("cuda") if args.compiled is None else args.compiled
    import fremure_ext  # noqa: F401  (registers the ops)

    rows = run_cases(cases_fn(args.device, getattr(torch, args.dtype), args.quick), args.device,
                     0.05 if args.quick else args.min_run_time, compiled)
    tag = f"{name}_{args.device.split(':')[0]}"
    print("wrote", write_csv(rows, tag), write_plot(rows, tag))
