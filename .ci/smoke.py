"""Smoke test of an installed fremure (run by .ci/run from a folder outside the checkout, with the
interpreter of the venv the wheel went into): the package imports from site-packages, the wheel's
torch pin holds, the CUDA sources were compiled when nvcc exists, and every op runs once on the
CPU forward and backward against its pure-PyTorch reference."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys

import torch
from packaging.requirements import Requirement

import fremure
import fremure_ext
from fremure_ext import reference as ref


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


def _pair(op, ref_op, inputs, diff=None, **kwargs):
    """op and reference once, forward and backward, on copies of the same inputs; the first
    ``diff`` (default: every float input) receive gradients."""
    results = []
    diff = len(inputs) if diff is None else diff
    for fn in (op, ref_op):
        leaves = [t.detach().clone().requires_grad_(i < diff and t.is_floating_point()) for i, t in enumerate(inputs)]
        out = fn(*leaves, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        out.square().sum().backward()
        results.append((out.detach(), [t.grad for t in leaves if t.requires_grad]))
    (out, grads), (out_ref, grads_ref) = results
    torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-4)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-3, rtol=1e-3)


def check_ops() -> None:
    torch.manual_seed(0)
    n, d = 12, 32
    _pair(fremure_ext.freq_gate_blend, ref.freq_gate_blend, [torch.randn(n, d), torch.rand(d)])
    _pair(fremure_ext.gated_fusion, ref.gated_fusion,
          [torch.randn(n, d), torch.randn(n, d), torch.randn(n, 8), torch.randn(d, 2 * d + 8) * 0.1, torch.randn(d)])
    offsets = torch.tensor([0, 3, 5, 9, 12])
    pack = fremure_ext.window_pack(torch.randn(n, d), offsets, 2)
    pack_ref = ref.window_pack(torch.randn(n, d), offsets, 2)
    torch.testing.assert_close(pack.src_index, pack_ref[1])
    _pair(lambda x: fremure_ext.window_pack(x, offsets, 2).out, lambda x: ref.window_pack(x, offsets, 2)[0],
          [torch.randn(n, d)])
    rows = pack.out.shape[0]
    _pair(lambda y: fremure_ext.window_unpack(y, pack.src_index, None, n, "mean"),
          lambda y: ref.window_unpack(y, pack.src_index, None, n, "mean"), [torch.randn(rows, d)])
    seg = torch.tensor([0, 4, 4, 10, 12])
    _pair(fremure_ext.segment_attention, ref.segment_attention,
          [torch.randn(n, 2, 16), torch.randn(n, 2, 16), torch.randn(n, 2, 16), seg])
    # the noise tensors receive no gradient
    _pair(lambda mu, v, pi, eps: fremure_ext.gmm_mixture(mu, v, pi, 1.0, eps),
          lambda mu, v, pi, eps: ref.gmm_mixture(mu, v, pi, torch.tensor(1.0), eps),
          [torch.randn(6, n, 5), torch.randn(6, n, 5), torch.randn(6, n, 5), torch.randn(6, n, 5)], diff=3)
    _pair(fremure_ext.bayes_mc, ref.bayes_mc, [torch.randn(n, 5), torch.randn(n, 5), torch.randn(6, n, 5)], diff=2)
    print("every op ran once on the CPU, forward and backward, and matched its reference")


if __name__ == "__main__":
    check_install(sys.argv[1])
    check_ops()
