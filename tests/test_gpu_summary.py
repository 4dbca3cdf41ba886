"""scripts/gpu_summary.py (the GPU check's summary) on a synthetic result frame."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_summary.py"
spec = importlib.util.spec_from_file_location("gpu_summary", SCRIPT)
gpu_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_summary)


def row(pattern, impl, n, ms, mib=1.0, mode="fwd", status="ok", head_dim=64):
    return {"pattern": pattern, "impl": impl, "mode": mode, "dtype": "bfloat16", "batch": 1, "heads": 16,
            "kv_heads": 16, "head_dim": head_dim, "seq_len": n, "q_len": n, "latency_ms": ms, "tflops_useful": 100.0,
            "peak_mem_mib": mib, "status": status}


def test_targets_use_the_best_impl_and_the_right_reference():
    n = 32768
    frame = pd.DataFrame([
        row("dense", "sdpa", n, 10.0), row("causal", "sdpa", n, 5.0),
        row("local", "sdpa", n, 11.0), row("local", "flex", n, 0.25), row("local", "structured", n, 0.5),
        row("strided", "structured", n, 2.5), row("strided", "flex", n, 0.1, status="inaccurate"),
        row("sliding_window", "flex", n, 0.5),
        row("dense", "sdpa", n, 20.0, mode="fwdbwd"), row("local", "structured", n, 1.0, mode="fwdbwd"),
        row("local", "flex", 4096, 0.001),  # another length: ignored
    ])
    checks = {(c["pattern"], c["mode"]): c for c in gpu_summary.target_checks(frame, n)}
    assert checks["local", "fwd"]["impl"] == "flex" and checks["local", "fwd"]["speedup"] == pytest.approx(40.0)
    assert checks["local", "fwdbwd"]["speedup"] == pytest.approx(20.0)
    # an inaccurate row never counts, however fast
    assert checks["strided", "fwd"]["impl"] == "structured" and checks["strided", "fwd"]["speedup"] == 4.0
    # sliding_window is measured against causal flash, not dense
    assert checks["sliding_window", "fwd"]["speedup"] == pytest.approx(10.0)
    assert checks["sliding_window", "fwd"]["reference"] == "causal sdpa"


def test_memory_growth_exponent():
    frame = pd.DataFrame([row("local", "structured", n, 0.1, mib=n / 1024) for n in (4096, 8192, 16384)]
                         + [row("strided", "flex", n, 0.1, mib=(n / 1024) ** 2) for n in (4096, 8192, 16384)]
                         + [row("dense", "flex", n, 0.1, mib=5.0) for n in (4096, 8192)])
    growth = gpu_summary.memory_growth(frame)
    assert math.isclose(growth.loc[("local", "structured", "fwd", 64), "exponent"], 1.0)
    assert math.isclose(growth.loc[("strided", "flex", "fwd", 64), "exponent"], 2.0)
    assert "dense" not in growth.index.get_level_values("pattern")


def test_missing_results_file_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.csv")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr



def test_targets_keep_their_reference_when_a_later_run_measures_it_again(tmp_path):
    """A resumed run re-measures dense SDPA (the GPU check's later steps do): the rows of the earlier run are still
    compared with their own run's reference, not called missed."""
    published = Path(__file__).resolve().parents[1] / "docs" / "results" / "h200" / "results.csv"
    frame = pd.read_csv(published, keep_default_na=False, na_values=[""])
    again = frame[(frame.pattern == "dense") & (frame.impl == "sdpa") & (frame.seq_len == 32768)
                  & (frame["mode"] == "fwd") & (frame.head_dim == 64)]
    again = again.assign(run_id="0later0run00", latency_ms=9.0, samples_ms="9")
    pd.concat([frame, again]).to_csv(tmp_path / "results.csv", index=False)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "results.csv")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "strided    fwd D=64: structured 4.5x vs dense sdpa" in proc.stdout
    assert "local    fwd D=64: flex 41.9x" in proc.stdout


