"""Triton gmm_mixture kernels (interpreter on CPU, real GPU when present) vs the GMM-Plus formula
written with plain torch (component by component, as the published head computes it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_triton, triton_device

pytestmark = requires_triton


def _gmm_plus(mu, var_raw, pi_logit, tau, noise, activation):
    act = torch.sigmoid if activation == "sigmoid" else (lambda z: F.softmax(z, -1))
    var = (F.softplus(var_raw) + 1e-6).clamp(1e-3, 5.0)
    pi = torch.softmax(pi_logit, dim=0)
    logits = mu if noise is None else mu + noise * torch.sqrt(var)
    pred = (pi * act(logits / tau.clamp_min(1e-3))).sum(0)
    alea = (pi / (1 + var)).sum(0) - (pi * pi.clamp_min(1e-9).log()).sum(0)
    return pred, alea


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("k, b, c", [(4, 11, 6), (6, 30, 17), (1, 5, 3), (3, 0, 6)])
@pytest.mark.parametrize("with_noise", [False, True])
@pytest.mark.parametrize("with_aleatoric_grad", [False, True])
def test_forward_backward_match_formula(activation, k, b, c, with_noise, with_aleatoric_grad):
    from fremure_ext.triton.gmm_mixture import gmm_mixture_backward, gmm_mixture_forward

    dev = triton_device()
    gen = torch.Generator().manual_seed(k * 100 + b + c)
    # Spread var_raw so that some variances hit the floor/ceiling clamps and softplus's threshold.
    mu = torch.randn(k, b, c, generator=gen).to(dev).requires_grad_()
    var_raw = (torch.randn(k, b, c, generator=gen) * 8).to(dev).requires_grad_()
    pi_logit = torch.randn(k, b, c, generator=gen).to(dev).requires_grad_()
    tau = torch.tensor(0.8, device=dev, requires_grad=True)
    noise = torch.randn(k, b, c, generator=gen).to(dev) if with_noise else None
    args = (1e-6, 1e-3, 5.0, activation)
    pred, alea = gmm_mixture_forward(mu.detach(), var_raw.detach(), pi_logit.detach(), tau.detach(), noise, None,
                                     *args, True)
    ref_pred, ref_alea = _gmm_plus(mu, var_raw, pi_logit, tau, noise, activation)
    torch.testing.assert_close(pred, ref_pred.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alea, ref_alea.detach(), atol=1e-5, rtol=1e-4)
    if b == 0:
        return
    g_pred = torch.randn(b, c, generator=gen).to(dev)
    g_alea = torch.randn(b, c, generator=gen).to(dev) if with_aleatoric_grad else None
    grads = gmm_mixture_backward(g_pred, g_alea, mu.detach(), var_raw.detach(), pi_logit.detach(), tau.detach(),
                                 noise, None, *args)
    loss = (ref_pred * g_pred).sum() + ((ref_alea * g_alea).sum() if g_alea is not None else 0)
    want = torch.autograd.grad(loss, [mu, var_raw, pi_logit, tau], allow_unused=True)
    for got, expected in zip(grads, want):
        expected = torch.zeros_like(got) if expected is None else expected  # eval: var_raw unused
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


def test_seed_mode_equals_explicit_philox_noise():
    from fremure_ext.triton.gmm_mixture import gmm_mixture_backward, gmm_mixture_forward
    from fremure_ext.triton.philox import philox_randn

    dev = triton_device()
    mu, var_raw, pi_logit = (torch.randn(6, 9, 17, device=dev) for _ in range(3))
    tau = torch.tensor(1.0, device=dev)
    noise = philox_randn(99, (6, 9, 17), dev)
    args = (1e-6, 1e-3, 5.0, "sigmoid")
    seeded = gmm_mixture_forward(mu, var_raw, pi_logit, tau, None, 99, *args, True)
    explicit = gmm_mixture_forward(mu, var_raw, pi_logit, tau, noise, None, *args, True)
    for a, b in zip(seeded, explicit):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    g = torch.randn(9, 17, device=dev)
    for a, b in zip(gmm_mixture_backward(g, None, mu, var_raw, pi_logit, tau, None, 99, *args),
                    gmm_mixture_backward(g, None, mu, var_raw, pi_logit, tau, noise, None, *args)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_clamped_tau_gets_no_gradient():
    from fremure_ext.triton.gmm_mixture import gmm_mixture_backward

    dev = triton_device()
    mu, var_raw, pi_logit = (torch.randn(2, 3, 4, device=dev) for _ in range(3))
    grads = gmm_mixture_backward(torch.ones(3, 4, device=dev), None, mu, var_raw, pi_logit,
                                 torch.tensor(1e-4, device=dev), None, None, 1e-6, 1e-3, 5.0, "sigmoid")
    assert grads[3].item() == 0.0
