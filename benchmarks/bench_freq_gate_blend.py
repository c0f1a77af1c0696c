"""Benchmark freq_gate_blend: providers reference (eager) and ops, AG-realistic and large N."""

from __future__ import annotations

import torch

from _harness import Case, main

import fremure_ext
from fremure_ext import reference


def cases(device: str = "cpu", dtype: torch.dtype = torch.float32, quick: bool = False) -> list[Case]:
    sizes = [(60, 1936)] if quick else [(60, 1936), (600, 1936), (8192, 1936)]
    if device.startswith("cuda") and not quick:
        sizes.append((65536, 1936))
    out = []
    for n, d in sizes:
        x = torch.randn(n, d, device=device, dtype=dtype, requires_grad=True)
        gate = torch.rand(d, device=device, dtype=dtype, requires_grad=True)
        valid = torch.rand(n, device=device) > 0.1
        out.append(Case(
            op="freq_gate_blend", size=f"N={n} D={d}", inputs=[x, gate],
            providers={"reference": lambda x=x, g=gate, v=valid: reference.freq_gate_blend(x, g, v),
                       "ops": lambda x=x, g=gate, v=valid: fremure_ext.freq_gate_blend(x, g, v)},
            bytes_moved=2 * x.numel() * x.element_size() + valid.numel()))
    return out


if __name__ == "__main__":
    main(cases, "freq_gate_blend")
