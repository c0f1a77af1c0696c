"""Shared test helpers: the golden fixtures of the published code and their tolerances."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("FREMURE_FIXTURES", REPO.parent / "shared" / "fixtures" / "reference"))

# Tolerances the reference's own float32 arithmetic supports (fixtures README); never loosen.
FWD_TOL = dict(atol=1e-5, rtol=1e-4)
GRAD_TOL = dict(atol=1e-4, rtol=1e-3)

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none on this machine)")


def load_fixture(name: str) -> dict:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"golden fixture {path} not found (shared/ must sit beside the repo)")
    return torch.load(path, weights_only=True)
