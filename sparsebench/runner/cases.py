"""One benchmark case, how a worker measures it, and the dtype names the CSV uses."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sparsebench.patterns import Pattern
from sparsebench.resolve import get_pattern
from sparsebench.results import (
    DENSE_REFERENCE,
    KEY_COLUMNS,
    SERVING_KEY_COLUMNS,
    SHAPE_COLUMNS,
    Params,
    PatternSpec,
    canonical_params,
    case_key,
    format_params,
    key_text,
)
from sparsebench.results.labels import mode_label

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
MODES = ("fwd", "fwdbwd", "decode")


@dataclass(frozen=True)
class Case:
    """Everything that identifies one measurement (the CSV's key columns), typed: the CSV's text forms only in
    `row()`. `params` may be given as pairs, a mapping or 'k=v;k=v' text; it is kept as canonical pairs."""

    pattern: str
    params: Params  # the pattern's parameters: sorted (name, int) pairs (the CSV cell 'k=v;k=v': row())
    impl: str
    device: str  # 'cpu', 'cuda' or 'cuda:N'
    dtype: str
    mode: str
    batch: int
    heads: int  # query heads H
    kv_heads: int  # key/value heads: H (multi-head), fewer (GQA) or 1 (MQA); divides H
    seq_len: int  # n: keys (and queries, except in decode)
    q_len: int  # queries: n, or in decode the last q_len positions n - q_len ... n - 1
    head_dim: int
    # Serving cases (sparsebench/serving): batch sequences of these lengths (canonical spec, drawn with
    # seq_lens_seed), packed for prefill, or in decode over a paged cache of page_size tokens (0: not paged).
    # seq_len is then the longest length. Empty for every other case.
    seq_lens: str = ""
    seq_lens_seed: int = 0
    page_size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", canonical_params(self.params))

    @classmethod
    def from_row(cls, row: Any) -> Case:
        """The case a results row measured (its key columns: params parsed, integers as integers)."""
        ints = {f.name for f in dataclasses.fields(cls) if f.type == "int"}
        values = {c: (int(row[c]) if c in ints else str(row[c])) for c in KEY_COLUMNS if c not in SERVING_KEY_COLUMNS}
        for c in SERVING_KEY_COLUMNS:  # empty (or absent, in older files) outside serving cases
            text = key_text(row[c]) if c in row else ""
            values[c] = (int(text) if text else 0) if c in ints else text
        params = row["params"] if isinstance(row["params"], str) else ""  # an empty cell may read as NaN
        return cls(**{**values, "params": params})

    @classmethod
    def of(cls, spec: PatternSpec, impl: str, *shape: Any) -> Case:
        """The case of a pattern spec, an implementation and a shape (device ... head_dim, in field order)."""
        return cls(spec.name, spec.params, impl, *shape)

    @property
    def spec(self) -> PatternSpec:
        """The pattern this case measures, with its parameters."""
        return PatternSpec(self.pattern, self.params)

    def build_pattern(self) -> Pattern:
        return get_pattern(self.pattern, **dict(self.params))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def serving(self) -> bool:
        """A serving case: a batch of sequences of their own lengths (packed prefill or paged decode)."""
        return bool(self.seq_lens)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def key(self) -> tuple[str, ...]:
        """The key the CSV and the gate use (device type only, so cuda:0 and cuda:1 results compare)."""
        return case_key(self.row())

    def group(self) -> tuple:
        """Cases of a group share inputs, a worker process and the dense reference: the shape, on one device
        (cuda:0 and cuda:1 are two groups)."""
        return tuple(self.device if c == "device" else getattr(self, c) for c in SHAPE_COLUMNS)

    def reference(self) -> Case:
        """The dense reference case (dense SDPA) measured beside this one, on the same inputs."""
        pattern, impl = DENSE_REFERENCE
        return dataclasses.replace(self, pattern=pattern, params=(), impl=impl)

    def label(self) -> str:
        pattern, mode = self.spec.label(), mode_label(self.mode, self.q_len)
        gqa = f" kv_heads={self.kv_heads}" if self.kv_heads != self.heads else ""
        if self.serving:
            paged = f" page={self.page_size}" if self.page_size else ""
            return f"{pattern} {self.impl} seq_lens={self.seq_lens}{paged}{gqa} {self.dtype} {mode} {self.device}"
        return f"{pattern} {self.impl} n={self.seq_len}{gqa} {self.dtype} {mode} {self.device}"

    def to_dict(self) -> dict:
        """The case as JSON (what a worker is sent): params as an object, name -> value."""
        return {**asdict(self), "params": dict(self.params)}

    def row(self) -> dict:
        """The key columns as they go into the CSV: params as 'k=v;k=v', the device's type (the serving columns
        empty outside serving cases)."""
        row = {**asdict(self), "params": format_params(dict(self.params)), "device": self.device_type}
        if not self.serving:
            row.update(seq_lens=None, seq_lens_seed=None)
        if not self.page_size:
            row["page_size"] = None
        return row


@dataclass(frozen=True)
class MeasureSettings:
    """How a worker measures each case (the sweep's timing settings)."""

    min_run_time: float = 1.0  # seconds of timed calls per case
    min_samples: int = 5
    warmup: int = 2
    inputs: str = "random"  # random, structured, or a .pt/.safetensors file of q, k, v (runner/inputs.py)
    input_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def case_params(pattern: Pattern) -> str:
    return format_params(pattern.params)
