"""Class-name word embeddings (GloVe 6B, 200-d) for the semantic part of the relation features."""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import torch

WORD_DIM = 200


def _lookup_names(name: str) -> list[str]:
    """Words tried for a class name: the part before '/', then the longest '__'-separated piece."""
    return [name.split("/")[0], sorted(name.split("__"), key=len, reverse=True)[0]]


def glove_table(names: Sequence[str], glove: str | os.PathLike | torch.Tensor | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``[len(names), 200]`` embedding table initialised from GloVe.

    Args:
        names: class names (e.g. the 37 AG object classes, background first).
        glove: path to ``glove.6B.200d.txt``, a ready ``[len(names), 200]`` table, or None.
            Names missing from the file, and every name when ``glove`` is None (with a warning),
            get N(0, 1) vectors, as the published initialisation does.
    """
    table = torch.randn(len(names), WORD_DIM, generator=generator)
    if glove is None:
        warnings.warn("no GloVe vectors given (glove=None): class embeddings start from N(0, 1); "
                      "published checkpoints carry trained tables anyway", stacklevel=3)
        return table
    if isinstance(glove, torch.Tensor):
        if glove.shape != (len(names), WORD_DIM):
            raise ValueError(f"glove table must be [{len(names)}, {WORD_DIM}], got {tuple(glove.shape)}")
        return glove.detach().to(torch.float32).clone()
    wanted = {w: i for i, name in enumerate(names) for w in reversed(_lookup_names(name))}
    found: dict[str, torch.Tensor] = {}
    with open(glove, encoding="utf8") as handle:
        for line in handle:
            word, _, rest = line.partition(" ")
            if word in wanted and word not in found:
                found[word] = torch.tensor([float(v) for v in rest.split()], dtype=torch.float32)
    for i, name in enumerate(names):
        for word in _lookup_names(name):
            if word in found:
                if found[word].shape != (WORD_DIM,):
                    raise ValueError(f"{glove}: vector of {word!r} has {found[word].shape[0]} values, "
                                     f"expected {WORD_DIM}")
                table[i] = found[word]
                break
    return table
