"""Published FReMuRe checkpoints (``best_*_model.tar`` = ``torch.save({"state_dict", "object_memory",
"rel_memory"})``) -> a ready :class:`~fremure.model.relation_model.FReMuRe`.

The checkpoint holds no configuration, so the architecture is read off the state dict (layer
counts, head kinds, K, memory modules, tracking); what the weights cannot tell (the mode, the
frequency priors, memory fusion, lambda) comes from the arguments. A tracking checkpoint's position
table is 600 rows long for sgdet and 400 otherwise, so it loads only in the mode it was trained in.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Mapping

import torch

from fremure.model.config import ModelConfig
from fremure.model.relation_model import FReMuRe

from .state_dict import load_reference_state_dict

_TRANSFORMER = "glocal_transformer."


def _count_layers(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys for m in [pattern.match(k)] if m}
    return max(found) + 1 if found else 0


def _head_kind(sd: Mapping[str, torch.Tensor], prefix: str) -> tuple[str, int | None]:
    keys = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    if not keys:
        raise ValueError(f"checkpoint has no {prefix.rstrip('.')} parameters: not a FReMuRe/TEMPURA checkpoint")
    if "weight_mu.weight" in keys:
        return "bayesian", None
    if set(keys) in ({"weight", "bias"}, {"0.weight", "0.bias"}):
        return "linear", None
    k = sum(1 for key in keys if re.fullmatch(r"heads\.mu_\d+\.weight", key))
    if k and "tau" in keys:
        return "gmm_plus", k
    if k:
        return "gmm", k
    raise ValueError(f"unrecognised head under {prefix!r} (keys: {sorted(keys)[:6]}...)")


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ModelConfig options implied by a published state dict's keys and shapes, and ``obj_classes``
    (the number of object classes)."""
    keys = list(state_dict)
    if not any(k.startswith(_TRANSFORMER) for k in keys):
        raise ValueError("checkpoint has no glocal_transformer parameters: not a FReMuRe checkpoint")
    rel_head, k_rel = _head_kind(state_dict, "a_rel_compress.")
    obj_head, k_obj = _head_kind(state_dict, "object_classifier.decoder_lin.")
    if f"{_TRANSFORMER}mem_attention.in_proj_weight" in state_dict:
        rel_mem = "joint"
    elif f"{_TRANSFORMER}mem_attention.attention.in_proj_weight" in state_dict:
        rel_mem = "seperate"
    else:
        rel_mem = "none"
    automated = f"{_TRANSFORMER}selector.weight" in state_dict or "object_classifier.selector.weight" in state_dict
    return dict(
        enc_layer=_count_layers(keys, f"{_TRANSFORMER}local_attention.layers."),
        dec_layer=_count_layers(keys, f"{_TRANSFORMER}global_attention.layers."),
        rel_head=rel_head, obj_head=obj_head, K=k_rel or k_obj or 6, rel_mem_compute=rel_mem,
        obj_mem_compute="object_classifier.mem_attention.in_proj_weight" in state_dict,
        selection="automated" if automated else "manual",
        take_obj_mem_feat="subj_fc.weight" in state_dict and tuple(state_dict["subj_fc.weight"].shape) != (512, 2048),
        tracking=any(k.startswith("object_classifier.encoder_tran.") for k in keys),
        obj_classes=int(state_dict["obj_embed.weight"].shape[0]) if "obj_embed.weight" in state_dict else 37,
        keep_unused=f"{_TRANSFORMER}fusion_gate_global.0.weight" in state_dict,
    )


def read_reference_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a published checkpoint with ``torch.load(weights_only=True)`` (no code execution).

    Returns ``{"state_dict", "object_memory", "rel_memory"}`` (memories None when absent/empty).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or corrupt file
        raise ValueError(f"{path}: not a readable published checkpoint ({type(error).__name__}: {error})") from error
    if isinstance(blob, Mapping) and "state_dict" in blob:
        state_dict = blob["state_dict"]
    elif isinstance(blob, Mapping) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        state_dict, blob = blob, {}
    else:
        raise ValueError(f"{path}: expected a dict with 'state_dict' (published checkpoint), got "
                         f"{type(blob).__name__} with keys {list(blob)[:5] if isinstance(blob, Mapping) else ''}")

    def memory(value):
        if value is None or (not isinstance(value, torch.Tensor) and len(value) == 0):
            return None
        return value

    return {"state_dict": state_dict, "object_memory": memory(blob.get("object_memory")),
            "rel_memory": memory(blob.get("rel_memory"))}


def load_reference_checkpoint(path: str | os.PathLike, mode: str = "predcls",
                              freq: Mapping[str, torch.Tensor] | None = None, *, mem_fusion: str = "late",
                              selection_lambda: float = 0.5, restore_memory: bool = True,
                              obj_classes: Any = None, **overrides: Any) -> FReMuRe:
    """Builds the FReMuRe that a published checkpoint was trained as and loads it (eval mode).

    Args:
        path: the ``.tar`` file written by the published ``train.py``.
        mode: "predcls" | "sgcls" | "sgdet" (not recorded in the checkpoint).
        freq: the frequency priors ``{"attention": [3], "spatial": [6], "contact": [17]}`` the
            model was trained with (not recorded either; the published training computes them from
            the train and test annotations). None switches the frequency branch off (warning).
        mem_fusion, selection_lambda: memory settings (not recorded).
        restore_memory: set the checkpoint's relation/object memory (the published test.py does
            not, Q-T4; pass False to reproduce that).
        obj_classes: class names for the model's bookkeeping (the count is read from the weights).
        **overrides: further ModelConfig options (they win over the inferred ones).

    Raises:
        ValueError for files that are not published FReMuRe checkpoints, naming what is off
        (missing/unexpected keys and shape mismatches for another architecture).
    """
    blob = read_reference_checkpoint(path)
    inferred = infer_config(blob["state_dict"])
    classes = obj_classes if obj_classes is not None else inferred["obj_classes"]
    del inferred["obj_classes"]
    if freq is None:
        warnings.warn(f"{path}: no frequency priors given; the model runs without its frequency branch "
                      "(pass freq= the priors it was trained with)", stacklevel=2)
    options = {**inferred, "mode": mode, "mem_fusion": mem_fusion, "mem_feat_lambda": selection_lambda,
               "freq": freq is not None, **overrides}
    try:
        config = ModelConfig(**options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        model = FReMuRe.from_config(config, classes, freq)
    try:
        load_reference_state_dict(model, blob["state_dict"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if restore_memory:
        if blob["rel_memory"] is not None:
            model.rel_memory = blob["rel_memory"]
        if blob["object_memory"] is not None and model.object_classifier.mem_compute:
            model.object_classifier.set_memory(blob["object_memory"])
    return model.eval()
