"""Training configuration: defaults are the published recipe; YAML files and flags override them."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import yaml

from ..model.config import FIELDS as MODEL_FIELDS
from ..model.config import ModelConfig, coerce_field, model_values, train_defaults

CHOICES = {
    "spatial_loss": ("bce", "mlm"),
    "optimizer": ("adamw", "adam", "sgd"),
    "amp": ("none", "bf16", "fp16"),
    "checkpoints": ("all", "best", "last", "none"),
    "scheduler_metric": ("mR@20", "R@20"),
}


def option(default: Any, help: str, positive: bool = False) -> Any:
    """A TrainConfig field whose ``help`` generates the command-line flag ``--name-with-dashes``, its
    help and the YAML key (:mod:`fremure.cli`). ``positive``: the flag refuses values <= 0."""
    return dataclasses.field(default=default, metadata={"help": help, "positive": positive})


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Paths: ``data_path`` (AG root), ``train_cache`` /
    ``test_cache`` (feature caches from ``fremure extract``), ``save_path`` (run folder).
    ``model`` holds the model's options (:class:`~fremure.model.config.ModelConfig`; a mapping is
    converted). Each field's metadata holds its help text: flags, help and YAML keys all come from here."""

    data_path: str = option("", "AG root (annotations/, frames/)")
    train_cache: str = option("", "feature cache of the train split (fremure extract)")
    test_cache: str = option("", "feature cache of the test split")
    save_path: str = option("runs/fremure", "run folder: config.yaml, train.log, history.jsonl, checkpoints/, "
                                            "tensorboard/")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig,
                                           metadata={"help": "the model's options (ModelConfig)", "positive": False})
    mem_temperature: float = option(0.5, "softmax temperature of the memory rebuild")
    spatial_loss: str = option("bce", "spatial/contacting loss: bce or multi-label margin (mlm)")
    optimizer: str = option("adamw", "optimiser")
    lr: float = option(1e-5, "learning rate")
    weight_decay: float = option(1e-2, "weight decay (adamw, sgd)")
    clip: float = option(5.0, "gradient-norm clipping")
    scheduler_metric: str = option("mR@20", "what ReduceLROnPlateau steps on after each epoch: mR@20 (FReMuRe) or "
                                            "R@20 (STTran), with constraint")
    nepoch: int = option(10, "epochs", positive=True)
    videos_per_step: int = option(1, "videos per optimiser step over all processes, a multiple of torchrun's "
                                     "process count", positive=True)
    max_train_videos: int = option(0, "use only the first N train videos (0 = all)")
    max_test_videos: int = option(0, "validate on the first N test videos (0 = all)")
    seed: int = option(0, "random seed")
    amp: str = option("none", "mixed precision")
    compile: bool = option(False, "torch.compile the model")
    deterministic: bool = option(False, "deterministic algorithms (torch.use_deterministic_algorithms)")
    checkpoints: str = option("all", "which checkpoints to write: all (best_recall, best_mrecall, resumable last), "
                                     "best (best_mrecall only, e.g. the demo), last, none")
    save_every: int = option(0, "also write 'last' every N videos (0 = once per epoch)")
    log_iter: int = option(100, "log the mean loss every N steps", positive=True)
    device: str = option("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:1 ...; under torchrun "
                                 "cuda means cuda:LOCAL_RANK")
    progress: bool = option(True, "tqdm progress bars")
    tensorboard: bool = option(True, "TensorBoard scalars in <save-path>/tensorboard (needs the tensorboard "
                                     "package: pip install 'fremure[tensorboard]')")

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            self.model = ModelConfig.from_dict(self.model)
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"config 'model' must be a ModelConfig or a mapping of its options, got {self.model!r}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"config {name!r} must be one of {list(choices)}, got {getattr(self, name)!r}")
        positive = ("nepoch", "videos_per_step", "log_iter")
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
        value = self.weight_decay
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"config 'weight_decay' must be a finite number >= 0, got {value!r}")
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
    """The help text of a TrainConfig field, or of a ModelConfig field as ``model.NAME``."""
    if name.startswith("model."):
        return MODEL_FIELDS[name[len("model."):]].metadata["help"]
    return FIELDS[name].metadata["help"]


def _yaml_line(name: str, value: Any, help_text: str, indent: str = "") -> str:
    text = yaml.safe_dump({name: value}, default_flow_style=False, width=1000).strip()
    return f"{indent}{text}  # {help_text}"


def config_to_yaml(config: TrainConfig, header: Sequence[str] = ()) -> str:
    """YAML of every field (``key: value  # help``; the model's options in a ``model:`` section),
    readable by :func:`read_config_file`; ``header`` lines become leading comments."""
    lines = [f"# {line}" for line in header]
    for name, value in config.to_dict().items():
        if name == "model":
            lines.append("model:  # " + field_help("model"))
            lines += [_yaml_line(key, item, field_help(f"model.{key}"), "  ") for key, item in value.items()]
        else:
            lines.append(_yaml_line(name, value, field_help(name)))
    return "\n".join(lines) + "\n"


def config_values(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Checked TrainConfig values from a mapping (a YAML file, a checkpoint's saved config):
    ``{"lr": ..., "model": {"window": ...}}``. Keys may use dashes; the model's options may also
    stand at the top level (the flat layout of configs and checkpoints written before ModelConfig)
    or as ``model.NAME``. Unknown keys and wrong types raise ValueError naming ``source`` and the key."""
    values: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "model" and isinstance(value, (Mapping, ModelConfig)):
            items = value.to_dict() if isinstance(value, ModelConfig) else value
            model.update({str(k).replace("-", "_"): v for k, v in items.items()})
        elif name.startswith("model.") and name[len("model."):] in MODEL_FIELDS:
            model[name[len("model."):]] = value
        elif name in MODEL_FIELDS and name not in FIELDS:
            model[name] = value
        elif name in FIELDS and name != "model":
            values[name] = coerce_field(FIELDS[name], value, source)
        else:
            known = sorted(set(FIELDS) - {"model"}) + [f"model.{n}" for n in MODEL_FIELDS]
            raise ValueError(f"{source}: unknown option {key!r} (known: {', '.join(known)})")
    if model:
        values["model"] = model_values(model, source)
    return values


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML mapping of TrainConfig fields (see :func:`config_values`); a bad file raises
    ValueError naming it."""
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
    return config_values(data, f"config file {path}")


def merge_values(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later layers win, key by key, the ``model`` section too; None values are ignored."""
    merged: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if value is None:
                continue
            if key == "model":
                items = value.to_dict() if isinstance(value, ModelConfig) else value
                model.update({k: v for k, v in items.items() if v is not None})
            else:
                merged[key] = value
    if model:
        merged["model"] = model
    return merged


def make_config(file_values: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from defaults <- the named model's recipe (``train_defaults``; STTran: the
    multi-label margin loss) <- file values <- explicit overrides (None values are ignored). Both
    take the layout of :func:`config_values` (flat model options too)."""
    values = merge_values(config_values(file_values or {}, "config"), config_values(overrides or {}, "options"))
    # the named model's published recipe (STTran's margin loss) sits beneath everything given
    recipe = train_defaults(values.get("model", {}).get("name", MODEL_FIELDS["name"].default))
    return TrainConfig(**merge_values(recipe, values))
