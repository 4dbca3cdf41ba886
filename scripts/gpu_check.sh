#!/usr/bin/env bash
# One-shot GPU validation (issue 7): CUDA correctness tests, the gpu-smoke sweep, flex at 32768, D=128,
# plots and a short summary. Runs from a checkout: scripts/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$(cd "$(dirname "$0")/.." && pwd) PYTHONUNBUFFERED=1
sb() { python3 -m sparsebench "$@"; }

sb info --json > "$out/info.json"
timeout 150 python3 -m pytest -q -x tests/test_cuda.py > "$out/pytest_cuda.log" 2>&1; echo "cuda tests rc=$?"
tail -3 "$out/pytest_cuda.log"
sb run --config configs/gpu-smoke.toml --out-dir "$out/sweep" 2> "$out/run.log"; echo "sweep rc=$?"
sb run --config configs/gpu-smoke.toml --impl flex --impl sdpa --seq 32768 --out-dir "$out/sweep" --resume \
  2>> "$out/run.log"; echo "flex rc=$?"
sb run --config configs/gpu-smoke.toml --pattern local --head-dim 128 --seq 32768 --out-dir "$out/sweep" \
  --resume 2>> "$out/run.log"; echo "d128 rc=$?"
sb plot "$out/sweep/results.csv" --out "$out/plots" > /dev/null 2>> "$out/run.log"
# the device tool returns at most 8 files: pack the figures into one
tar czf "$out/plots.tgz" -C "$out" plots && rm -r "$out/plots"
python3 - "$out/sweep/results.csv" <<'PY'
import sys
import pandas as pd
f = pd.read_csv(sys.argv[1])
f = f[f.seq_len == 32768]
cols = ["pattern", "params", "impl", "mode", "head_dim", "latency_ms", "speedup_vs_dense", "tflops_useful",
        "peak_mem_mib", "nvml_peak_mib", "first_call_s", "status"]
print(f[cols].to_string(index=False))
PY
