#!/usr/bin/env bash
# One-shot GPU check, from a checkout: scripts/gpu_check.sh OUT_DIR [BUDGET_S]
#   (device tool: timeout_s 440; GPU_CHECK_DRY=1 runs it on any CPU machine against a fake step runner)
# The A/A gate runs are a second call of their own, on what the lease has left after the first (a 200 s budget),
# into another folder (on the device tool, each call's $OUT is a fresh one):
#   GPU_CHECK_ONLY="aa-base aa" scripts/gpu_check.sh OUT_DIR 200      (device tool: timeout_s 260)
# GPU_CHECK_ONLY runs the steps it names only, each on whatever the budget leaves (no cap of its own). Each A/A
# round is a fresh `sparsebench run` and a gate (~10-15 s of process start-up and measuring): ten rounds do not
# fit beside the other steps, and two or three cannot set a threshold.
#
# Budget arithmetic. A lease is 15 minutes of device time, start-up included; this check must leave room for the
# A/A call (or a rerun). Work: BUDGET_S = 380 s = the steps' caps (350 s, the CAPS table below) + a 30 s reserve for the
# summary and packing. Each step runs under min(its cap, BUDGET_S - elapsed - reserve), so a slow step costs the
# later ones and never the whole run; it gets SIGINT at its limit (a run keeps every finished row) and SIGKILL
# 15 s later, and that overrun is taken from the next steps' limits, so the whole check ends by about
# BUDGET_S + 15 s. Run it under a device timeout_s of 440 s: 380 + 15 + 45 s for Python start-ups and slack.
# `patterns` has no cap of its own: it runs only on the time the capped steps leave unused.
#
# What comes back (the device tool returns at most 8 files, 16 MiB each, at most two folders down): OUT_DIR
# holds at most these 8 (7 in the first call, which has no aa.md; the A/A call brings back steps.txt, aa.md and
# logs.tgz), also when the check is cut short (a killed run's lock file is removed; anything else is packed into
# logs.tgz):
#   steps.txt          the compact block: each step, exit code, seconds, its limit, rows it wrote (also the last
#                      lines of the output, after the summary, because the runner keeps only the last 12,000
#                      characters of the output)
#   summary.txt        scripts/gpu_summary.py on the sweep, and on the selection step's rows
#   profile.txt        scripts/gpu_profile.py: where strided's and the band kernels' time goes
#   aa.md              the A/A call's gate runs: summary (scripts/gate_experiments.py; its per-run lines if cut)
#   sweep/results.csv, sweep/meta.json
#   selection/results.csv  topk_blocks on --inputs structured (configs/gpu-selection.toml; its meta.json is packed)
#   logs.tgz           info.json, run.log, pytest logs, the A/A runs (results and gate logs)
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [BUDGET_S]}
budget=${2:-380}
reserve=30
# step caps in seconds, in the order the steps run (the order of importance); they sum to budget - reserve
CAPS=(imports:30 info:10 targets:85 baselines:15 cudnn-test:25 tests:40 profile:20 gqa:30 decode:30
      serving-prefill:15 serving-decode:15 selection:35)
