"""Training checkpoints: safetensors tensor files + a small JSON state, written atomically.

A checkpoint ``<tag>`` in a folder is ``<tag>.json`` (the commit point) naming one or two tensor
files ``<tag>-<serial>.model.safetensors`` (model weights, ``memory.*``) and, for resumable
checkpoints, ``<tag>-<serial>.train.safetensors`` (optimiser state, RNG states). Every file is
written under a temporary name and moved into place with ``os.replace``; the JSON goes last and
records each file's size and SHA-256, so a checkpoint is either the old one or the new one, and a
damaged file is reported (``CheckpointError``) instead of being loaded. Old tensor files of the
tag are deleted only after the new JSON is in place.
"""

from __future__ import annotations

import glob
import json
import math
import os
import random
import tempfile
import uuid
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.cache import file_digest

FORMAT = "fremure-train-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged or of another format."""


TEMP_PREFIX = ".tmp-"


def _map_floats(value: Any, fn) -> Any:
    if isinstance(value, float):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_floats(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_floats(v, fn) for v in value]
    return value


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN/Infinity);
    dicts, lists and tuples are copied."""
    return _map_floats(value, lambda x: x if math.isfinite(x) else None)


# A checkpoint must give back what was saved (the scheduler's best starts at -inf), in strict JSON.
_FLOAT_TAG = "__float__"


def _tag_floats(value: Any) -> Any:
    return _map_floats(value, lambda x: x if math.isfinite(x) else {_FLOAT_TAG: repr(x)})


def _untag_float(obj: dict) -> Any:
    return float(obj[_FLOAT_TAG]) if obj.keys() == {_FLOAT_TAG} else obj


def _atomic_write(path: str, write) -> None:
    """``write(tmp)`` then rename to ``path``; the temporary is removed on any failure, and an
    OSError (disk full, ...) names ``path``."""
    folder = os.path.dirname(path) or "."
    handle, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, (OSError, SafetensorError)) and path not in str(err):
            raise _naming(err, path) from err
        raise


def _naming(err: BaseException, path: str) -> OSError:
    """An OSError like ``err`` (same errno) whose message names ``path``."""
    code = getattr(err, "errno", None)
    text = f"cannot write {path}: {getattr(err, 'strerror', None) or err}"
    return OSError(code, text) if code else OSError(text)


def clean_checkpoint_folder(folder: str) -> list[str]:
    """Removes what a killed or failed save left in ``folder``: temporaries and tensor files that no
    ``<tag>.json`` names (written before the kill, never committed). Returns the removed names."""
    if not os.path.isdir(folder):
        return []
    kept: set[str] = set()
    damaged: list[str] = []             # tags whose JSON cannot be read: their files are left alone
    for json_path in glob.glob(os.path.join(glob.escape(folder), "*.json")):
        try:
            with open(json_path) as handle:
                kept.update(meta["name"] for meta in json.load(handle)["files"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            damaged.append(os.path.basename(json_path)[:-len(".json")] + "-")
    removed = []
    for name in sorted(os.listdir(folder)):
        orphan = name.endswith(".safetensors") and name not in kept and not name.startswith(tuple(damaged))
        if name.startswith(TEMP_PREFIX) or orphan:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
    return removed


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) of the torch (CPU and CUDA), numpy and Python random states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state = random.getstate()
    return tensors, {"numpy": [name, int(pos), int(has_gauss), float(cached)],
                     "python": [state[0], list(state[1]), state[2]]}


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state as flat tensors ``optim.<param>.<key>`` plus its JSON-able remainder."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in info["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_checkpoint(folder: str, tag: str, model_tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    train_tensors: dict[str, torch.Tensor] | None = None) -> str:
    """Writes checkpoint ``tag`` into ``folder`` atomically and returns the JSON path.

    ``model_tensors``: weights and memory (CPU tensors); ``state``: JSON-able dict; ``train_tensors``:
    optimiser/RNG tensors for a resumable checkpoint (None for best-model checkpoints).
    """
    os.makedirs(folder, exist_ok=True)
    serial = uuid.uuid4().hex[:12]
    files = {"model": model_tensors}
    if train_tensors is not None:
        files["train"] = train_tensors
    record = {"format": FORMAT, "version": VERSION, "state": state, "files": {}}
    for kind, tensors in files.items():
        name = f"{tag}-{serial}.{kind}.safetensors"
        path = os.path.join(folder, name)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        _atomic_write(path, lambda tmp: save_file(tensors, tmp))
        record["files"][kind] = {"name": name, **file_digest(path)}
    json_path = os.path.join(folder, f"{tag}.json")

    def write_json(tmp: str) -> None:
        with open(tmp, "w") as handle:
            json.dump(_tag_floats(record), handle, indent=1, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())

    _atomic_write(json_path, write_json)
    keep = {entry["name"] for entry in record["files"].values()}
    for old in glob.glob(os.path.join(folder, f"{glob.escape(tag)}-*.safetensors")):
        if os.path.basename(old) not in keep:
            os.unlink(old)
    return json_path


def load_checkpoint(path: str, verify: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Reads a checkpoint JSON (or its folder + tag) -> (state, model tensors, train tensors or {}).

    Raises CheckpointError naming the file when anything is missing, truncated or altered.
    """
    try:
        with open(path) as handle:
            record = json.load(handle, object_hook=_untag_float)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted: {err}") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a {FORMAT} v{VERSION} file")
    folder = os.path.dirname(path)
    loaded = {}
    for kind, meta in record["files"].items():
        file = os.path.join(folder, meta["name"])
        if not os.path.isfile(file):
            raise CheckpointError(f"checkpoint {path}: tensor file {file} is missing")
        if verify and (os.path.getsize(file) != meta["bytes"] or file_digest(file)["sha256"] != meta["sha256"]):
            raise CheckpointError(f"checkpoint {path}: tensor file {file} is corrupted (size or SHA-256 differs "
                                  "from the record); use another checkpoint")
        try:
            loaded[kind] = load_file(file)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path}: cannot read {file}: {err}") from err
    return record["state"], loaded.get("model", {}), loaded.get("train", {})
