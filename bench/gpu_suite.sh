#!/usr/bin/env bash
# On the lent GPU machine, from the repository root: bash bench/gpu_suite.sh "$OUT" [python -m bench gpu options]
# Installs the carried wheels (bench/gpu_wheels.sh) beside the machine's own torch, checks in seconds that the suite
# can run at all (bench/lib/gpu_preflight.py: Python, every import, CUDA; its one line lands in $OUT/preflight.txt),
# then runs `python -m bench gpu` within its time budget (--budget-s, 480 s by default); figures and log land in the
# folder given (the device tool's $OUT comes back), gpu.json rewritten after each part.
# Rehearse it here: bash bench/gpu_suite.sh /tmp/gpu --device cpu --quick
set -uo pipefail
py="${PYTHON:-python3}"  # the interpreter to run (the GPU image's python3; a venv's for the rehearsal)
out="${1:?usage: bench/gpu_suite.sh OUT_DIR [bench gpu options]}"; shift
mkdir -p "$out"
device=cuda
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--device" ]; then j=$((i + 1)); device="${!j}"; fi
done
if [ -d .wheels ]; then
  tag="$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  if [ -d ".wheels/$tag" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      ".wheels/$tag"/*.whl || echo "bench/gpu_suite.sh: installing .wheels/$tag failed" | tee -a "$out/gpu.log"
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  else
    echo "bench/gpu_suite.sh: no wheels for this Python ($tag) in .wheels/ (bash bench/gpu_wheels.sh ${tag:2:1}.${tag:3})" \
      | tee -a "$out/gpu.log"
  fi
else
  echo "bench/gpu_suite.sh: no .wheels/ carried (bash bench/gpu_wheels.sh here, then carry [\".wheels\"])" | tee -a "$out/gpu.log"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ "$device" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
fi
"$py" -m bench.lib.gpu_preflight --out "$out" --device "$device" 2>&1 | tee -a "$out/gpu.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
"$py" -m bench gpu --out "$out" "$@" 2>&1 | tee -a "$out/gpu.log"
exit "${PIPESTATUS[0]}"
