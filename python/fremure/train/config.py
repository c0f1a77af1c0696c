"""Training configuration: defaults are the published recipe; YAML files and flags override them."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

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


def option(default: Any, help: str, group: str = "train", positive: bool = False) -> Any:
    """A TrainConfig field whose ``help`` and ``group`` (``"model"``: also taken by eval/visualize;
    ``"train"``: training only) generate the command-line flag ``--name-with-dashes``, its help and
    the YAML key (:mod:`fremure.cli`). ``positive``: the flag refuses values <= 0."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, "positive": positive})


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Paths: ``data_path`` (AG root), ``train_cache`` /
    ``test_cache`` (feature caches from ``fremure extract``), ``save_path`` (run folder).
    Each field's metadata holds its help text: flags, help and YAML keys all come from here."""

    data_path: str = option("", "AG root (annotations/, frames/)")
    train_cache: str = option("", "feature cache of the train split (fremure extract)")
    test_cache: str = option("", "feature cache of the test split")
    save_path: str = option("runs/fremure", "run folder: config.yaml, train.log, history.jsonl, checkpoints/, "
                                            "tensorboard/")
    mode: str = option("predcls", "task", "model")
    rel_head: str = option("bayesian", "relation head", "model")
    obj_head: str = option("linear", "object head", "model")
    K: int = option(6, "mixture components of the GMM heads", "model", positive=True)
    enc_layer: int = option(1, "encoder layers", "model", positive=True)
    dec_layer: int = option(3, "temporal decoder layers", "model", positive=True)
    keep_unused: bool = option(True, "keep the published checkpoint's unused modules", "model")
    dropout: float = option(0.1, "transformer dropout", "model")
    decouple: str = option("shared", "one transformer for all relation types or one per type", "model")
    tracking: bool = option(False, "object tracking across frames in sgcls/sgdet, as the published -tracking",
                            "model")
    kernels: str = option("auto", "torch.ops.fremure kernels (ops), plain PyTorch (reference) or auto", "model")
    freq: bool = option(True, "frequency priors on", "model")
    freq_include_test: bool = option(True, "pool test labels into the priors as published (Q-T1)", "model")
    rel_mem_compute: str = option("joint", "TEMPURA relation memory", "model")
    mem_fusion: str = option("late", "memory fusion", "model")
    mem_feat_lambda: float = option(0.5, "memory mixing weight", "model")
    mem_temperature: float = option(0.5, "softmax temperature of the memory rebuild")
    spatial_loss: str = option("bce", "spatial/contacting loss: bce or multi-label margin (mlm)")
    optimizer: str = option("adamw", "optimiser")
    lr: float = option(1e-5, "learning rate")
    weight_decay: float = option(1e-2, "weight decay (adamw, sgd)")
    clip: float = option(5.0, "gradient-norm clipping")
    nepoch: int = option(10, "epochs", positive=True)
    videos_per_step: int = option(1, "videos per optimiser step over all processes, a multiple of torchrun's "
                                     "process count", positive=True)
    max_train_videos: int = option(0, "use only the first N train videos (0 = all)")
    max_test_videos: int = option(0, "validate on the first N test videos (0 = all)")
    seed: int = option(0, "random seed")
    amp: str = option("none", "mixed precision")
    compile: bool = option(False, "torch.compile the model")
    deterministic: bool = option(False, "deterministic algorithms (torch.use_deterministic_algorithms)")
    checkpoints: str = option("all", "which checkpoints to write (none: no checkpoint, e.g. the demo)")
    save_every: int = option(0, "also write 'last' every N videos (0 = once per epoch)")
    log_iter: int = option(100, "log the mean loss every N steps", positive=True)
    device: str = option("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:1 ...; under torchrun "
                                 "cuda means cuda:LOCAL_RANK")
    progress: bool = option(True, "tqdm progress bars")
    tensorboard: bool = option(True, "TensorBoard scalars in <save-path>/tensorboard (needs the tensorboard "
                                     "package: pip install 'fremure[tensorboard]')")

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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"config {name!r} must be a positive finite number, got {value!r}")
        for name, high in (("weight_decay", math.inf), ("dropout", 1.0), ("mem_feat_lambda", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise ValueError(f"config {name!r} must lie in [0, {high}], got {value!r}")
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def check_device(name: str) -> str:
    """``name`` if it is ``auto`` or a device torch parses (``cpu``, ``cuda``, ``cuda:1``); ValueError otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"config 'device' must be a device name such as auto, cpu or cuda, got {name!r}")
    if name == "auto":
        return name
    import torch
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"config 'device' must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"config 'device' must be auto, cpu, cuda or cuda:N, got {name!r} (there is one cpu device)")
    return name


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is available, else ``cpu``; other names unchanged
    (a CUDA name without a CUDA device is a ValueError naming it)."""
    import torch
    check_device(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); use --device cpu")
    return name


def describe_device(name: str) -> str:
    """``'cuda:0 (NVIDIA H100 80GB HBM3)'``, ``'cpu (16 threads)'``: what a run prints at its start."""
    import torch
    device = torch.device(name)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{name} ({torch.get_num_threads()} threads)"


def field_help(name: str) -> str:
    """The help text of a TrainConfig field."""
    return FIELDS[name].metadata["help"]


def config_to_yaml(config: TrainConfig, header: Sequence[str] = ()) -> str:
    """YAML of every field (``key: value  # help``), readable by :func:`read_config_file`;
    ``header`` lines become leading comments."""
    lines = [f"# {line}" for line in header]
    for name, value in config.to_dict().items():
        text = yaml.safe_dump({name: value}, default_flow_style=False, width=1000).strip()
        lines.append(f"{text}  # {field_help(name)}")
    return "\n".join(lines) + "\n"


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
