"""Serving batches: packed variable-length prefill and batched decode over a paged KV cache.

Every implementation's output for each packed sequence equals that sequence's own float64 computation (every row,
the pattern at the sequence's own length), on lengths that are not multiples of the block (32) or the page (16);
a shuffled page table gives exactly the output of a contiguous one; bad input is one line and exit 2.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from sparsebench import serving
from sparsebench.cli import app
from sparsebench.errors import SparsebenchError
from sparsebench.measure import accuracy, quality
from sparsebench.patterns import get_pattern
from sparsebench.results import case_key, read_results
from sparsebench.runner.cases import Case
from sparsebench.runner.config import SweepConfig, expand
from sparsebench.serving.batch import contiguous_pages

LENGTHS = [37, 100, 5, 70, 33]  # none a multiple of 32 or 16; one shorter than a page
SMALL = {"local": {"window": 20}, "sliding_window": {"window": 24}, "strided": {"stride": 7},
         "dilated": {"window": 8, "dilation": 3}, "fixed": {"length": 24, "summary": 4},
         "longformer": {"window": 16, "global_tokens": 3}}


def pattern_of(name: str):
    return get_pattern(name, **SMALL.get(name, {}))


def worst_error(out: torch.Tensor, batch: serving.ServingBatch, pattern) -> float:
    """The largest rel_err over the sequences, every row of each against its own float64 reference."""
    worst = 0.0
    for i, n in enumerate(batch.lengths):
        q, k, v = batch.sequence(i)
        if batch.decode:
            mine = out[i:i + 1]
        else:
            mine = out[:, :, batch.offsets[i]:batch.offsets[i] + n]
        worst = max(worst, accuracy.output_errors(mine, q, k, v, pattern, rows=torch.arange(q.shape[2]))[1])
    return worst


@pytest.mark.parametrize("name", serving.PER_SEQUENCE)
@pytest.mark.parametrize("impl", ["sdpa", "nested", "structured"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_prefill_equals_each_sequence_alone(name, impl, kv_heads):
    pattern = pattern_of(name)
    reason = serving.unsupported_reason(impl, pattern, "fwd", 4, kv_heads)
    if reason is not None:
        assert impl == "nested" and (name != "dense" or kv_heads != 4)
        return
    batch = serving.make_batch(LENGTHS, 4, kv_heads, 16, torch.float32, "cpu", seed=1)
    runner = serving.PREFILL[impl]
    out = runner.forward(batch, runner.prepare(pattern, batch))
    assert out.shape == batch.q.shape
    assert worst_error(out, batch, pattern) < 1e-5


def test_a_cross_sequence_leak_is_caught():
    """The check can fail: attention over the whole packed stream (no sequence boundaries) is far off."""
    batch = serving.make_batch(LENGTHS, 2, 2, 16, torch.float32, "cpu")
    out = torch.nn.functional.scaled_dot_product_attention(batch.q, batch.k, batch.v, is_causal=True)
    assert worst_error(out, batch, get_pattern("causal")) > 1e-2


@pytest.mark.parametrize("name", serving.PER_SEQUENCE)
@pytest.mark.parametrize("impl, batched_pages", [("sdpa", 64), ("structured", 64), ("structured", 0)])
def test_paged_decode_equals_each_sequence_alone_and_ignores_page_order(name, impl, batched_pages, monkeypatch):
    """structured: one call over the batch's pages (few pages per sequence), or a call per sequence (0)."""
    monkeypatch.setattr(serving.decode, "BATCHED_PAGES", batched_pages)
    pattern = pattern_of(name)
    batch = serving.make_batch(LENGTHS, 4, 2, 16, torch.float32, "cpu", page_size=16, seed=2)
    assert not torch.equal(batch.page_table[:, 0], torch.arange(len(LENGTHS)))  # shuffled
    runner = serving.DECODE[impl]
    out = runner.forward(batch, runner.prepare(pattern, batch))
    assert out.shape == (len(LENGTHS), 4, 1, 16)
    assert worst_error(out, batch, pattern) < 1e-5
    ordered = contiguous_pages(batch)
    assert torch.equal(runner.forward(ordered, runner.prepare(pattern, ordered)), out)


def test_paged_local_decode_reads_only_the_window_pages():
    batch = serving.make_batch([1000, 333, 70], 2, 2, 16, torch.float32, "cpu", page_size=16)
    local = serving.DECODE["structured"].prepare(get_pattern("local", window=64), batch)
    dense = serving.DECODE["structured"].prepare(get_pattern("dense"), batch)
    padded = serving.DECODE["sdpa"].prepare(get_pattern("dense"), batch)
    assert local.kv_rows == 3 * 3 * 16  # keys n-33 .. n-1 lie in at most 3 pages of 16
    assert dense.kv_rows == 3 * 63 * 16 and padded.kv_rows == 3 * 1000  # batched: padded to the most pages
    serving.decode.BATCHED_PAGES, saved = 0, serving.decode.BATCHED_PAGES
    try:
        assert serving.DECODE["structured"].prepare(get_pattern("dense"), batch).kv_rows == (63 + 21 + 5) * 16
    finally:
        serving.decode.BATCHED_PAGES = saved
    assert padded.padding_waste == pytest.approx(1 - 1403 / 3000)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["causal", "local", "longformer"])
