"""`sparsebench train`: the write-up's quality table (perplexity, training time, memory) at small scale."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sparsebench.cli import options as opt
from sparsebench.cli.common import console, fail, state, user_errors
from sparsebench.cli.progress import Reporter
from sparsebench.errors import WriteFailed
from sparsebench.results import check_writable
from sparsebench.services import train as training
from sparsebench.train import data, report
from sparsebench.train.loop import PRESETS, preset

DEFAULTS = ["dense", "local", "strided"]


def train_cmd(
    pattern: Annotated[list[str] | None, typer.Option(
        "--pattern", "-p", help="Pattern name, or name:key=INT,... Repeatable. Default: dense, local, "
        "strided.")] = None,
    impl: Annotated[str, typer.Option("--impl", help="Attention implementation, or auto.")] = "auto",
    preset_name: Annotated[str, typer.Option(
        "--preset", help="quick: a few minutes on a 2-core CPU; paper: sized for one GPU.")] = "quick",
    steps: Annotated[int | None, typer.Option("--steps", help="Steps per variant (default: from --preset)")] = None,
    seq: Annotated[int | None, typer.Option("--seq", "-n", help="Bytes per sequence (default: from --preset)")] = None,
    batch: Annotated[int | None, typer.Option("--batch", "-b", help="Sequences per step (default: from --preset)")]
    = None,
    corpus: Annotated[Path | None, typer.Option(
        "--corpus", help="UTF-8 text file to train on. Default: this Python's standard-library sources.")] = None,
    corpus_bytes: Annotated[int | None, typer.Option(
        "--corpus-bytes", help="Use only the corpus's first N bytes (quick 2 MB, paper 40 MB).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and the data order.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Where results.csv, meta.json, the table and "
                                          "the figure go.")] = Path("sparsebench-results/train"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress: only failed variants and the "
                                        "final table.")] = False,
    window: opt.Window = None, stride: opt.Stride = None, dilation: opt.Dilation = None, length: opt.Length = None,
    summary: opt.Summary = None, global_tokens: opt.GlobalTokens = None, block: opt.Block = None,
    global_blocks: opt.GlobalBlocks = None, random_blocks: opt.RandomBlocks = None, mask_seed: opt.MaskSeed = None,
) -> None:
    """Train the same tiny byte-level transformer once per attention pattern and compare perplexity,
    training time and peak memory against dense, as in the write-up's table.

    Every pattern is intersected with causal (k <= q). Exit code 1 when a variant failed.
    """
    with user_errors():
        if preset_name not in PRESETS:
            fail(f"unknown preset {preset_name!r}; choose from: {', '.join(PRESETS)}")
        for flag, value in (("--steps", steps), ("--seq", seq), ("--batch", batch), ("--corpus-bytes", corpus_bytes)):
            if value is not None and value < 1:
                fail(f"{flag} must be >= 1, got {value}")
        dev = training.training_device(device)
        cfg = preset(preset_name, steps=steps, seq_len=seq, batch=batch, corpus_bytes=corpus_bytes, seed=seed)
        shared = opt.pattern_params(window, stride, dilation, length, summary, global_tokens, block, global_blocks,
                                    random_blocks, mask_seed)
        runs = [training.plan_variant(spec, shared, impl, cfg, dev) for spec in dict.fromkeys(pattern or DEFAULTS)]
        source = data.file_corpus(corpus, cfg.corpus_bytes) if corpus else data.stdlib_corpus(cfg.corpus_bytes)
        source.check(cfg.model.seq_len)
        check_writable(out_dir)  # before training, not after it: a read-only --out-dir would lose the results

        dataset = f"{source.name} ({_size(source.n_bytes)})"
        m = cfg.model
        if not quiet:
            console.print(f"[bold]sparsebench train[/] --preset {escape(preset_name)}: {m.n_layers} layers, d_model "
                          f"{m.d_model}, {m.n_heads} heads, seq {m.seq_len}, batch {cfg.batch}, {cfg.steps} steps on "
                          f"{dev}; corpus {escape(str(dataset))}, 90% train / 10% validation")
            console.print(f"[yellow]note:[/] {report.CAUSAL_NOTE}", highlight=False)
        started = time.time()
        header = f"sparsebench train: {len(runs)} variant(s) of {cfg.steps} steps, results in {out_dir}/"
        with Reporter(len(runs), header, quiet) as progress:
            details = training.train_all(runs, cfg, source, dev, progress)
        if state["debug"]:
            for detail in details.values():
                console.print(detail, markup=False, highlight=False)

        heading = f"sparsebench train --preset {preset_name}: {cfg.steps} steps x {cfg.batch} x {m.seq_len} bytes"
        setup = f"{m.n_layers} layers, d_model {m.d_model}, {dev} ({training.describe_device(dev)})"
        try:
            training.write_outputs(out_dir, runs, cfg, source, dev, dataset, (heading, setup), preset_name,
                                   time.time() - started)
        except OSError as exc:  # e.g. the disk filled up during training
            raise WriteFailed(f"cannot write the results to {out_dir}: {exc.strerror or exc}") from None
        console.print(report.rich_table(runs, dataset, f"{heading}, {setup}"))
        if not quiet:
            console.print(report.TIME_NOTE, highlight=False)
            console.print(f"wrote {out_dir}/: results.csv, meta.json, table.md, curves.csv, loss_curve.png",
                          highlight=False, markup=False)
    if not all(run.ok for run in runs):
        raise typer.Exit(1)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 100_000 else f"{n_bytes / 1e3:.1f} kB"
