"""The q, k, v a sweep measures on: `random` (seeded Gaussian), `structured` (a seeded synthetic generator with
what selection exploits) or a file of tensors captured from a model (`.pt` or `.safetensors`).

On random Gaussian q and k every selection keeps about the same share of attention, so recall means nothing
there; `structured` and captured activations are the inputs on which selection quality is worth measuring.

`structured` (deterministic from --input-seed), for each batch and key/value head:
- clusters: CLUSTERS unit directions; the sequence is cut into segments of SEGMENT_MIN..SEGMENT_MAX positions
  (uniform), each segment's keys point along one cluster (uniform): neighbouring keys are alike, so a block's
  mean key stands for its keys;
- queries: each query points along a cluster, its own segment's with probability LOCAL_SHARE, else its query
  span's retrieval cluster (long-range retrieval): per query head, the sequence is cut into query spans of
  SEGMENT_MIN..SEGMENT_MAX positions (uniform), each with one retrieval cluster (uniform), because what a passage
  looks for persists over it, as its topic does; neighbouring queries are alike, as in models (a retrieval
  cluster drawn afresh for every query, the first version, made neighbouring queries unlike each other, which
  real activations are not); q and k have norm sqrt(SCORE_SCALE * sqrt(D)) along their cluster, plus N(0, 1) noise
  per dimension, so a same-cluster pair scores about SCORE_SCALE after the 1/sqrt(D) scale;
- heavy hitters: position 0 (an attention sink) and HEAVY_HITTERS - 1 uniform positions get HEAVY_SCALE times a
  shared unit direction u added to their key, and every query has u added: every query attends to them;
- decay with distance: rotary position embedding (RoPE, base 10000) on the first ROTARY_SHARE of the dimensions
  of q and k (partial rotary, as GPT-NeoX): a same-cluster pair's score falls off with distance in those
  dimensions and persists in the others (long-range retrieval stays possible);
- v: N(0, 1).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path

import torch

from sparsebench.errors import SparsebenchError
from sparsebench.runner.cases import DTYPE_ALIASES, DTYPES, Case, MeasureSettings

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
KINDS = ("random", "structured")
CLUSTERS = 16
SEGMENT_MIN, SEGMENT_MAX = 32, 512
LOCAL_SHARE = 0.5
SCORE_SCALE = 16.0
HEAVY_HITTERS = 4
HEAVY_SCALE = 1.0
ROPE_BASE = 10000.0
ROTARY_SHARE = 0.5


def make_inputs(case: Case, settings: MeasureSettings | None = None) -> Inputs:
    """q (B, H, L, D), k and v (B, KVH, N, D) and, for fwdbwd, the output gradient, from the sweep's inputs."""
    kind = settings.inputs if settings is not None else "random"
    seed = settings.input_seed if settings is not None else 0
    if kind == "random":
        from sparsebench.runner.measure_case import make_inputs as random_inputs

        return random_inputs(case, seed)
    if kind == "structured":
        q, k, v = structured_qkv(case.batch, case.heads, case.kv_heads, case.seq_len, case.head_dim, seed)
    else:
        q, k, v = (x[:, :, :case.seq_len] for x in load_qkv(kind))
    q = q[:, :, case.seq_len - case.q_len:]  # decode: the newest q_len positions
    needs_grad = case.mode == "fwdbwd"
    q, k, v = (x.to(case.device, case.torch_dtype).contiguous().requires_grad_(needs_grad) for x in (q, k, v))
    gen = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(q.shape, generator=gen).to(case.device, case.torch_dtype) if needs_grad else None
    return q, k, v, grad_out


def rope(x: torch.Tensor) -> torch.Tensor:
    """Partial rotary position embedding of x (..., N, D): the first R = ROTARY_SHARE * D dimensions, pairs
    (i, i + R/2) rotated by pos * base^(-2i/R); the other dimensions as they are (GPT-NeoX's rotary_pct)."""
    n = x.shape[-2]
    d = int(x.shape[-1] * ROTARY_SHARE) // 2 * 2
    half = d // 2
    freq = ROPE_BASE ** (-torch.arange(half, dtype=torch.float64) * 2 / d)
    angle = torch.arange(n, dtype=torch.float64)[:, None] * freq[None, :]  # (N, D/2)
    cos, sin = angle.cos().float(), angle.sin().float()
    a, b = x[..., :half], x[..., half: 2 * half]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, x[..., 2 * half:]], dim=-1)


