"""Benchmark bayes_mc (Bayesian head Monte-Carlo mean, training step): providers reference (eager,
one draw at a time as the published head, explicit noise), ops (explicit noise), ops_seed (noise
drawn in the kernel, never stored, redrawn in the backward), and reference_randn (eager plus the
torch.randn draws of the published head). AG-realistic sizes: B = 60..600 pairs, C = 3/6/17,
S = 6; softmax for the 3 attention classes, sigmoid otherwise (as the published head)."""

from __future__ import annotations

import torch

from _harness import Case, main

import fremure_ext
from fremure_ext import reference

S = 6


def cases(device: str = "cpu", dtype: torch.dtype = torch.float32, quick: bool = False) -> list[Case]:
    sizes = [(60, 17)] if quick else [(b, c) for b in (60, 200, 600) for c in (3, 6, 17)]
    out = []
    for b, c in sizes:
        g = torch.Generator(device=device).manual_seed(b * 100 + c)
        mu = (torch.randn(b, c, generator=g, device=device, dtype=dtype) * 2).requires_grad_()
        logvar = torch.randn(b, c, generator=g, device=device, dtype=dtype).requires_grad_()
        noise = torch.randn(S, b, c, generator=g, device=device, dtype=dtype)
        act = "softmax" if c == 3 else "sigmoid"
        out.append(Case(
            op="bayes_mc", size=f"S={S} B={b} C={c} {act}", inputs=[mu, logvar],
            providers={
                "reference": lambda m=mu, lv=logvar, n=noise, a=act: reference.bayes_mc(m, lv, n, samples=S,
                                                                                          activation=a),
                "ops": lambda m=mu, lv=logvar, n=noise, a=act: fremure_ext.bayes_mc(m, lv, n, samples=S,
                                                                                     activation=a),
                "ops_seed": lambda m=mu, lv=logvar, a=act: fremure_ext.bayes_mc(m, lv, seed=1234, samples=S,
                                                                                 activation=a),
                "reference_randn": lambda m=mu, lv=logvar, a=act: reference.bayes_mc(
                    m, lv, torch.randn(S, *m.shape, device=m.device, dtype=m.dtype), samples=S, activation=a),
            },
            bytes_moved=(3 * b * c + S * b * c) * mu.element_size()))
    return out


if __name__ == "__main__":
    main(cases, "bayes_mc")
