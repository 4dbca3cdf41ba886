"""The result schema's shared concepts: case and shape keys, the dense reference, ceilings per device."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sparsebench import plots
from sparsebench.errors import NotComparable
from sparsebench.results import (
    COLUMNS,
    Measurement,
    case_key,
    ceilings_for,
    latest,
    make_row,
    merge_ceilings,
    read_results,
    reference_rows,
    with_dense_reference,
)


def row(pattern: str, impl: str, ms: float, run_id: str = "r1", n: int = 1024, mib: float = 10.0, **kw) -> dict:
    return {"run_id": run_id, "pattern": pattern, "params": "", "impl": impl, "device": "cpu", "dtype": "float32",
            "mode": "fwd", "batch": 1, "heads": 2, "kv_heads": 2, "seq_len": n, "q_len": n, "head_dim": 16,
            "latency_ms": ms, "peak_mem_mib": mib, "flops_useful": 1e9, "status": "ok", **kw}


def test_case_key_is_canonical_text():
    a = row("local", "flex", 1.0)
    b = {**a, "seq_len": 1024.0, "batch": "1"}
    assert case_key(a) == case_key(b)
    assert case_key(a) != case_key({**a, "impl": "sdpa"})


def test_dense_reference_comes_from_the_same_run_and_shape():
    frame = pd.DataFrame([
        row("dense", "sdpa", 10.0, "r1"), row("local", "flex", 2.0, "r1"),
        row("dense", "sdpa", 20.0, "r2"), row("local", "structured", 4.0, "r2", mib=5.0),
        row("local", "eager", 8.0, "r3"),  # its run measured no dense reference
        row("local", "flex", 1.0, "r1", n=2048),  # nor its shape
    ])
    out = with_dense_reference(frame)
    assert list(out.speedup_vs_dense[:4]) == [1.0, 5.0, 1.0, 5.0]
    assert out.mem_ratio_vs_dense[3] == 0.5
    assert math.isnan(out.speedup_vs_dense[4]) and math.isnan(out.speedup_vs_dense[5])
    assert out.tflops_useful[1] == pytest.approx(1e9 / 2e-3 / 1e12)  # filled from flops_useful / latency


def test_stored_ratios_are_kept_and_other_references_recomputed():
    frame = pd.DataFrame([row("dense", "sdpa", 10.0), row("causal", "sdpa", 5.0),
                          row("local", "flex", 2.0, speedup_vs_dense=99.0)])
    assert with_dense_reference(frame).speedup_vs_dense[2] == 99.0  # what was measured stays
    causal = reference_rows(frame, ("causal", "sdpa"))
    assert list(causal.latency_ms) == [5.0, 5.0, 5.0]


def test_latest_keeps_the_last_row_of_a_case():
    frame = pd.DataFrame([row("dense", "sdpa", 10.0, "r1"), row("local", "flex", 2.0, "r1"),
                          row("dense", "sdpa", 12.0, "r2")])
    out = latest(frame)
    assert list(out.latency_ms) == [2.0, 12.0]


def test_make_row_names_every_column_once():
    measured = Measurement("ok", latency_ms=2.0, samples=[1.9, 2.0, 2.1], peak_mem_mib=4.0)
    out = make_row({"pattern": "local", "impl": "flex"}, measured, "r1", "cpu model",
                   reference={"latency_ms": 8.0, "peak_mem_mib": 8.0, "status": "ok"})
    assert set(out) <= set(COLUMNS)
    assert out["samples_ms"] == "1.9 2 2.1" and out["n_samples"] == 3
    assert out["speedup_vs_dense"] == 4.0 and out["mem_ratio_vs_dense"] == 0.5
    with pytest.raises(ValueError, match="not result columns"):
        make_row({}, Measurement("ok", extra={"bogus": 1}), "r1")


def test_ceilings_are_kept_per_device_and_dtype():
    meta = {"ceilings": merge_ceilings({"cpu": {"float32": {"matmul_tflops": 0.1}}},
                                       {"cuda": {"bfloat16": {"matmul_tflops": 700.0, "copy_gbps": 4000.0}}})}
    assert ceilings_for(meta, "cpu", "float32") == {"matmul_tflops": 0.1}
    assert ceilings_for(meta, "cuda", "bfloat16")["matmul_tflops"] == 700.0
    assert ceilings_for(meta, "cuda", "float32") == {} and ceilings_for(meta, "cpu", "bfloat16") == {}


def test_older_ceiling_layouts_still_read():
    old = {"ceilings": {"matmul_tflops": {"bfloat16": 700.0}, "copy_gbps": {"bfloat16": 4245.0}},
           "config": {"devices": ["cuda"]}}
    assert ceilings_for(old, "cuda", "bfloat16") == {"matmul_tflops": 700.0, "copy_gbps": 4245.0}
    assert ceilings_for(old, "cpu", "bfloat16") == {}  # the old layout named one device: the run's
    assert ceilings_for({"ceilings": {"matmul_tflops": 2.5}}, "cpu", "float32") == {"matmul_tflops": 2.5}


def test_each_device_draws_its_own_roof(tmp_path):
    """A cpu and a cuda run side by side: each figure set gets its own device's matmul ceiling, never the copy
    bandwidth (GB/s is no TFLOP/s roof)."""
    meta = {"ceilings": {"cpu": {"float32": {"matmul_tflops": 0.1, "copy_gbps": 20.0}},
                         "cuda": {"float32": {"matmul_tflops": 50.0}}}}
    frame = pd.DataFrame([row("dense", "sdpa", 10.0), row("local", "flex", 2.0),
                          row("dense", "sdpa", 1.0, device="cuda"), row("local", "flex", 0.5, device="cuda")])
    sets = {fs.title.split(" · ")[0]: fs for fs in plots.figure_sets([plots.Run("run", frame, meta)])}
    assert sets["cpu"].ceilings == {"run": {"measured matmul": 0.1}}
    assert sets["cuda"].ceilings == {"run": {"measured matmul": 50.0}}


def test_other_schema_version_is_not_comparable(tmp_path):
    path = tmp_path / "results.csv"
    pd.DataFrame([{"schema_version": 99, "pattern": "dense"}]).to_csv(path, index=False)
    with pytest.raises(NotComparable, match="schema version 99"):
        read_results(path)


def test_a_resumed_file_without_the_later_columns_keeps_its_header(tmp_path):
    """A results.csv written before n_calls existed: --resume appends rows with its own columns, and readers
    see n_calls empty in every row."""
    from sparsebench.errors import SparsebenchError
    from sparsebench.results import LATER_COLUMNS, ResultWriter

    path = tmp_path / "results.csv"
    older = COLUMNS[:len(COLUMNS) - len(LATER_COLUMNS)]
    pd.DataFrame([{**row("dense", "sdpa", 10.0), "schema_version": 2}], columns=older).to_csv(path, index=False)
    with ResultWriter(path, append=True) as writer:
        writer.write(make_row(row("local", "flex", 2.0), Measurement("ok", latency_ms=2.0, n_calls=7), "r1"))
    assert path.read_text().splitlines()[0].split(",") == older
    frame = read_results(path)
    assert list(frame.latency_ms) == [10.0, 2.0] and frame.n_calls.isna().all()
    pd.DataFrame([{"schema_version": 2, "pattern": "dense"}]).to_csv(path, index=False)
    with pytest.raises(SparsebenchError, match="different result schema"):
        ResultWriter(path, append=True)


def test_a_row_whose_fsync_is_interrupted_stays_and_counts(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM after a row's last byte: the row is in the file, so the run reports it as kept."""
    import os

    from sparsebench.results import ResultWriter

    path = tmp_path / "results.csv"
    real_fsync = os.fsync
    with ResultWriter(path) as writer:
        def interrupted(fd: int) -> None:
            monkeypatch.setattr(os, "fsync", real_fsync)
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            writer.write({"pattern": "dense", "impl": "sdpa", "status": "ok"})
        assert writer.rows_written == 1
    assert len(path.read_text().splitlines()) == 2  # the header and the row


def test_every_column_has_a_domain_and_the_names_match_the_runner():
    from sparsebench.results.check import DOMAINS, DTYPE_NAMES, MODE_NAMES
    from sparsebench.runner.cases import DTYPES, MODES

    assert [c for c in COLUMNS if c not in DOMAINS] == []  # a new column needs its line in DOMAINS
    assert set(DTYPE_NAMES) == set(DTYPES) and set(MODE_NAMES) == {*MODES, "train"}
    assert DOMAINS["device"].problem("device", "cuda:3") is None and DOMAINS["device"].problem("device", "tpu")
    assert DOMAINS["peak_mem_mib"].problem("peak_mem_mib", "0") is None
    assert DOMAINS["peak_mem_mib"].problem("peak_mem_mib", "-0.5") == "-0.5 is not >= 0"
