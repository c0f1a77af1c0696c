"""Restricted unpickling for Action Genome annotation pickles.

``pickle.load`` runs whatever callables a pickle names, so a tampered ``person_bbox.pkl`` could
execute code. AG's pickles hold only dicts, lists, tuples, strings, numbers, booleans, ``None`` and
numpy arrays/scalars. Containers and plain values are pickle opcodes that never look up a global;
every callable goes through ``find_class``, which here admits only the few names numpy's own
pickles reference (numpy 1.x spells them ``numpy.core.*``, numpy 2.x ``numpy._core.*``) and a
latin-1-only ``_codecs.encode`` that protocols 0-2 use for raw bytes. Object dtypes are refused, so
an array cannot smuggle arbitrary objects either. The one path around ``find_class`` (EXT opcodes,
served from copyreg's extension cache) is closed by switching to a Python unpickler that refuses
them whenever the process has registered extension codes.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
from typing import Any, Callable

import numpy as np

__all__ = ["UnsafePickleError", "safe_load", "safe_loads", "ALLOWED_GLOBALS"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list (nothing from it was executed)."""


def _numpy_core_attr(submodule: str, name: str) -> Callable[..., Any]:
    """Return numpy's ``_core.<submodule>.<name>`` (numpy 2) or ``core.<submodule>.<name>`` (numpy 1)."""
    import importlib

    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")  # pragma: no cover - every numpy has it


def _checked_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` as a pickle may call it, refusing dtypes that hold Python objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError(f"refusing numpy object dtype {dtype!r} (it can carry arbitrary objects)")
    return dtype


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 str->bytes use of pickle protocols 0-2."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r} on {type(text).__name__}")
    return text.encode("latin-1", errors)


def _build_allow_list() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_core_attr("multiarray", "_reconstruct")
    scalar = _numpy_core_attr("multiarray", "scalar")
    frombuffer = _numpy_core_attr("numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _checked_dtype,
        ("_codecs", "encode"): _latin1_encode,
        # Protocols 0-2 pickle an empty bytes object as a call to bytes().
        ("builtins", "bytes"): bytes,
        ("__builtin__", "bytes"): bytes,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _build_allow_list()


class _RestrictedMixin:
    def __init__(self, file: io.BufferedIOBase, source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{self._source}: refusing to load global '{module}.{name}'; annotation pickles "
                                    "may only contain dicts, lists, tuples, str, int, float, bool, None and numpy "
                                    "arrays/scalars") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refusing persistent id {pid!r}")


class _RestrictedUnpickler(_RestrictedMixin, pickle.Unpickler):
    """The fast C unpickler; safe while no copyreg extension codes are registered."""


class _RestrictedPyUnpickler(_RestrictedMixin, pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler that also refuses EXT opcodes.

    Both unpicklers resolve EXT1/2/4 opcodes through copyreg's process-wide extension cache without
    calling ``find_class``; only the Python one lets us intercept that, so it is used whenever the
    process has registered extension codes.
    """

    def get_extension(self, code: int) -> None:
        raise UnsafePickleError(f"{self._source}: refusing copyreg extension code {code}")


def _load(file: io.BufferedIOBase, source: str, encoding: str) -> Any:
    try:
        unpickler = _RestrictedPyUnpickler if copyreg._inverted_registry else _RestrictedUnpickler
        return unpickler(file, source, encoding).load()
    except UnsafePickleError as exc:
        if str(exc).startswith(source):
            raise
        raise UnsafePickleError(f"{source}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise pickle.UnpicklingError(f"{source}: not a valid annotation pickle ({type(exc).__name__}: {exc})") from exc


def safe_load(path: str | os.PathLike, *, encoding: str = "ASCII") -> Any:
    """Unpickle ``path`` admitting only plain Python values and numpy arrays/scalars.

    Raises ``FileNotFoundError`` naming the file when it is missing, ``UnsafePickleError`` naming the
    file and the rejected global before anything from it is called, and ``pickle.UnpicklingError``
    naming the file when it is truncated or not a pickle. ``encoding`` is passed to the unpickler
    (only relevant to Python 2 pickles).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation pickle not found: {path}")
    with open(path, "rb") as f:
        return _load(f, path, encoding)


def safe_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "ASCII") -> Any:
    """Like :func:`safe_load` for an in-memory pickle; ``source`` names it in error messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return _load(io.BytesIO(data), source, encoding)
