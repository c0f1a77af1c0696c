"""Pure-PyTorch implementations of every fremure op: the test oracle, the benchmark baseline and
the ``backend="reference"`` fallback. Same signatures as the public wrappers in fremure_ext.ops."""

from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", [n for n in dir(_module) if not n.startswith("_")]):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
