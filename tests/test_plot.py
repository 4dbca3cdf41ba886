"""`sparsebench plot` on small synthetic result sets written with the real schema."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sparsebench import plots
from sparsebench.cli import app
from sparsebench.results import REQUIRED_COLUMNS, ResultWriter, read_meta, read_results

SEQ_LENS = (256, 512, 1024)
# (pattern, params, density, impl, latency at n=256 in ms); latency grows with n², eager runs out of memory at 1024
CASES = [
    ("dense", "", 1.0, "sdpa", 1.0),
    ("dense", "", 1.0, "eager", 2.0),
    ("local", "window=64", 0.25, "sdpa", 1.0),
    ("local", "window=64", 0.25, "eager", 2.0),
    ("local", "window=64", 0.25, "flex", 0.5),
]
FIGURES = ["cpu-float32-fwd-" + kind for kind in plots.FIGURES if kind != "bandwidth"]  # bandwidth: decode only
runner = CliRunner()


def write_run(out_dir: Path, scale: float = 1.0, device: str = "cpu", ceiling: float | None = None) -> Path:
    """A results.csv with meta.json; speedup_vs_dense is left empty for plot to compute."""
    with ResultWriter(out_dir / "results.csv") as writer:
        for n in SEQ_LENS:
            for pattern, params, density, impl, ms in CASES:
                failed = impl == "eager" and n == 1024
                latency = scale * ms * (n / 256) ** 2
                writer.write({
                    "run_id": out_dir.name, "pattern": pattern, "params": params, "impl": impl, "device": device,
                    "dtype": "float32", "mode": "fwd", "batch": 1, "heads": 2, "seq_len": n, "head_dim": 16,
                    "device_name": "Synthetic CPU", "density": density, "flops_useful": 4 * 2 * 16 * density * n * n,
                    "flops_executed": 4 * 2 * 16 * n * n,
                    "latency_ms": None if failed else latency, "latency_iqr_ms": None if failed else latency / 10,
                    "tflops_useful": None, "peak_mem_mib": None if failed else n / 64,
                    "max_abs_err": 0.0, "status": "oom" if failed else "ok", "error": "out of memory" if failed else "",
                })
    meta = {"torch": "2.13.0", "date": "2025-01-02T03:04:05+00:00"}
    if ceiling:
        meta["ceilings"] = {device: {"float32": {"matmul_tflops": ceiling, "copy_gbps": 100.0}}}
    (out_dir / "meta.json").write_text(json.dumps(meta))
    return out_dir / "results.csv"


def load(path: Path, label: str) -> plots.Run:
    return plots.Run(label, read_results(path), read_meta(path))


def legend_labels(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_default_input_writes_every_figure_as_png(tmp_path, monkeypatch):
    write_run(tmp_path / "sparsebench-results")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["plot"])
    assert result.exit_code == 0, result.output
    plot_dir = Path("sparsebench-results/plots")
    expected = [plot_dir / f"{name}.png" for name in FIGURES] + [plot_dir / "report.md"]
    assert result.stdout.split() == [str(p) for p in expected]  # every path written, on stdout
    for path in expected[:-1]:
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    report = (plot_dir / "report.md").read_text()
    assert all(f"]({name}.png)" in report for name in FIGURES)
    assert "| local | 1024 | flex | 8 | 2.00× | 1.00× |" in report
    # the cases without a measurement are listed with their status and why
    assert "| local | 1024 | eager | oom | out of memory |" in report.split("Not measured:")[1]


def test_two_inputs_overlay_as_svg(tmp_path):
    base, current = write_run(tmp_path / "baseline"), write_run(tmp_path / "current", scale=0.5)
    out = tmp_path / "out"
    result = runner.invoke(app, ["plot", str(base), str(current), "--out", str(out), "--format", "svg"])
    assert result.exit_code == 0, result.output
    for name in FIGURES:
        assert ET.parse(out / f"{name}.svg").getroot().tag.endswith("svg")
    assert "| current | local | 1024 | flex |" in (out / "report.md").read_text()
    fig = plots.line_figure(plots.figure_sets([load(base, "baseline"), load(current, "current")])[0], "latency")
    assert {"baseline", "current"} <= set(legend_labels(fig))


def test_missing_cases_are_marked(tmp_path):
    (fs,) = plots.figure_sets([load(write_run(tmp_path), "run")])
    for kind in plots.METRICS:
        fig = plots.line_figure(fs, kind)
        assert "not run: oom" in legend_labels(fig)
        marks = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "not run: oom"]
        assert len(marks) == 2  # eager at 1024 on both panels, drawn at the bottom of the axes
        assert all(line.get_marker() == plots.NOT_RUN_MARKERS["oom"] for line in marks)
        assert all(line.get_xdata()[0] == pytest.approx(1024, rel=0.2) for line in marks)


def test_speedup_is_computed_from_latency_and_drawn_with_its_references(tmp_path):
    (fs,) = plots.figure_sets([load(write_run(tmp_path), "run")])
    flex = fs.rows[(fs.rows["impl"] == "flex")]
    assert flex["speedup_vs_dense"].tolist() == pytest.approx([2.0, 2.0, 2.0])
    assert flex["mem_ratio_vs_dense"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    labels = legend_labels(plots.line_figure(fs, "speedup"))
    assert "1× (dense SDPA)" in labels and "ideal 1/density" in labels


def test_ceiling_from_meta_is_drawn(tmp_path):
    (fs,) = plots.figure_sets([load(write_run(tmp_path, ceiling=2.5), "run")])
    assert "measured matmul 2.5" in legend_labels(plots.line_figure(fs, "tflops"))


def test_heatmap_names_the_best_impl(tmp_path):
    (fs,) = plots.figure_sets([load(write_run(tmp_path), "run")])
    texts = [t.get_text() for t in plots.heatmap_figure(fs).axes[0].texts]
    assert texts.count("2×\nflex") == 3 and texts.count("1×\nsdpa") == 3


def test_panels_name_params_when_a_pattern_has_several(tmp_path):
    run = load(write_run(tmp_path), "run")
    wide = run.frame[run.frame["pattern"] == "local"].assign(params="window=128")
    run.frame = pd.concat([run.frame, wide], ignore_index=True)
    panels = set(plots.combine([run])["panel"])
    assert panels == {"dense", "local(window=64)", "local(window=128)"}


def test_cpu_and_gpu_runs_overlay_per_mode(tmp_path):
    cpu, gpu = write_run(tmp_path / "cpu"), write_run(tmp_path / "gpu", scale=0.01, device="cuda")
    (fs,) = plots.figure_sets([load(cpu, "cpu"), load(gpu, "gpu")])
    assert set(fs.rows["series"]) == {"cpu (cpu, float32)", "gpu (cuda, float32)"}
    assert {"cpu (cpu, float32)", "gpu (cuda, float32)"} <= set(legend_labels(plots.line_figure(fs, "latency")))


def test_a_result_with_only_the_required_columns_plots(tmp_path):
    frame = read_results(write_run(tmp_path))[REQUIRED_COLUMNS]
    (fs,) = plots.figure_sets([plots.Run("bare", frame)])
    assert "Synthetic CPU" not in fs.subtitle and "cpu" in fs.subtitle  # no device_name, no meta: falls back
    for kind in plots.FIGURES:
        assert plots.figure(fs, kind).axes


def test_bad_inputs_give_one_line_and_exit_2(tmp_path):
    good = write_run(tmp_path / "run")
    other = tmp_path / "other.csv"
    other.write_text("pattern,impl,latency_ms\ndense,sdpa,1.0\n")
    empty = tmp_path / "empty" / "results.csv"
    ResultWriter(empty).close()
    cases = {
        "no such file": [str(tmp_path / "missing.csv")],
        "missing columns: device, dtype": [str(other)],
        "no result rows": [str(empty)],
        "unknown --format 'jpg'": [str(good), "--format", "jpg"],
        "cannot write the plots": [str(good), "--out", str(good)],
    }
    for message, args in cases.items():
        result = runner.invoke(app, ["plot", *args])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def one_length_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs: int = 1) -> plots.FigureSet:
    """The synthetic runs at n = 1024 only (eager out of memory there), structured as fast as flex."""
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "SEQ_LENS", (1024,))
    monkeypatch.setattr(module, "CASES", [*CASES, ("local", "window=64", 0.25, "structured", 0.5)])
    paths = [write_run(tmp_path / f"run{i}", scale=0.5 ** i) for i in range(runs)]
    (fs,) = plots.figure_sets([load(p, f"run{i}") for i, p in enumerate(paths)])
    return fs


def bar_rows(ax) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels()]


def test_one_length_draws_sorted_labelled_bars(tmp_path, monkeypatch):
    fs = one_length_set(tmp_path, monkeypatch)
    fig = plots.figure(fs, "speedup")
    dense, local = fig.axes
    assert [a.get_title() for a in fig.axes] == ["dense", "local"]
    assert bar_rows(local) == ["flex", "structured", "sdpa", "eager"]  # fastest first, then the one not run
    assert sum(1 for p in local.patches if p.get_width()) == 2 and len(local.patches) == 3  # sdpa: 1x, no length
    texts = [t.get_text() for t in local.texts]
    assert "2.00× · 8 ms" in texts and "1.00× · 16 ms" in texts and "ideal 4×" in texts
    assert "not run: oom: out of memory" in texts
    labels = legend_labels(fig)
    assert "1× = dense SDPA (16 ms)" in labels and "ideal 1/density" in labels and "eager" not in labels
    assert all(line.get_xdata()[0] == 1 for line in local.get_lines() if line.get_linestyle() == "--")
    latency = plots.figure(fs, "latency").axes[1]
    assert bar_rows(latency)[:3] == ["flex", "structured", "sdpa"] and "16 ms (1.00×)" in [t.get_text() for t in
                                                                                           latency.texts]


def test_one_length_leaves_out_a_panel_of_the_dense_reference_alone(tmp_path, monkeypatch):
    fs = one_length_set(tmp_path, monkeypatch)
    fs.rows = fs.rows[~((fs.rows["pattern"] == "dense") & (fs.rows["impl"] != "sdpa"))]  # as `run -p local` writes
    for kind in ("speedup", "latency", "memory", "tflops"):
        assert [a.get_title() for a in plots.figure(fs, kind).axes] == ["local"]


def test_one_length_overlay_names_each_run(tmp_path, monkeypatch):
    fig = plots.figure(one_length_set(tmp_path, monkeypatch, runs=2), "speedup")
    assert bar_rows(fig.axes[1])[:2] == ["flex (run0)", "structured (run0)"]  # equal speed-ups, run order
    assert {"run0", "run1"} <= set(legend_labels(fig))
    assert {str(p.get_hatch()) for p in fig.axes[1].patches} == {"", plots.SERIES_HATCHES[1]}


def test_line_markers_tell_implementations_apart(tmp_path):
    """Two implementations with the same values: each has its own hollow marker, so neither hides the other."""
    (fs,) = plots.figure_sets([load(write_run(tmp_path), "run")])
    ax = plots.figure(fs, "speedup").axes[1]  # local: eager and sdpa ... at their own speed-ups
    drawn = {line.get_color(): line.get_marker() for line in ax.get_lines() if line.get_marker() not in ("None", "_")
             and line.get_label() != "not run: oom"}
    colors = plots.impl_colors(["sdpa", "eager", "flex"])
    assert {drawn[colors[i]] for i in ("sdpa", "eager", "flex")} == {plots.IMPL_MARKERS[i] for i in
                                                                      ("sdpa", "eager", "flex")}
    assert all(line.get_markerfacecolor() == "none" for line in ax.get_lines() if line.get_color() in colors.values()
               and line.get_marker() in plots.IMPL_MARKERS.values())


def test_report_adds_speedup_vs_full_and_recall_where_rows_have_them(tmp_path):
    """Quality rows (structured or captured inputs, or selection patterns): the report also gives each fastest
    case's speed-up against the full attention it replaces (causal SDPA for a causal pattern) and its recall,
    beside the speed-up against dense SDPA."""
    import pandas as pd

    path = write_run(tmp_path)
    frame = pd.read_csv(path)
    sparse = frame["pattern"] == "local"
    frame["recall"] = frame["speedup_vs_full"] = float("nan")
    frame.loc[sparse, "recall"], frame.loc[sparse, "speedup_vs_full"] = 0.75, 3.0
    frame.loc[~sparse, "recall"], frame.loc[~sparse, "speedup_vs_full"] = 1.0, 1.0
    frame["inputs"] = "random"
    frame.to_csv(path, index=False)
    report = plots.report_markdown(plots.figure_sets([load(path, "run")]), {"cpu-float32-fwd": []})
    assert "recall" not in report  # on random q and k a recall means nothing
    frame["inputs"] = "structured"
    frame.to_csv(path, index=False)
    report = plots.report_markdown(plots.figure_sets([load(path, "run")]), {"cpu-float32-fwd": []})
    assert "| speed-up vs full attention (causal SDPA for a causal pattern) | recall |" in report
    assert "| local | 1024 | flex | 8 | 2.00× | 1.00× | 0.00419 (- / -) | 3.00× | 0.750 |" in report


def test_the_report_names_the_inputs_of_each_set():
    """Recall depends on the q, k, v: report.md says which (a file by its name), older files by kind only."""
    rows = pd.DataFrame({"inputs": ["structured", "structured", "/data/qkv.pt", ""],
                         "input_id": ["seed=0", "seed=1", "sha256=ab12;seed=0", ""]})
    assert plots._inputs(rows) == "structured (seed=0), structured (seed=1), qkv.pt (sha256=ab12;seed=0)"
    assert plots._inputs(rows.drop(columns="input_id").iloc[:1]) == "structured"
    assert plots._inputs(rows.drop(columns=["inputs", "input_id"])) == ""
