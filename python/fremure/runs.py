"""Models back from run folders and checkpoints: ``load_run(path)`` rebuilds the model from what
the checkpoint records (its :class:`~fremure.model.config.ModelConfig`, weights, relation memory,
frequency priors and object classes) and nothing else; ``load_published(path, ...)`` does the same
for a published FReMuRe ``.tar``, whose file records weights only.

Checkpoints written before ModelConfig existed (flat model options in the saved config, no
priors, no class names) still load: their options are mapped, and the priors are recomputed from
``data_path`` as training computed them.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Mapping, Sequence

import torch

from .model import ModelConfig
from .model.config import FIELDS as MODEL_FIELDS
from .model.config import build_model
from .train.checkpoint import CheckpointError, load_checkpoint

# Tensor-name prefixes of our checkpoints' model files (fremure.train.checkpoint).
WEIGHTS, MEMORY, PRIORS = "model.", "memory.", "priors."
# Where load_run looks in a run folder, best first.
RUN_CHECKPOINTS = ("best_mrecall.json", "best_recall.json", "last.json")


@dataclasses.dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint: ``model`` (eval mode, on the CPU), its ``config``, the
    ``frequencies`` it was built with (None: frequency branch off), ``object_classes`` (names,
    background first, when recorded; else None) and the ``checkpoint`` path it came from."""

    model: torch.nn.Module
    config: ModelConfig
    frequencies: dict[str, torch.Tensor] | None
    object_classes: list[str] | None
    checkpoint: str


