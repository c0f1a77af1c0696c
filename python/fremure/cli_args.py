"""Parsing for the ``fremure`` command (:mod:`fremure.cli`): flag types, the flags generated from
:class:`~fremure.train.config.TrainConfig` and :class:`~fremure.model.config.ModelConfig`, the
option groups shared by several commands, console logging and the error-to-exit-code rule.

Model options have a nested flag ``--model.NAME`` (dashes for underscores, ``--model.window-mode``)
and the flat flag of earlier versions (``--window-mode``, ``--rel-head``) as an alias; ``--model``
alone names the model (``--model.name``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Mapping, Sequence


class UsageError(Exception):
    """Bad or conflicting flags or inputs: exit code 2 with a one-line message."""


def parse_bool(text: str) -> bool:
    """'true'/'false' (also 1/0, yes/no): the published ``type=bool`` flags took any string as True (Q-T2)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def out_dir(path: str, flag: str) -> str:
    """An output folder: UsageError when ``path`` exists as a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file, not a folder")
    return path


def need_dir(path: str | None, flag: str) -> str:
    if not path:
        raise UsageError(f"{flag} is required")
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: no such directory")
    return path


def need_file(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path} does not exist")
    return path


def resolve_device(name: str) -> str:
    """Resolved device (``auto`` -> cuda when available, else cpu), announced at the start."""
    from .train.config import describe_device
    from .train.config import resolve_device as resolve
    device = resolve(name)
    logging.getLogger("fremure.cli").info("device: %s%s", describe_device(device),
                                          " (--device auto)" if name == "auto" else "")
    return device


# ------------------------------------------------------------------ flags generated from the configs
def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "none"
    return str(value)


def _flag_type(field: dataclasses.Field, choices: Mapping[str, Sequence[str]], positive: bool) -> dict[str, Any]:
    kind = type(field.default)
    if field.name in choices:
        return {"choices": choices[field.name]}
    if kind is bool:
        return {"type": parse_bool, "metavar": "true|false"}
    if kind is int:
        return {"type": positive_int if positive else int}
    if kind is float:
        return {"type": float}
    return {}


def model_flags(name: str) -> list[str]:
    """Option strings of ModelConfig field ``name``: ``--model.NAME`` and its flat alias."""
    dashed = name.replace("_", "-")
    return ["--model", "--model.name"] if name == "name" else [f"--model.{dashed}", f"--{dashed}"]


def add_config_options(parser: argparse.ArgumentParser, train: bool = True, shown: Mapping[str, Any] | None = None,
                       exclude: Sequence[str] = ()) -> None:
    """One flag per ModelConfig field and, with ``train``, per TrainConfig field: type, choices and
    help from the field; the help shows ``shown`` (the command's real defaults, e.g. the demo's, in
    the layout of :func:`fremure.train.config.config_values`) or the field's default. argparse's
    own default is None, so that only flags actually given override ``--config``."""
    from .model.config import CHOICES as MODEL_CHOICES
    from .model.config import POSITIVE, ModelConfig
    from .train.config import CHOICES, TrainConfig
    shown = dict(shown or {})
    shown_model = dict(shown.pop("model", {}))
    section = parser.add_argument_group("model options (--model.NAME; the flat --NAME is the same flag)")
    for field in dataclasses.fields(ModelConfig):
        default = shown_model.get(field.name, field.default)
        text = f"{field.metadata['help']} (default {_shown(default)})".replace("%", "%%")
        kwargs = _flag_type(field, MODEL_CHOICES, field.name in POSITIVE)
        if "choices" not in kwargs:
            kwargs.setdefault("metavar", field.name.upper())
        section.add_argument(*model_flags(field.name), dest=f"model.{field.name}", default=None, help=text, **kwargs)
    if not train:
        return
    section = parser.add_argument_group("training options")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "model" or field.name in exclude:
            continue
        default = shown.get(field.name, field.default)
        text = f"{field.metadata['help']} (default {_shown(default)})".replace("%", "%%")
        section.add_argument("--" + field.name.replace("_", "-"), dest=field.name, default=None, help=text,
                             **_flag_type(field, CHOICES, field.metadata["positive"]))


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config values given as flags: ``{"lr": ..., "model": {"window": ...}}`` (flags not given
    are left out)."""
    from .train.config import FIELDS as TRAIN_FIELDS
    values: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None:
            continue
        if key.startswith("model."):
            model[key[len("model."):]] = value
        elif key in TRAIN_FIELDS and key != "model":
            values[key] = value
    if model:
        values["model"] = model
    return values


