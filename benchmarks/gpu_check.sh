#!/usr/bin/env bash
# The device check (issue 23 §3), within 10 minutes on one CUDA GPU: every learned method's paper
# profile for a few steps in fp32 and under bf16 autocast, one sampling pass each, a torchrun
# (NCCL) run of one method and the tests marked gpu; one JSON file of results.
#   bash benchmarks/gpu_check.sh [results.json]      (default: $OUT/gpu_check.json)
# The packages the GPU machine lacks travel as wheels in .gpu-wheels/ (fill it here first with
# benchmarks/gpu_wheels.sh; on the device tool name .gpu-wheels in `carry`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_FILE=${1:-${OUT:-.}/gpu_check.json}
export PYTHONUNBUFFERED=1 CKMBENCH_DATA=${CKMBENCH_DATA:-/tmp/ckmbench-gpu-data}
if [ -d .gpu-wheels ] && ls .gpu-wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ckmbench-site \
    .gpu-wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/ckmbench-site${PYTHONPATH:+:$PYTHONPATH}
fi
# ckmbench itself, so its plugins' entry points register (no index, no build isolation)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout 570 "$PY" benchmarks/gpu_check.py --out "$OUT_FILE" --device cuda --profile paper "${@:2}"
status=$?
echo "gpu_check.py exit $status; results in $OUT_FILE"
exit $status
