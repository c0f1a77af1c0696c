"""bayes_mc: the Bayesian relation head's Monte-Carlo mean over S samples (docs/method.md 4)."""

from __future__ import annotations

import torch

from .. import reference as _reference
from ..dispatch import compiled
from ._common import check_float, check_like, check_number, check_shape
from ._heads_common import check_head_args, check_head_types

__all__ = ["bayes_mc"]


def bayes_mc(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None, seed: int | None = None,
             samples: int = 6, activation: str = "sigmoid") -> torch.Tensor:
    """Mean over ``samples`` Monte-Carlo draws of ``act(mu + eps * sqrt(exp(logvar)))``.

    Args:
        mu, logvar: ``[B, C]`` float tensors of one dtype and device (any strides);
            float16/bfloat16 accumulate in float32.
        noise: optional ``[samples, B, C]`` standard normals (``noise[s]`` is draw s's eps), same
            dtype/device as ``mu``; receives no gradient.
        seed: optional int; the kernel draws ``eps[s, b, c] = tl.randn(seed, (s*B + b)*C + c)``
            (Philox4x32-10, see ``fremure_ext.reference.philox.philox_normal``) without ever
            storing the ``[samples, B, C]`` noise, and redraws it in the backward. Exclusive with
            ``noise``. With neither, the head is in evaluation mode: ``act(mu)``.
        samples: number of draws S >= 1 (must equal ``noise.shape[0]`` when noise is given).
        activation: ``"sigmoid"`` (per class) or ``"softmax"`` (over C; the attention head).

    Returns:
        ``[B, C]`` tensor, differentiable in mu and logvar. NaN/inf inputs propagate
        (:mod:`fremure_ext.finite`).
    """
    check_float(mu, "mu")
    check_float(logvar, "logvar")
    check_number(samples, "samples", (int, torch.SymInt))
    seed = check_head_types(noise, seed, activation)
    if not compiled("bayes_mc", mu.device):
        check_bayes_mc(mu, logvar, noise, seed, samples, activation)
        return _reference.bayes_mc(mu, logvar, noise, seed, samples, activation)
    return torch.ops.fremure.bayes_mc(mu, logvar, noise, seed, samples, activation)


def check_bayes_mc(mu, logvar, noise, seed, samples, activation) -> None:
    """What the C++ kernel checks, for the paths without one: the fake kernel, the Triton launcher
    and the reference fallback (device, dtype, shape and argument values; no tensor data read)."""
    check_float(mu, "mu")
    check_shape(mu.dim() == 2, "mu", "[B, C] (2 dimensions)", mu)
    check_like(mu, "mu", logvar, "logvar", shape=True)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    check_head_args(mu, noise, seed, (samples, *mu.shape), "[samples, B, C]", activation)


def check_bayes_mc_backward(grad_out, mu, logvar, noise, seed, samples, activation) -> None:
    check_bayes_mc(mu, logvar, noise, seed, samples, activation)
    check_like(mu, "mu", grad_out, "grad_out", shape=True)


@torch.library.register_fake("fremure::bayes_mc")
def _fake(mu, logvar, noise, seed, samples, activation):
    check_bayes_mc(mu, logvar, noise, seed, samples, activation)
    return mu.new_empty(mu.shape)


@torch.library.register_fake("fremure::bayes_mc_backward")
def _fake_backward(grad_out, mu, logvar, noise, seed, samples, activation):
    check_bayes_mc_backward(grad_out, mu, logvar, noise, seed, samples, activation)
    return mu.new_empty(mu.shape), mu.new_empty(mu.shape)


def _setup_context(ctx, inputs, output):
    mu, logvar, noise, seed, samples, activation = inputs
    ctx.save_for_backward(mu, logvar, noise)
    ctx.config = (seed, samples, activation)


def _backward(ctx, grad_out):
    mu, logvar, noise = ctx.saved_tensors
    seed, samples, activation = ctx.config
    g_mu, g_lv = torch.ops.fremure.bayes_mc_backward(grad_out, mu, logvar, noise, seed, samples, activation)
    needs = ctx.needs_input_grad
    return g_mu if needs[0] else None, g_lv if needs[1] else None, None, None, None, None


torch.library.register_autograd("fremure::bayes_mc", _backward, setup_context=_setup_context)
