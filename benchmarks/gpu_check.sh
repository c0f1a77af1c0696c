#!/usr/bin/env bash
# The prepared GPU check (one CUDA machine, no network, torch preinstalled, possibly another torch
# version than this project's CI): build and install fremure against the machine's torch, run the
# CUDA and Triton tests on the GPU, every op benchmark with --device cuda and the model training
# step, writing CSVs under benchmarks/results/ and logs under benchmarks/results/gpu_check/.
# Every step runs under `timeout` inside an overall budget (GPU_CHECK_BUDGET_S, default 470 s, so
# the whole check fits in 8 minutes on one H100); a failed step does not stop the next; a summary
# table ends the output. Exit status: 0 all steps passed, 1 some step failed, 2 no CUDA device
# (nothing run). With $OUT set (the device runner's output folder) results and logs are copied there.
# GPU_CHECK_DRY_RUN=1 prints each step's command instead of running it (checks the script's flow
# on a machine without a GPU).
#
#   bash benchmarks/gpu_check.sh            # from the repo root or anywhere
#
# Targets it measures against (issue 10): every op >= 3x eager and >= 1.3x torch.compile,
# memory-bound ops >= 80% of copy bandwidth (the `bandwidth` columns), training step >= 5x the
# published code (needs a local checkout: GPU_CHECK_PUBLISHED=/path/to/FReMuRe).
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
python="${PYTHON:-python3}"
logs="$repo/benchmarks/results/gpu_check"
mkdir -p "$logs"
budget="${GPU_CHECK_BUDGET_S:-470}"
deadline=$(( SECONDS + budget ))
summary=()
failed=0

# run_step NAME SECONDS CMD...: CMD under `timeout` (capped by what is left of the budget),
# output to $logs/NAME.log and the terminal's tail.
run_step() {
  local name="$1" limit="$2"
  shift 2
  local left=$(( deadline - SECONDS ))
  if (( left < 15 )); then
    summary+=("$(printf '%-28s %-10s %5s' "$name" SKIPPED "-") (budget spent)")
    failed=1
    return 1
  fi
  (( limit > left )) && limit=$left
  local t0=$SECONDS rc
  echo "=== $name (limit ${limit}s)"
  if [[ -n "${GPU_CHECK_DRY_RUN:-}" ]]; then
    echo "dry run: timeout --kill-after=10 $limit $*" > "$logs/$name.log"
    rc=0
  else
    timeout --kill-after=10 "$limit" "$@" > "$logs/$name.log" 2>&1
    rc=$?
  fi
  tail -n 15 "$logs/$name.log"
  local status=ok
  if (( rc == 124 || rc == 137 )); then status=TIMEOUT; elif (( rc != 0 )); then status="FAIL($rc)"; fi
  [[ $status == ok ]] || failed=1
  summary+=("$(printf '%-28s %-10s %5ss' "$name" "$status" $(( SECONDS - t0 )))")
  [[ $status == ok ]]
}

finish() {
  echo
  echo "=== gpu_check summary ($(( SECONDS ))s in all, budget ${budget}s)"
  printf '%s\n' "${summary[@]}" | tee "$logs/summary.txt"
  if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
    mkdir -p "$OUT/results"
    cp -r "$logs" "$OUT/results/" 2>/dev/null
    cp "$repo"/benchmarks/results/*cuda* "$OUT/results/" 2>/dev/null
  fi
  exit "$1"
}

# 0. Is there a GPU at all? (No: stop before building anything.)
if [[ -z "${GPU_CHECK_DRY_RUN:-}" ]] &&
   ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" > "$logs/device.log" 2>&1; then
  echo "gpu_check: no CUDA device visible to torch ($("$python" -c 'import torch; print(torch.__version__)' 2>&1)); nothing run."
  summary+=("$(printf '%-28s %-10s' device 'NO CUDA DEVICE')")
  finish 2
fi
{ nvidia-smi || true; "$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"; command -v nvcc && nvcc --version; } > "$logs/device.log" 2>&1
cat "$logs/device.log"

# 1. Build against this machine's torch: sm_90 only (H100) to keep the build short. If the CUDA
#    build fails (e.g. no nvcc, or nvcc's major version differs from torch's CUDA), the Triton
#    kernels still run, so fall back to a build without the CUDA C++ kernels and say so.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
if ! run_step build_cuda 300 env FREMURE_CUDA=ON "$python" -m pip install --no-build-isolation --no-deps -v .; then
  run_step build_without_cuda_kernels 200 env FREMURE_CUDA=OFF "$python" -m pip install --no-build-isolation --no-deps -v . \
    || finish 1
fi
run_step info 60 "$python" -m fremure_ext.info

# 2. Tests on the GPU: the CUDA suite and the Triton kernels (compiled for the GPU, not interpreted).
mapfile -t triton_tests < <(ls tests/test_triton_*.py)
run_step tests_cuda_triton 150 "$python" -m pytest -q -x -p no:cacheprovider tests/test_cuda_ops.py "${triton_tests[@]}"

# 3. Every op benchmark on the GPU (eager reference, ops, torch.compile'd reference; bandwidth as
#    a fraction of the measured copy bandwidth), CSVs in benchmarks/results/<op>_cuda.csv: one
#    benchmarks/bench_<module>.py per op module of fremure_ext.registry (the installed package's).
mapfile -t op_modules < <("$python" -c "from fremure_ext.registry import MODULES; print(*MODULES, sep='\n')" 2> "$logs/op_modules.log")
if (( ${#op_modules[@]} == 0 )); then
  summary+=("$(printf '%-28s %-10s' op_modules 'FAIL(import)') (see op_modules.log)")
  failed=1
fi
for bench in "${op_modules[@]}"; do
  run_step "bench_$bench" 75 "$python" "benchmarks/bench_$bench.py" --device cuda --min-run-time 0.2
done

# 4. The model training step on the GPU (results/model_step_cuda_*.csv).
published=()
[[ -n "${GPU_CHECK_PUBLISHED:-}" ]] && published=(--published "$GPU_CHECK_PUBLISHED")
run_step bench_model 120 "$python" benchmarks/bench_model.py --device cuda --videos 4 --rounds 1 "${published[@]}"
# 5. fremure predict per frame (decode, detector, relation model) on the GPU, AG-sized frames
run_step bench_predict 90 "$python" benchmarks/bench_predict.py --device cuda --frames 16 --rounds 3

finish "$failed"
