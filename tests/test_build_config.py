"""The import-time torch check: a _C built for another torch is refused with one clear error."""

from __future__ import annotations

import importlib.abc
import subprocess
import sys
import types

import pytest
import torch

import fremure_ext
from fremure_ext import _loader

RUNNING = torch.__version__


def _config(**changes):
    """A copy of the real build config with some fields changed."""
    fields = {k: getattr(_loader.build_config, k) for k in ("TORCH_VERSION", "TORCH_CUDA_VERSION", "CXX11_ABI")}
    fields.update(changes)
    return types.SimpleNamespace(**fields)


def test_build_config_records_the_running_torch():
    assert _loader.torch_mismatch(_loader.build_config) is None
    assert _loader.build_config.TORCH_VERSION == RUNNING
    assert _loader.build_config.TORCH_CUDA_VERSION == (torch.version.cuda or "")
    assert fremure_ext.__version__ == _loader.build_config.VERSION


def test_version_comes_from_the_one_source():
    import fremure

    assert fremure.__version__ == fremure_ext.__version__


def test_local_label_does_not_matter_but_version_cuda_and_abi_do():
    public = RUNNING.split("+")[0]
    assert _loader.torch_mismatch(_config(TORCH_VERSION=public)) is None
    msg = _loader.torch_mismatch(_config(TORCH_VERSION="2.6.0+cu124"))
    assert msg is not None and "2.6.0+cu124" in msg and RUNNING in msg and "versions differ" in msg
    assert "pip install --no-build-isolation --force-reinstall --no-deps" in msg
    msg = _loader.torch_mismatch(_config(TORCH_CUDA_VERSION="11.8" if torch.version.cuda != "11.8" else "12.1"))
    assert msg is not None and "CUDA versions differ" in msg
    msg = _loader.torch_mismatch(_config(CXX11_ABI=not _loader.build_config.CXX11_ABI))
    assert msg is not None and "C++11 ABI differs" in msg


def test_import_with_a_faked_build_config_raises_one_clear_error():
    """The real import path in a fresh interpreter, with the generated module replaced by one that
    records another torch: ImportError naming both versions and the rebuild command."""
    code = (
        "import sys, types, torch\n"
        "import fremure_ext._build_config as real\n"
        "fake = types.ModuleType('fremure_ext._build_config')\n"
        "fake.__dict__.update({k: v for k, v in vars(real).items() if k.isupper()})\n"
        "fake.TORCH_VERSION = '2.6.0+cu124'\n"
        "for name in [m for m in sys.modules if m.startswith('fremure_ext')]:\n"
        "    del sys.modules[name]\n"
        "sys.modules['fremure_ext._build_config'] = fake\n"
        "try:\n"
        "    import fremure_ext\n"
        "except ImportError as exc:\n"
        "    print('IMPORTERROR', exc)\n"
    )
    # Loading the real config first imports the fremure_ext package (and _C): a fresh interpreter
    # with the package removed from sys.modules again re-runs the check on the fake.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "IMPORTERROR" in out, out
    assert "2.6.0+cu124" in out and RUNNING in out and "--no-build-isolation" in out


class _UndefinedSymbol(importlib.abc.MetaPathFinder):
    """Makes `import fremure_ext._C` fail as a _C built against another torch does."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "fremure_ext._C":
            raise ImportError("_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")
        return None


def test_undefined_symbol_is_reported_as_a_torch_mismatch(monkeypatch):
    monkeypatch.delitem(sys.modules, "fremure_ext._C")
    monkeypatch.delattr(fremure_ext, "_C")
    monkeypatch.setattr(sys, "meta_path", [_UndefinedSymbol(), *sys.meta_path])
    with pytest.raises(ImportError, match="does not match the running torch") as err:
        _loader._load()
    assert "not built" not in str(err.value) and "--force-reinstall" in str(err.value)


def test_build_info_and_info_report():
    info = fremure_ext.build_info()
    assert info["version"] == fremure_ext.__version__ and info["torch_version"] == RUNNING
    assert info["cpu_isas"][0] == "baseline"
    from fremure_ext import info as info_module

    text = info_module.report()
    for needle in ("CPU ISA variants", "CPU ISA selected", "CUDA device", "Triton", "freq_gate_blend"):
        assert needle in text
    out = subprocess.run([sys.executable, "-m", "fremure_ext.info"], capture_output=True, text=True, check=True)
    assert "segment_attention" in out.stdout and "Built:" in out.stdout
