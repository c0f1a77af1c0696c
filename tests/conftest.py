"""Shared test helpers: the golden fixtures of the published code and their tolerances."""

from __future__ import annotations

import os
import pathlib

import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors; the variable must be set
# before any kernel module is imported (triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Golden fixtures ship with the repo (tests/fixtures/reference, see its README); FREMURE_FIXTURES
# points the tests at another copy, e.g. freshly regenerated ones.
FIXTURES = pathlib.Path(os.environ.get("FREMURE_FIXTURES", REPO / "tests" / "fixtures" / "reference"))

# Tolerances the reference's own float32 arithmetic supports (fixtures README); never loosen.
FWD_TOL = dict(atol=1e-5, rtol=1e-4)
GRAD_TOL = dict(atol=1e-4, rtol=1e-3)

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none on this machine)")


def load_fixture(name: str) -> dict:
    """One golden fixture as a dict (``config``, ``state_dict``, ``inputs``, ``outputs``, ``grads``).

    A missing file fails the test: the fixtures are part of the repo, so a skip here would hide a
    broken checkout or a wrong FREMURE_FIXTURES behind a green run."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"golden fixture {path} not found (expected in tests/fixtures/reference, "
                    f"or under $FREMURE_FIXTURES when set)", pytrace=False)
    return torch.load(path, weights_only=True)


def triton_device() -> str:
    """Where Triton kernels run in tests: the GPU if there is one, else CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"


requires_triton = pytest.mark.skipif(
    __import__("importlib").util.find_spec("triton") is None, reason="triton is not installed")


def on_meta(value):
    """``value`` with every tensor in it (itself, or the items of a tuple, list or dict) moved to the
    meta device: the op then runs its fake kernel, the path with no C++ in front of it."""
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, dict):
        return {k: on_meta(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(on_meta(v) for v in value)
    return value


def kernel_only(*values) -> bool:
    """Whether a bad-input case (its args tuples / kwargs dicts) is one that only the compiled
    kernel can reject: it holds a meta tensor (a device mismatch that :func:`on_meta` would turn
    into a good call) or a NaN/inf (found by reading the data, which the Python checks never do)."""
    items = [v for value in values for v in (value.values() if isinstance(value, dict) else value)]
    tensors = [v for v in items if isinstance(v, torch.Tensor)]
    return any(t.is_meta or (t.is_floating_point() and not bool(torch.isfinite(t).all())) for t in tensors)


# Where the public wrappers go without the compiled C++ kernel: the reference fallback, and the
# fake kernel (meta tensors). Both must reject bad shapes and values as the kernel does.
NO_KERNEL_PATHS = ["reference", "meta"]


def call_without_kernel(path: str, fn, args=(), kwargs=None):
    """Calls the public wrapper ``fn`` on ``path`` (one of :data:`NO_KERNEL_PATHS`)."""
    import fremure_ext

    kwargs = kwargs or {}
    if path == "meta":
        return fn(*on_meta(args), **on_meta(kwargs))
    with fremure_ext.dispatch.use_kernels("reference"):
        return fn(*args, **kwargs)
