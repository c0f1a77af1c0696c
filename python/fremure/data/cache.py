"""On-disk cache of detector entries: one safetensors file per video plus ``index.json``.

The detector is frozen, so its output per video never changes; :func:`extract_features` runs it
once per video and :class:`FeatureCache` reads the entries back. ``index.json`` records the
mode, the training/test phase, the feature dtype and fingerprints of the dataset and of the
detector (weights + settings), so a cache is never silently reused for something else.

File layout of ``<VIDEO>.safetensors``: every tensor field of the entry under its own name; the
relation lists ``attention_gt`` / ``spatial_gt`` / ``contacting_gt`` as ``<name>.values`` (int64)
and ``<name>.offsets`` (int64 ``[P+1]``). With ``dtype=float16`` only the large feature tensors
(``features``, ``union_feat``, ``fmaps``) are stored in half precision; boxes, scores,
distributions and masks stay float32 (half precision would move box corners by up to 0.5 px).
Files are written to a temporary name and renamed, so a file that exists is complete;
``checksums.jsonl`` records each file's size and SHA-256 as written, and a resumed extraction
redoes every file that no longer matches its record (truncated or altered later), so a damaged
entry is never kept. Temporaries of a killed extraction are removed when it starts again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .features import (GT_LIST_FIELDS, MODES, check_dataset, parse_frame_gt, video_entry,
                       video_frame_paths, video_name, build_entry)

CACHE_FORMAT = "fremure-feature-cache"
CACHE_VERSION = 1
INDEX_NAME = "index.json"
CHECKSUMS_NAME = "checksums.jsonl"
logger = logging.getLogger(__name__)
FEATURE_FIELDS = ("features", "union_feat", "fmaps")
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class CacheCorruptedError(RuntimeError):
    """A cache file that cannot be read back (truncated, overwritten, wrong content)."""


def _dtype_name(dtype: torch.dtype | str) -> str:
    for name, value in DTYPES.items():
        if dtype in (name, value):
            return name
    raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype!r}")


# ------------------------------------------------------------------ entry <-> tensors
def entry_to_tensors(entry: dict[str, Any], dtype: torch.dtype | str = torch.float32) -> dict[str, torch.Tensor]:
    """Flatten an entry into CPU tensors for safetensors (relation lists as values + offsets)."""
    feature_dtype = DTYPES[_dtype_name(dtype)]
    out = {}
    for key, value in entry.items():
        if key in GT_LIST_FIELDS:
            lengths = torch.tensor([len(v) for v in value], dtype=torch.int64)
            out[f"{key}.offsets"] = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
            out[f"{key}.values"] = torch.tensor([x for v in value for x in v], dtype=torch.int64)
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu")
            if key in FEATURE_FIELDS and tensor.is_floating_point():
                tensor = tensor.to(feature_dtype)
            out[key] = tensor.contiguous()
        else:
            raise TypeError(f"entry field {key!r} has unsupported type {type(value).__name__}")
    return out


def tensors_to_entry(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Inverse of :func:`entry_to_tensors`; half-precision features come back as float32."""
    entry: dict[str, Any] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        if name in GT_LIST_FIELDS:
            if part == "offsets":
                values = tensors[f"{name}.values"].tolist()
                bounds = tensor.tolist()
                entry[name] = [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            continue
        entry[key] = tensor.float() if tensor.dtype == torch.float16 else tensor
    return entry


def write_entry_file(path: str | os.PathLike, entry: dict[str, Any], dtype: torch.dtype | str = torch.float32,
                     metadata: dict[str, str] | None = None) -> None:
    """Write one entry atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    meta = {"format": CACHE_FORMAT, "version": str(CACHE_VERSION), "feature_dtype": _dtype_name(dtype)}
    meta.update(metadata or {})
    try:
        save_file(entry_to_tensors(entry, dtype), tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def _readable(path: str) -> bool:
    """An entry file without a recorded checksum: whether its header and data are all there."""
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            return "boxes" in handle.keys()
    except Exception:  # noqa: BLE001 (safetensors raises its own error type for every kind of damage)
        return False


def _intact(path: str, record: dict[str, Any] | None) -> bool:
    """An entry file of the size and SHA-256 its ``record`` holds (without one: :func:`_readable`)."""
    if record is None:
        return _readable(path)
    return os.path.getsize(path) == record.get("bytes") and file_digest(path)["sha256"] == record.get("sha256")


def read_entry_file(path: str | os.PathLike, video: str = "?", device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one entry file; CacheCorruptedError names the file and the video if it is unreadable."""
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises its own error type for every kind of damage
        raise CacheCorruptedError(f"feature cache file {path} (video {video}) is corrupted or unreadable: {err}. "
                                  "Delete it and run extraction again.") from err
    if meta.get("format") != CACHE_FORMAT:
        raise CacheCorruptedError(f"feature cache file {path} (video {video}) is not a {CACHE_FORMAT} file")
    if "boxes" not in tensors:
        raise CacheCorruptedError(f"feature cache file {path} (video {video}) lacks the 'boxes' tensor")
    for name in GT_LIST_FIELDS:
        if (f"{name}.offsets" in tensors) != (f"{name}.values" in tensors):
            raise CacheCorruptedError(f"feature cache file {path} (video {video}) has a partial {name!r} list")
    entry = tensors_to_entry(tensors)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in entry.items()}


