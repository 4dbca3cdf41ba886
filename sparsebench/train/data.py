"""Training data: a byte corpus (the Python standard library's sources, or any UTF-8 file), split 90/10."""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsebench.errors import SparsebenchError

VAL_FRACTION = 0.1
_NOT_STDLIB = {"site-packages", "dist-packages"}  # installed packages differ between machines


@dataclass(frozen=True)
class Corpus:
    """A named byte string; `train` is the first 90%, `val` the last 10%."""

    name: str
    data: bytes

    @property
    def n_bytes(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def n_train(self) -> int:
        return len(self.data) - int(len(self.data) * VAL_FRACTION)

    @property
    def train(self) -> bytes:
        return self.data[: self.n_train]

    @property
    def val(self) -> bytes:
        return self.data[self.n_train:]

    def check(self, seq_len: int) -> None:
        """Raise SparsebenchError unless both splits hold at least one (seq_len + 1)-byte window."""
        if not self.data:
            raise SparsebenchError(f"corpus {self.name} is empty")
        need = seq_len + 1  # inputs plus the shifted targets
        if len(self.val) < need or len(self.train) < need:
            raise SparsebenchError(
                f"corpus {self.name} has {self.n_bytes} bytes, too short for --seq {seq_len}: its validation "
                f"split (last 10%) needs at least {need} bytes, i.e. a corpus of at least {need * 10} bytes")


def stdlib_files() -> list[Path]:
    """The running Python's standard-library *.py files, sorted by relative path (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if p.relative_to(root).parts[0] not in _NOT_STDLIB and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_corpus(max_bytes: int) -> Corpus:
    """The first `max_bytes` bytes of the standard library's sources, files joined in sorted order."""
    chunks, total = [], 0
    for path in stdlib_files():
        if total >= max_bytes:
            break
        chunk = path.read_bytes() + b"\n"
        chunks.append(chunk)
        total += len(chunk)
    data = b"".join(chunks)[:max_bytes]
    return Corpus(f"python{sys.version_info.major}.{sys.version_info.minor}-stdlib", data)


def file_corpus(path: str | Path, max_bytes: int | None = None) -> Corpus:
    """Any UTF-8 text file (e.g. WikiText-103's wiki.train.tokens), optionally capped to `max_bytes`."""
    path = Path(path)
    if path.is_dir():
        raise SparsebenchError(f"corpus file {path}: is a directory; give one UTF-8 text file")
    if not path.is_file():
        raise SparsebenchError(f"corpus file {path}: no such file")
    try:
        with open(path, "rb") as fh:
            data = fh.read() if max_bytes is None else fh.read(max_bytes)
    except OSError as exc:
        raise SparsebenchError(f"corpus file {path}: cannot read it ({exc.strerror})") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if max_bytes is None or exc.start < len(data) - 3:  # a cap may cut one multi-byte character
            raise SparsebenchError(f"corpus file {path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    return Corpus(path.name, data)


def as_tensor(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (a copy, so the tensor owns writable memory)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def batch_offsets(n_bytes: int, seq_len: int, batch: int, steps: int, seed: int) -> torch.Tensor:
    """Random window starts, (steps, batch), from their own generator: every variant sees the same data."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_bytes - seq_len, (steps, batch), generator=gen)


def eval_offsets(n_bytes: int, seq_len: int, max_windows: int) -> torch.Tensor:
    """Up to `max_windows` non-overlapping window starts spread evenly over the validation split."""
    starts = torch.arange(0, n_bytes - seq_len, seq_len)
    if len(starts) > max_windows:
        starts = starts[torch.linspace(0, len(starts) - 1, max_windows).round().long()]
    return starts


def windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets, both (len(starts), seq_len) int64."""
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]  # (B, N + 1)
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]