def test_flex_document_mask_equals_each_sequence_alone(name):
    pattern = pattern_of(name)
    batch = serving.make_batch(LENGTHS, 2, 2, 16, torch.float32, "cpu", seed=3)
    runner = serving.PREFILL["flex"]
    out = runner.forward(batch, runner.prepare(pattern, batch))
    assert worst_error(out, batch, pattern) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dense", "local", "sliding_window"])
def test_flex_paged_decode_equals_each_sequence_alone_and_ignores_page_order(name):
    pattern = pattern_of(name)
    batch = serving.make_batch(LENGTHS, 4, 2, 16, torch.float32, "cpu", page_size=16, seed=4)
    runner = serving.DECODE["flex"]
    prep = runner.prepare(pattern, batch)
    out = runner.forward(batch, prep)
    assert out.shape == (len(LENGTHS), 4, 1, 16)
    assert worst_error(out, batch, pattern) < 1e-5
    ordered = contiguous_pages(batch)
    assert torch.allclose(runner.forward(ordered, runner.prepare(pattern, ordered)), out, atol=1e-6)
    assert prep.kv_rows % 128 == 0 and prep.kv_rows >= 16  # whole BlockMask blocks of the physical cache


def test_lengths_specs():
    assert serving.canonical(" 512, 4096,8192", 1) == "512,4096,8192"
    assert serving.canonical("uniform:512-8192", 16) == "uniform:512-8192:16"
    assert serving.canonical("uniform:512-8192:4", 16) == "uniform:512-8192:4"
    drawn = serving.draw("uniform:512-8192:16", 0)
    assert drawn == serving.draw("uniform:512-8192:16", 0) != serving.draw("uniform:512-8192:16", 1)
    assert len(drawn) == 16 and all(512 <= n <= 8192 for n in drawn)
    for bad in ["", "0,5", "5,-1", "uniform:5", "uniform:9-3", "uniform:0-3", "normal:1-5", "5,,6", "uniform:1-2:0"]:
        with pytest.raises(SparsebenchError):
            serving.canonical(bad, 4)
    for bad in [0, 12, -16, 3]:
        with pytest.raises(SparsebenchError, match="power of two"):
            serving.check_page_size(bad)


def test_cases_key_lengths_and_old_rows_keep_their_keys():
    run, _ = expand(SweepConfig(patterns=["local"], seq_lens=["uniform:100-300"], modes=["decode"], batch=[4, 8],
                                impls=["sdpa", "structured"]))
    assert {c.batch for c in run} == {4, 8} and all(c.q_len == 1 and c.page_size == 16 for c in run)
    assert run[0].pattern == "dense" and run[0].impl == "sdpa"  # the padded dense reference first
    assert len({c.key() for c in run}) == len(run) == 6
    row = run[1].row()
    assert Case.from_row(row) == run[1]
    plain = Case("dense", "", "sdpa", "cpu", "float32", "fwd", 1, 8, 8, 256, 256, 64)
    old_row = {k: v for k, v in plain.row().items() if k not in ("seq_lens", "seq_lens_seed", "page_size")}
    assert case_key(old_row) == plain.key() and Case.from_row(old_row) == plain
    assert plain.key()[-3:] == ("", "", "")


