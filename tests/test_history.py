"""`sparsebench history`: latency over dense across runs, ordered by date or commit, regressions marked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from gate_data import FLEX, MACHINE, make_rows, write_run
from typer.testing import CliRunner

from sparsebench import history
from sparsebench.cli import app
from sparsebench.results import read_meta, read_results

runner = CliRunner()
SHAS = ["a" * 40, "b" * 40, "c" * 40, "d" * 40]


def series(tmp_path: Path, slow_at: int = 2, metas: list[dict] | None = None) -> list[Path]:
    """Four runs, one day apart, in directories named out of time order; FLEX is 1.5x slower from run `slow_at`."""
    dirs = []
    for i, name in enumerate(["r-c", "r-a", "r-d", "r-b"]):
        meta = {**MACHINE, "date": f"2025-03-0{i + 1}T12:00:00+00:00", "git_sha": SHAS[i]}
        meta.update((metas or [{}] * 4)[i])
        rows = make_rows(10 + i, slow={FLEX: 1.5} if i >= slow_at else {})
        dirs.append(write_run(tmp_path / name, rows, meta).parent)
    return dirs


def invoke(*args: object):
    result = runner.invoke(app, ["history", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_history_orders_by_date_and_marks_the_regression(tmp_path: Path) -> None:
    dirs = series(tmp_path)
    out = tmp_path / "hist"
    shuffled = [dirs[2], dirs[0], dirs[3], dirs[1]]
    result = invoke(*shuffled, "--out", out)
    assert result.exit_code == 0, result.output
    written = result.stdout.split()
    assert written == [str(out / "history-cpu-float32-fwd.png"), str(out / "history.csv")]
    assert all(Path(p).stat().st_size > 0 for p in written)
    table = pd.read_csv(out / "history.csv", keep_default_na=False)
    assert list(dict.fromkeys(table["label"])) == ["r-c", "r-a", "r-d", "r-b"]  # by date, not as given
    flagged = table[table["regression"]]
    assert list(flagged["label"]) == ["r-d"] and list(flagged["case"]) == [
        "cpu/local(window=64)/flex/1024/float32/fwd/B1xH8xD64"]
    assert "latency/dense 1." in flagged["why"].iloc[0]
    assert f"REGRESSION r-d: cpu/{FLEX}/B1xH8xD64: latency/dense 1." in result.stderr
    assert "4 runs, 8 cases, 1 regression(s)" in result.stderr
    flex = table[table["case"] == "cpu/local(window=64)/flex/1024/float32/fwd/B1xH8xD64"]
    ratios = list(flex["latency_vs_dense"])
    assert ratios[2] / ratios[1] == pytest.approx(1.5, rel=0.1) and ratios[0] == pytest.approx(0.3, rel=0.1)


def test_history_by_commit_and_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = series(tmp_path)
    commit_order = {SHAS[3]: 1.0, SHAS[2]: 2.0, SHAS[1]: 3.0, SHAS[0]: 4.0}  # the reverse of the dates
    monkeypatch.setattr("sparsebench.cli.history._commit_time", commit_order.get)
    invoke(*dirs, "--out", tmp_path / "c", "--by", "commit")
    table = pd.read_csv(tmp_path / "c" / "history.csv")
    assert list(dict.fromkeys(table["label"])) == ["r-b", "r-d", "r-a", "r-c"]
    invoke(dirs[1], dirs[0], "--out", tmp_path / "g", "--by", "given")
    assert list(dict.fromkeys(pd.read_csv(tmp_path / "g" / "history.csv")["label"])) == ["r-a", "r-c"]


def test_commit_time_never_passes_an_option_to_git() -> None:
    from sparsebench.cli.history import _commit_time

    assert _commit_time("--output=/tmp/x") is None


def test_figure_marks_regressions(tmp_path: Path) -> None:
    runs = [history.HistoryRun(p.name, read_results(p / "results.csv"), read_meta(p / "results.csv"))
            for p in series(tmp_path)]
    table, notes = history.history_table(runs)
    assert notes == []
    [(stem, fig)] = history.history_figures(table, runs)
    assert stem == "history-cpu-float32-fwd"
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["local(window=64) · n=1024", "local(window=64) · n=2048", "strided(stride=8) · n=1024",
                      "strided(stride=8) · n=2048"]
    ax = fig.axes[0]
    rings = [line for line in ax.get_lines() if line.get_markeredgecolor() == "red" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in rings] == [[2]]  # the third run, on the flex line
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()][0] == "2025-03-01 12:00\naaaaaaa"
    assert "gate regression vs the run before" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert all(not [line for line in other.get_lines() if line.get_markeredgecolor() == "red"
                    and len(line.get_xdata())] for other in fig.axes[1:])


def one_line(result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.output
    for word in words:
        assert word in result.stderr, result.stderr


def test_history_across_devices_gives_3(tmp_path: Path) -> None:
    dirs = series(tmp_path)
    cuda = write_run(tmp_path / "gpu", make_rows(1, device="cuda"), {**MACHINE, "date": "2025-04-01"}).parent
    one_line(invoke(*dirs, cuda, "--out", tmp_path / "h"), 3, "history across devices", "cpu", "cuda")
    other = write_run(tmp_path / "other", make_rows(1, device_name="Other CPU"), {"date": "2025-04-01"}).parent
    one_line(invoke(dirs[0], other, "--out", tmp_path / "h"), 3, "Synthetic CPU", "Other CPU")
    xeon = write_run(tmp_path / "xeon", make_rows(1), {**MACHINE, "cpu_count": 8, "date": "2025-04-01"}).parent
    one_line(invoke(dirs[0], xeon, "--out", tmp_path / "h"), 3, "history across machines", "cores 2 vs 8")
    assert not (tmp_path / "h").exists()


def test_history_bad_inputs(tmp_path: Path) -> None:
    dirs = series(tmp_path)
    (tmp_path / "empty").mkdir()
    one_line(invoke(dirs[0], tmp_path / "empty"), 2, "no results.csv")
    undated = write_run(tmp_path / "undated", make_rows(1), dict(MACHINE)).parent
    one_line(invoke(dirs[0], undated), 2, "undated: no date", "--by given")
    one_line(invoke(*dirs, "--format", "gif"), 2, "unknown --format 'gif'")
    one_line(invoke(*dirs, "--by", "size"), 2, "unknown --by 'size'")
    newer = tmp_path / "newer" / "results.csv"
    newer.parent.mkdir()
    pd.DataFrame([dict(r, schema_version=3) for r in make_rows(1)]).to_csv(newer, index=False)
    one_line(invoke(dirs[0], newer.parent), 3, "schema version 3")
    one_line(invoke(), 2)


def test_failed_case_is_marked_at_the_bottom(tmp_path: Path) -> None:
    oom = {"status": "oom", "error": "out of memory", "latency_ms": None, "samples_ms": ""}
    first = write_run(tmp_path / "one", make_rows(1), {**MACHINE, "date": "2025-01-01"}).parent
    second = write_run(tmp_path / "two", make_rows(2, change={FLEX: oom}), {**MACHINE, "date": "2025-01-02"}).parent
    result = invoke(second, first, "--out", tmp_path / "h", "--format", "svg")
    assert result.exit_code == 0 and "REGRESSION two:" in result.stderr and "status ok -> oom" in result.stderr
    assert (tmp_path / "h" / "history-cpu-float32-fwd.svg").read_text().startswith("<?xml")
    runs = [history.HistoryRun(p.name, read_results(p / "results.csv"), read_meta(p / "results.csv"))
            for p in (first, second)]
    table, _ = history.history_table(runs)
    [(_, fig)] = history.history_figures(table, runs)
    crosses = [line for line in fig.axes[0].get_lines() if line.get_marker() == "X"]
    assert [list(line.get_xdata()) for line in crosses] == [[1]]
    assert "regression without latency (status)" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_two_serving_batches_of_one_longest_length_are_two_panels(tmp_path: Path) -> None:
    """Serving batches 64,256 and 128,256 share seq_len 256: each gets its panel (one line per run each)."""
    dirs = []
    for i in range(2):
        rows = []
        for lens in ("64,256", "128,256"):
            for row in make_rows(30 + i):
                if row["seq_len"] == 1024:
                    rows.append({**row, "seq_len": 256, "q_len": 256, "batch": 2, "seq_lens": lens,
                                 "seq_lens_seed": 0})
        meta = {**MACHINE, "date": f"2025-03-0{i + 1}T12:00:00+00:00", "git_sha": SHAS[i]}
        dirs.append(write_run(tmp_path / f"r{i}", rows, meta).parent)
    result = invoke(*dirs, "--out", tmp_path / "hist")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "hist" / "history.csv", keep_default_na=False)
    assert set(table["seq_lens"]) == {"64,256", "128,256"}