def test_selection_rows_are_compared_with_the_sweeps_causal_cudnn_row_of_their_shape():
    n = 32768
    density = 17 * 64 / n  # 17 kept blocks of 64 per query block: ideal (n + 1) / (2 n density) ~ 15.06x
    selection = pd.DataFrame([
        {**row("topk_blocks", "structured", n, 2.0), "density": density, "speedup_vs_full": 4.0, "recall": 0.8},
        {**row("topk_blocks", "flex", n, 4.0), "density": density, "speedup_vs_full": 2.0, "recall": 0.8},
        {**row("topk_blocks", "structured", n, 5.0, mode="fwdbwd"), "density": density, "speedup_vs_full": 4.0},
        {**row("topk_blocks", "nsa", n, math.nan, status="unsupported"), "density": math.nan},
        {**row("causal", "sdpa", n, 8.0), "density": 0.5},
    ])
    sweep = pd.DataFrame([row("causal", "sdpa[cudnn]", n, 16.0), row("causal", "sdpa", n, 8.0),
                          row("causal", "sdpa[cudnn]", n, 16.0, head_dim=128)])  # another shape: not used
    checks = gpu_summary.selection_checks(selection, sweep, n)
    assert list(checks.impl) == ["structured", "flex", "structured"]  # ok topk_blocks rows only
    ideal = (n + 1) / (2 * n * density)
    assert checks.vs_cudnn.iloc[0] == pytest.approx(8.0) and checks.vs_cudnn.iloc[1] == pytest.approx(4.0)
    assert checks.ideal.iloc[0] == pytest.approx(ideal)
    assert checks.share_vs_cudnn.iloc[0] == pytest.approx(8.0 / ideal)
    assert math.isnan(checks.vs_cudnn.iloc[2])  # no fwdbwd causal cuDNN row in the sweep


def test_the_summary_prints_the_selection_target(tmp_path):
    published = Path(__file__).resolve().parents[1] / "docs" / "results" / "h200" / "results.csv"
    frame = pd.read_csv(published, keep_default_na=False, na_values=[""])
    cudnn = frame[(frame.pattern == "causal") & (frame.impl == "sdpa") & (frame.seq_len == 32768)
                  & (frame["mode"] == "fwd") & (frame.head_dim == 64)]
    cudnn = cudnn.assign(impl="sdpa[cudnn]", latency_ms=16.0, samples_ms="16")
    pd.concat([frame, cudnn]).to_csv(tmp_path / "results.csv", index=False)
    topk = cudnn.assign(pattern="topk_blocks", params="block=64;causal=1;topk=16", impl="structured",
                        latency_ms=2.0, samples_ms="2", density=17 * 64 / 32768, recall=0.75, speedup_vs_full=4.0)
    topk.to_csv(tmp_path / "selection.csv", index=False)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "results.csv"), "--selection",
                           str(tmp_path / "selection.csv")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "structured    fwd: 8.00x causal cuDNN, ideal 15.06x: 53% met" in proc.stdout


def test_a_cut_last_row_is_left_out_and_graph_timed_calls_are_listed(tmp_path):
    """A step killed in the middle of a write leaves half a row: the summary reads the finished rows (the file
    is left as it is). Calls timed with CUDA graphs get a table of their graph and event times."""
    published = Path(__file__).resolve().parents[1] / "docs" / "results" / "h200" / "results.csv"
    frame = pd.read_csv(published, keep_default_na=False, na_values=[""])
    short = frame[(frame.pattern == "local") & (frame.impl == "flex") & (frame.seq_len == 4096)].head(1)
    frame = pd.concat([frame, short.assign(mode="decode", q_len=1, latency_ms=0.02, samples_ms="0.02",
                                          launch_overhead_ms=0.03)])
    path = tmp_path / "results.csv"
    frame.to_csv(path, index=False)
    text = path.read_text()
    path.write_text(text + text.splitlines()[1][:40])  # half a row, no newline
    proc = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "strided    fwd D=64: structured" in proc.stdout
    assert "timed with CUDA graphs" in proc.stdout and "0.05" in proc.stdout  # events = graph + launch overhead
    assert path.read_text().endswith(text.splitlines()[1][:40])


def test_a_broken_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("not,a,results,file\n1,2,3,4\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and str(path) in proc.stderr, proc.stderr
