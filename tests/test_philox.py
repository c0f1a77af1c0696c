"""Philox4x32-10 noise of the seeded head ops: equal to Triton's tl.randn, C++ and pure PyTorch alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fremure_ext
from fremure_ext.reference.philox import philox_normal, philox_uint32x4

SEEDS = [0, 1, 12345, 2**32 + 7, 2**63 - 1, -1]
# Offset blocks: the start of a tensor, and one straddling 2^32 (the counter's second word).
BASES = [0, 2**32 - 64]
N = 1024

# Runs under TRITON_INTERPRET=1 in a child process, so the interpreter setting cannot leak into
# other tests; prints the words and normals of every (seed, base) as JSON.
_TRITON_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def draw(normal_ptr, word0_ptr, word1_ptr, seed, base, n, BLOCK: tl.constexpr):
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        offset = base + idx.to(tl.int64)
        mask = idx < n
        tl.store(normal_ptr + idx, tl.randn(seed, offset), mask=mask)
        w0, w1, _, _ = tl.randint4x(seed, offset)
        tl.store(word0_ptr + idx, w0.to(tl.int64, bitcast=False) & 0xFFFFFFFF, mask=mask)
        tl.store(word1_ptr + idx, w1.to(tl.int64, bitcast=False) & 0xFFFFFFFF, mask=mask)

    seeds, bases, n = json.loads(sys.argv[1])
    out = {}
    for seed in seeds:
        for base in bases:
            normal = torch.empty(n, dtype=torch.float32)
            w0 = torch.empty(n, dtype=torch.int64)
            w1 = torch.empty(n, dtype=torch.int64)
            draw[(triton.cdiv(n, 256),)](normal, w0, w1, seed, base, n, BLOCK=256)
            out[f"{seed}/{base}"] = [normal.tolist(), w0.tolist(), w1.tolist()]
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def triton_draws():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT, json.dumps([SEEDS, BASES, N])], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"Triton interpreter run failed:\n{proc.stderr[-3000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {key: (torch.tensor(v[0], dtype=torch.float32), torch.tensor(v[1]), torch.tensor(v[2]))
            for key, v in raw.items()}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("base", BASES)
def test_reference_words_equal_triton_bit_for_bit(triton_draws, seed, base):
    _, t_w0, t_w1 = triton_draws[f"{seed}/{base}"]
    w0, w1, _, _ = philox_uint32x4(seed, base + torch.arange(N, dtype=torch.int64))
    assert torch.equal(w0, t_w0)
    assert torch.equal(w1, t_w1)


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_normals_equal_triton_to_float_rounding(triton_draws, seed):
    t_normal = triton_draws[f"{seed}/0"][0]
    ours = philox_normal(seed, (N,))
    # Same uniforms (exact); log/cos of two libraries differ in the last bit at most.
    torch.testing.assert_close(ours, t_normal, atol=1e-6, rtol=1e-6)


def _kernel_normals(seed: int, count: int) -> torch.Tensor:
    """The first `count` normals of the C++ generator, read back through bayes_mc in float64:
    with mu = logvar = 0 and one draw, out = sigmoid(eps), so eps = logit(out) to double
    precision (the noise itself is float32, as tl.randn's)."""
    zeros = torch.zeros(1, count, dtype=torch.float64)
    return torch.logit(fremure_ext.bayes_mc(zeros, zeros, seed=seed, samples=1)).reshape(-1)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize("seed", [0, 987654321, 2**40 + 3, -1])
def test_kernel_generator_matches_reference_and_triton(triton_draws, monkeypatch, isa, seed):
    monkeypatch.setenv("FREMURE_CPU_ISA", isa)
    got = _kernel_normals(seed, N)
    torch.testing.assert_close(got, philox_normal(seed, (N,), torch.float64), atol=2e-6, rtol=1e-6)
    if seed in SEEDS:
        torch.testing.assert_close(got.float(), triton_draws[f"{seed}/0"][0], atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("generator", ["kernel", "reference"])
def test_normal_statistics(generator):
    count = 200_000
    z = _kernel_normals(2024, count) if generator == "kernel" else philox_normal(2024, (count,), torch.float64)
    n = z.numel()
    assert abs(z.mean().item()) < 5 / n**0.5
    assert abs(z.std().item() - 1) < 0.01
    within_one = (z.abs() < 1).double().mean().item()
    assert abs(within_one - 0.682689) < 0.005
    assert abs((z**3).mean().item()) < 0.03  # symmetric
    assert abs((z**4).mean().item() - 3) < 0.05  # Gaussian tails
    # Neighbouring offsets are uncorrelated.
    assert abs(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1].item()) < 0.01


def test_seeds_give_different_streams():
    a = philox_normal(1, (4096,))
    b = philox_normal(2, (4096,))
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.05
    assert torch.equal(philox_normal(1, (4096,)), a)
