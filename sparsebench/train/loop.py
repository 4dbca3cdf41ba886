"""The training loop: one variant per fresh worker process, same init, data order, optimiser and steps."""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from sparsebench.api import resolve_impl
from sparsebench.measure.memory import PeakMemory
from sparsebench.patterns import Pattern, causal_of
from sparsebench.resolve import get_impl, get_pattern
from sparsebench.train.data import as_tensor, batch_offsets, eval_offsets, windows
from sparsebench.train.model import ByteLM, ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """Everything that is the same for every variant of one run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 300
    batch: int = 16
    lr: float = 2e-3
    min_lr_frac: float = 0.1  # cosine decay to lr * min_lr_frac
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    n_evals: int = 10  # validation points on the loss curve, besides step 0
    eval_windows: int = 64  # fixed validation windows of seq_len bytes
    corpus_bytes: int = 2_000_000  # the first bytes of the corpus that are used
    seed: int = 0

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.model.seq_len


PRESETS: dict[str, TrainConfig] = {
    # About 1 min per variant on a 2-core CPU, 3 min for dense, local and strided (measured: docs/train/).
    "quick": TrainConfig(),
    # Sized for one GPU: 26M parameters, 1024-byte context, the whole standard library (~31 MB), ~3.5 epochs.
    "paper": TrainConfig(model=ModelConfig(seq_len=1024, d_model=512, n_heads=8, n_layers=8), steps=3000,
                         batch=32, lr=6e-4, warmup=200, n_evals=20, eval_windows=512, corpus_bytes=40_000_000),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset with some fields replaced; `seq_len` goes to the model config. None means 'keep'."""
    cfg = PRESETS[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "seq_len" in overrides:
        cfg = replace(cfg, model=replace(cfg.model, seq_len=overrides.pop("seq_len")))
    return replace(cfg, **overrides)


def train_pattern(name: str, **params: int) -> Pattern:
    """The pattern a language model trains with: the named pattern intersected with causal (k <= q).

    The seed's `local` and `strided` are bidirectional; unmasked, they let each byte see the bytes it must
    predict. `dense & causal` is plain `causal`, so it gets the fused causal kernels.
    """
    return causal_of(get_pattern(name, **params))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_frac at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def _warm_up(cfg: TrainConfig, pattern: Pattern, impl: str, dev: torch.device) -> None:
    """One optimiser step of a tiny model with the same pattern, impl and length (this also builds the masks)."""
    tiny = ModelConfig(seq_len=cfg.model.seq_len, d_model=8 * cfg.model.n_heads, n_heads=cfg.model.n_heads,
                       n_layers=1)
    model = ByteLM(tiny, pattern, impl).to(dev)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.zeros(1, tiny.seq_len, dtype=torch.long, device=dev)
    model(x, x)[1].backward()
    opt.step()
    with torch.no_grad():
        model(x, x)
    del model, opt
    gc.collect()


@torch.no_grad()
def evaluate(model: ByteLM, val: torch.Tensor, starts: torch.Tensor, cfg: TrainConfig) -> float:
    """Mean validation cross-entropy (nats per byte) over the fixed windows."""
    model.eval()
    total = 0.0
    for chunk in starts.split(cfg.batch):
        x, y = windows(val, chunk, cfg.model.seq_len)
        total += model(x, y)[1].item() * len(chunk)
    model.train()
    return total / len(starts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Event = Callable[[str, int, float], None]  # (kind: "step" | "eval", step, loss)


def train_variant(cfg: TrainConfig, pattern: Pattern, impl: str, train: bytes, val: bytes,
                  device: str = "cpu", on_event: Event | None = None) -> dict[str, Any]:
    """Train one model with `pattern` (used as given) and return its measurements.

    Time counts the training steps only (forward, backward, optimiser), not the validation passes. On CUDA the
    float32 matmuls use TF32.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as GPU training usually runs
    n = cfg.model.seq_len
    impl = resolve_impl(pattern, impl, dev, torch.float32, "fwdbwd")
    train_t, val_t = as_tensor(train).to(dev), as_tensor(val).to(dev)
    offsets = batch_offsets(len(train), n, cfg.batch, cfg.steps, cfg.seed).to(dev)
    val_starts = eval_offsets(len(val), n, cfg.eval_windows).to(dev)
    eval_at = {round(cfg.steps * (i + 1) / cfg.n_evals) for i in range(cfg.n_evals)}

    _warm_up(cfg, pattern, impl, dev)  # first-use costs (kernel code paged in, thread pools) stay out
    memory = PeakMemory(dev)
    memory.start()
    torch.manual_seed(cfg.seed)  # the same initial weights for every variant
    model = ByteLM(cfg.model, pattern, impl).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))

    curve = [(0, evaluate(model, val_t, val_starts, cfg))]
    step_s, train_losses = [], []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = windows(train_t, offsets[step], n)
        t0 = time.perf_counter()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        _sync(dev)
        step_s.append(time.perf_counter() - t0)
        train_losses.append(loss.item())
        if on_event:
            on_event("step", step + 1, train_losses[-1])
        if step + 1 in eval_at:
            curve.append((step + 1, evaluate(model, val_t, val_starts, cfg)))
            if on_event:
                on_event("eval", step + 1, curve[-1][1])

    peak_mem_mib = memory.peak_mib()
    train_s = sum(step_s)
    val_loss = curve[-1][1]
    return {
        "impl": impl,
        "executed_pairs": get_impl(impl).prepare(pattern, n, dev, torch.float32).executed_pairs,
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss),
        "train_s": train_s,
        "tokens_per_s": cfg.steps * cfg.tokens_per_step / train_s,
        "step_ms": [s * 1e3 for s in step_s],
        "peak_mem_mib": peak_mem_mib,
        "curve": curve,
        "train_losses": train_losses,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


# --- isolation: each variant in a fresh process, so memory and warm-up do not carry over ----------------

@dataclass(frozen=True)
class Job:
    cfg: TrainConfig
    pattern: Pattern
    impl: str
    train: bytes
    val: bytes
    device: str


def _worker(job: Job, out: Any) -> None:
    def send(kind: str, step: int, loss: float) -> None:
        out.put((kind, (step, loss)))

    try:
        result = train_variant(job.cfg, job.pattern, job.impl, job.train, job.val, job.device, send)
        out.put(("done", result))
    except KeyboardInterrupt:  # Ctrl-C reaches the worker too; the parent reports it
        pass
    except Exception as exc:  # noqa: BLE001 - any failure becomes the variant's error row
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        out.put(("error", (f"{type(exc).__name__}: {message}", traceback.format_exc())))


class VariantFailed(Exception):
    """A variant's worker raised or died; `detail` holds the traceback when there is one."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def train_isolated(job: Job, on_event: Event | None = None) -> dict[str, Any]:
    """Run `train_variant` in a fresh spawned process; raises VariantFailed when it fails."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(job, out), daemon=True)
    proc.start()
    try:
        while True:
            try:
                kind, payload = out.get(timeout=0.5)
            except queue.Empty:
                if proc.is_alive():
                    continue
                try:  # what it sent just before exiting may still be in the pipe
                    kind, payload = out.get(timeout=2)
                except queue.Empty:
                    hint = " (killed: out of memory?)" if proc.exitcode == -9 else ""
                    raise VariantFailed(f"worker exited with code {proc.exitcode}{hint}") from None
            if kind == "done":
                return payload
            if kind == "error":
                raise VariantFailed(*payload)
            if on_event:
                on_event(kind, *payload)
    finally:
        if proc.is_alive():
            proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
            proc.join()
