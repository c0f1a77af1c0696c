#!/usr/bin/env bash
# Incremental in-place build for development: puts python/fremure_ext/_C*.so into the source tree so
# `PYTHONPATH=python pytest` runs without reinstalling. FREMURE_CUDA=OFF (default here) skips
# the CUDA sources for speed; set FREMURE_CUDA=AUTO to compile them too. FREMURE_NATIVE_CPU=ON and
# TORCH_CUDA_ARCH_LIST are honoured as by `pip install`. Also writes python/fremure_ext/_build_config.py.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${FREMURE_BUILD_DIR:-build/dev-${FREMURE_CUDA:-OFF}}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFREMURE_CUDA="${FREMURE_CUDA:-OFF}" -DFREMURE_NATIVE_CPU="${FREMURE_NATIVE_CPU:-OFF}" -DFREMURE_INPLACE=ON \
  -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build "$build_dir" -j "${FREMURE_JOBS:-2}"
