"""The `train` workflow under its command: plan the variants (each pattern checked, its implementation chosen and
its memory checked before any training), train each in its own worker process, write the result set.

The command keeps its options and its printing; progress goes through a reporter (cli/progress.Reporter).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import psutil
import torch

from sparsebench.api import resolve_impl
from sparsebench.environment import collect, device_name
from sparsebench.errors import SparsebenchError
from sparsebench.resolve import get_impl, get_pattern
from sparsebench.results import RESULTS_NAME, ResultWriter, write_meta
from sparsebench.runner.config import parse_pattern_spec, resolve_devices
from sparsebench.train import data, report
from sparsebench.train.loop import Job, TrainConfig, VariantFailed, train_isolated, train_pattern
from sparsebench.train.report import VariantRun


class TrainReporter(Protocol):
    """What the workflow tells its command: a variant begins, a step is made, a variant is done."""

    def begin(self, label: str, steps: int | None = None) -> None: ...
    def step(self, completed: int, note: str = "") -> None: ...
    def done(self, text: str, failed: bool = False, timed: bool = True) -> None: ...


def training_device(name: str) -> torch.device:
    """--device as a torch device, with the sweep's rules ('auto': CUDA when present; SparsebenchError)."""
    return torch.device(resolve_devices([name])[0])


def describe_device(dev: torch.device) -> str:
    """The device's name, and on a CPU the threads torch uses (what a training time depends on)."""
    name = device_name(str(dev))
    threads = torch.get_num_threads()
    return name if dev.type == "cuda" else f"{name}, {threads} thread{'s' if threads > 1 else ''}"


def plan_variant(spec: str, shared: dict[str, int], impl: str, cfg: TrainConfig, dev: torch.device) -> VariantRun:
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
        raise SparsebenchError(f"{run.label} at --seq {m.seq_len}, --batch {cfg.batch} needs about "
                               f"{need / 2**30:.1f} GiB for attention alone but {free / 2**30:.1f} GiB is free; "
                               "lower --seq or --batch")
    return run


def train_all(runs: list[VariantRun], cfg: TrainConfig, source: data.Corpus, dev: torch.device,
              progress: TrainReporter) -> dict[str, str]:
    """Each variant in its own worker process, reported as it finishes; a failure is kept on its run (`error`),
    and the others go on. Returns each failed variant's traceback from its worker, by label (for --debug)."""
    details: dict[str, str] = {}
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
            if exc.detail:
                details[name] = exc.detail
            continue
        r = run.result
        progress.done(f"{name}: val ppl {r['val_ppl']:.2f}, median step {report.median_ms(run):.0f} ms, "
                      f"{r['train_s']:.0f} s ok")
    return details


def write_outputs(out_dir: Path, runs: list[VariantRun], cfg: TrainConfig, source: data.Corpus, dev: torch.device,
                  dataset: str, title: tuple[str, str], preset_name: str, wall_s: float) -> None:
    """results.csv (train rows), meta.json, table.md, curves.csv and loss_curve.png under out_dir (OSError)."""
    run_id = f"train-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report.result_rows(runs, cfg, run_id=run_id, device=dev.type, device_name=describe_device(dev),
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
