"""`sparsebench train`: the write-up's quality table (perplexity, training time, memory) at small scale."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import psutil
import torch
import typer
from rich.markup import escape

from sparsebench.api import resolve_impl
from sparsebench.cli import options as opt
from sparsebench.cli.common import console, fail, state, user_errors
from sparsebench.cli.progress import Reporter
from sparsebench.environment import collect, device_name
from sparsebench.errors import WriteFailed
from sparsebench.resolve import get_impl, get_pattern
from sparsebench.results import RESULTS_NAME, ResultWriter, check_writable, write_meta
from sparsebench.runner.config import parse_pattern_spec
from sparsebench.train import data, report
from sparsebench.train.loop import PRESETS, Job, TrainConfig, VariantFailed, preset, train_isolated, train_pattern
from sparsebench.train.report import VariantRun

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
        dev = _device(device)
        cfg = preset(preset_name, steps=steps, seq_len=seq, batch=batch, corpus_bytes=corpus_bytes, seed=seed)
        shared = opt.pattern_params(window, stride, dilation, length, summary, global_tokens, block, global_blocks,
                                    random_blocks, mask_seed)
        runs = [_variant(spec, shared, impl, cfg, dev) for spec in dict.fromkeys(pattern or DEFAULTS)]
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
        _train_all(runs, cfg, source, dev, out_dir, quiet)

        heading = f"sparsebench train --preset {preset_name}: {cfg.steps} steps x {cfg.batch} x {m.seq_len} bytes"
        setup = f"{m.n_layers} layers, d_model {m.d_model}, {dev} ({_device_name(dev)})"
        try:
            _write_outputs(out_dir, runs, cfg, source, dev, dataset, (heading, setup), preset_name,
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


def _variant(spec: str, shared: dict[str, int], impl: str, cfg: TrainConfig, dev: torch.device) -> VariantRun:
    """Check one --pattern, pick its implementation and check that it fits in memory, before any training."""
    m = cfg.model
    name, params = parse_pattern_spec(spec, shared)
    named = get_pattern(name, **params)
    named.validate(m.seq_len)
    trained = train_pattern(name, **params)
    run = VariantRun(name, named.params, trained, resolve_impl(trained, impl, dev, torch.float32, "fwdbwd"))
    # Rough: the implementation's own estimate per layer, plus a float (n, n) mask, kept for the backward pass.
    need = m.n_layers * (get_impl(run.impl).estimate_bytes(trained, cfg.batch, m.n_heads, m.seq_len, m.head_dim,
                                                           torch.float32, "fwdbwd") + 4 * m.seq_len**2)
    free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else psutil.virtual_memory().available
    if need > free:
        fail(f"{run.label} at --seq {m.seq_len}, --batch {cfg.batch} needs about {need / 2**30:.1f} GiB for "
             f"attention alone but {free / 2**30:.1f} GiB is free; lower --seq or --batch")
    return run


def _train_all(runs: list[VariantRun], cfg: TrainConfig, source: data.Corpus, dev: torch.device, out_dir: Path,
               quiet: bool) -> None:
    """Each variant in its own worker process, reported as it finishes; failures become error rows."""
    header = f"sparsebench train: {len(runs)} variant(s) of {cfg.steps} steps, results in {out_dir}/"
    with Reporter(len(runs), header, quiet) as progress:
        for run in runs:
            name = f"{run.label} [{run.impl}]"
            progress.begin(name, steps=cfg.steps)
            losses = {"step": "-", "eval": "-"}

            def on_event(kind: str, step: int, loss: float, losses: dict[str, str] = losses) -> None:
                losses[kind] = f"{loss:.3f}"
                progress.step(step, f"loss {losses['step']}  val {losses['eval']}")

            try:
                run.result = train_isolated(Job(cfg, run.pattern, run.impl, source.train, source.val, str(dev)),
                                            on_event)
            except VariantFailed as exc:
                run.error = str(exc)
                progress.done(f"{name}: error: {exc}", failed=True)
                if exc.detail and state["debug"]:
                    console.print(exc.detail, markup=False, highlight=False)
                continue
            r = run.result
            progress.done(f"{name}: val ppl {r['val_ppl']:.2f}, median step {report.median_ms(run):.0f} ms, "
                          f"{r['train_s']:.0f} s ok")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        fail(f"unknown device {name!r}; choose from: cpu, cuda, cuda:N, auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda but CUDA is not available; use --device cpu")
    return torch.device(name)


def _device_name(dev: torch.device) -> str:
    name = device_name(str(dev))
    threads = torch.get_num_threads()
    return name if dev.type == "cuda" else f"{name}, {threads} thread{'s' if threads > 1 else ''}"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 100_000 else f"{n_bytes / 1e3:.1f} kB"


def _write_outputs(out_dir: Path, runs: list[VariantRun], cfg: TrainConfig, source: data.Corpus, dev: torch.device,
                   dataset: str, title: tuple[str, str], preset_name: str, wall_s: float) -> None:
    run_id = f"train-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report.result_rows(runs, cfg, run_id=run_id, device=dev.type, device_name=_device_name(dev),
                              corpus=source.name, corpus_bytes=source.n_bytes)
    with ResultWriter(out_dir / RESULTS_NAME) as writer:
        for row in rows:
            writer.write(row)
    write_meta(out_dir / "meta.json", collect({
        "subcommand": "train", "run_id": run_id, "preset": preset_name, "wall_s": round(wall_s, 1),
        "config": asdict(cfg),
        "corpus": {"name": source.name, "bytes": source.n_bytes, "train_bytes": len(source.train),
                   "val_bytes": len(source.val), "sha256": source.sha256},
        "variants": [{"pattern": r.name, "trained": r.label, "impl": r.impl, "status": "ok" if r.ok else "error",
                      "n_params": r.result["n_params"] if r.ok else None} for r in runs],
        "notes": [report.CAUSAL_NOTE, report.TIME_NOTE],
    }))
    (out_dir / "table.md").write_text(report.markdown_table(runs, dataset, ", ".join(title)))
    report.write_curves(out_dir / "curves.csv", runs)
    report.loss_figure(out_dir / "loss_curve.png", runs, "\n".join(title))