@pytest.mark.parametrize("args, words", [
    (["--seq-lens", ""], "empty"),
    (["--seq-lens", "512,0"], "positive"),
    (["--seq-lens", "uniform:5"], "uniform:LO-HI"),
    (["--seq-lens", "2000000000"], "GiB"),  # the preflight: the inputs alone cannot fit
    (["--seq-lens", "64,80", "--mode", "decode", "--page-size", "12"], "power of two"),
    (["--seq-lens", "64,80", "-p", "bigbird"], "patterns that can"),
    (["--seq-lens", "64,80", "--mode", "fwdbwd"], "fwdbwd"),
])
def test_bad_serving_input_is_one_line_and_exit_2(tmp_path, args, words):
    result = CliRunner().invoke(app, ["run", "-p", "causal", *args, "-o", str(tmp_path / "out")]
                                if "-p" not in args else ["run", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.slow
def test_serving_sweep_rows_and_gate(tmp_path):
    """A packed prefill and a paged decode sweep in worker processes: the rows, and the gate matches them."""
    out = tmp_path / "out"
    args = ["run", "-p", "causal", "-p", "local:window=32", "--seq-lens", "37,100,70", "--mode", "fwd", "--mode",
            "decode", "--impl", "sdpa", "--impl", "structured", "--min-run-time", "0.05", "-o", str(out), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = read_results(out / "results.csv")
    assert set(frame["status"]) == {"ok"}
    assert set(frame["seq_lens"]) == {"37,100,70"} and (frame["total_tokens"] == 207).all()
    prefill, decode = frame[frame["mode"] == "fwd"], frame[frame["mode"] == "decode"]
    assert (prefill["tokens_per_s"] > 0).all() and prefill["page_size"].isna().all()
    assert (decode["page_size"] == 16).all() and (decode["gbps"] > 0).all() and (decode["bytes_moved"] > 0).all()
    assert decode["pct_of_bandwidth"].isna().all()  # CPU: no known peak bandwidth
    sdpa_dense = frame[(frame["impl"] == "sdpa") & (frame["pattern"] == "dense") & (frame["mode"] == "fwd")]
    assert float(sdpa_dense["padding_waste"].iloc[0]) == pytest.approx(1 - 207 / 300)
    gate = CliRunner().invoke(app, ["gate", str(out / "results.csv"), str(out / "results.csv")])
    assert gate.exit_code == 0, gate.output


def test_serving_figure_lines_per_distribution_and_batch():
    import pandas as pd

    from sparsebench.plots_serving import family, has_serving, serving_figure, spread

    rows = pd.DataFrame([
        {"pattern": "causal", "params": "", "impl": impl, "mode": "fwd", "status": "ok", "batch": b,
         "seq_lens": f"uniform:256-2048:{b}", "seq_lens_seed": 0, "tokens_per_s": tps}
        for impl, b, tps in [("sdpa", 4, 10.0), ("sdpa", 16, 20.0), ("structured", 4, 30.0), ("structured", 16, 50.0)]
    ] + [{"pattern": "dense", "params": "", "impl": "sdpa", "mode": "fwd", "status": "ok", "batch": 1,
          "seq_lens": "", "seq_lens_seed": None, "tokens_per_s": None}])
    assert has_serving(rows) and not has_serving(rows[rows["seq_lens"] == ""])
    assert family("uniform:256-2048:16") == "uniform:256-2048" and family("5,6") == "list"
    assert spread("100,300", 0) == pytest.approx(1.5)
    fig = serving_figure(rows, {"sdpa": "C0", "structured": "C1"})
    batch_axis = fig.axes[0]
    assert len(batch_axis.lines) == 2 and sorted(batch_axis.lines[1].get_ydata()) == [30.0, 50.0]


def test_a_serving_sweep_does_not_resume_a_file_without_the_serving_columns(tmp_path):
    from sparsebench.results import COLUMNS

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text(",".join(COLUMNS[:COLUMNS.index("seq_lens")]) + "\n")
    result = CliRunner().invoke(app, ["run", "-p", "causal", "--seq-lens", "64,80", "--resume", "-o", str(out)])
    assert result.exit_code == 2 and "another --out-dir" in result.stderr, result.output


QUEST_LENGTHS = [37, 100, 5, 70, 33, 200]  # 3, 7, 1, 5, 3 and 13 pages of 16: none full but one; some with <= topk


@pytest.mark.parametrize("impl", ["sdpa", "structured"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_paged_quest_equals_each_sequence_alone_and_ignores_page_order(impl, kv_heads):
    """Each sequence's output against the float64 computation of quest's own selection on that sequence alone;
    a contiguous page table gives exactly the same output; what was kept is counted (nnz) per sequence."""
    pattern = get_pattern("quest", page=16, topk=2)
    batch = serving.make_batch(QUEST_LENGTHS, 4, kv_heads, 16, torch.float32, "cpu", page_size=16, seed=5)
    assert not torch.equal(batch.page_table[:, 0], torch.arange(len(QUEST_LENGTHS)))  # shuffled
    runner = serving.get_serving_impl(impl, "decode", pattern)
    prep = runner.prepare(pattern, batch)
    out = runner.forward(batch, prep)
    assert out.shape == (len(QUEST_LENGTHS), 4, 1, 16)
    worst, dense = 0.0, 0.0
    for i in range(len(QUEST_LENGTHS)):
        q, k, v = batch.sequence(i)
        worst = max(worst, accuracy.output_errors(out[i:i + 1], q, k, v, quality.checked_rule(pattern, q, k))[1])
        dense = max(dense, accuracy.output_errors(out[i:i + 1], q, k, v, get_pattern("dense"))[1])
    assert worst < 1e-5
    assert dense > 1e-2  # the check can fail: the sequences longer than 3 pages drop keys that dense keeps
    # topk=2 + the last page: all of a sequence of <= 3 pages, else 2 whole pages and the last one as far as n
    assert prep.extra["nnz"] == 37 + (32 + 4) + 5 + (32 + 6) + 33 + (32 + 8)
    ordered = contiguous_pages(batch)
    assert torch.equal(runner.forward(ordered, runner.prepare(pattern, ordered)), out)


def test_paged_quest_reads_only_its_kept_pages():
    pattern = get_pattern("quest", page=16, topk=4)
    batch = serving.make_batch([1000, 333, 70], 2, 2, 16, torch.float32, "cpu", page_size=16)
    paged = serving.DECODE_SELECTION["structured"]
    prep = paged.prepare(pattern, batch)
    paged.forward(batch, prep)
    bounds = 63 + 21 + 5  # the page bounds of each sequence, read as one K and V row per page
    assert 3 * 5 * 16 + bounds <= prep.kv_rows <= 3 * 2 * 5 * 16 + bounds  # 5 pages per query head, 2 heads
    padded = serving.DECODE_SELECTION["sdpa"].prepare(pattern, batch)
    serving.DECODE_SELECTION["sdpa"].forward(batch, padded)
    assert padded.kv_rows == 3 * 1000 + bounds


def test_quest_on_serving_batches_runs_in_decode_on_sdpa_and_structured():
    quest = get_pattern("quest", page=16, topk=2)
    assert serving.unsupported_reason("structured", quest, "decode", 4, 2) is None
    assert "decode only" in serving.unsupported_reason("structured", quest, "fwd", 4, 4)
    assert "sdpa, structured" in serving.unsupported_reason("flex", quest, "decode", 4, 4)
    run, unsupported = expand(SweepConfig(patterns=["quest:topk=2"], seq_lens=["100,300"], modes=["decode", "fwd"],
                                          impls=["sdpa", "structured"]))
    assert {(c.pattern, c.mode) for c in run} == {("dense", "decode"), ("quest", "decode"), ("dense", "fwd")}
    assert {c.mode for c, _ in unsupported} == {"fwd"}


@pytest.mark.parametrize("args, words", [
    (["-p", "quest:page=32", "--mode", "decode"], "--page-size 16"),
    (["-p", "quest", "--mode", "decode", "--page-size", "32"], "quest:page=32"),
    (["-p", "causal", "--seq", "4096"], "leave out --seq"),
    (["-p", "causal", "--batch", "4"], "holds 2 sequences"),
    (["-p", "causal", "--page-size", "32"], "no pages"),
    (["-p", "causal", "--inputs", "structured"], "random inputs"),
    (["-p", "causal", "--seq-lens-seed", "3"], "lists given are fixed lengths"),
])
def test_serving_options_that_would_be_ignored_are_refused(tmp_path, args, words):
    result = CliRunner().invoke(app, ["run", "--seq-lens", "64,80", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr
    assert not (tmp_path / "out" / "results.csv").exists()


def test_serving_options_alone_are_refused_without_seq_lens(tmp_path):
    for option in (["--page-size", "16"], ["--seq-lens-seed", "3"]):
        result = CliRunner().invoke(app, ["run", "-p", "causal", "-n", "256", *option, "-o", str(tmp_path / "o")])
        assert result.exit_code == 2 and "--seq-lens batches only" in result.stderr, result.output
    # a count from --batch where the spec has none, and a --batch equal to the spec's own count, are fine
    assert SweepOptionsCheck(["uniform:100-300"], [8]) and SweepOptionsCheck(["100,300"], [2])


def SweepOptionsCheck(seq_lens: list[str], batch: list[int]) -> bool:
    from sparsebench.runner.config import SweepOptions

    SweepOptions(patterns=["causal"], seq_lens=seq_lens, batch=batch).over({})
    return True


@pytest.mark.slow
def test_paged_quest_sweep_rows(tmp_path):
    """quest in worker processes: each sequence checked against its own selection (ok rows), the kept pairs of
    its selection as nnz, the page bounds' build in setup."""
    out = tmp_path / "out"
    args = ["run", "-p", "quest:topk=2", "--seq-lens", "37,100,70,200", "--mode", "decode", "--impl", "sdpa",
            "--impl", "structured", "--min-run-time", "0.05", "-o", str(out), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = read_results(out / "results.csv")
    assert set(frame["status"]) == {"ok"} and len(frame) == 3  # the dense reference, quest on sdpa and structured
    quest = frame[frame["pattern"] == "quest"]
    assert (quest["nnz"] == 37 + (32 + 4) + (32 + 6) + (32 + 8)).all()
    assert (quest["setup_ms"] > 0).all() and (quest["bytes_moved"] > 0).all()
    paged = quest[quest["impl"] == "structured"]["bytes_moved"].iloc[0]
    assert paged < quest[quest["impl"] == "sdpa"]["bytes_moved"].iloc[0]
