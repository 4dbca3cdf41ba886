"""A fake step runner for `GPU_CHECK_DRY=1 scripts/gpu_check.sh OUT`: takes the exact argv the check would give
`python3` and writes what the real command writes, fast and without a GPU.

    python3 scripts/gpu_check_fake.py -m sparsebench run --seq 32768 --impl sdpa ... --out-dir DIR

`sparsebench run` appends one row per case, replayed from the first H200 run (docs/results/h200/results.csv)
with the asked shape, and leaves a `sparsebench.lock` behind as a real run does when a step's timeout kills it;
`pytest`, `gpu_profile.py`, `gate_experiments.py`, `info` and `plot` write their usual files with placeholder
content. It imports neither
torch nor sparsebench (each real step would take seconds to start), so the dry run proves the check's order,
budget arithmetic and files, not the measurements.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
REPLAY = ROOT / "docs" / "results" / "h200" / "results.csv"
HEADER = ROOT / "docs" / "results" / "cpu-serving" / "decode" / "results.csv"  # a schema-2 header (serving keys)


def options(argv: list[str]) -> dict[str, list[str]]:
    """--name value pairs (repeatable) and bare --flags (value "") of a CLI argv."""
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            found.setdefault(argv[i][2:], []).append(value)
            i += 2 if value else 1
        else:
            i += 1
    return found


def fake_run(argv: list[str]) -> int:
    opts = options(argv)
    config = tomllib.loads(Path(opts["config"][0]).read_text()) if "config" in opts else {}

    def pick(name: str, key: str, default: list) -> list:
        if name in opts:
            return opts[name]
        value = config.get(key, default)
        return value if isinstance(value, list) else [value]

    out = Path(opts.get("out-dir", ["sparsebench-results"])[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "sparsebench.lock").write_text(f"{os.getpid()}\n")  # as a run killed by its step's timeout
    with open(REPLAY, newline="") as fh:
        templates = list(csv.DictReader(fh))
    with open(HEADER, newline="") as fh:
        header = next(csv.reader(fh))
    patterns = [p if isinstance(p, str) else p["name"] for p in pick("pattern", "patterns", ["local"])]
    dense_asked = "dense" in patterns  # dense SDPA always runs beside; the other impls on dense only when asked
    patterns = ["dense"] + [p for p in patterns if p.split(":")[0] != "dense"]
    impls = pick("impl", "impls", ["sdpa"])
    modes = pick("mode", "modes", ["fwd"])
    run_id = uuid.uuid4().hex[:12]
    csv_path = out / "results.csv"
    append = "resume" in opts and csv_path.exists()
    rows = []
    # --seq-lens: a serving batch, one shape per spec (its longest length as seq_len, one query row in decode)
    shapes = [(spec, serving_shape(spec)) for spec in opts.get("seq-lens", [])] or \
        [("", (1, int(seq))) for seq in pick("seq", "seq", [4096])]
    for spec, (batch, seq) in shapes:
        for mode in modes:
            for q_len in ((pick("q-len", "q_len", [1]) if not spec else [1]) if mode == "decode" else [""]):
                for pattern in patterns:
                    if pattern == "dense":
                        run_impls = ["sdpa"] + [i for i in impls if i != "sdpa" and dense_asked]
                    else:
                        run_impls = impls
                    for impl in run_impls:
                        name = pattern.split(":")[0]
                        like = [t for t in templates if t["pattern"] == name and t["impl"] == impl.split("[")[0]]
                        row = dict.fromkeys(header, "")
                        template = (like or [t for t in templates if t["pattern"] == name] or templates)[0]
                        row.update({k: v for k, v in template.items() if k in row})
                        asked = pattern.partition(":")[2].replace(",", ";")  # the CSV's key=INT;key=INT
                        params = asked or (template["params"] if like else "")
                        row.update(schema_version="2", run_id=run_id, pattern=name, params=params, impl=impl,
                                   seq_len=str(seq), mode=mode, q_len=str(q_len or seq), status="ok")
                        if spec:
                            row.update(batch=str(batch), seq_lens=spec, seq_lens_seed="0",
                                       page_size="16" if mode == "decode" else "")
                        for flag, column in (("heads", "heads"), ("head-dim", "head_dim")):
                            if flag in opts:
                                row[column] = opts[flag][0]
                        row["kv_heads"] = opts.get("kv-heads", [row["heads"]])[0]
                        rows.append(row)
    with open(csv_path, "a" if append else "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        if not append:
            writer.writeheader()
        writer.writerows(rows)
    meta = json.loads(REPLAY.with_name("meta.json").read_text())
    meta["command"] = "fake: " + " ".join(argv)
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"fake run: {len(rows)} rows into {csv_path}")
    return 0


def serving_shape(spec: str) -> tuple[int, int]:
    """(sequences, longest length) of a --seq-lens spec as the check writes them (uniform:LO-HI:COUNT or a list)."""
    if spec.startswith("uniform:"):
        span, _, count = spec.removeprefix("uniform:").partition(":")
        return int(count), int(span.split("-")[1])
    lengths = [int(n) for n in spec.split(",")]
    return len(lengths), max(lengths)


def fake_gate_experiments(argv: list[str]) -> int:
    opts = options(argv)
    out, base = Path(opts["out-dir"][0]), Path(opts["baseline"][0])
    for i in range(1, int(opts["aa"][0]) + 1):
        run = out / f"aa{i:02d}"
        run.mkdir(parents=True, exist_ok=True)
        shutil.copy(base, run / "results.csv")
        (run / "run.log").write_text("fake run\n")
        (run / "gate-vs-base.log").write_text("fake gate: no regression\n")
        print(f"A/A {i:2d}: exit 0", flush=True)
    (out / "summary.md").write_text(f"- A/A (fake): 0/{opts['aa'][0]} false alarms\n")
    (out / "summary.json").write_text("{}\n")
    return 0


def main(argv: list[str]) -> int:
    # GPU_CHECK_FAKE_SLEEP=STEP=SECONDS: that step hangs (to check the limits), as a slow GPU step would
    step, _, seconds = os.environ.get("GPU_CHECK_FAKE_SLEEP", "").partition("=")
    if step and step == os.environ.get("GPU_CHECK_STEP"):
        time.sleep(float(seconds))
    if argv[:3] == ["-m", "sparsebench", "run"]:
        return fake_run(argv[3:])
    if argv[:3] == ["-m", "sparsebench", "info"]:
        print(json.dumps({"dry_run": True}))
        return 0
    if argv[:3] == ["-m", "sparsebench", "plot"]:
        plots = Path(options(argv)["out"][0])
        plots.mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "speedup.png", "latency.png", "memory.png"):
            (plots / name).write_text("fake\n")
        return 0
    if argv[:2] == ["-m", "pytest"]:
        tests = [a for a in argv if a.startswith("tests/")]
        print(f"{len(tests)} passed in 0.01s (fake: pytest {' '.join(argv[2:])})")
        return 0
    if argv and argv[0].endswith("gpu_profile.py"):
        for case in argv[1:]:
            print(f"{case} n=32768 fwd: fake profile")
        return 0
    if argv and argv[0].endswith("gate_experiments.py"):
        return fake_gate_experiments(argv[1:])
    print(f"gpu_check_fake: no fake for: python3 {' '.join(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
