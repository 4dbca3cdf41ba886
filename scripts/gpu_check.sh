#!/usr/bin/env bash
# One-shot GPU validation, from a checkout: scripts/gpu_check.sh OUT_DIR [BUDGET_S]
#
# Steps run in order of importance, each under a timeout cut from what is left of the budget (default
# 480 s), so a slow step costs the later ones and never the whole run. `run` gets SIGINT at its limit and
# keeps every finished row; later steps append with --resume. OUT_DIR gets at most 8 files (what the device
# tool returns): info.json, pytest_cuda.log, run.log, profile.txt, sweep/results.csv, sweep/meta.json,
# plots.tgz, summary.txt.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [BUDGET_S]}
budget=${2:-480}
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
step info 60 "${sb[@]}" info --json > "$out/info.json"
# 1. the targets: every impl at 32768, dense included (flex's rate against flash on dense work)
step targets 200 "${sb[@]}" run "${sweep[@]}" --seq 32768 --impl sdpa --impl structured --impl flex \
  --pattern dense --pattern causal --pattern local --pattern strided --pattern sliding_window:window=1024 \
  >> "$out/run.log" 2>&1
# 2. correctness on CUDA: every impl and pattern, bf16/fp16/fp32, forward and backward; the end-to-end run
# xdist compiles the flex cases in parallel; pytest-timeout stops a hung case (both in the GPU image)
plugins=()
python3 -c "import xdist" 2> /dev/null && plugins+=(-n 8)
python3 -c "import pytest_timeout" 2> /dev/null && plugins+=(--timeout 140)
step tests 150 python3 -m pytest -q -p no:cacheprovider -m cuda "${plugins[@]}" \
  tests/test_cuda.py tests/test_structured.py > "$out/pytest_cuda.log" 2>&1
tail -3 "$out/pytest_cuda.log"
# 3. where the time goes in the target cases: host enqueue vs kernel time, launches, top kernels
step profile 60 python3 scripts/gpu_profile.py sdpa/dense sdpa/causal structured/local structured/strided \
  structured/sliding_window:window=1024 flex/local flex/sliding_window:window=1024 > "$out/profile.txt" 2>&1
# 4. 4096 to 65536 for sdpa and structured (memory growth, speed-up against n)
step lengths 180 "${sb[@]}" run "${sweep[@]}" --resume >> "$out/run.log" 2>&1
# 5. D = 128 for one pattern
step d128 90 "${sb[@]}" run "${sweep[@]}" --resume --pattern local --head-dim 128 --seq 32768 --impl sdpa \
  --impl structured --impl flex >> "$out/run.log" 2>&1
# 6. flex at the other lengths, as far as the budget goes
step flex-lengths 300 "${sb[@]}" run "${sweep[@]}" --resume --impl flex --pattern local \
  --pattern sliding_window:window=1024 --seq 4096 --seq 8192 --seq 16384 --seq 65536 >> "$out/run.log" 2>&1

"${sb[@]}" plot "$out/sweep/results.csv" --out "$out/plots" >> "$out/run.log" 2>&1
tar czf "$out/plots.tgz" -C "$out" plots && rm -r "$out/plots"  # one file instead of a dozen
python3 scripts/gpu_summary.py "$out/sweep/results.csv" | tee "$out/summary.txt"
