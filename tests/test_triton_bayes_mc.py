"""Triton bayes_mc kernels (interpreter on CPU, real GPU when present) vs the reference formula."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_triton, triton_device

pytestmark = requires_triton


def _reference(mu, logvar, noise, activation):
    act = (lambda z: torch.softmax(z, -1)) if activation == "softmax" else torch.sigmoid
    if noise is None:
        return act(mu)
    std = torch.sqrt(torch.exp(logvar))
    return torch.stack([act(mu + eps * std) for eps in noise]).mean(0)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("shape", [(11, 3), (37, 17), (0, 6), (1, 6), (70, 6)])
@pytest.mark.parametrize("with_noise", [False, True])
def test_forward_backward_match_reference(activation, shape, with_noise):
    from fremure_ext.triton.bayes_mc import bayes_mc_backward, bayes_mc_forward

    dev = triton_device()
    gen = torch.Generator().manual_seed(sum(shape))
    mu = torch.randn(*shape, generator=gen).to(dev).requires_grad_()
    logvar = (torch.randn(*shape, generator=gen) * 0.5).to(dev).requires_grad_()
    noise = torch.randn(6, *shape, generator=gen).to(dev) if with_noise else None
    out = bayes_mc_forward(mu.detach(), logvar.detach(), noise, None, 6, activation)
    ref = _reference(mu, logvar, noise, activation)
    torch.testing.assert_close(out, ref.detach(), atol=1e-6, rtol=1e-5)
    grad = torch.randn(*shape, generator=gen).to(dev)
    dmu, dlogvar = bayes_mc_backward(grad, mu.detach(), logvar.detach(), noise, None, 6, activation)
    rmu, rlogvar = torch.autograd.grad((ref * grad).sum(), [mu, logvar], allow_unused=True)
    torch.testing.assert_close(dmu, rmu, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dlogvar, torch.zeros_like(dlogvar) if rlogvar is None else rlogvar, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_seed_mode_equals_explicit_philox_noise(activation):
    from fremure_ext.triton.bayes_mc import bayes_mc_backward, bayes_mc_forward
    from fremure_ext.triton.philox import philox_randn

    dev = triton_device()
    mu, logvar = torch.randn(9, 17, device=dev), torch.randn(9, 17, device=dev)
    noise = philox_randn(1234, (6, 9, 17), dev)
    torch.testing.assert_close(bayes_mc_forward(mu, logvar, None, 1234, 6, activation),
                               bayes_mc_forward(mu, logvar, noise, None, 6, activation), atol=1e-6, rtol=1e-5)
    grad = torch.randn(9, 17, device=dev)
    for a, b in zip(bayes_mc_backward(grad, mu, logvar, None, 1234, 6, activation),
                    bayes_mc_backward(grad, mu, logvar, noise, None, 6, activation)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    other = bayes_mc_forward(mu, logvar, None, 1235, 6, activation)
    assert not torch.equal(other, bayes_mc_forward(mu, logvar, None, 1234, 6, activation))


def test_philox_noise_is_standard_normal():
    from fremure_ext.triton.philox import philox_randn

    z = philox_randn(7, (64, 256), triton_device())
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


@pytest.mark.parametrize("args, exc, match", [
    ((torch.randn(4, 5), torch.randn(4, 6), None, None, 6, "sigmoid"), ValueError, "logvar"),
    ((torch.randn(4, 5), torch.randn(4, 5).double(), None, None, 6, "sigmoid"), TypeError, "logvar"),
    ((torch.randn(4, 5), torch.randn(4, 5), None, None, 0, "sigmoid"), ValueError, "samples"),
    ((torch.randn(4, 5), torch.randn(4, 5), None, None, 6, "gelu"), ValueError, "activation"),
])
def test_launcher_checks_its_inputs(args, exc, match):
    """The launcher has no C++ in front of it: it runs the op's Python check (check_bayes_mc)."""
    from fremure_ext.triton.bayes_mc import bayes_mc_backward, bayes_mc_forward

    args = tuple(a.to(triton_device()) if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(exc, match=match):
        bayes_mc_forward(*args)
    with pytest.raises(exc, match=match):
        bayes_mc_backward(torch.ones_like(args[0]), *args)
