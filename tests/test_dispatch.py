"""The one kernel switch (fremure_ext.dispatch): which implementation an op runs, the context
manager, FREMURE_KERNELS, and the model on either implementation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fremure_ext
from fremure.model import GlocalTransformer

from conftest import FWD_TOL, GRAD_TOL

OP_NODE = "GeneratedBackwardFor_fremure_freq_gate_blend"


def blend_node() -> str:
    x = torch.randn(4, 8, requires_grad=True)
    return type(fremure_ext.freq_gate_blend(x, torch.rand(8)).grad_fn).__name__


def test_auto_runs_the_compiled_kernel_on_cpu():
    assert fremure_ext.dispatch.has_kernel("freq_gate_blend", "cpu")
    assert fremure_ext.dispatch.current() == "auto"
    assert blend_node().startswith(OP_NODE)


def test_use_kernels_switches_and_restores():
    with fremure_ext.dispatch.use_kernels("reference"):
        assert fremure_ext.dispatch.current() == "reference"
        assert not blend_node().startswith(OP_NODE)
        with fremure_ext.dispatch.use_kernels("ops"):
            assert blend_node().startswith(OP_NODE)
        assert not blend_node().startswith(OP_NODE)
    assert fremure_ext.dispatch.current() == "auto"


def test_bad_choice_is_rejected():
    with pytest.raises(ValueError, match="kernels must be one of 'auto', 'ops', 'reference'"):
        with fremure_ext.dispatch.use_kernels("fast"):
            pass
    assert fremure_ext.dispatch.current() == "auto"


@pytest.mark.parametrize("value,expected", [("reference", "reference"), ("ops", "ops"), ("", None)])
def test_environment_variable(value, expected):
    code = "import fremure_ext; print(fremure_ext.dispatch.current())"
    env = dict(os.environ, FREMURE_KERNELS=value, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if expected is None:
        assert done.returncode != 0 and "kernels must be one of" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == expected


def test_model_same_numbers_on_kernels_and_references():
    """The packed model run on the compiled kernels and on the references (every op switched)."""
    torch.manual_seed(0)
    model = GlocalTransformer(embed_dim=32, nhead=4, dim_feedforward=64, dec_layer_num=2, dropout=0.0,
                              mem_compute="joint").eval()
    gen = torch.Generator().manual_seed(1)
    memory = {r: torch.randn(c, 32, generator=gen) for r, c in (("attention", 3), ("spatial", 6), ("contacting", 17))}
    counts = torch.tensor([2, 3, 1, 2])
    im_idx = torch.repeat_interleave(torch.arange(4), counts).float()
    features = torch.randn(int(counts.sum()), 32, generator=gen)
    freq = torch.linspace(0.01, 0.2, 17)
    results = []
    for kernels in ("ops", "reference"):
        x = features.clone().requires_grad_()
        with fremure_ext.dispatch.use_kernels(kernels):
            out = model(x, im_idx, memory, "contact", freq)
        out.output.square().sum().backward()
        results.append((out.output, x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], **FWD_TOL)
    torch.testing.assert_close(results[0][1], results[1][1], **GRAD_TOL)
