"""Published-code state dicts <-> fremure modules.

The fremure modules keep the published parameter names, so the mapping is the identity except
for three conveniences: a ``module.`` prefix (DataParallel) is dropped, a whole-model state dict
can be loaded into a :class:`~fremure.model.GlocalTransformer` (its ``glocal_transformer.`` part
is taken), and a shared-transformer checkpoint initialises every branch of a ``decouple="separate"``
model. Everything is checked strictly: the error lists the missing and unexpected keys and any
shape mismatch.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
import torch.nn as nn

TRANSFORMER_PREFIX = "glocal_transformer."
_LIST_LIMIT = 12


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def _strip_data_parallel(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _is_transformer(module: nn.Module) -> bool:
    from fremure.model.glocal import GlocalTransformer
    return isinstance(module, GlocalTransformer)


def _separate_branches(module: nn.Module) -> list[str]:
    """Names of the per-type transformers of a ``decouple="separate"`` FReMuRe, else []."""
    if getattr(module, "decouple", None) == "separate":
        return list(module.glocal_transformer.keys())
    return []


def to_fremure_keys(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a published state dict's keys for ``module`` (see the module docstring); no checks."""
    sd = _strip_data_parallel(state_dict)
    if _is_transformer(module) and any(k.startswith(TRANSFORMER_PREFIX) for k in sd):
        sd = {k[len(TRANSFORMER_PREFIX):]: v for k, v in sd.items() if k.startswith(TRANSFORMER_PREFIX)}
    branches = _separate_branches(module)
    if branches:
        renamed = {}
        for k, v in sd.items():
            if k.startswith(TRANSFORMER_PREFIX):
                for branch in branches:
                    renamed[f"{TRANSFORMER_PREFIX}{branch}.{k[len(TRANSFORMER_PREFIX):]}"] = v
            else:
                renamed[k] = v
        sd = renamed
    return sd


def check_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raises ValueError naming missing/unexpected keys and shape mismatches of ``state_dict``
    against ``module.state_dict()``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(state_dict))
                  if not isinstance(state_dict[k], torch.Tensor) or state_dict[k].shape != expected[k].shape]
    problems = [f"{label} ({len(keys)}): {_format_keys(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches (given vs expected)", mismatched)) if keys]
    if problems:
        raise ValueError(f"{source} does not fit {type(module).__name__} (another architecture or configuration?): "
                         + "; ".join(problems))


def load_reference_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Loads a published-code ``state_dict`` (published keys -> tensors, e.g. a checkpoint's
    ``state_dict``: a whole FReMuRe model, its transformer, or one head) strictly into ``module``
    (a fremure module built with the published configuration) and returns it. TypeError if
    ``state_dict`` is not a mapping; ValueError listing missing/unexpected keys and shape mismatches.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    mapped = to_fremure_keys(module, state_dict)
    check_state_dict(module, mapped, "published state dict")
    module.load_state_dict(mapped, strict=True)
    return module


def export_reference_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of ``model`` under the published code's keys (tensors detached, shared).

    Raises ValueError for configurations the published code cannot express (a separate
    transformer per relation type, the log-frequency gate, weighted window aggregation).
    """
    if _separate_branches(model):
        raise ValueError("a decouple='separate' model has one transformer per relation type; the published "
                         "code shares one, so it cannot be exported")
    sd = model.state_dict()
    foreign = [k for k in sd if k.endswith("window_weight") or ".freq_gate.proj." in k]
    if foreign:
        raise ValueError(f"parameters without a published counterpart: {_format_keys(foreign)} "
                         "(weighted window aggregation / log-frequency gate are beyond the reference)")
    return OrderedDict((k, v.detach()) for k, v in sd.items())