# ------------------------------------------------------------------ fingerprints and the index
def dataset_fingerprint(dataset: Any) -> str:
    """sha256 over frame keys, GT boxes, classes and relation lists of every video."""
    check_dataset(dataset)
    digest = hashlib.sha256()
    for v, (keys, frames) in enumerate(zip(dataset.video_list, dataset.gt_annotations)):
        digest.update(json.dumps([str(k) for k in keys]).encode())
        for t, frame in enumerate(frames):
            gt = parse_frame_gt(frame, f"video {v} frame {t}")
            digest.update(gt.person.astype(np.float64).tobytes())
            digest.update(gt.boxes.astype(np.float64).tobytes())
            digest.update(json.dumps([gt.classes, gt.attention, gt.spatial, gt.contacting]).encode())
    return digest.hexdigest()


def _safe_file_name(video: str) -> str:
    if not video or video in (".", "..") or any(sep in video for sep in ("/", "\\", os.sep)):
        raise ValueError(f"video name {video!r} cannot be used as a file name")
    return f"{video}.safetensors"


def _write_json_atomic(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=1)
    os.replace(tmp, path)


def _read_index(out_dir: str) -> dict:
    path = os.path.join(out_dir, INDEX_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no feature cache index at {path}")
    try:
        with open(path) as handle:
            index = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise CacheCorruptedError(f"feature cache index {path} is unreadable: {err}") from err
    if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
        raise CacheCorruptedError(f"{path} is not a {CACHE_FORMAT} v{CACHE_VERSION} index")
    return index


class FeatureCache:
    """Read access to a cache folder written by :func:`extract_features`.

    ``cache[name_or_index]`` / ``cache.load(...)`` return the entry (float32 features).
    Attributes: ``mode``, ``training``, ``feature_dtype``, ``videos`` (names in dataset order),
    ``dataset_fingerprint``, ``detector_fingerprint``.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = os.fspath(out_dir)
        self.index = _read_index(self.out_dir)
        self.mode: str = self.index["mode"]
        self.training: bool = self.index["training"]
        self.feature_dtype: str = self.index["feature_dtype"]
        self.videos: list[str] = list(self.index["videos"])
        self.dataset_fingerprint: str = self.index["dataset_fingerprint"]
        self.detector_fingerprint: str = self.index["detector_fingerprint"]
        self._position = {name: i for i, name in enumerate(self.videos)}

    def __len__(self) -> int:
        return len(self.videos)

    def _name(self, video: str | int) -> str:
        if isinstance(video, int):
            if not -len(self.videos) <= video < len(self.videos):
                raise IndexError(f"video index {video} out of range for {len(self.videos)} cached videos")
            return self.videos[video]
        if video not in self._position:
            raise KeyError(f"video {video!r} is not part of the feature cache {self.out_dir}")
        return video

    def path(self, video: str | int) -> str:
        """File of one video (whether or not it exists yet)."""
        return os.path.join(self.out_dir, _safe_file_name(self._name(video)))

    def __contains__(self, video: object) -> bool:
        """True when the video belongs to the cache and its file is finished."""
        if not isinstance(video, (str, int)):
            return False
        try:
            return os.path.isfile(self.path(video))
        except (KeyError, IndexError):
            return False

    def missing(self) -> list[str]:
        """Videos whose file has not been written yet."""
        return [name for name in self.videos if name not in self]

    def record_written(self, video: str) -> None:
        """Appends the size and SHA-256 of ``video``'s file, just written, to ``checksums.jsonl``."""
        line = json.dumps({"video": video, **file_digest(self.path(video))})
        with open(os.path.join(self.out_dir, CHECKSUMS_NAME), "a") as handle:
            handle.write(line + "\n")

    def checksums(self) -> dict[str, dict[str, Any]]:
        """The last recorded size and SHA-256 per video (a torn last line is ignored)."""
        records: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError), open(os.path.join(self.out_dir, CHECKSUMS_NAME)) as handle:
            for line in handle:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    record = json.loads(line)
                    records[record["video"]] = record
        return records

    def damaged(self) -> list[str]:
        """Videos whose file exists but differs from its recorded size or SHA-256 (or, without a
        record, cannot be read): these are extracted again on resume."""
        records = self.checksums()
        return [name for name in self.videos if os.path.isfile(self.path(name))
                and not _intact(self.path(name), records.get(name))]

    def load(self, video: str | int, device: str | torch.device = "cpu") -> dict[str, Any]:
        """The entry of one video; FileNotFoundError if it was not extracted yet."""
        name = self._name(video)
        path = self.path(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"video {name} has not been extracted into {self.out_dir} yet")
        return read_entry_file(path, name, device)

    __getitem__ = load


