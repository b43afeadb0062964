#!/usr/bin/env bash
# On the lent GPU machine, from the repository root: bash bench/gpu_suite.sh "$OUT" [python -m bench gpu options]
# Installs the carried wheels (bench/gpu_wheels.sh) beside the machine's own torch and runs `python -m bench gpu`;
# its figures and log land in the folder given (the device tool's $OUT comes back).
set -uo pipefail
out="${1:?usage: bench/gpu_suite.sh OUT_DIR [bench gpu options]}"; shift
mkdir -p "$out"
if [ -d .wheels ]; then
  tag="$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  if [ ! -d ".wheels/$tag" ]; then
    echo "bench/gpu_suite.sh: no wheels for this Python ($tag) in .wheels/: run bash bench/gpu_wheels.sh ${tag:2:1}.${tag:3}" | tee "$out/gpu.log"
    exit 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ".wheels/$tag"/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
python3 -m bench gpu --out "$out" "$@" 2>&1 | tee "$out/gpu.log"
