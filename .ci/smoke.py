"""Smoke test of an installed fremure (run by .ci/run from a folder outside the checkout, with the
interpreter of the venv the wheel went into): the package imports from site-packages, the wheel's
torch pin holds, the CUDA sources were compiled when nvcc exists, and every op of the registry runs
once on the CPU forward and backward against its pure-PyTorch reference."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys

import torch
from packaging.requirements import Requirement

import fremure
import fremure_ext
from fremure_ext.registry import OPS


def check_install(checkout: str) -> None:
    for module in (fremure, fremure_ext):
        where = os.path.realpath(module.__file__)
        assert not where.startswith(os.path.realpath(checkout) + os.sep), f"{module.__name__} imported from the checkout: {where}"
        assert os.sep + "site-packages" + os.sep in where, f"{module.__name__} not from site-packages: {where}"
        # the interpreter's own environment (the fresh venv), not a copy it inherits
        assert where.startswith(os.path.realpath(sys.prefix) + os.sep), f"{module.__name__} not from {sys.prefix}: {where}"
    dist = importlib.metadata.distribution("fremure")
    print("installed:", dist.version, "from", os.path.dirname(fremure_ext.__file__))
    pins = [Requirement(r) for r in dist.requires or [] if Requirement(r).name == "torch"]
    assert pins and all(str(p.specifier).startswith("==") for p in pins), f"torch not pinned: {dist.requires}"
    for pin in pins:
        assert pin.specifier.contains(torch.__version__), f"torch {torch.__version__} does not satisfy {pin}"
    label = dist.version.split("+", 1)[1]
    assert label.startswith("torch" + ".".join(torch.__version__.split(".")[:2])), dist.version
    assert dist.version.split("+")[0] == fremure.__version__ == fremure_ext.__version__
    info = fremure_ext.build_info()
    print("build_info:", info)
    if shutil.which("nvcc") and torch.version.cuda:
        assert info["cuda"], "nvcc is on PATH but the CUDA sources were not compiled"


def _run(fn, tensors, kernels: str):
    """``fn`` on fresh leaf copies of ``tensors`` with the kernel choice ``kernels``, forward and
    backward: (float outputs, gradients of the tensors)."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    with fremure_ext.dispatch.use_kernels(kernels):
        out = fn(*leaves)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point()]
    sum(o.square().sum() for o in outs).backward()
    return [o.detach() for o in outs], [t.grad for t in leaves]


def check_ops(checkout: str) -> None:
    """Every op of fremure_ext.registry on its example (tests/op_examples.py in the checkout): the
    compiled CPU kernel against the reference, forward and backward."""
    sys.path.insert(0, os.path.join(checkout, "tests"))
    from op_examples import example

    torch.manual_seed(0)
    for op in OPS:
        fn, tensors = example(op.name, torch.float32, small=True)
        (out, grads), (out_ref, grads_ref) = _run(fn, tensors, "ops"), _run(fn, tensors, "reference")
        for o, o_ref in zip(out, out_ref, strict=True):
            torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
        for g, g_ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(g, g_ref, atol=1e-3, rtol=1e-3)
        print("ran", op.name, "forward and backward on the CPU; matches its reference")
    print("every op of fremure_ext.registry ran once on the CPU, forward and backward, and matched its reference")


if __name__ == "__main__":
    check_install(sys.argv[1])
    check_ops(sys.argv[1])
