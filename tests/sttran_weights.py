"""Deterministic full-size parameters of the STTran golden fixtures (tests/fixtures/sttran/).

STTran at D = 1936 has about 95 M parameters (380 MB in float32), too many to commit. The fixture
script and the tests both draw them here from a seed, key by key (sorted published keys, one
``torch.Generator`` per key, so neither module construction order nor the other keys change a
value), and every fixture file records a float64 checksum per key, which :func:`check_parameters`
compares, so a different random stream fails loudly instead of comparing other weights.
"""

from __future__ import annotations

from typing import Mapping

import torch

SEED_STRIDE = 1_000_003


def draw_parameter(key: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """One published entry: BatchNorm statistics (running mean ~ 0.1 N(0, 1), running var in
    [0.5, 1.5), no batches tracked), norm scales ``1 + 0.1 N(0, 1)`` (1-D ``weight``), biases
    ``0.1 N(0, 1)``, matrices and embeddings ``N(0, 1) / sqrt(fan_in)``."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=dtype)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=generator)
    values = torch.randn(shape, generator=generator)
    if key.endswith("running_mean") or len(shape) == 1 and not key.endswith("weight"):
        return 0.1 * values
    if len(shape) == 1:
        return 1.0 + 0.1 * values
    fan_in = values[0].numel()
    return values / fan_in ** 0.5


def draw_state_dict(shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]], seed: int) -> dict[str, torch.Tensor]:
    """Every published key of ``shapes`` (key -> (shape, dtype)) drawn from ``seed``."""
    out = {}
    for index, key in enumerate(sorted(shapes)):
        shape, dtype = shapes[key]
        generator = torch.Generator().manual_seed(seed * SEED_STRIDE + index)
        out[key] = draw_parameter(key, tuple(shape), dtype, generator)
    return out


def checksums(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[K, 2]`` float64 (sum, sum of squares) of each entry, keys sorted."""
    rows = [torch.stack([state_dict[k].double().sum(), state_dict[k].double().square().sum()])
            for k in sorted(state_dict)]
    return torch.stack(rows)


def check_parameters(state_dict: Mapping[str, torch.Tensor], recorded: torch.Tensor) -> None:
    """AssertionError when the drawn parameters are not those the fixture was recorded with."""
    drawn = checksums(state_dict)
    assert drawn.shape == recorded.shape, f"{drawn.shape[0]} parameters drawn, {recorded.shape[0]} recorded"
    assert torch.allclose(drawn, recorded, rtol=1e-9, atol=1e-9), \
        "the parameters drawn from the fixture's seed differ from those it was recorded with (random stream changed?)"
