"""The run folder of ``fremure train`` (``--save-path``): refusing to replace a run, clearing it on
request, and the configuration of a resumed run (docs/reliability.md).

A folder holds a run when any of :data:`RUN_ENTRIES` exists in it. A new run there needs
``overwrite`` (the old run's entries are removed first, so no file mixes two runs); a resumed run
takes the checkpoint's configuration, and options given again may differ only where
:data:`RESUME_CHANGEABLE` allows it.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

from .checkpoint import CheckpointError

RUN_ENTRIES = ("config.yaml", "history.jsonl", "train.log", "checkpoints", "tensorboard")
# What a resumed run may change: the epoch count, the learning rate (applied to the optimiser),
# where things are read from, and what is logged; the rest decides the numbers already trained.
RESUME_CHANGEABLE = frozenset({"nepoch", "lr", "device", "progress", "tensorboard", "log_iter", "save_every",
                               "checkpoints", "data_path", "train_cache", "test_cache", "save_path"})


class RunExistsError(ValueError):
    """``--save-path`` already holds a run and neither resuming nor overwriting was asked for."""


def prepare_new_run(save_path: str, overwrite: bool) -> list[str]:
    """Makes ``save_path`` ready for a new run: RunExistsError when it holds one (any of
    :data:`RUN_ENTRIES`) and not ``overwrite``; with ``overwrite`` the old run's entries are removed.
    Returns those removed. ValueError when ``save_path`` is a file."""
    if os.path.exists(save_path) and not os.path.isdir(save_path):
        raise ValueError(f"--save-path {save_path} is a file, not a folder")
    found = [name for name in RUN_ENTRIES if os.path.lexists(os.path.join(save_path, name))]
    if found and not overwrite:
        raise RunExistsError(f"--save-path {save_path} already holds a run ({', '.join(found)}): continue it "
                             "with --resume, or start a new one in another folder or with --overwrite")
    for name in found:
        path = os.path.join(save_path, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return found


def saved_config(save_path: str) -> dict[str, Any]:
    """The configuration recorded in ``<save_path>/checkpoints/last.json`` (read without the tensors).
    CheckpointError when the file is missing, unreadable or holds no configuration."""
    path = os.path.join(save_path, "checkpoints", "last.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: {path} does not exist")
    try:
        with open(path) as handle:
            record = json.load(handle)
        config = record["state"]["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"--resume: {path} is unreadable or damaged ({type(err).__name__}: {err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"--resume: {path} holds no training configuration")
    return config


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with its model section as ``model.NAME`` keys; the flat model options of older
    checkpoints are mapped the same way."""
    from ..model.config import FIELDS as MODEL_FIELDS
    flat = {}
    for name, value in config.items():
        if name == "model" and isinstance(value, Mapping):
            flat.update({f"model.{k}": v for k, v in value.items()})
        else:
            flat[f"model.{name}" if name in MODEL_FIELDS else name] = value
    return flat


def check_resume(saved: Mapping[str, Any], asked: Mapping[str, Any]) -> None:
    """ValueError naming (``--flag saved -> asked``; model options as ``--model.NAME``) the options
    outside :data:`RESUME_CHANGEABLE` that differ from the checkpoint's."""
    saved, asked = _flat(saved), _flat(asked)
    conflicts = [f"--{name.replace('_', '-')} {saved[name]!r} -> {asked[name]!r}" for name in asked
                 if name in saved and name not in RESUME_CHANGEABLE and saved[name] != asked[name]]
    if conflicts:
        raise ValueError(f"--resume: options differ from the checkpoint's and cannot change in a resumed run: "
                         f"{'; '.join(conflicts)} (only {', '.join(sorted(RESUME_CHANGEABLE))} can; "
                         "start a new run for the others)")


def write_config_yaml(config, command: str) -> None:
    """``config.yaml`` in the run folder: the resolved configuration (loadable with --config), the
    version and ``command`` in its header; written once the run is ready to train (after a resume
    succeeded), so that it always records what ran."""
    import time
    from .. import __version__
    from .config import config_to_yaml
    header = [f"fremure {__version__} train, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", f"command: {command}",
              "resolved configuration: re-run with fremure train --config config.yaml"]
    path = os.path.join(config.save_path, "config.yaml")
    with open(path + ".tmp", "w") as handle:
        handle.write(config_to_yaml(config, header))
    os.replace(path + ".tmp", path)


def open_log(save_path: str, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s"):
    """Opens ``train.log`` (appended) in the run folder for the ``fremure`` loggers at debug level;
    returns the handler, to be passed to :func:`close_log` at the end."""
    import logging
    os.makedirs(save_path, exist_ok=True)
    handler = logging.FileHandler(os.path.join(save_path, "train.log"))
    handler.setFormatter(logging.Formatter(fmt))
    handler.setLevel(logging.DEBUG)
    logging.getLogger("fremure").addHandler(handler)
    return handler


def close_log(handler) -> None:
    import logging
    logging.getLogger("fremure").removeHandler(handler)
    handler.close()
