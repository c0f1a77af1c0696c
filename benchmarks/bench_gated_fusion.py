"""Benchmark gated_fusion: providers reference (eager), ops, and gemm (the bare Linear of the same
shape, [N, 2D + 64] x [2D + 64, D]^T plus a bias, gradients to its input and weight), which is the
floor any implementation of the gate pays. AG-realistic N (pairs per video batch), D = 1936."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from _harness import Case, main

import fremure_ext
from fremure_ext import reference

COND_DIM = 64
SCALARS = (1.5, 0.02, 0.98)  # temperature, lo, hi of the published model


def cases(device: str = "cpu", dtype: torch.dtype = torch.float32, quick: bool = False) -> list[Case]:
    d = 1936
    rows = [60] if quick else [60, 200, 600]
    out = []
    for n in rows:
        g = torch.Generator(device="cpu").manual_seed(n)

        def make(*shape, scale=1.0):
            t = torch.randn(*shape, generator=g) * scale
            return t.to(device=device, dtype=dtype).requires_grad_()

        head, tail = make(n, d), make(n, d)
        cond = make(COND_DIM)
        k = 2 * d + COND_DIM
        weight, bias = make(d, k, scale=k ** -0.5), make(d, scale=0.1)
        gemm_x = make(n, k)
        gemm_bias = bias.detach()
        out.append(Case(
            op="gated_fusion", size=f"N={n} D={d} Dc={COND_DIM}", inputs=[head, tail, cond, weight, bias, gemm_x],
            providers={
                "reference": lambda h=head, t=tail, c=cond, w=weight, b=bias:
                    reference.gated_fusion(h, t, c, w, b, *SCALARS),
                "ops": lambda h=head, t=tail, c=cond, w=weight, b=bias:
                    fremure_ext.gated_fusion(h, t, c, w, b, *SCALARS),
                "gemm": lambda x=gemm_x, w=weight, b=gemm_bias: F.linear(x, w, b),
            },
            bytes_moved=(3 * n * d + d * k) * head.element_size()))
    return out


if __name__ == "__main__":
    main(cases, "gated_fusion")
