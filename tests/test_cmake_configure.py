"""CMake configure-time checks of the CUDA build (configure only: no compiler runs, a few seconds)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMAKE = shutil.which("cmake")

pytestmark = [
    pytest.mark.skipif(CMAKE is None, reason="cmake is not installed"),
    pytest.mark.skipif(not torch.version.cuda, reason="torch is a CPU-only build: no CUDA check to make"),
]


def _fake_nvcc(tmp_path, release: str) -> str:
    """A script that answers `--version` as an nvcc of another release would."""
    path = tmp_path / "nvcc"
    path.write_text(
        "#!/bin/sh\n"
        "echo 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
        f"echo 'Cuda compilation tools, release {release}, V{release}.99'\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _configure(tmp_path, *defines, env=None):
    return subprocess.run(
        [CMAKE, "-S", REPO, "-B", str(tmp_path / "build"), f"-DPython_EXECUTABLE={sys.executable}", *defines],
        capture_output=True, text=True, env=env or dict(os.environ), timeout=300,
    )


def _other_major() -> str:
    major = int(torch.version.cuda.split(".")[0])
    return f"{major - 1}.8" if major > 11 else f"{major + 1}.0"


def test_nvcc_major_differing_from_torch_cuda_fails_at_configure(tmp_path):
    release = _other_major()
    run = _configure(tmp_path, "-DFREMURE_CUDA=AUTO", f"-DCMAKE_CUDA_COMPILER={_fake_nvcc(tmp_path, release)}")
    assert run.returncode != 0
    text = " ".join((run.stdout + run.stderr).split())  # CMake wraps long messages
    assert f"nvcc {release}" in text and f"CUDA {torch.version.cuda}" in text, text[-3000:]
    assert "major versions must agree" in text and "FREMURE_CUDA=OFF" in text


def test_nvcc_from_cudacxx_is_checked_too(tmp_path):
    env = dict(os.environ, CUDACXX=_fake_nvcc(tmp_path, _other_major()))
    run = _configure(tmp_path, "-DFREMURE_CUDA=ON", env=env)
    assert run.returncode != 0 and "major versions must agree" in " ".join((run.stdout + run.stderr).split())


def test_cuda_off_ignores_nvcc_and_writes_the_build_config(tmp_path):
    run = _configure(tmp_path, "-DFREMURE_CUDA=OFF", f"-DCMAKE_CUDA_COMPILER={_fake_nvcc(tmp_path, _other_major())}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    config = (tmp_path / "build" / "_build_config.py").read_text()
    assert f'TORCH_VERSION = "{torch.__version__}"' in config and "WITH_CUDA = False" in config
    assert "NATIVE_CPU = False" in config  # portable unless FREMURE_NATIVE_CPU=ON


def _nvcc_matching_torch():
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    same = f"release {torch.version.cuda.split('.')[0]}." in out
    return nvcc if same else None


@pytest.mark.slow
@pytest.mark.skipif(_nvcc_matching_torch() is None, reason="no nvcc of torch's CUDA major version")
@pytest.mark.parametrize(
    "defines, arch_list, expected, present, absent",
    [
        # the user's CMake setting wins over TORCH_CUDA_ARCH_LIST
        (["-DCMAKE_CUDA_ARCHITECTURES=90"], "8.0", "90", ["code=[compute_90,sm_90]"], ["sm_80"]),
        # TORCH_CUDA_ARCH_LIST as PyTorch spells it: machine code only, +PTX adds PTX
        ([], "8.0;9.0+PTX", "80,90", ["code=[sm_80]", "code=[compute_90,sm_90]"], ["code=[compute_80"]),
    ],
)
def test_user_cuda_architectures_are_honoured(tmp_path, defines, arch_list, expected, present, absent):
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=arch_list)
    env.pop("CUDAARCHS", None)
    run = _configure(tmp_path, "-DFREMURE_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={_nvcc_matching_torch()}", *defines, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    config = (tmp_path / "build" / "_build_config.py").read_text()
    assert f'CUDA_ARCHS = "{expected}"' in config and "WITH_CUDA = True" in config
    flags = (tmp_path / "build" / "CMakeFiles" / "_C.dir" / "flags.make").read_text()
    cuda_flags = next(line for line in flags.splitlines() if line.startswith("CUDA_FLAGS"))
    for arch in present:
        assert arch in cuda_flags, cuda_flags
    for arch in absent:
        assert arch not in cuda_flags, cuda_flags
