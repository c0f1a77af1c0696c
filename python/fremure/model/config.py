"""``ModelConfig``: every option of a model of the family (``name``: ``fremure`` or ``sttran``) under
the published option names, validated in one place, and the registry that builds a model from it
(``build_model(config, obj_classes, frequencies)`` calls the named class's ``from_config``).
Checkpoints, the command line (``--model.NAME``) and ``config.yaml`` (``model:``) carry it.

The field defaults are FReMuRe's. A registered model may bring its own defaults (``defaults``:
STTran's linear heads, no memory, no priors), which ``ModelConfig.from_dict`` (and so the command
line, YAML and checkpoints) applies beneath the values given, its training recipe
(``train_defaults``, applied by :func:`fremure.train.config.make_config`) and a ``check`` that
refuses options the model does not have, naming them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

CHOICES = {
    "mode": ("predcls", "sgcls", "sgdet"),
    "rel_head": ("linear", "bayesian", "gmm", "gmm_plus"),
    "obj_head": ("linear", "gmm"),
    "rel_mem_compute": ("none", "joint", "seperate"),
    "mem_fusion": ("early", "late"),
    "selection": ("manual", "automated"),
    "decouple": ("shared", "separate"),
    "gate": ("stats", "log_inverse"),
    "window_mode": ("latter", "both", "mean", "weighted"),
    "kernels": ("auto", "ops", "reference"),
}
POSITIVE = ("K", "enc_layer", "dec_layer", "window", "stride")
FRACTIONS = {"dropout": (0.0, 1.0, False), "mem_feat_lambda": (0.0, 1.0, True)}   # name: (low, high, high included)
# The window rule packs whole frames of a video into one window; far beyond a video's length a
# window only costs memory, and sizes near 2**62 overflow the ops' offset arithmetic.
MAX_WINDOW = 4096


def option(default: Any, help: str) -> Any:
    """A ModelConfig field with its ``help`` (flag help and YAML comment)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Options of one model of the family. Defaults are FReMuRe's published training recipe
    (``lib/config.py`` of the published code and its README's commands)."""

    name: str = option("fremure", "model of the family: fremure, or sttran (STTran, ICCV'21: its own defaults "
                                  "for the options below, see docs/configuration.md)")
    mode: str = option("predcls", "task: predcls, sgcls or sgdet")
    rel_head: str = option("bayesian", "relation head")
    obj_head: str = option("linear", "object head")
    K: int = option(6, "mixture components of the GMM heads")
    enc_layer: int = option(1, "encoder layers (local and tail)")
    dec_layer: int = option(3, "temporal decoder layers")
    rel_mem_compute: str = option("joint", "TEMPURA relation memory (none, joint, seperate: published spelling)")
    mem_fusion: str = option("late", "where the memory read-out joins: after (late) or before (early) the decoder")
    mem_feat_lambda: float = option(0.5, "memory mixing weight with selection manual")
    selection: str = option("manual", "memory mixing weight: fixed mem_feat_lambda (manual) or learned (automated)")
    obj_mem_compute: bool = option(False, "TEMPURA object memory read-out in the object classifier")
    take_obj_mem_feat: bool = option(False, "relation features read the object classifier's memory features "
                                            "(sgcls/sgdet)")
    tracking: bool = option(False, "object tracking across frames (sgcls/sgdet), as the published -tracking")
    freq: bool = option(True, "frequency priors on (the tail branch's gate)")
    freq_include_test: bool = option(True, "pool test labels into the priors, as published")
    decouple: str = option("shared", "one transformer for the three relation types (shared) or one each (separate)")
    gate: str = option("stats", "frequency gate: the published six-statistic MLP (stats) or the paper's "
                                "log-inverse map (log_inverse)")
    window: int = option(2, "frames per temporal-decoder window")
    stride: int = option(1, "frames between window starts")
    window_mode: str = option("latter", "how a frame's windows combine: latter (published), both, mean, weighted")
    keep_unused: bool = option(True, "build the published checkpoint's unused modules (for loading them)")
    dropout: float = option(0.1, "transformer dropout")
    kernels: str = option("auto", "torch.ops.fremure kernels (ops), plain PyTorch (reference), or auto: "
                                  "FREMURE_KERNELS / the surrounding fremure_ext.dispatch.use_kernels")

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"model option {name!r} must be one of {list(choices)}, got {getattr(self, name)!r}")
        if self.name not in MODELS:
            raise ValueError(f"model option 'name' must be one of {sorted(MODELS)}, got {self.name!r}")
        for name in POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model option {name!r} must be a positive integer, got {value!r}")
        for name in ("window", "stride"):
            if getattr(self, name) > MAX_WINDOW:
                raise ValueError(f"model option {name!r} must be at most {MAX_WINDOW} frames, got {getattr(self, name)}")
        for name, (low, high, closed) in FRACTIONS.items():
            value = getattr(self, name)
            inside = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and low <= value and (value <= high if closed else value < high)
            if not inside:
                raise ValueError(f"model option {name!r} must lie in [{low}, {high}{']' if closed else ')'}, "
                                 f"got {value!r}")
        for name in ("obj_mem_compute", "take_obj_mem_feat", "tracking", "freq", "freq_include_test", "keep_unused"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model option {name!r} must be true or false, got {getattr(self, name)!r}")
        self._check_combinations()

    def _check_combinations(self) -> None:
        needs_objects = [n for n in ("tracking", "take_obj_mem_feat") if getattr(self, n)]
        if needs_objects and self.mode == "predcls":
            raise ValueError(f"model options {needs_objects} need mode sgcls or sgdet (PredCls has no object "
                             f"classifier), got mode 'predcls'")
        if self.stride > self.window:
            raise ValueError(f"model option 'stride' ({self.stride}) must not exceed 'window' ({self.window}): "
                             f"frames between windows would belong to none")
        check = MODEL_CHECKS.get(self.name)
        if check is not None:
            check(self)

    @property
    def memory(self) -> str | None:
        """``rel_mem_compute`` as the modules take it: None for "none"."""
        return None if self.rel_mem_compute == "none" else self.rel_mem_compute

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "model config") -> "ModelConfig":
        """ModelConfig from a mapping of its fields (see :func:`model_values`), over the defaults of the
        model it names (``name``: FReMuRe's field defaults, or those ``register_model`` gave)."""
        name = values.get("name", FIELDS["name"].default)
        return cls(**model_values({**model_defaults(name), **values}, source))


FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def coerce_field(field: dataclasses.Field, value: Any, source: str, none: str = "") -> Any:
    """``value`` (from YAML or JSON) as the type of dataclass ``field``'s default (bool only from
    true/false; None becomes ``none`` for string fields); ValueError naming ``source`` and the field."""
    name, kind = field.name, type(field.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {name!r} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: {name!r} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: {name!r} must be a number, got {value!r}")
        return float(value)
    if value is None:
        return none
    if not isinstance(value, str):
        raise ValueError(f"{source}: {name!r} must be a string, got {value!r}")
    return value


def model_values(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """ModelConfig field values from a mapping (keys with dashes or underscores), each of its field's
    type; unknown keys and wrong types raise ValueError naming ``source`` and the key. YAML's null for
    rel_mem_compute is "none"."""
    fields = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise ValueError(f"{source}: unknown model option {key!r} (known: {', '.join(FIELDS)})")
        fields[name] = coerce_field(FIELDS[name], value, source, none="none")
    return fields


# ------------------------------------------------------------------ registry
MODELS: dict[str, Callable[[], type]] = {}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {}
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {}
MODEL_CHECKS: dict[str, Callable[[ModelConfig], None]] = {}


def register_model(name: str, load: Callable[[], type], defaults: Mapping[str, Any] | None = None,
                   train_defaults: Mapping[str, Any] | None = None,
                   check: Callable[[ModelConfig], None] | None = None) -> None:
    """Registers model ``name``; ``load()`` returns its class (imported on first use, so that reading
    configs does not load the model and its kernels). The class has ``from_config(config,
    obj_classes, frequencies)``. ``defaults``: ModelConfig fields whose default differs for this
    model; ``train_defaults``: TrainConfig fields of its published recipe; ``check(config)``
    raises ValueError naming the options this model does not have."""
    unknown = sorted(set(defaults or {}) - set(FIELDS))
    if unknown:
        raise ValueError(f"defaults of model {name!r} name unknown ModelConfig fields {unknown}")
    MODELS[name] = load
    MODEL_DEFAULTS[name] = dict(defaults or {})
    TRAIN_DEFAULTS[name] = dict(train_defaults or {})
    if check is not None:
        MODEL_CHECKS[name] = check


def model_defaults(name: Any) -> dict[str, Any]:
    """The ModelConfig fields whose default model ``name`` changes ({} for FReMuRe or an unknown name)."""
    return dict(MODEL_DEFAULTS.get(name, {})) if isinstance(name, str) else {}


def train_defaults(name: Any) -> dict[str, Any]:
    """The TrainConfig fields of model ``name``'s published recipe ({} for FReMuRe or an unknown name)."""
    return dict(TRAIN_DEFAULTS.get(name, {})) if isinstance(name, str) else {}


def model_class(name: str) -> type:
    """The class registered as ``name``."""
    if name not in MODELS:
        raise ValueError(f"no model named {name!r} (registered: {sorted(MODELS)})")
    return MODELS[name]()


def build_model(config: ModelConfig, obj_classes: Sequence[str] | int, frequencies: Mapping[str, Any] | None = None):
    """The model ``config.name`` built from ``config``, with the object classes (names, background
    first, or their number) and the frequency priors ``{"attention": [3], "spatial": [6],
    "contact": [17]}`` (None, or ``config.freq`` False: no frequency branch)."""
    return model_class(config.name).from_config(config, obj_classes, frequencies)


def _fremure() -> type:
    from .relation_model import FReMuRe
    return FReMuRe


def _sttran() -> type:
    from .sttran import STTran
    return STTran


# STTran (yrcong/STTran, README's train.py commands and lib/config.py): linear heads, no memory, no
# frequency priors, a plain spatial encoder (1 layer) and temporal decoder (3 layers) over windows
# of 2 frames; AdamW lr 1e-5 for 10 epochs, multi-label margin loss for spatial/contacting.
STTRAN_FIXED = {"rel_head": "linear", "obj_head": "linear", "rel_mem_compute": "none", "obj_mem_compute": False,
                "take_obj_mem_feat": False, "tracking": False, "freq": False, "decouple": "shared",
                "keep_unused": False}
# options of FReMuRe's memory, GMM heads and frequency branch, which STTran does not have: they
# must keep their default values (a value given for them would be silently without effect)
STTRAN_ABSENT = ("K", "mem_fusion", "mem_feat_lambda", "selection", "freq_include_test", "gate")


def check_sttran(config: ModelConfig) -> None:
    """Refuses, naming them, the options STTran does not have (see ``STTRAN_FIXED``, ``STTRAN_ABSENT``)."""
    wrong = [f"{n}={getattr(config, n)!r} (STTran has {v!r})" for n, v in STTRAN_FIXED.items()
             if getattr(config, n) != v]
    wrong += [f"{n}={getattr(config, n)!r} (STTran has no such option; leave it at {FIELDS[n].default!r})"
              for n in STTRAN_ABSENT if getattr(config, n) != FIELDS[n].default]
    if wrong:
        raise ValueError(f"model 'sttran' does not take the model options {', '.join(wrong)}; "
                         f"ModelConfig.from_dict({{'name': 'sttran', ...}}) (and --model sttran) start from STTran's "
                         f"defaults")


register_model("fremure", _fremure)
register_model("sttran", _sttran, defaults=STTRAN_FIXED, train_defaults={"spatial_loss": "mlm", "scheduler_metric": "R@20"}, check=check_sttran)


__all__ = ["CHOICES", "FIELDS", "MODELS", "ModelConfig", "build_model", "model_class", "model_defaults",
           "model_values", "register_model", "train_defaults"]