def find_checkpoint(path: str | os.PathLike) -> str:
    """``path`` itself when it is a checkpoint file; in a run folder (or its ``checkpoints/``) the
    first of best_mrecall, best_recall, last. FileNotFoundError names what was looked for."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} does not exist (neither a checkpoint file nor a run folder)")
    for folder in (os.path.join(path, "checkpoints"), path):
        for name in RUN_CHECKPOINTS:
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(f"{path}: no checkpoint in it (looked for {', '.join(RUN_CHECKPOINTS)} "
                            f"in checkpoints/ and the folder itself)")


def saved_model_config(state: Mapping[str, Any], source: str) -> ModelConfig:
    """The ModelConfig a checkpoint state records: ``state["config"]["model"]``, or the flat model
    options of a checkpoint written before ModelConfig (mapped; training-only keys ignored)."""
    saved = state.get("config") if isinstance(state, Mapping) else None
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{source} has no training configuration (not written by fremure train)")
    if isinstance(saved.get("model"), Mapping):
        values = dict(saved["model"])
    else:
        values = {k: v for k, v in saved.items() if k in MODEL_FIELDS}
    try:
        return ModelConfig.from_dict(values, source)
    except ValueError as err:
        raise CheckpointError(f"{source}: its model configuration does not load: {err}") from None


def load_run(path: str | os.PathLike, *, overrides: Mapping[str, Any] | None = None, use_memory: bool = True,
             data_path: str | os.PathLike | None = None) -> LoadedModel:
    """Rebuilds the model of a run folder or checkpoint JSON (see :func:`find_checkpoint`).

    Args:
        overrides: ModelConfig fields to change (e.g. ``{"mode": "sgdet"}`` to evaluate another
            task, ``{"kernels": "reference"}``); options that change the parameters make the
            weights not fit, which raises CheckpointError naming the differences.
        use_memory: keep the checkpoint's relation memory (the published test.py drops it).
        data_path: AG root, only needed for checkpoints that do not record their priors (written
            before priors were saved): they are recomputed from its annotations.
    The kernel choice is not taken from the checkpoint (``auto`` unless overridden): where a run
    trained says nothing about the machine that loads it."""
    checkpoint = find_checkpoint(path)
    state, tensors, _ = load_checkpoint(checkpoint)
    saved = dataclasses.replace(saved_model_config(state, checkpoint), kernels="auto")
    config = ModelConfig.from_dict({**saved.to_dict(), **(overrides or {})}, "overrides")
    classes = state.get("object_classes")
    frequencies = _saved_priors(tensors)
    if frequencies is None and config.freq:
        frequencies, classes = _priors_from_data(config, data_path, checkpoint, classes)
    obj_classes = classes if classes else _class_count(tensors, checkpoint)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        model = build_model(config, obj_classes, frequencies)
    changed = [f"{name}: checkpoint {getattr(saved, name)!r}, asked {value!r}"
               for name, value in config.to_dict().items() if value != getattr(saved, name)]
    try:
        load_model_tensors(model, tensors, checkpoint)
    except CheckpointError:
        if not changed:
            raise
        raise CheckpointError(f"{checkpoint} does not fit the model asked for; options differ from the checkpoint's: "
                              f"{'; '.join(changed)}") from None
    if not use_memory:
        model.rel_memory = None
    return LoadedModel(model.eval(), config, frequencies, classes if isinstance(classes, list) else None, checkpoint)


def load_published(path: str | os.PathLike, config: ModelConfig, frequencies: Mapping[str, torch.Tensor] | None,
                   object_classes: Sequence[str] | None = None, use_memory: bool = False) -> LoadedModel:
    """A published FReMuRe ``.tar``: the architecture is read off its weights (fremure.compat); the
    task, memory settings and priors, which the file does not record, come from ``config`` and
    ``frequencies`` (None: frequency branch off, with a warning)."""
    from .compat import load_reference_checkpoint
    freqs = dict(frequencies) if frequencies is not None and config.freq else None
    model = load_reference_checkpoint(path, mode=config.mode, freq=freqs, obj_classes=object_classes,
                                      mem_fusion=config.mem_fusion, selection_lambda=config.mem_feat_lambda,
                                      restore_memory=use_memory)
    return LoadedModel(model, model.config, freqs, list(object_classes) if object_classes else None, os.fspath(path))


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint's model file holds: ``model.*`` weights, ``memory.*`` relation prototypes
    and ``priors.*`` frequency priors (so that the model rebuilds from the checkpoint alone)."""
    tensors = {f"{WEIGHTS}{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"{MEMORY}{k}": v for k, v in model.rel_memory.items()})
    tensors.update({f"{PRIORS}{k}": v for k, v in (model.frequencies or {}).items()})
    return tensors


def load_model_tensors(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Loads ``model.*`` weights (strict), ``memory.*`` prototypes and ``priors.*`` (when present)
    into ``model``; CheckpointError names the options that differ when the weights do not fit."""
    weights = {k[len(WEIGHTS):]: v for k, v in tensors.items() if k.startswith(WEIGHTS)}
    memory = {k[len(MEMORY):]: v for k, v in tensors.items() if k.startswith(MEMORY)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source} does not fit this model configuration: {_mismatch(model, weights, err)}") \
            from None
    model.rel_memory = memory or None
    priors = _saved_priors(tensors)
    if priors is not None:
        model.set_frequencies(priors)


def _mismatch(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], err: RuntimeError) -> str:
    """A short account of why ``weights`` do not load: counts of missing/unexpected keys and a few
    of each, instead of torch's full key list."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    parts = [f"{len(keys)} parameters {label} (e.g. {', '.join(keys[:3])})" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if keys]
    return "; ".join(parts) or str(err).splitlines()[0]


def _saved_priors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    priors = {k[len(PRIORS):]: v for k, v in tensors.items() if k.startswith(PRIORS)}
    return priors or None


def _class_count(tensors: Mapping[str, torch.Tensor], source: str) -> int:
    embed = tensors.get(f"{WEIGHTS}obj_embed.weight")
    if embed is None:
        raise CheckpointError(f"{source} has no obj_embed.weight: not a FReMuRe checkpoint")
    return int(embed.shape[0])


def _priors_from_data(config: ModelConfig, data_path, source: str, classes):
    """(priors, object classes) recomputed from the AG annotations, for checkpoints without priors."""
    if not data_path:
        raise CheckpointError(f"{source} does not record its frequency priors (written before they were saved): "
                              f"give the AG folder it was trained on (data_path / --data-path) to recompute them")
    from .pipeline import frequencies, load_split
    train = load_split(data_path, "train", config.mode)
    test = load_split(data_path, "test", config.mode)
    return frequencies(config, train, test), classes or list(train.object_classes)


__all__ = ["LoadedModel", "find_checkpoint", "load_model_tensors", "load_published", "load_run", "model_tensors",
           "saved_model_config"]
