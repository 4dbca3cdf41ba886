"""`sparsebench train`: outputs, determinism, why the causal intersection exists, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.patterns import get_pattern
from sparsebench.results import read_results
from sparsebench.train.data import Corpus, batch_offsets, file_corpus, stdlib_corpus
from sparsebench.train.loop import TrainConfig, preset, train_pattern, train_variant
from sparsebench.train.model import ModelConfig

TINY = ["--steps", "3", "--seq", "32", "--batch", "4"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here and in the workers: on a shared 2-core machine, two OpenMP threads stall
    whenever a neighbour takes a core, and these tests check results, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args])


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_bytes(stdlib_corpus(20_000).data)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp("train")
    result = invoke(*TINY, "--corpus", str(corpus_file), "--out-dir", str(out))
    return result, out


@pytest.mark.slow  # trains three variants in worker processes
def test_tiny_run_writes_every_output(tiny_run, corpus_file):
    result, out = tiny_run
    assert result.exit_code == 0, result.output
    frame = read_results(out / "results.csv")
    assert list(frame["pattern"]) == ["dense", "local", "strided"]
    assert (frame["mode"] == "train").all() and (frame["status"] == "ok").all()
    assert frame["val_ppl"].map(math.isfinite).all() and (frame["val_ppl"] > 1).all()
    assert (frame["train_s"] > 0).all() and (frame["tokens_per_s"] > 0).all() and (frame["peak_mem_mib"] >= 0).all()
    assert (frame["corpus"] == "text.txt").all() and (frame["corpus_bytes"] == 20_000).all()
    assert (frame["steps"] == 3).all() and (frame["seq_len"] == 32).all()
    assert frame["params"].str.contains("causal=1").all()
    # density is that of the causal-intersected pattern that was trained
    assert frame["density"].iloc[0] == pytest.approx(get_pattern("causal").density(32))
    assert frame["speedup_vs_dense"].iloc[0] == pytest.approx(1.0)
    for name in ("meta.json", "table.md", "curves.csv", "loss_curve.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "Perplexity vs dense" in (out / "table.md").read_text()
    assert "intersected with causal" in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]  # one per variant (no terminal)
    assert [line.split("]")[0] for line in lines] == ["[1/3", "[2/3", "[3/3"], result.stderr
    assert lines[0].startswith("[1/3] dense&causal [") and all("val ppl" in line and " ok  (" in line for line in lines)


@pytest.mark.slow  # trains three variants in worker processes
def test_same_seed_same_perplexity(tiny_run, corpus_file):
    """A second run (here in this process, the CLI's ran in workers) reproduces the perplexity to 1e-6."""
    first = read_results(tiny_run[1] / "results.csv").set_index("pattern")["val_ppl"]
    cfg = preset("quick", steps=3, seq_len=32, batch=4)
    corpus = file_corpus(corpus_file, cfg.corpus_bytes)
    again = train_variant(cfg, train_pattern("strided"), "auto", corpus.train, corpus.val)
    assert again["val_ppl"] == pytest.approx(first["strided"], rel=1e-6)


def test_bidirectional_pattern_sees_the_future():
    """Without the causal intersection, the seed's local window contains the next byte: on random bytes (where
    nothing better than ln 256 nats is possible) the loss collapses. With it, the model cannot cheat."""
    gen = torch.Generator().manual_seed(1)
    data = bytes(torch.randint(0, 256, (12_000,), generator=gen, dtype=torch.uint8).tolist())
    cfg = TrainConfig(model=ModelConfig(seq_len=32, d_model=64, n_heads=4, n_layers=1), steps=50, batch=16,
                      lr=3e-2, warmup=5, n_evals=1, eval_windows=16)
    corpus = Corpus("random", data)
    leaky = train_variant(cfg, get_pattern("local", window=8), "auto", corpus.train, corpus.val)
    causal = train_variant(cfg, train_pattern("local", window=8), "auto", corpus.train, corpus.val)
    assert causal["val_loss"] > math.log(256) - 0.1  # no better than chance, as it must be
    assert leaky["val_loss"] < 1.0  # it copied the future


def test_train_pattern_is_the_causal_intersection():
    n = 40
    tril = torch.ones(n, n, dtype=torch.bool).tril()
    for name, params in (("dense", {}), ("local", {"window": 8}), ("strided", {"stride": 4})):
        expected = get_pattern(name, **params).dense_mask(n) & tril
        assert torch.equal(train_pattern(name, **params).dense_mask(n), expected), name


def test_default_corpus_is_deterministic_stdlib():
    a, b = stdlib_corpus(50_000), stdlib_corpus(50_000)
    assert a.n_bytes == 50_000 and a.sha256 == b.sha256 and "stdlib" in a.name
    assert len(a.train) == 45_000 and len(a.val) == 5_000 and a.train + a.val == a.data
    assert torch.equal(batch_offsets(45_000, 32, 4, 3, seed=0), batch_offsets(45_000, 32, 4, 3, seed=0))


@pytest.mark.parametrize("case", ["missing", "empty", "short", "steps0", "not_utf8", "pattern"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, corpus_file):
    corpus = {"missing": tmp_path / "nope.txt", "empty": tmp_path / "empty.txt", "short": tmp_path / "short.txt",
              "not_utf8": tmp_path / "bin.txt"}.get(case, corpus_file)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_text("print('hello')\n" * 10)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe" * 5000)
    args = [*TINY, "--corpus", str(corpus), "--out-dir", str(tmp_path / "out")]
    if case == "steps0":
        args += ["--steps", "0"]
    if case == "pattern":
        args += ["--pattern", "nope"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert not (tmp_path / "out").exists()
