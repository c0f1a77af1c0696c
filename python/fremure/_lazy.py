"""Names of a package imported on first use (``PEP 562`` module ``__getattr__``), so that light
modules (the command line's parser, configs) do not load the model and its compiled kernels."""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str], renamed: Mapping[str, str] | None = None,
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: attribute ``name`` is ``renamed.get(name, name)``
    of the submodule ``exports[name]`` (relative to ``package``), imported and cached on first use."""
    renamed = dict(renamed or {})

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{exports[name]}")
        value = getattr(module, renamed.get(name, name))
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
