"""`sparsebench merge`, and `plot` and `gate` on a directory of shards, from result files written here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sparsebench import gate, merge, plots
from sparsebench.cli import app
from sparsebench.errors import SparsebenchError
from sparsebench.results import COLUMNS, Measurement, ResultWriter, case_key, make_row, read_results, write_meta
from sparsebench.runner.cases import Case

SAMPLES = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99]


def case(pattern: str, impl: str, n: int) -> Case:
    params = "window=64" if pattern == "local" else ""
    return Case(pattern, params, impl, "cuda", "bfloat16", "fwd", 1, 8, 8, n, n, 64)


def group(n: int) -> list[Case]:
    return [case("dense", "sdpa", n), case("local", "flex", n), case("local", "structured", n)]


def write_shard(root: Path, index: int, count: int, cases: list[Case], done: int | None = None,
                gpu: tuple[int, str] = (0, "NVIDIA H100 80GB HBM3"), host: str = "node1", scale: float = 1.0,
                finished: bool = True, config: dict | None = None) -> Path:
    """A shard as `run --shard` leaves it: meta.json naming every case it owns, and its first `done` rows."""
    out = root / f"shard-{index}-of-{count}"
    meta = {"hostname": host, "torch": "2.13.0", "date": f"2026-01-0{index}T00:00:00+00:00",
            "config": config or {"seq": [1024, 2048, 4096]},
            "ceilings": {"cuda": {"bfloat16": {"matmul_tflops": 700.0}}},
            "shard": {"index": index, "count": count, "cases": [list(c.key()) for c in cases]}}
    if finished:
        meta["harness"] = {"wall_s": 1.0}
    write_meta(out / "meta.json", meta)
    with ResultWriter(out / "results.csv") as writer:
        reference = None
        for c in cases[:done]:
            ms = (4.0 if c.pattern == "dense" else 1.0) * scale
            row = make_row(c.row(), Measurement("ok", latency_ms=ms, samples=[s * ms for s in SAMPLES],
                                                peak_mem_mib=10.0, flops_useful=1e9, flops_executed=1e9,
                                                density=0.1, extra={"gpu_index": gpu[0], "gpu_name": gpu[1]}),
                           f"run{index}", gpu[1], reference)
            reference = reference or row
            writer.write(row)
    return out


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_merge_combines_shards_and_lists_hosts_and_gpus(tmp_path):
    write_shard(tmp_path, 1, 2, group(1024) + group(4096), gpu=(0, "NVIDIA H100 80GB HBM3"), host="node1")
    write_shard(tmp_path, 2, 2, group(2048), gpu=(5, "NVIDIA H100 80GB HBM3"), host="node2")
    result = invoke("merge", str(tmp_path), "--out", str(tmp_path / "all"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "all" / "results.csv")
    assert "hosts: node1, node2" in result.stderr and "node2:5 NVIDIA H100" in result.stderr
    frame = read_results(tmp_path / "all" / "results.csv")
    assert len(frame) == 9 and list(frame.columns) == COLUMNS
    assert sorted(frame.seq_len.unique()) == [1024, 2048, 4096] and (frame.gpu_index.dropna() % 1 == 0).all()
    with open(tmp_path / "all" / "results.csv") as fh:
        assert next(csv.DictReader(fh))["batch"] == "1"  # integers stay integers
    meta = json.loads((tmp_path / "all" / "meta.json").read_text())
    assert meta["hosts"] == ["node1", "node2"]
    assert meta["gpus"] == [{"host": "node1", "index": 0, "name": "NVIDIA H100 80GB HBM3"},
                            {"host": "node2", "index": 5, "name": "NVIDIA H100 80GB HBM3"}]
    assert [m["shard"]["index"] for m in meta["merged_from"]] == [1, 2]  # each shard's meta.json kept
    assert meta["merged"]["shards"] == 2 and meta["merged"]["missing_cases"] == 0
    assert meta["date"].startswith("2026-01-01") and meta["ceilings"]["cuda"]["bfloat16"]["matmul_tflops"] == 700
    # merging again into the same place replaces the earlier merge
    assert invoke("merge", str(tmp_path), "--out", str(tmp_path / "all")).exit_code == 0


def test_merge_keeps_the_shards_plugins_and_source_hash(tmp_path):
    """The merged meta.json names the user code every shard ran (what the gate's --confirm and notes read)."""
    plugin = {"kind": "impl", "name": "fn", "spec": "mod:fn", "file": "/x/mod.py", "sha256": "ab" * 8}
    for index, cases in ((1, group(1024)), (2, group(2048))):
        out = write_shard(tmp_path, index, 2, cases)
        meta = json.loads((out / "meta.json").read_text())
        write_meta(out / "meta.json", {**meta, "plugins": [plugin], "sparsebench_sha256": "cd" * 8})
    assert invoke("merge", str(tmp_path), "--out", str(tmp_path / "all")).exit_code == 0
    meta = json.loads((tmp_path / "all" / "meta.json").read_text())
    assert meta["plugins"] == [plugin] and meta["sparsebench_sha256"] == "cd" * 8


def test_merge_names_missing_shards_and_unfinished_cases(tmp_path):
    write_shard(tmp_path, 1, 3, group(1024) + group(4096), done=4, finished=False)  # died in its second group
    write_shard(tmp_path, 3, 3, group(2048))
    result = invoke("merge", str(tmp_path), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert "missing shard 2/3: no results (run it with --shard 2/3)" in lines
    assert "shard 1/3 did not finish" in lines
    assert [line for line in lines if line.startswith("missing case")] == [
        "missing case (shard 1/3): local(window=64) flex n=4096 bfloat16 fwd B=1 H=8 D=64 cuda",
        "missing case (shard 1/3): local(window=64) structured n=4096 bfloat16 fwd B=1 H=8 D=64 cuda"]
    assert lines[-1] == "error: 1 shard(s) missing (2/3); 2 case(s) missing; nothing written (--partial writes " \
                        "what there is)"
    assert not (tmp_path / "all").exists()
    partial = invoke("merge", str(tmp_path), "--out", str(tmp_path / "all"), "--partial")
    assert partial.exit_code == 0 and "partial: 1 shard(s) missing" in partial.stderr
    assert len(read_results(tmp_path / "all" / "results.csv")) == 7


def test_merge_refuses_duplicates_mixed_versions_and_mixed_splits(tmp_path):
    a = write_shard(tmp_path / "a", 1, 2, group(1024))
    b = write_shard(tmp_path / "b", 1, 2, group(1024))
    result = invoke("merge", str(a / "results.csv"), str(tmp_path / "b"), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2 and "shard 1/2 is given more than once" in result.stderr
    write_shard(tmp_path / "b", 2, 2, group(1024))  # another shard that measured the same cases
    result = invoke("merge", str(a / "results.csv"), str(b.parent / "shard-2-of-2"), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2
    assert "duplicate case in shard 1/2 and shard 2/2: dense sdpa n=1024" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: 3 case(s) in more than one input; nothing written"

    write_shard(tmp_path / "c", 1, 4, group(2048))
    result = invoke("merge", str(a), str(tmp_path / "c"), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2 and "different splits (into 2 and 4 shards)" in result.stderr

    old = tmp_path / "v1.csv"  # a file of schema version 1 (no kv_heads, q_len)
    frame = read_results(a / "results.csv").drop(columns=["kv_heads", "q_len"])
    frame.assign(schema_version=1).to_csv(old, index=False)
    result = invoke("merge", str(old), str(tmp_path / "c"), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2 and "mix result schema versions" in result.stderr and "v1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_merge_refuses_other_sweeps_and_a_runs_own_directory(tmp_path):
    write_shard(tmp_path, 1, 2, group(1024), config={"seq": [1024]})
    write_shard(tmp_path, 2, 2, group(2048), config={"seq": [2048]})
    result = invoke("merge", str(tmp_path), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2 and "different sweep configurations" in result.stderr
    run = write_shard(tmp_path / "x", 1, 1, group(1024))
    result = invoke("merge", str(run), "--out", str(run))
    assert result.exit_code == 2 and "is one of the inputs" in result.stderr
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "results.csv").write_text((run / "results.csv").read_text())
    result = invoke("merge", str(run), "--out", str(tmp_path / "y"))
    assert result.exit_code == 2 and "holds the results of a run" in result.stderr
    result = invoke("merge", str(tmp_path / "nowhere"), "--out", str(tmp_path / "z"))
    assert result.exit_code == 2 and "no such file or directory" in result.stderr


def test_gate_and_plot_read_a_directory_of_shards(tmp_path):
    base, cur = tmp_path / "base", tmp_path / "cur"
    for root, scale in ((base, 1.0), (cur, 1.0)):
        write_shard(root, 1, 2, group(1024), scale=scale)
        write_shard(root, 2, 2, group(2048), scale=scale)
    result = invoke("gate", str(base), str(cur))
    assert result.exit_code == 0 and "gate PASS: 6 cases" in result.output, result.output
    merge.write(merge.load_merged([base]), tmp_path / "merged")
    assert invoke("gate", str(tmp_path / "merged" / "results.csv"), str(cur)).exit_code == 0
    (cur / "shard-2-of-2" / "results.csv").unlink()
    (cur / "shard-2-of-2" / "meta.json").unlink()
    result = invoke("gate", str(base), str(cur))
    assert "note: " in result.output and "1 shard(s) missing (2/2)" in result.output
    assert "missing" in result.output.lower()
    with pytest.raises(SparsebenchError, match="no such file"):
        merge.open_result_set(tmp_path / "empty")
    plot = invoke("plot", str(base))
    assert plot.exit_code == 0, plot.output
    assert (base / "plots" / "report.md").exists()


def test_ratios_and_lines_never_cross_gpu_models():
    """A run spread over mixed GPUs: one plot line per GPU model, and the gate does not fail a case on latency
    measured on another model than its baseline's."""
    rows = [{**c.row(), "run_id": "r1", "latency_ms": 4.0 if c.pattern == "dense" else 1.0, "status": "ok",
             "gpu_name": name, "device_name": name, "peak_mem_mib": 1.0}
            for n, name in ((1024, "NVIDIA H100 80GB HBM3"), (2048, "NVIDIA A100-SXM4-80GB")) for c in group(n)]
    frame = pd.DataFrame(rows)
    combined = plots.combine([plots.Run("mixed", frame)])
    assert set(combined.series) == {"mixed · NVIDIA H100 80GB HBM3", "mixed · NVIDIA A100-SXM4-80GB"}
    assert combined.speedup_vs_dense.dropna().eq(4.0).sum() == 4  # each against its own GPU's dense reference

    base = {"gpu_name": "NVIDIA H100 80GB HBM3"}
    assert gate.other_gpu_models(base, {"gpu_name": "NVIDIA A100-SXM4-80GB"}) == \
        "NVIDIA H100 80GB HBM3 in the baseline, NVIDIA A100-SXM4-80GB now"
    assert gate.other_gpu_models(base, base) == "" and gate.other_gpu_models(base, {"gpu_name": float("nan")}) == ""


def test_gate_does_not_fail_latency_measured_on_another_gpu_model():
    def frame(name: str, slow: float) -> pd.DataFrame:
        return pd.DataFrame([{**c.row(), "run_id": name, "status": "ok", "gpu_name": name, "device_name": "",
                              "latency_ms": 4.0 if c.pattern == "dense" else slow, "peak_mem_mib": 1.0,
                              "samples_ms": " ".join(str(s * (4.0 if c.pattern == "dense" else slow))
                                                     for s in SAMPLES),
                              "flops_executed": 1.0, "density": 0.1} for c in group(1024)])

    same = gate.compare(frame("H100", 1.0), frame("H100", 2.0))
    assert same.failed
    other = gate.compare(frame("H100", 1.0), frame("A100", 2.0))
    assert not other.failed and any("measured on H100 in the baseline, A100 now: not gated" in m
                                    for c in other.cases for m in c.messages(gate.WARNING))


def test_an_older_results_file_is_resumed_with_its_own_columns(tmp_path):
    path = tmp_path / "results.csv"
    old_columns = COLUMNS[:COLUMNS.index("gpu_index")]
    pd.DataFrame(columns=old_columns).to_csv(path, index=False)
    c = case("dense", "sdpa", 64)
    with ResultWriter(path, append=True) as writer:
        writer.write(make_row(c.row(), Measurement("ok", latency_ms=1.0, extra={"gpu_index": 1}), "r1"))
    assert path.read_text().splitlines()[0] == ",".join(old_columns)
    frame = read_results(path)
    assert list(frame.columns) == COLUMNS and frame.gpu_index.isna().all()
    assert case_key(frame.iloc[0]) == c.key()


def test_merge_refuses_unrelated_runs_and_inputs_it_cannot_place(tmp_path):
    """Two whole runs (not shards) of different configs, a float32 one and a float16 one, are not one sweep."""
    fp32 = write_shard(tmp_path / "a", 1, 1, group(1024), config={"dtypes": ["float32"], "seq": [1024]})
    half = [Case(c.pattern, c.params, c.impl, "cuda", "float16", "fwd", 1, 8, 8, 2048, 2048, 64) for c in group(2048)]
    fp16 = write_shard(tmp_path / "b", 1, 1, half, config={"dtypes": ["float16"], "seq": [2048]})
    for run in (fp32, fp16):  # whole runs: no shard in their meta.json or their directory's name
        meta = json.loads((run / "meta.json").read_text())
        del meta["shard"]
        (run.parent / "run").mkdir()
        (run / "results.csv").rename(run.parent / "run" / "results.csv")
        write_meta(run.parent / "run" / "meta.json", meta)
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    result = invoke("merge", str(a), str(b), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2 and not (tmp_path / "all").exists(), result.output
    assert result.stderr.strip() == f"error: {a / 'results.csv'} and {b / 'results.csv'} ran different sweep " \
        "configurations (their meta.json differ in dtypes, seq); merge the results of one sweep"
    (b / "meta.json").unlink()  # a results.csv alone: nothing says which sweep it belongs to
    result = invoke("merge", str(a), str(b), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2 and "no sweep configuration recorded" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert invoke("merge", str(b), "--out", str(tmp_path / "alone")).exit_code == 0  # on its own it merges


def test_merge_of_inputs_without_rows_writes_nothing(tmp_path):
    empty = write_shard(tmp_path, 1, 1, group(1024), done=0)  # a run that wrote its header and no row
    result = invoke("merge", str(empty), "--out", str(tmp_path / "all"))
    assert result.exit_code == 2 and not (tmp_path / "all").exists(), result.output
    assert result.stderr.strip() == "error: no result rows in shard 1/1; nothing to merge"


def write_run(root: Path, dense_ms: float, local_ms: float, failed: bool = False, host: str = "node1") -> Path:
    """One whole run of the group at n=1024 (dense, local/flex, local/structured), as `run` leaves it."""
    root.mkdir(parents=True)
    write_meta(root / "meta.json", {"hostname": host, "torch": "2.13.0", "date": "2026-01-01T00:00:00+00:00",
                                    "config": {"seq": [1024]}, "harness": {"wall_s": 1.0}})
    with ResultWriter(root / "results.csv") as writer:
        reference = None
        for c in group(1024):
            ms = dense_ms if c.pattern == "dense" else local_ms
            status = "error" if failed and c.impl == "flex" else "ok"
            row = make_row(c.row(), Measurement(status, latency_ms=ms if status == "ok" else None,
                                                samples=[s * ms for s in SAMPLES] if status == "ok" else [],
                                                peak_mem_mib=10.0, flops_useful=1e9, flops_executed=1e9,
                                                density=0.1), "run", "H100", reference)
            reference = reference or row
            writer.write(row)
    return root


def test_merge_median_keeps_the_median_run_of_each_case(tmp_path):
    # dense/local latencies per run: the run with a slow dense reference (8 ms) makes local look 4x faster
    runs = [write_run(tmp_path / f"r{i}", dense, local) for i, (dense, local) in
            enumerate([(4.0, 1.0), (8.0, 1.0), (4.0, 1.2), (4.4, 1.0), (3.8, 0.9)])]
    result = invoke("merge", "--median", *map(str, runs), "--out", str(tmp_path / "base"))
    assert result.exit_code == 0, result.output
    assert "the median run of each case over 5 runs" in result.output
    rows = {(r["pattern"], r["impl"]): r for r in read_results(tmp_path / "base" / "results.csv").to_dict("records")}
    assert rows[("dense", "sdpa")]["latency_ms"] == 4.0  # 3.8, 4.0, 4.0, 4.4, 8.0
    # local over its own run's dense: 0.25, 0.125, 0.3, 0.227, 0.237 -> the median is run 4 (0.237)
    local = rows[("local", "structured")]
    assert (local["latency_ms"], local["dense_latency_ms"]) == (0.9, 3.8)
    meta = json.loads((tmp_path / "base" / "meta.json").read_text())
    assert meta["merged"]["median_of"] == 5 and len(meta["merged"]["inputs"]) == 5
    # the one-run baseline with the slow dense reference flags a typical run; the median baseline does not
    typical = write_run(tmp_path / "now", 4.0, 1.0)
    assert invoke("gate", str(runs[1]), str(typical), "--confirm", "0").exit_code == 1
    assert invoke("gate", str(tmp_path / "base"), str(typical), "--confirm", "0").exit_code == 0


def test_merge_median_refuses_what_is_not_repeated_runs_of_one_sweep(tmp_path):
    a, b = write_run(tmp_path / "a", 4.0, 1.0), write_run(tmp_path / "b", 4.0, 1.0)
    result = invoke("merge", "--median", str(a), str(b), "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "at least 3 runs" in result.stderr
    other = write_run(tmp_path / "c", 4.0, 1.0, host="node2")
    result = invoke("merge", "--median", str(a), str(b), str(other), "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "differ in hostname" in result.stderr
    shards = write_shard(tmp_path / "s", 1, 2, group(1024))
    result = invoke("merge", "--median", str(a), str(b), str(shards), "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "not shards" in result.stderr
    short = write_run(tmp_path / "d", 4.0, 1.0)
    frame = read_results(short / "results.csv")
    frame.iloc[:2].to_csv(short / "results.csv", index=False)
    result = invoke("merge", "--median", str(a), str(b), str(short), "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "lacks 1 case(s)" in result.stderr


def test_merge_median_keeps_a_failure_of_most_runs(tmp_path):
    runs = [write_run(tmp_path / "a", 4.0, 1.0, failed=True), write_run(tmp_path / "b", 4.0, 1.0, failed=True),
            write_run(tmp_path / "c", 4.0, 1.0)]
    merged = merge.median_runs(merge.load(merge.find_results(runs)))
    statuses = dict(zip(merged.frame["impl"], merged.frame["status"]))
    assert statuses == {"sdpa": "ok", "flex": "error", "structured": "ok"}