# ------------------------------------------------------------------ extraction
def _infer_training(dataset: Any, training: bool | None) -> bool:
    if training is not None:
        return bool(training)
    split = getattr(dataset, "split", None) or getattr(dataset, "mode", None)
    if split in ("train", "test"):
        return split == "train"
    raise ValueError("cannot tell whether the dataset is a training or a test split: pass training=True/False")


class _VideoImages(torch.utils.data.Dataset):
    """Frame blobs of selected videos, so a DataLoader can read images ahead of the detector."""

    def __init__(self, paths: list[list[str]], indices: list[int], target_size: int, max_size: int | None) -> None:
        self.paths, self.indices = paths, indices
        self.target_size, self.max_size = target_size, max_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        from .images import load_video_blob
        blob, im_info = load_video_blob(self.paths[k], self.target_size, self.max_size)
        return self.indices[k], blob, im_info


def extract_features(dataset: Any, detector, out_dir: str | os.PathLike, mode: str,
                     dtype: torch.dtype | str = torch.float32, resume: bool = True, progress: bool = True,
                     training: bool | None = None, fix_human_row: bool = False,
                     num_workers: int = 0) -> FeatureCache:
    """Run the frozen ``detector`` once per video of ``dataset`` and cache the entries in ``out_dir``.

    ``mode``: predcls / sgcls / sgdet; ``training``: build training entries (GT lists, sgdet
    matching + SUPPLY) or test entries; None reads ``dataset.split`` / ``dataset.mode``.
    ``resume=True`` keeps finished videos (the index must then describe the same dataset,
    detector, mode, phase and dtype, else ValueError); ``resume=False`` rewrites everything.
    ``num_workers`` > 0 reads frames in DataLoader worker processes. Returns the FeatureCache.
    """
    check_dataset(dataset)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dtype_name = _dtype_name(dtype)
    training = _infer_training(dataset, training)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    names = [video_name(dataset, i) for i in range(len(dataset.video_list))]
    if len(set(names)) != len(names):
        raise ValueError("dataset.video_list holds the same video twice")
    index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "mode": mode, "training": training,
             "feature_dtype": dtype_name, "fix_human_row": fix_human_row,
             "dataset_fingerprint": dataset_fingerprint(dataset),
             "detector_fingerprint": detector.fingerprint(), "videos": names}
    index_path = os.path.join(out_dir, INDEX_NAME)
    if resume and os.path.isfile(index_path):
        _check_same_index(out_dir, _read_index(out_dir), index)
    _remove_temporaries(out_dir)
    if not resume:
        _remove_if_present(os.path.join(out_dir, CHECKSUMS_NAME))
    _write_json_atomic(index_path, index)
    cache = FeatureCache(out_dir)
    damaged = set(cache.damaged()) if resume else set()
    if damaged:
        logger.warning("feature cache %s: %d damaged entries are extracted again (%s)", out_dir, len(damaged),
                       ", ".join(sorted(damaged)[:5]) + (" ..." if len(damaged) > 5 else ""))
    todo = [i for i, name in enumerate(names) if not (resume and name in cache and name not in damaged)]
    _run_extraction(dataset, detector, cache, todo, mode, training, dtype_name, fix_human_row,
                    num_workers, progress, done=len(names) - len(todo))
    return cache