ONLY=${GPU_CHECK_ONLY:-}
for name in $ONLY; do  # a misspelt step would run nothing and exit 0
  [[ " imports info targets baselines cudnn-test tests profile gqa decode serving-prefill serving-decode selection
     aa-base aa patterns " == *" $name "* ]] || { echo "GPU_CHECK_ONLY: no step named $name" >&2; exit 2; }
done
AA_RUNS=${GPU_CHECK_AA_RUNS:-10}

out=$(mkdir -p "$out" && cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=(python3)
if [[ ${GPU_CHECK_DRY:-} == 1 ]]; then
  # the dry run: every heavy command goes to a fake runner that writes what the real one would (rows replayed
  # from docs/results/h200), so the order, the budget arithmetic and the files that come back are checked
  py=(python3 "$PWD/scripts/gpu_check_fake.py")
fi
sb=("${py[@]}" -m sparsebench)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # logs and the A/A runs: packed at the end
sweep_dir=$out/sweep
: > "$out/steps.txt"
exec 3>&1  # step reports go to the terminal whatever the step's own output is redirected to

cap_of() {
  local entry
  for entry in "${CAPS[@]}"; do [[ ${entry%%:*} == "$1" ]] && { echo "${entry#*:}"; return; }; done
  echo 0
}
caps_total() { local entry sum=0; for entry in "${CAPS[@]}"; do (( sum += ${entry#*:} )); done; echo $sum; }

rows() {  # result rows in the results file $1 so far (csv-aware: a quoted field may hold a newline)
  [[ -f $1 ]] || { echo 0; return; }
  python3 -c 'import csv, sys; print(sum(1 for _ in csv.DictReader(open(sys.argv[1], newline=""))))' \
    "$1" 2> /dev/null || echo "?"
}

# record NAME RC SECONDS LIMIT ROWS NOTE: one line of the compact block
record() { printf '%-15s %4s %5s %5s %5s  %s\n' "$@" >> "$out/steps.txt"; }

# step NAME CMD...: CMD under a timeout of min(cap, what is left minus the reserve); NAME's cap from CAPS
# (`patterns`, and every step GPU_CHECK_ONLY names: whatever is left). Output redirections apply to the whole
# step. The rows column counts the rows a run step added to its results file ("-" for other steps).
imports_failed=0
failed=0  # the exit code: 1 when any step (or the summary) did not run or did not return 0
step() {
  local name=$1 max t0=$SECONDS limit rc rows0 rows1 csv=$sweep_dir/results.csv
  shift
  case $name in  # the results file each run step adds rows to
    selection) csv=$out/selection/results.csv ;;
    aa-base) csv=$work/aa/base/results.csv ;;
    imports|info|cudnn-test|tests|profile|aa) csv="" ;;
  esac
  max=$(cap_of "$name")
  [[ $name == patterns ]] && max=$budget
  if [[ -n $ONLY ]]; then
    [[ " $ONLY " == *" $name "* ]] || { record "$name" - 0 - - "skipped: not in GPU_CHECK_ONLY"; return 0; }
    max=$budget
  elif [[ $name == aa-base || $name == aa ]]; then
    record "$name" - 0 - - "a call of its own: GPU_CHECK_ONLY=\"aa-base aa\""
    return 0
  fi
  if (( imports_failed )); then failed=1; record "$name" - 0 - - "not run: the import check failed"; return 1; fi
  limit=$(( budget - SECONDS - reserve ))
  (( limit > max )) && limit=$max
  if (( limit < 5 )); then
    echo "[$name] not run: budget spent" >&3
    failed=1; record "$name" - 0 "$limit" - "not run: budget spent"
    return 1
  fi
  rows0=-; [[ -n $csv ]] && rows0=$(rows "$csv")
  GPU_CHECK_STEP=$name timeout -s INT -k 15 "$limit" "$@"
  rc=$?
  (( rc != 0 )) && failed=1
  rows1=-; [[ -n $csv ]] && rows1=$(rows "$csv")
  local note=""
  (( rc == 124 || rc == 130 || rc == 137 )) && note="cut at its limit"
  [[ $rows0 =~ ^[0-9]+$ && $rows1 =~ ^[0-9]+$ ]] && rows1=$(( rows1 - rows0 ))
  echo "[$name] rc=$rc in $(( SECONDS - t0 )) s (limit $limit s)" >&3
  record "$name" "$rc" $(( SECONDS - t0 )) "$limit" "$rows1" "$note"
  return $rc
}

# The end, also when interrupted: the summary inside the reserve, then exactly the files listed in
# the header (the lock file removed, anything else packed), then the compact block as the last lines.
finished=0
finish() {
  (( finished )) && return
  finished=1
  local t0 rc
  # no plots here (30 s and more for this sweep): `sparsebench plot` makes them from sweep/results.csv off the device
  if [[ -f $sweep_dir/results.csv ]]; then
    t0=$SECONDS
    local selection=()
    [[ -f $out/selection/results.csv ]] && selection=(--selection "$out/selection/results.csv")
    timeout -k 5 10 python3 scripts/gpu_summary.py "$sweep_dir/results.csv" "${selection[@]}" > "$out/summary.txt" 2>&1
    rc=$?; record summary "$rc" $(( SECONDS - t0 )) 10 - ""
    (( rc != 0 )) && failed=1
    cat "$out/summary.txt"
  else
    record summary - 0 - - "no results.csv"
  fi
  if [[ -f $work/aa/summary.md ]]; then
    cp "$work/aa/summary.md" "$out/aa.md"
  elif [[ -s $work/aa.log ]]; then  # cut before its summary: each finished run's line
    cp "$work/aa.log" "$out/aa.md"
  fi
  rm -f "$sweep_dir/sparsebench.lock" "$out/selection/sparsebench.lock"
  [[ -s $out/profile.txt ]] || rm -f "$out/profile.txt"  # its redirection made it, the step skipped
  local keep=(steps.txt summary.txt profile.txt aa.md sweep/results.csv sweep/meta.json selection/results.csv logs.tgz)
  local path rel
  while IFS= read -r -d '' path; do
    rel=${path#"$out"/}
    [[ " ${keep[*]} " == *" $rel "* ]] && continue
    mkdir -p "$work/stray/$(dirname "$rel")" && mv "$path" "$work/stray/$rel"
  done < <(find "$out" -type f -print0)
  find "$out" -mindepth 1 -type d -empty -delete
  find "$work" -name sparsebench.lock -delete
  tar czf "$out/logs.tgz" -C "$work" . && rm -rf "$work"
  local files block
  block=$(mktemp "${TMPDIR:-/tmp}/gpu_check_block.XXXXXX")
  files=$(cd "$out" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')
  {
    if [[ -n $ONLY ]]; then
      echo "== gpu_check: budget $budget s for $ONLY (GPU_CHECK_ONLY) + reserve $reserve s; ran $SECONDS s =="
    else
      echo "== gpu_check: budget $budget s = caps $(caps_total) s + reserve $reserve s; ran $SECONDS s =="
    fi
    printf '%-15s %4s %5s %5s %5s  %s\n' step rc s limit rows note
    cat "$out/steps.txt"
    echo "files ($(wc -w <<< "$files")): $files"
  } > "$block"
  mv "$block" "$out/steps.txt"
  cat "$out/steps.txt"
}
trap 'echo "[gpu_check] interrupted: packing what there is" >&3; finish; exit 130' INT TERM

sweep=(--config configs/gpu-smoke.toml --out-dir "$sweep_dir")
# 0. fail fast: torch with CUDA, triton, the private aten cuDNN/flash ops structured's fused path calls, and
#    sparsebench's own imports (the registries, the CLI)
step imports python3 - <<'EOF'
import os, sys
dry = os.environ.get("GPU_CHECK_DRY") == "1"
def fail(what):
    print(f"gpu_check: import check failed: {what}", flush=True)
    sys.exit(1)
try:
    import torch
except Exception as exc:
    fail(f"import torch: {exc}")
if not torch.cuda.is_available() and not dry:
    fail(f"torch {torch.__version__}: CUDA not available")
try:
    import triton
except Exception as exc:
    if not dry:
        fail(f"import triton: {exc}")
    triton = None
try:
    import sparsebench.cli  # noqa: F401  (the CLI and, through it, the results and runner code)
    from sparsebench.impls import IMPLS
    from sparsebench.impls.kernels import aten_ops
    from sparsebench.patterns import PATTERNS
except Exception as exc:
    fail(f"import sparsebench: {type(exc).__name__}: {exc}")
ops = [aten_ops.CUDNN, aten_ops.CUDNN_BACKWARD, aten_ops.CUDA_FLASH, aten_ops.CUDA_FLASH_BACKWARD]
problems = [p for p in (op.problem() for op in ops) if p]
if problems:  # structured's fused path reports them as unsupported rows; everything else still runs
    print(f"gpu_check: warning: {'; '.join(problems)}", flush=True)
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (dry run)"
print(f"imports ok: torch {torch.__version__}, {gpu}, cuDNN {cudnn}, triton "
      f"{getattr(triton, '__version__', None)}, {len(IMPLS)} impls, {len(PATTERNS)} patterns, "
      f"aten ops: {', '.join(op.name for op in ops)}")
EOF
rc=$?
(( rc != 0 && rc != 124 )) && imports_failed=1  # a cold start cut at its cap (124) goes on; any other failure stops
step info "${sb[@]}" info --json > "$work/info.json" 2>> "$work/run.log"
# 1. the targets at 32768, forward and forward+backward: strided on structured's cuDNN path (>= 5x dense), flex
#    for the band targets (the summary calls the best sparse implementation's, so flex must be there); then
#    SDPA's cuDNN and flash backends as dense and causal baselines (on the masked patterns they would only add
#    unsupported rows and n x n biases)
step targets "${sb[@]}" run "${sweep[@]}" --overwrite --seq 32768 --impl sdpa --impl structured --impl flex \
  --pattern dense --pattern causal --pattern strided --pattern sliding_window:window=1024 --pattern local \
  >> "$work/run.log" 2>&1
step baselines "${sb[@]}" run "${sweep[@]}" --resume --seq 32768 --impl sdpa --impl 'sdpa[cudnn]' \
  --impl 'sdpa[flash]' --pattern dense --pattern causal >> "$work/run.log" 2>&1  # sdpa: causal's row of this run
# 2. correctness on CUDA, the new path first on a cold compile cache: structured's cuDNN and flash fused parts
#    against float64; then structured's other CUDA tests, every impl and pattern in bf16/fp16/fp32, forward and
#    backward, GQA and decode, the end-to-end run (about 360 tests: the log says how far the cap let them get).
#    xdist spreads the compiles; pytest-timeout stops a hung case (both in the GPU image)
plugins=()
python3 -c "import xdist" 2> /dev/null && plugins+=(-n 8)
python3 -c "import pytest_timeout" 2> /dev/null && plugins+=(--timeout 60)
cudnn_test=tests/test_structured.py::test_cuda_fused_backends_match_reference
step cudnn-test "${py[@]}" -m pytest -q -p no:cacheprovider -m cuda "$cudnn_test" > "$work/pytest_cudnn.log" 2>&1
tail -2 "$work/pytest_cudnn.log"
step tests "${py[@]}" -m pytest -q -p no:cacheprovider -m cuda "${plugins[@]}" --deselect "$cudnn_test" \
  tests/test_structured.py tests/test_cuda.py > "$work/pytest_cuda.log" 2>&1
tail -2 "$work/pytest_cuda.log"
# 3. where the time goes: strided's cuDNN path against dense SDPA, then structured's band paths (local and
#    sliding_window run at 2-6% of the dense kernel's rate at 32768: the largest headroom in the first run)
step profile "${py[@]}" scripts/gpu_profile.py structured/strided sdpa/dense structured/local \
  structured/sliding_window:window=1024 > "$out/profile.txt" 2>&1
# 4. a Llama-like GQA shape: 32 query heads on 8 key/value heads, head_dim 128
step gqa "${sb[@]}" run "${sweep[@]}" --resume --seq 16384 --mode fwd --heads 32 --kv-heads 8 --head-dim 128 \
  --impl sdpa --impl structured --impl flex --impl 'sdpa[cudnn]' --pattern dense --pattern local --pattern strided \
  --pattern sliding_window:window=1024 >> "$work/run.log" 2>&1
# 5. decoding, one token and a 16-token block, up to a 131072-key cache: bytes read, GB/s, % of the copy ceiling
#    (no flex: it compiles per shape and mask, 20 compiles here; 0.1 s of calls is thousands of these short ones)
step decode "${sb[@]}" run "${sweep[@]}" --resume --seq 32768 --seq 131072 --mode decode --q-len 1 --q-len 16 \
  --min-run-time 0.1 \
  --impl sdpa --impl structured --pattern dense --pattern causal --pattern local --pattern strided \
  --pattern sliding_window:window=1024 >> "$work/run.log" 2>&1
# 6. serving batches, the GPU targets of the serving shapes (padded SDPA, on whichever backend SDPA picks: cuDNN or
#    flash where no mask is needed, against structured; flex not here: its first compile in each new worker,
#    ~10 s, would take most of the step): packed prefill of 16 lengths uniform in 512-8192, causal inside each;
#    one decode step of 32 sequences uniform in 1024-32768 over a shuffled paged cache (pages of 16), local and
#    quest. Their own lengths and page size are key columns, so the rows share the sweep's file (and come back
#    in it) without colliding.
serving=(--out-dir "$sweep_dir" --resume --device cuda --dtype bfloat16 --heads 8 --head-dim 64 --min-run-time 0.1
         --impl sdpa --impl structured)
step serving-prefill "${sb[@]}" run "${serving[@]}" --seq-lens uniform:512-8192:16 --mode fwd --pattern causal \
  >> "$work/run.log" 2>&1
step serving-decode "${sb[@]}" run "${serving[@]}" --seq-lens uniform:1024-32768:32 --mode decode --pattern local \
  --pattern quest:topk=64 >> "$work/run.log" 2>&1
# 7. selection patterns: topk_blocks (block 64, topk 16) on --inputs structured at 32768, selection inside the
#    latency, on structured, flex and the optional flashinfer kernel (an unsupported row where absent),
#    into a folder of its own (other inputs than the sweep's); the summary compares it with the sweep's causal
#    cuDNN row of the same shape: >= 50% of the ideal speed-up (causal pairs / kept pairs) is the target
step selection "${sb[@]}" run --config configs/gpu-selection.toml --out-dir "$out/selection" --overwrite \
  >> "$work/run.log" 2>&1
# 8. the CUDA gate thresholds (1.15x latency, 5% memory today) from data: AA_RUNS fresh runs of a small config,
#    each gated against a fresh baseline run with the gate's defaults; every run's results stay in logs.tgz.
#    Only in a call of their own (GPU_CHECK_ONLY="aa-base aa", see the top): recorded as such here
step aa-base "${sb[@]}" run --config configs/gpu-aa.toml --out-dir "$work/aa/base" --overwrite \
  >> "$work/run.log" 2>&1
step aa "${py[@]}" scripts/gate_experiments.py --config configs/gpu-aa.toml --baseline "$work/aa/base/results.csv" \
  --aa "$AA_RUNS" --neighbour-every 0 --ab 0 --out-dir "$work/aa" > "$work/aa.log" 2>&1
# Microsecond cases (decode, small shapes) are timed with CUDA graphs as well as CUDA events by every run step
# (measure/timing.py: a call under 0.1 ms); the summary lists them with their launch overhead.
# 9. the patterns not measured on a GPU yet, on the time the steps above left unused
step patterns "${sb[@]}" run "${sweep[@]}" --resume --seq 32768 --mode fwd --impl sdpa --impl structured \
  --impl flex --pattern dilated --pattern fixed --pattern longformer --pattern bigbird >> "$work/run.log" 2>&1

trap - INT TERM
finish
exit $failed