def structured_qkv(batch: int, heads: int, kv_heads: int, n: int, head_dim: int,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 q (B, H, N, D), k and v (B, KVH, N, D) from the generator in the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    rep = heads // kv_heads
    norm = math.sqrt(SCORE_SCALE * math.sqrt(head_dim))
    centers = torch.randn(batch, kv_heads, CLUSTERS, head_dim, generator=gen)
    centers = centers / centers.norm(dim=-1, keepdim=True)
    shared = torch.randn(batch, kv_heads, 1, head_dim, generator=gen)
    shared = shared / shared.norm(dim=-1, keepdim=True)
    key_cluster = spans(batch, kv_heads, n, gen)  # segments of similar keys
    pick = lambda idx: centers.gather(2, idx[..., None].expand(*idx.shape, head_dim))  # noqa: E731
    k = norm * pick(key_cluster) + torch.randn(batch, kv_heads, n, head_dim, generator=gen)
    heavy = torch.cat([torch.zeros(batch, kv_heads, 1, dtype=torch.int64),
                       torch.randint(n, (batch, kv_heads, HEAVY_HITTERS - 1), generator=gen)], dim=-1)
    boost = torch.zeros(batch, kv_heads, n, 1)
    boost.scatter_(2, heavy[..., None], HEAVY_SCALE * norm)
    k = k + boost * shared
    # queries: per query head, along their own segment's cluster or a random one
    local = torch.rand(batch, heads, n, generator=gen) < LOCAL_SHARE
    own = key_cluster.repeat_interleave(rep, dim=1)
    query_cluster = torch.where(local, own, spans(batch, heads, n, gen))
    centers_q = centers.repeat_interleave(rep, dim=1)
    q = norm * centers_q.gather(2, query_cluster[..., None].expand(batch, heads, n, head_dim))
    q = q + torch.randn(batch, heads, n, head_dim, generator=gen) + norm * shared.repeat_interleave(rep, dim=1)
    v = torch.randn(batch, kv_heads, n, head_dim, generator=gen)
    return rope(q), rope(k), v


def spans(batch: int, heads: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, heads, n) int64: per batch and head, the positions cut into spans of SEGMENT_MIN..SEGMENT_MAX
    (uniform), each span's positions given one cluster (uniform)."""
    cluster = torch.empty(batch, heads, n, dtype=torch.int64)
    for b in range(batch):
        for h in range(heads):
            start = 0
            while start < n:
                length = int(torch.randint(SEGMENT_MIN, SEGMENT_MAX + 1, (1,), generator=gen))
                cluster[b, h, start:start + length] = int(torch.randint(CLUSTERS, (1,), generator=gen))
                start += length
    return cluster


def load_qkv(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v from a .pt (a dict of tensors, torch.load with weights_only) or .safetensors file; checked:
    present, 4-D (B, H, N, D) with k and v (B, KVH, N, D), KVH dividing H, floating point, finite. One
    SparsebenchError line for each way a file fails."""
    path = Path(path)
    if not path.is_file():
        raise SparsebenchError(f"--inputs {path}: no such file")
    how = "safetensors.torch.save_file" if path.suffix == ".safetensors" else "torch.save"
    if path.stat().st_size == 0:
        raise SparsebenchError(f"--inputs {path}: an empty file; write q, k, v with {how}({{'q': q, 'k': k, 'v': v}}, "
                               "...)")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise SparsebenchError(f"--inputs {path}: reading .safetensors needs the safetensors package "
                                       "(pip install safetensors), or save a .pt file") from None
            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except SparsebenchError:
        raise
    except Exception as exc:  # pickle, zip and header errors of every kind
        raise SparsebenchError(f"--inputs {path}: not a readable tensor file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}); write one with "
                               f"{how}({{'q': q, 'k': k, 'v': v}}, ...)") from None
    if not isinstance(data, dict):
        raise SparsebenchError(f"--inputs {path}: expected a dict of tensors named q, k, v, got {type(data).__name__}")
    missing = [name for name in ("q", "k", "v") if not isinstance(data.get(name), torch.Tensor)]
    if missing:
        raise SparsebenchError(f"--inputs {path}: no tensor named {', '.join(missing)} (it needs q, k and v of "
                               "shape (B, H, N, D))")
    q, k, v = data["q"], data["k"], data["v"]
    if any(x.dim() != 4 for x in (q, k, v)):
        raise SparsebenchError(f"--inputs {path}: q, k, v must be 4-D (B, H, N, D); got {tuple(q.shape)}, "
                               f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or q.shape[1] % k.shape[1]:
        raise SparsebenchError(f"--inputs {path}: mismatched shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                               f"v {tuple(v.shape)}: k and v (B, KVH, N, D) with KVH dividing q's H")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not x.is_floating_point() or x.dtype not in DTYPES.values():
            raise SparsebenchError(f"--inputs {path}: {name} is {x.dtype}; use float32, bfloat16 or float16")
        if not bool(torch.isfinite(x).all()):
            raise SparsebenchError(f"--inputs {path}: {name} holds NaN or Inf values")
    if len({q.dtype, k.dtype, v.dtype}) > 1:
        raise SparsebenchError(f"--inputs {path}: q, k, v have different dtypes ({q.dtype}, {k.dtype}, {v.dtype})")
    return q, k, v


FILE_SETTINGS = ("batch", "heads", "kv_heads", "head_dim", "dtypes")  # what a file of q, k, v fixes


def file_shape(path: str | Path) -> dict[str, object]:
    """The sweep settings a file fixes (FILE_SETTINGS, each a one-item list) and its length (seq_max); read once
    while the file's size and mtime stay (the options and the sweep's checks both ask)."""
    path = Path(path)
    if not path.is_file():
        load_qkv(path)  # its one-line error
    stat = path.stat()
    shape = _file_shape(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return {key: list(value) if isinstance(value, list) else value for key, value in shape.items()}


@functools.lru_cache(maxsize=8)
def _file_shape(path: str, size: int, mtime_ns: int) -> dict[str, object]:
    q, k, _ = load_qkv(path)
    dtype = next(name for name, dt in DTYPES.items() if dt == q.dtype)
    return {"batch": [q.shape[0]], "heads": [q.shape[1]], "kv_heads": [k.shape[1]], "head_dim": [q.shape[3]],
            "dtypes": [dtype], "seq_max": q.shape[2]}


def refuse_other_shape(path: str | Path, asked: dict[str, object]) -> None:
    """One line for a setting in `asked` (FILE_SETTINGS given beside --inputs FILE) that the file does not hold:
    batch, heads, kv-heads, head-dim and dtype come from the file, never silently replaced."""
    shape = file_shape(path)
    for key in FILE_SETTINGS:
        if key not in asked:
            continue
        value = asked[key]
        if key == "dtypes":  # as the sweep will read them (bf16 is bfloat16)
            value = [DTYPE_ALIASES.get(d, d) for d in value]
        if value != shape[key]:
            name = "dtype" if key == "dtypes" else key
            raise SparsebenchError(f"--inputs {path} holds {name} {shape[key][0]}, not {', '.join(map(str, value))}: "
                                   f"leave out --{name.replace('_', '-')} (batch, heads, kv-heads, head-dim and "
                                   "dtype come from the file)")


def input_id(inputs: str, seed: int) -> str:
    """What tells two sets of inputs of the same kind apart (the row's `input_id`): `seed=S` for the generated
    kinds; for a file, `sha256=` and the first 16 hex digits of its content (a path can be rewritten), then the
    seed, which draws fwdbwd's output gradient: `sha256=...;seed=S`."""
    if inputs in KINDS:
        return f"seed={seed}"
    stat = Path(inputs).stat()
    return f"sha256={_digest(inputs, stat.st_size, stat.st_mtime_ns)};seed={seed}"


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """The file's sha256, once per worker while its size and mtime stay (every case of a sweep reads it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def check_inputs(config) -> None:
    """Check a SweepConfig's `inputs` and `input_seed`; a file's shape and dtype replace the sweep's (its batch,
    heads, kv_heads, head_dim, dtypes), and every --seq must be at most its length. The path is made absolute
    (the workers read it again)."""
    if not isinstance(config.input_seed, int) or isinstance(config.input_seed, bool) or config.input_seed < 0:
        raise SparsebenchError(f"input_seed must be an integer >= 0, got {config.input_seed!r}")
    if not isinstance(config.inputs, str) or not config.inputs:
        raise SparsebenchError(f"inputs must be random, structured or a .pt/.safetensors file, got {config.inputs!r}")
    if config.inputs in KINDS:
        return
    path = Path(config.inputs)
    if path.suffix not in (".pt", ".safetensors"):
        raise SparsebenchError(f"--inputs {config.inputs}: not random, structured, nor a .pt or .safetensors file")
    shape = file_shape(path)
    too_long = [n for n in config.seq if isinstance(n, int) and n > shape["seq_max"]]
    if too_long:
        raise SparsebenchError(f"--seq {max(too_long)} is longer than the {shape['seq_max']} positions of --inputs "
                               f"{path}: give --seq {shape['seq_max']} or less")
    # settings other than the defaults were asked for (SweepConfig.over checks the options given, defaults too)
    defaults = {f.name: f.default_factory() for f in dataclasses.fields(config) if f.name in FILE_SETTINGS}
    refuse_other_shape(path, {key: getattr(config, key) for key in FILE_SETTINGS
                              if getattr(config, key) != defaults[key]})
    for key in FILE_SETTINGS:
        setattr(config, key, shape[key])
    config.inputs = str(path.resolve())
