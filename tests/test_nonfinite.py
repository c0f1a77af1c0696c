"""One rule for NaN/inf in the ops' tensor inputs (fremure_ext.finite, docs/ops.md): they propagate
as through the PyTorch references, on every kernel; ``fremure_ext.check_finite()`` raises at the first
op given one, naming the op and the argument. Scalar options stay checked (window, below)."""

from __future__ import annotations

import pytest
import torch

import fremure_ext
from fremure_ext.dispatch import use_kernels
from fremure_ext.registry import OPS

from conftest import requires_triton
from op_examples import example, fremure_calls

NAMES = [op.name for op in OPS]
BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def _poisoned(name: str, index: int, bad: float):
    fn, tensors = example(name, torch.float32, small=True)
    tensors = [t.clone() for t in tensors]
    flat = tensors[index].view(-1)
    flat[flat.numel() // 2] = bad
    return fn, tensors


def _cases():
    for op in OPS:
        _, tensors = example(op.name, torch.float32, small=True)
        for index in range(len(tensors)):
            for label in BAD:
                yield pytest.param(op.name, index, BAD[label], id=f"{op.name}-arg{index}-{label}")


def _outputs_and_grads(fn, tensors, kernels: str):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    with use_kernels(kernels):
        outs = _tensors(fn(*leaves))
        differentiable = [o for o in outs if o.requires_grad]
        grads = torch.autograd.grad(differentiable, leaves, [torch.ones_like(o) for o in differentiable],
                                    allow_unused=True)
    return [o.detach() for o in outs], [g for g in grads if g is not None]


def _assert_same_nonfinite(got: list[torch.Tensor], want: list[torch.Tensor], what: str, exact: bool = True):
    """Non-finite where the reference is (``exact``) or only there (gradients: a kernel that skips a
    zero factor stays finite where the reference computes 0 * NaN); equal values where both are finite."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        ours, theirs = ~torch.isfinite(g), ~torch.isfinite(w)
        wrong = ours != theirs if exact else ours & ~theirs
        assert not wrong.any(), f"{what} {i}: non-finite at {torch.nonzero(ours).tolist()}, " \
                                f"reference at {torch.nonzero(theirs).tolist()}"
        both = ~(ours | theirs)
        torch.testing.assert_close(g[both], w[both], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name, index, bad", _cases())
def test_non_finite_inputs_propagate_as_in_the_reference(name, index, bad):
    fn, tensors = _poisoned(name, index, bad)
    outs, grads = _outputs_and_grads(fn, tensors, "ops")
    want_outs, want_grads = _outputs_and_grads(fn, tensors, "reference")
    _assert_same_nonfinite(outs, want_outs, "output")
    _assert_same_nonfinite(grads, want_grads, "gradient", exact=False)


@requires_triton
@pytest.mark.parametrize("name", [op.name for op in OPS if op.triton])
@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
def test_triton_forward_propagates_as_the_cpu_kernel(name, bad):
    import importlib

    launcher = getattr(importlib.import_module(f"fremure_ext.triton.{_module(name)}"), f"{name}_forward")
    _, tensors = example(name, torch.float32, small=True)
    for index in range(len(tensors)):
        fn, poisoned = _poisoned(name, index, bad)
        for func, args, kwargs in fremure_calls(fn, poisoned):
            want = _tensors(func(*args, **kwargs))
            got = _tensors(launcher(*args, **kwargs))[:len(want)]
            _assert_same_nonfinite(got, want, f"{name} input {index} output")


def _module(name: str) -> str:
    return next(op.module for op in OPS if op.name == name)


@pytest.mark.parametrize("name", NAMES)
def test_check_mode_names_the_op_and_the_argument(name):
    _, tensors = example(name, torch.float32, small=True)
    for index in range(len(tensors)):
        fn, poisoned = _poisoned(name, index, float("nan"))
        (func, args, kwargs), = fremure_calls(fn, poisoned)
        argument = next(a.name for a, v in zip(func._schema.arguments, args) if v is poisoned[index])
        with fremure_ext.check_finite(), pytest.raises(ValueError, match=rf"fremure\.{name}: {argument} contains NaN"):
            fn(*poisoned)


@pytest.mark.parametrize("name", NAMES)
def test_check_mode_checks_the_backward_and_passes_finite_calls(name):
    fn, tensors = example(name, torch.float32, small=True)
    leaves = [t.requires_grad_() for t in tensors]
    with fremure_ext.check_finite():
        outs = [o for o in _tensors(fn(*leaves)) if o.requires_grad]
        torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs], allow_unused=True)
        outs = [o for o in _tensors(fn(*leaves)) if o.requires_grad]
        with pytest.raises(ValueError, match=rf"fremure\.{name}_backward: grad_\w+ contains NaN"):
            torch.autograd.grad(outs, leaves, [torch.full_like(o, float("nan")) for o in outs], allow_unused=True)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("window", [2**31, 2**62])
def test_window_pack_refuses_a_window_past_int32_naming_it(window, padded):
    x, offsets = torch.randn(5, 3), torch.tensor([0, 2, 5])
    for call in (torch.ops.fremure.window_pack, fremure_ext.window_pack):
        with pytest.raises(ValueError, match=r"window must be <= 2147483647 \(2\*\*31 - 1\), got"):
            call(x, offsets, window, 1, padded)
