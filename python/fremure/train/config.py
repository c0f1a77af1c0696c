"""Training configuration: defaults are the published recipe; YAML files and flags override them."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import yaml

CHOICES = {
    "mode": ("predcls", "sgcls", "sgdet"),
    "rel_head": ("linear", "bayesian", "gmm", "gmm_plus"),
    "obj_head": ("linear", "gmm"),
    "rel_mem_compute": ("none", "joint", "seperate"),
    "mem_fusion": ("early", "late"),
    "spatial_loss": ("bce", "mlm"),
    "optimizer": ("adamw", "adam", "sgd"),
    "amp": ("none", "bf16", "fp16"),
    "kernels": ("auto", "ops", "reference"),
    "decouple": ("shared", "separate"),
    "checkpoints": ("all", "last", "none"),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Paths: ``data_path`` (AG root), ``train_cache`` /
    ``test_cache`` (feature caches from ``fremure extract``), ``save_path`` (checkpoints, logs)."""

    data_path: str = ""
    train_cache: str = ""
    test_cache: str = ""
    save_path: str = "runs/fremure"
    mode: str = "predcls"
    rel_head: str = "bayesian"
    obj_head: str = "linear"
    K: int = 6
    enc_layer: int = 1
    dec_layer: int = 3
    keep_unused: bool = True
    dropout: float = 0.1
    decouple: str = "shared"
    tracking: bool = False                  # published -tracking (sgcls/sgdet object tracks)
    kernels: str = "auto"
    freq: bool = True
    freq_include_test: bool = True          # published priors pool train and test labels (Q-T1)
    rel_mem_compute: str = "joint"
    mem_fusion: str = "late"
    mem_feat_lambda: float = 0.5
    mem_temperature: float = 0.5
    spatial_loss: str = "bce"
    optimizer: str = "adamw"
    lr: float = 1e-5
    weight_decay: float = 1e-2
    clip: float = 5.0
    nepoch: int = 10
    videos_per_step: int = 1
    max_train_videos: int = 0               # 0 = all
    max_test_videos: int = 0
    seed: int = 0
    amp: str = "none"
    compile: bool = False
    deterministic: bool = False
    checkpoints: str = "all"                # all | last | none (none: nothing written, e.g. the demo)
    save_every: int = 0                     # videos between mid-epoch 'last' checkpoints; 0 = per epoch
    log_iter: int = 100
    device: str = "cpu"
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"config {name!r} must be one of {list(choices)}, got {getattr(self, name)!r}")
        if self.tracking and self.mode == "predcls":
            raise ValueError("config 'tracking' needs mode sgcls or sgdet (PredCls has no object classifier to track)")
        positive = ("K", "dec_layer", "enc_layer", "nepoch", "videos_per_step", "log_iter")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"config {name!r} must be a positive integer, got {value!r}")
        for name in ("max_train_videos", "max_test_videos", "save_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"config {name!r} must be a non-negative integer, got {value!r}")
        for name in ("lr", "mem_temperature", "clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"config {name!r} must be a positive number, got {value!r}")
        for name, high in (("weight_decay", math.inf), ("dropout", 1.0), ("mem_feat_lambda", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise ValueError(f"config {name!r} must lie in [0, {high}], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Converts a YAML value to the field's type; bool fields accept only true/false."""
    kind = type(getattr(TrainConfig(), name))
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{source}: {name!r} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: {name!r} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: {name!r} must be a number, got {value!r}")
        return float(value)
    if value is None:
        return "none" if name == "rel_mem_compute" else ""
    if not isinstance(value, str):
        raise ValueError(f"{source}: {name!r} must be a string, got {value!r}")
    return value


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML mapping of TrainConfig fields (dashes or underscores); unknown keys and wrong
    types raise ValueError naming the file and key."""
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise ValueError(f"config file {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise ValueError(f"config file {path}: unknown option {key!r} (known: {', '.join(sorted(FIELDS))})")
        values[name] = _coerce(name, value, f"config file {path}")
    return values


def make_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from defaults <- file values <- explicit overrides (None values are ignored)."""
    values = dict(file_values or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    return TrainConfig(**values)
