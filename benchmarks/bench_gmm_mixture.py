"""Benchmark gmm_mixture (GMM-Plus mixture, training step): providers reference (eager, as the
published head computes it, explicit noise), ops (explicit noise), ops_seed (noise drawn in the
kernel and redrawn in the backward), and reference_randn (eager plus the torch.randn draw the
published head makes every step). AG-realistic sizes: B = 60..600 pairs, C = 3/6/17, K = 6."""

from __future__ import annotations

import torch

from _harness import Case, main

import fremure_ext
from fremure_ext import reference

K = 6


def cases(device: str = "cpu", dtype: torch.dtype = torch.float32, quick: bool = False) -> list[Case]:
    sizes = [(60, 17)] if quick else [(b, c) for b in (60, 200, 600) for c in (3, 6, 17)]
    out = []
    for b, c in sizes:
        g = torch.Generator(device=device).manual_seed(b * 100 + c)

        def leaf(scale: float) -> torch.Tensor:
            t = torch.randn(K, b, c, generator=g, device=device, dtype=dtype) * scale
            return t.requires_grad_()

        mu, var_raw, pi_logit = leaf(2.0), leaf(2.0), leaf(2.0)
        tau = torch.tensor(0.8, device=device, dtype=dtype, requires_grad=True)
        noise = torch.randn(K, b, c, generator=g, device=device, dtype=dtype)
        args = (mu, var_raw, pi_logit, tau)
        out.append(Case(
            op="gmm_mixture", size=f"K={K} B={b} C={c}", inputs=list(args),
            providers={
                "reference": lambda a=args, n=noise: reference.gmm_mixture(*a, noise=n),
                "ops": lambda a=args, n=noise: fremure_ext.gmm_mixture(*a, noise=n),
                "ops_seed": lambda a=args: fremure_ext.gmm_mixture(*a, seed=1234),
                "reference_randn": lambda a=args: reference.gmm_mixture(*a, noise=torch.randn_like(a[0])),
            },
            bytes_moved=(4 * K * b * c + b * c) * mu.element_size()))
    return out


if __name__ == "__main__":
    main(cases, "gmm_mixture")
