"""Result files committed under docs/ and baselines/, written by earlier versions, still load, plot and gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.patterns.decode import decode_nnz
from sparsebench.patterns.selection import is_selection
from sparsebench.plugins import load_recorded
from sparsebench.results import read_meta, read_results
from sparsebench.runner.cases import Case

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted([*ROOT.glob("docs/results/**/results.csv"), *ROOT.glob("baselines/*/results.csv")])


def test_there_are_committed_results():
    assert len(COMMITTED) >= 2, COMMITTED


@pytest.mark.filterwarnings("ignore:.*is now called:DeprecationWarning")  # bigbird rows say seed=0
@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_row_rebuilds_its_pattern(path):
    """Each row's params rebuild the pattern it measured (as --resume and gate --confirm do): same density where
    the pattern alone gives it (a selection's density depends on q and k; a serving row's on its lengths)."""
    load_recorded(read_meta(path))  # the user patterns of the examples' baseline
    frame = read_results(path)
    frame = frame[frame["status"] == "ok"].drop_duplicates(["pattern", "params", "seq_len", "mode", "q_len"])
    assert len(frame)
    for row in frame.to_dict("records"):
        case = Case.from_row(row)
        pattern = case.build_pattern()
        if is_selection(pattern) or case.serving:
            continue
        n, q_len = row["seq_len"], row["q_len"]
        # decode rows: the density of the last q_len query rows against the whole cache
        density = decode_nnz(pattern, n, q_len) / (q_len * n) if row["mode"] == "decode" else pattern.density(n)
        assert density == pytest.approx(row["density"], rel=1e-12), row["params"]


@pytest.mark.slow
@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_results_plot_and_gate_against_themselves(path, tmp_path):
    plot = CliRunner().invoke(app, ["plot", str(path), "--out", str(tmp_path / "plots")])
    assert plot.exit_code == 0, plot.output
    assert (tmp_path / "plots" / "report.md").exists()
    gate = CliRunner().invoke(app, ["gate", str(path), str(path)])
    assert gate.exit_code == 0 and "gate PASS" in gate.output, gate.output
