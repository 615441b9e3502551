#!/usr/bin/env bash
# The GPU path, checked: run scripts/gpu_check.yaml (a tiny ResNet-18 grid: fp32, ptq, qat, sgt
# with deploy and saliency) with --device cuda, then with --device cpu, and compare the stores
# (scripts/gpu_check.py): the same cells, each ok and run on its device, accuracies within 2
# points, deploy and saliency results present. Exit 0 if all holds, 1 on a mismatch (each one
# named), 3 when this machine has no CUDA device (nothing was run).
#
#   scripts/gpu_check.sh [--cpu-only] [OUT_DIR]
#
# --cpu-only runs and checks the CPU half alone (to try the script on a machine without a GPU).
# OUT_DIR (default: a new temporary folder) receives the grid's stores, cuda/ and cpu/. Set
# PYTHON to the interpreter of a full medq-bench install (default: .venv/bin/python if there is
# one, else python3).
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's medq-bench
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
cpu_only=0
if [[ "${1:-}" == "--cpu-only" ]]; then cpu_only=1; shift; fi
out="${1:-$(mktemp -d -t medq-gpu-check.XXXXXX)}"
grid=scripts/gpu_check.yaml

if [[ $cpu_only == 0 ]]; then
    "$PYTHON" scripts/gpu_check.py require-cuda || exit $?
fi
# A failed cell (exit 1) is named by the check below; bad usage (exit 2) stops here.
run_on() {
    local rc=0
    "$PYTHON" -m bench.cli run --grid "$grid" --store "$out/$1" --device "$1" --quiet || rc=$?
    if [[ $rc -gt 1 ]]; then exit "$rc"; fi
}
echo "gpu_check: stores in $out" >&2
if [[ $cpu_only == 0 ]]; then run_on cuda; fi
run_on cpu
if [[ $cpu_only == 1 ]]; then
    exec "$PYTHON" scripts/gpu_check.py check "$out/cpu" --device cpu
fi
exec "$PYTHON" scripts/gpu_check.py compare "$out/cuda" "$out/cpu"