def file_options(args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``--config FILE`` (empty without one); UsageError when the file is missing."""
    from .train.config import read_config_file
    if not getattr(args, "config", None):
        return {}
    if not os.path.isfile(args.config):
        raise UsageError(f"--config {args.config}: no such file")
    return read_config_file(args.config)


def make_train_config(args: argparse.Namespace, extra: Mapping[str, Any] | None = None,
                      defaults: Mapping[str, Any] | None = None):
    """TrainConfig: field defaults <- command defaults <- --config file <- flags <- ``extra``."""
    from .train.config import make_config, merge_values
    return make_config(merge_values(defaults, file_options(args)), merge_values(given_options(args), extra))


# ------------------------------------------------------------------ option groups shared by commands
# DetectorConfig's target_size and rpn_post_nms_top_n (tests/test_cli.py checks they agree; reading
# them here would import torchvision whenever the parser is built)
DETECTOR_DEFAULTS = {"target_size": 600, "proposals": 100}


def add_detector_options(p: argparse.ArgumentParser, target_size: int | None = None, proposals: int | None = None) -> None:
    """Detector flags; None leaves DetectorConfig's value (shown), the demo passes its own."""
    p.add_argument("--detector-checkpoint", default=None,
                   help="published AG Faster R-CNN weights (faster_rcnn_ag.pth); without it a randomly initialised "
                        "detector is used and the output says so")
    shown_size = target_size or DETECTOR_DEFAULTS["target_size"]
    shown_proposals = proposals or DETECTOR_DEFAULTS["proposals"]
    p.add_argument("--target-size", type=positive_int, default=target_size,
                   help=f"short side of the resized frames (default {shown_size})")
    p.add_argument("--proposals", type=positive_int, default=proposals,
                   help=f"RPN proposals per frame in sgdet (default {shown_proposals})")


def add_mean_recall_options(p: argparse.ArgumentParser) -> None:
    """How mR@K is aggregated (SceneGraphEvaluator's mean_recall / mean_recall_predicates; choices
    from fremure.eval.evaluator, without importing it when the parser is built)."""
    p.add_argument("--mean-recall", choices=["pooled", "per_frame"], default="pooled",
                   help="mR@K per predicate: pooled = hits / GT summed over all test frames (TEMPURA and FReMuRe "
                        "report this; STTran reports no mR@K) or per_frame = each frame's hits / GT of the "
                        "predicate, averaged over the frames holding it (default pooled)")
    p.add_argument("--mean-recall-predicates", choices=["all", "seen"], default="all",
                   help="mR@K averages over all 26 predicates, unseen ones counting 0 (published), or over those "
                        "seen in the test GT (default all)")


def mean_recall_options(args: argparse.Namespace) -> dict[str, str]:
    """The evaluator options of ``add_mean_recall_options``."""
    return {"mean_recall": args.mean_recall, "mean_recall_predicates": args.mean_recall_predicates}


def add_device_option(p: argparse.ArgumentParser, text: str = "") -> None:
    p.add_argument("--device", default="auto", help=f"auto (cuda when available, else cpu), cpu, cuda, cuda:1 ...{text} "
                                                    "(default auto)")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", type=parse_bool, default=True, metavar="true|false",
                   help="tqdm progress bar (default true)")


def common_options(default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """-v/-q, accepted before and after the subcommand (the subcommands' copies default to
    SUPPRESS, so that they do not reset a flag given before the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging and tracebacks of errors")
    common.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="warnings and errors only")
    return common


# ------------------------------------------------------------------ logging and errors
class _TqdmHandler(logging.StreamHandler):
    """Console log lines that do not break tqdm bars (written through ``tqdm.write``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:                       # noqa: BLE001 (logging must never raise)
            self.handleError(record)


def setup_logging(verbose: bool, quiet: bool) -> None:
    """fremure's INFO lines (per-epoch loss, R@K, device) on stderr by default; -q warnings only,
    -v debug. Other libraries' records are shown from WARNING up."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_fremure_cli", False)]:
        root.removeHandler(handler)
    handler = _TqdmHandler()
    handler._fremure_cli = True                 # type: ignore[attr-defined]
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    handler.addFilter(lambda r: r.name.startswith("fremure") or r.levelno >= logging.WARNING)
    root.addHandler(handler)
    logging.getLogger("fremure").setLevel(logging.DEBUG if verbose else logging.INFO)
    # the loader's per-split summary is long: shown with -v (and in train.log at debug level)
    logging.getLogger("fremure.data.ag").setLevel(logging.INFO if verbose else logging.WARNING)


def exit_code(err: BaseException) -> int:
    """2 for input and usage errors, 1 for failures during the run."""
    import pickle
    if isinstance(err, (UsageError, ValueError, FileNotFoundError, NotADirectoryError, ImportError,
                        pickle.UnpicklingError)):
        return 2
    # damaged checkpoints and feature caches; their modules are loaded whenever such an error exists
    for module, name in (("fremure.train.checkpoint", "CheckpointError"), ("fremure.data.cache", "CacheCorruptedError")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(err, getattr(loaded, name)):
            return 2
    return 1


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (UsageError, ValueError, FileNotFoundError)):
        return text
    return f"{type(err).__name__}: {text}"