def _check_same_index(out_dir: str, old: dict, new: dict) -> None:
    """ValueError naming what differs between an existing cache and this extraction (and, for the
    feature dtype, the flag that continues the cache)."""
    differing = [k for k in new if old.get(k) != new[k]]
    if not differing:
        return
    shown = "; ".join(f"{k}: cache {old.get(k)!r}, now {new[k]!r}" for k in differing if k not in ("videos",)
                      ) or "the video list"
    hint = f"rerun with --dtype {old['feature_dtype']} to continue it, " if "feature_dtype" in differing else ""
    raise ValueError(f"feature cache {out_dir} was made with different {', '.join(differing)} ({shown}); "
                     f"{hint}use another folder, or resume=False to overwrite it")


def _remove_temporaries(out_dir: str) -> None:
    """Temporaries of a killed extraction (``<file>.tmp-<pid>``)."""
    for name in os.listdir(out_dir):
        if ".tmp-" in name:
            _remove_if_present(os.path.join(out_dir, name))


def _remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _run_extraction(dataset: Any, detector, cache: FeatureCache, todo: list[int], mode: str, training: bool,
                    dtype_name: str, fix_human_row: bool, num_workers: int, progress: bool, done: int) -> None:
    from tqdm.auto import tqdm

    config = detector.config
    images = _VideoImages([video_frame_paths(dataset, i) for i in todo], todo, config.target_size, config.max_size)
    loader = torch.utils.data.DataLoader(images, batch_size=None, shuffle=False, num_workers=num_workers)
    bar = tqdm(total=len(cache), initial=done, desc=f"extract {mode}", unit="video", disable=not progress)
    try:
        for index, blob, im_info in loader:
            name = cache.videos[index]
            entry = build_entry(detector, blob, im_info, dataset.gt_annotations[index], mode, training,
                                fix_human_row=fix_human_row, video=name)
            write_entry_file(cache.path(name), entry, dtype_name,
                             {"video": name, "mode": mode, "training": str(int(training))})
            cache.record_written(name)
            bar.update(1)
    finally:
        bar.close()


class VideoEntrySource:
    """Entries by video index: from the cache when the video is there, else from the detector.

    ``cache`` may be a FeatureCache or a folder; its mode/phase must match. With ``write_back``
    freshly computed entries are stored in the cache. ``device`` defaults to the detector's
    device (or CPU without a detector).
    """

    def __init__(self, dataset: Any, mode: str, training: bool | None = None, detector=None,
                 cache: FeatureCache | str | os.PathLike | None = None, device: str | torch.device | None = None,
                 fix_human_row: bool = False, write_back: bool = False) -> None:
        check_dataset(dataset)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if detector is None and cache is None:
            raise ValueError("VideoEntrySource needs a detector, a cache or both")
        self.dataset, self.mode, self.detector = dataset, mode, detector
        self.training = _infer_training(dataset, training)
        self.cache = cache if isinstance(cache, FeatureCache) or cache is None else FeatureCache(cache)
        if self.cache is not None and (self.cache.mode, self.cache.training) != (mode, self.training):
            raise ValueError(f"feature cache {self.cache.out_dir} holds {self.cache.mode} "
                             f"{'training' if self.cache.training else 'test'} entries, "
                             f"not {mode} {'training' if self.training else 'test'}")
        if write_back and self.cache is None:
            raise ValueError("write_back needs a cache")
        self.device = device if device is not None else (detector.device if detector is not None else "cpu")
        self.fix_human_row, self.write_back = fix_human_row, write_back

    def __len__(self) -> int:
        return len(self.dataset.video_list)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = video_name(self.dataset, index)
        if self.cache is not None and name in self.cache:
            return self.cache.load(name, self.device)
        if self.detector is None:
            raise KeyError(f"video {name} is not in the feature cache {self.cache.out_dir} and no detector was given")
        entry = video_entry(self.dataset, index, self.detector, self.mode, self.training, self.fix_human_row)
        if self.write_back and name in self.cache.videos:
            write_entry_file(self.cache.path(name), entry, self.cache.feature_dtype,
                             {"video": name, "mode": self.mode, "training": str(int(self.training))})
            self.cache.record_written(name)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in entry.items()}

    def __iter__(self) -> Iterable[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]
