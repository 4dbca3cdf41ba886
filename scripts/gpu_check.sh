#!/usr/bin/env bash
# One-shot GPU validation, from a checkout: scripts/gpu_check.sh OUT_DIR [BUDGET_S]
#
# Steps run in order of importance, each under a timeout cut from what is left of the budget (default
# 300 s), so a slow step costs the later ones and never the whole run. `run` gets SIGINT at its limit and
# keeps every finished row; later steps append with --resume. OUT_DIR gets at most 8 files (what the device
# tool returns): info.json, pytest_cuda.log, run.log, profile.txt, sweep/results.csv, sweep/meta.json,
# plots.tgz, summary.txt.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [BUDGET_S]}
budget=${2:-300}
reserve=45  # plots and the summary at the end
out=$(mkdir -p "$out" && cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
sb=(python3 -m sparsebench)
exec 3>&1  # step reports go to the terminal whatever the step's own output is redirected to

# step NAME MAX_S CMD...: CMD under a timeout of min(MAX_S, what is left minus the reserve)
step() {
  local name=$1 max=$2 t0=$SECONDS limit
  shift 2
  limit=$(( budget - SECONDS - reserve ))
  (( limit > max )) && limit=$max
  if (( limit < 20 )); then echo "[$name] not run: budget spent" >&3; return; fi
  timeout -s INT -k 15 "$limit" "$@"
  echo "[$name] rc=$? in $(( SECONDS - t0 )) s (limit $limit s)" >&3
}

sweep=(--config configs/gpu-smoke.toml --out-dir "$out/sweep")
step info 30 "${sb[@]}" info --json > "$out/info.json"
# 1. the targets at 32768, forward and forward+backward, with SDPA's cuDNN and flash backends as dense baselines
#    (flex's band results and compile times are in the first published run; it compiles per shape and mask)
step targets 90 "${sb[@]}" run "${sweep[@]}" --overwrite --seq 32768 --impl sdpa --impl structured --impl 'sdpa[cudnn]' \
  --impl 'sdpa[flash]' --pattern dense --pattern causal --pattern local --pattern strided \
  --pattern sliding_window:window=1024 >> "$out/run.log" 2>&1
# 2. correctness on CUDA: every impl and pattern, bf16/fp16/fp32, forward and backward, GQA and decode, both fused
#    backends of structured; the end-to-end run. xdist compiles the flex cases in parallel; pytest-timeout stops a
#    hung case (both in the GPU image)
plugins=()
python3 -c "import xdist" 2> /dev/null && plugins+=(-n 8)
python3 -c "import pytest_timeout" 2> /dev/null && plugins+=(--timeout 120)
step tests 100 python3 -m pytest -q -p no:cacheprovider -m cuda "${plugins[@]}" \
  tests/test_cuda.py tests/test_structured.py > "$out/pytest_cuda.log" 2>&1
tail -3 "$out/pytest_cuda.log"
# 3. where the time goes in the strided target (the fused part's kernel) and the band kernels
step profile 30 python3 scripts/gpu_profile.py sdpa/dense structured/strided structured/local \
  structured/sliding_window:window=1024 > "$out/profile.txt" 2>&1
# 4. a Llama-like GQA shape: 32 query heads on 8 key/value heads, head_dim 128
step gqa 45 "${sb[@]}" run "${sweep[@]}" --resume --seq 16384 --mode fwd --heads 32 --kv-heads 8 --head-dim 128 \
  --impl sdpa --impl structured --impl flex --impl 'sdpa[cudnn]' --pattern dense --pattern local --pattern strided \
  --pattern sliding_window:window=1024 >> "$out/run.log" 2>&1
# 5. decoding against a 32768-key cache: one token and a 16-token block
step decode 40 "${sb[@]}" run "${sweep[@]}" --resume --seq 32768 --mode decode --q-len 1 --q-len 16 --impl sdpa \
  --impl structured --impl flex --pattern dense --pattern causal --pattern local --pattern strided \
  --pattern sliding_window:window=1024 >> "$out/run.log" 2>&1
# 6. the patterns not measured on a GPU yet, as far as the budget goes
step patterns 60 "${sb[@]}" run "${sweep[@]}" --resume --seq 32768 --mode fwd --impl sdpa --impl structured \
  --impl flex --pattern dilated --pattern fixed --pattern longformer --pattern bigbird >> "$out/run.log" 2>&1

"${sb[@]}" plot "$out/sweep/results.csv" --out "$out/plots" >> "$out/run.log" 2>&1
tar czf "$out/plots.tgz" -C "$out" plots && rm -r "$out/plots"  # one file instead of a dozen
python3 scripts/gpu_summary.py "$out/sweep/results.csv" | tee "$out/summary.txt"
