"""Published STTran (``yrcong/STTran``) state dicts <-> :class:`fremure.model.sttran.STTran`.

All names are shared except the object classifier's: the published ``decoder_lin`` is one
``Sequential(Linear(2376, 1024), BatchNorm1d, ReLU, Linear(1024, C))``; ours (FReMuRe's, whose
object memory reads between the two linear layers) splits it into ``intermediate`` (the first three)
and ``decoder_lin`` (the last). The mapping is a renaming of keys only: tensors are shared, not copied.

    model = build_model(ModelConfig.from_dict({"name": "sttran"}), obj_classes)
    load_sttran_state_dict(model, torch.load("sttran_predcls.tar")["state_dict"])
    published = export_sttran_state_dict(model)      # published keys again
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
import torch.nn as nn

from .state_dict import _strip_data_parallel, check_state_dict

_OBJECTS = "object_classifier."
# published object-classifier prefix -> ours
PUBLISHED_TO_FREMURE = {
    f"{_OBJECTS}decoder_lin.0.": f"{_OBJECTS}intermediate.0.",
    f"{_OBJECTS}decoder_lin.1.": f"{_OBJECTS}intermediate.1.",
    f"{_OBJECTS}decoder_lin.3.": f"{_OBJECTS}decoder_lin.0.",
}
FREMURE_TO_PUBLISHED = {ours: published for published, ours in PUBLISHED_TO_FREMURE.items()}


def _rename(key: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def sttran_to_fremure_keys(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A published STTran state dict under our keys (a DataParallel ``module.`` prefix dropped); no checks."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    return OrderedDict((_rename(k, PUBLISHED_TO_FREMURE), v) for k, v in _strip_data_parallel(state_dict).items())


def fremure_to_sttran_keys(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Our STTran state dict under the published keys; the inverse of :func:`sttran_to_fremure_keys`."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    return OrderedDict((_rename(k, FREMURE_TO_PUBLISHED), v) for k, v in state_dict.items())


def load_sttran_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Loads a published STTran state dict (e.g. ``torch.load(tar)["state_dict"]``) into ``model``
    (a :class:`~fremure.model.sttran.STTran` of the same layer counts and classes), strictly.
    Returns ``model``; ValueError lists missing/unexpected keys and shape mismatches (under our names)."""
    _check_sttran(model)
    mapped = sttran_to_fremure_keys(state_dict)
    check_state_dict(model, mapped, "published STTran state dict")
    model.load_state_dict(mapped, strict=True)
    return model


def export_sttran_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of ``model`` (an STTran) under the published code's keys (tensors detached, shared).
    ValueError for a model with parameters the published code does not have (weighted windows)."""
    _check_sttran(model)
    sd = model.state_dict()
    foreign = [k for k in sd if k.endswith("window_weight")]
    if foreign:
        raise ValueError(f"parameters without a published counterpart: {foreign} (weighted window aggregation "
                         "is beyond the published STTran)")
    return fremure_to_sttran_keys(OrderedDict((k, v.detach()) for k, v in sd.items()))


def _check_sttran(model: nn.Module) -> None:
    from fremure.model.sttran import STTran
    if not isinstance(model, STTran):
        raise TypeError(f"model must be a fremure STTran, got {type(model).__name__}")


__all__ = ["FREMURE_TO_PUBLISHED", "PUBLISHED_TO_FREMURE", "export_sttran_state_dict", "fremure_to_sttran_keys",
           "load_sttran_state_dict", "sttran_to_fremure_keys"]
