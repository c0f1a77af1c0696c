"""In-tree scikit-build-core metadata provider: the wheel's version and its torch pin.

A compiled fremure_ext only works with the torch it was built against, so (as flash-attn does)
the wheel carries that torch in a local version label, ``0.1.0+torch2.14cu130`` (``+torch2.14cpu``
for a CPU-only torch), and pins ``torch==2.14.1`` in its dependencies. The base version is read
from python/fremure/_version.py, the project's one version source. The build runs without build
isolation (``pip install --no-build-isolation``), so ``import torch`` finds the torch CMake builds
against; without torch (e.g. an sdist) the version has no label and torch is not pinned.

Configured in pyproject.toml under [tool.scikit-build.metadata.version] / .dependencies.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION_FILE = ROOT / "python" / "fremure" / "_version.py"


def base_version() -> str:
    """The ``__version__`` string of python/fremure/_version.py."""
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', VERSION_FILE.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no __version__ = \"...\" line in {VERSION_FILE}")
    return match.group(1)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_label(torch_version: str, cuda: str | None, hip: str | None = None) -> str:
    """Local version label for a torch build: ('2.14.1+cu130', '13.0') -> 'torch2.14cu130'."""
    major_minor = ".".join(torch_version.split("+", 1)[0].split(".")[:2])
    if cuda:
        flavour = "cu" + "".join(cuda.split(".")[:2])
    elif hip:
        flavour = "rocm" + ".".join(hip.split(".")[:2])
    else:
        flavour = "cpu"
    return f"torch{major_minor}{flavour}"


def dynamic_metadata(field: str, settings: dict) -> str | list[str]:
    """scikit-build-core provider hook: ``version`` or ``dependencies`` (settings: ``base``, the
    list of dependencies other than torch)."""
    torch = _torch()
    if field == "version":
        if settings:
            raise RuntimeError(f"fremure_metadata takes no settings for version, got {sorted(settings)}")
        version = base_version()
        if torch is None:
            return version
        return f"{version}+{torch_label(torch.__version__, torch.version.cuda, getattr(torch.version, 'hip', None))}"
    if field == "dependencies":
        base = list(settings.get("base", []))
        if torch is None:
            return ["torch>=2.6", *base]
        # The public version: 2.14.1 is satisfied by 2.14.1+cu130 (PEP 440 ignores the local label
        # of the candidate when the specifier has none); the CUDA flavour is checked at import.
        return [f"torch=={torch.__version__.split('+', 1)[0]}", *base]
    raise RuntimeError(f"fremure_metadata provides version and dependencies, not {field}")
