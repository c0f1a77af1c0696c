"""gmm_mixture: the GMM-Plus relation head's mixture of K Gaussian components (docs/method.md 4)."""

from __future__ import annotations

import math

import torch

from .. import reference as _reference
from ..dispatch import compiled
from ._common import check_float, check_like, check_shape
from ._heads_common import check_head_args, check_head_types

__all__ = ["gmm_mixture"]


def gmm_mixture(mu: torch.Tensor, var_raw: torch.Tensor, pi_logit: torch.Tensor, tau: torch.Tensor | float,
                noise: torch.Tensor | None = None, seed: int | None = None, var_eps: float = 1e-6,
                var_floor: float = 1e-3, var_ceiling: float = 5.0, activation: str = "sigmoid",
                uncertainty: bool = False):
    """Mixture prediction of the GMM-Plus head from its K per-component projections.

    For each pair b, class c and component k::

        var_k   = clamp(softplus(var_raw_k) + var_eps, var_floor, var_ceiling)
        logit_k = mu_k + eps_k * sqrt(var_k)   (training: eps from ``noise`` or ``seed``)
                = mu_k                         (evaluation: neither given)
        pi      = softmax over k of pi_logit   (class-wise mixture weights)
        pred    = sum_k pi_k * act(logit_k / max(tau, 1e-3))

    Args:
        mu, var_raw, pi_logit: ``[K, B, C]`` float tensors (K >= 1) of one dtype and device; any
            strides, e.g. component-major views of one packed projection GEMM output.
            float16/bfloat16 accumulate in float32.
        tau: temperature, a 0-dim or ``[1]`` float tensor (a learnable parameter) or a number.
        noise: optional ``[K, B, C]`` standard normals (``noise[k]`` is component k's eps), same
            dtype/device as ``mu``; receives no gradient.
        seed: optional int; the kernel draws ``eps[k, b, c] = tl.randn(seed, (k*B + b)*C + c)``
            (Philox4x32-10, see ``fremure_ext.reference.philox.philox_normal``) and redraws it in
            the backward instead of storing it. Exclusive with ``noise``.
        var_eps, var_floor, var_ceiling: variance shaping (0 < var_floor <= var_ceiling).
        activation: ``"sigmoid"`` (per class, the published head) or ``"softmax"`` (over C).
        uncertainty: also return the aleatoric uncertainty
            ``sum_k pi_k / (1 + var_k) - sum_k pi_k ln(max(pi_k, 1e-9))``.

    Returns:
        pred ``[B, C]``, or ``(pred, aleatoric)`` with both ``[B, C]`` when ``uncertainty``.
        Differentiable in mu, var_raw, pi_logit and tau (aleatoric too; detach it for the
        published head's no-grad uncertainty). NaN/inf inputs propagate (:mod:`fremure_ext.finite`).
    """
    for t, name in ((mu, "mu"), (var_raw, "var_raw"), (pi_logit, "pi_logit")):
        check_float(t, name)
    if isinstance(tau, (int, float)) and not isinstance(tau, bool):
        tau = torch.tensor(float(tau), dtype=mu.dtype, device=mu.device)
    check_float(tau, "tau")
    seed = check_head_types(noise, seed, activation)
    args = (mu, var_raw, pi_logit, tau, noise, seed, float(var_eps), float(var_floor), float(var_ceiling), activation,
            bool(uncertainty))
    if not compiled("gmm_mixture", mu.device):
        check_gmm_mixture(*args)
        return _reference.gmm_mixture(*args)
    pred, aleatoric = torch.ops.fremure.gmm_mixture(*args)
    return (pred, aleatoric) if uncertainty else pred


def check_gmm_mixture(mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling, activation,
                      uncertainty=False) -> None:
    """What the C++ kernel checks, for the paths without one: the fake kernel, the Triton launcher
    and the reference fallback (device, dtype, shape and argument values; no tensor data read)."""
    check_float(mu, "mu")
    check_shape(mu.dim() == 3 and mu.shape[0] >= 1, "mu", "[K, B, C] with K >= 1", mu)
    check_like(mu, "mu", var_raw, "var_raw", shape=True)
    check_like(mu, "mu", pi_logit, "pi_logit", shape=True)
    check_float(tau, "tau")
    check_like(mu, "mu", tau, "tau", dtype=False)
    check_shape(tau.numel() == 1 and tau.dim() <= 1, "tau", "a scalar tensor (0-dim or [1])", tau)
    check_head_args(mu, noise, seed, mu.shape, "[K, B, C]", activation)
    if not (math.isfinite(var_eps) and var_eps >= 0):
        raise ValueError(f"var_eps must be finite and >= 0, got {var_eps}")
    if not (math.isfinite(var_floor) and math.isfinite(var_ceiling) and 0 < var_floor <= var_ceiling):
        raise ValueError(f"var_floor and var_ceiling must satisfy 0 < var_floor <= var_ceiling, "
                         f"got {var_floor} and {var_ceiling}")


def check_gmm_mixture_backward(grad_pred, grad_aleatoric, mu, var_raw, pi_logit, tau, noise, seed, var_eps,
                               var_floor, var_ceiling, activation) -> None:
    check_gmm_mixture(mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling, activation)
    check_like(mu, "mu", grad_pred, "grad_pred")
    check_shape(grad_pred.shape == mu.shape[1:], "grad_pred", f"[B, C] = {tuple(mu.shape[1:])}", grad_pred)
    check_like(mu, "mu", grad_aleatoric, "grad_aleatoric")
    if grad_aleatoric is not None and grad_aleatoric.numel() != 0:
        check_shape(grad_aleatoric.shape == mu.shape[1:], "grad_aleatoric", f"[B, C] = {tuple(mu.shape[1:])}",
                    grad_aleatoric)


@torch.library.register_fake("fremure::gmm_mixture")
def _fake(mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling, activation, uncertainty):
    check_gmm_mixture(mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling, activation)
    _, b, c = mu.shape
    pred = mu.new_empty((b, c))
    aleatoric = mu.new_empty((b, c)) if uncertainty else mu.new_empty((0,))
    return pred, aleatoric


@torch.library.register_fake("fremure::gmm_mixture_backward")
def _fake_backward(grad_pred, grad_aleatoric, mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor,
                   var_ceiling, activation):
    check_gmm_mixture_backward(grad_pred, grad_aleatoric, mu, var_raw, pi_logit, tau, noise, seed, var_eps,
                               var_floor, var_ceiling, activation)
    return (mu.new_empty(mu.shape), mu.new_empty(mu.shape), mu.new_empty(mu.shape),
            torch.empty_like(tau, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling, activation, uncertainty = inputs
    ctx.save_for_backward(mu, var_raw, pi_logit, tau, noise)
    ctx.config = (seed, var_eps, var_floor, var_ceiling, activation, uncertainty)
    # Unused outputs (usually aleatoric) arrive as None instead of zero tensors.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_pred, grad_aleatoric):
    mu, var_raw, pi_logit, tau, noise = ctx.saved_tensors
    seed, var_eps, var_floor, var_ceiling, activation, uncertainty = ctx.config
    if not uncertainty:
        grad_aleatoric = None
    if grad_pred is None and grad_aleatoric is None:
        return (None,) * 11
    if grad_pred is None:
        grad_pred = mu.new_zeros(mu.shape[1:])
    grads = torch.ops.fremure.gmm_mixture_backward(  # (g_mu, g_raw, g_pi, g_tau)
        grad_pred, grad_aleatoric, mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling,
        activation)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4])), *(None,) * 7)


torch.library.register_autograd("fremure::gmm_mixture", _backward, setup_context=_setup_context)
