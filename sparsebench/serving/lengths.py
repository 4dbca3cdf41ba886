"""The lengths of a serving batch: a list (`512,4096,8192`) or a seeded distribution (`uniform:LO-HI[:COUNT]`).

The spec as written in the results (`seq_lens`, with `seq_lens_seed`) makes a run reproducible: `draw` gives the
same lengths for the same spec and seed on any machine (torch's CPU generator).
"""

from __future__ import annotations

import re

import torch

from sparsebench.errors import SparsebenchError

MAX_TOKENS = 2**31 - 1  # positions in one packed stream: beyond this the kernels' 32-bit index arithmetic overflows
_UNIFORM = re.compile(r"uniform:(\d+)-(\d+)(?::(\d+))?")
# Patterns whose rule does not depend on the sequence length n, so that it applies inside each sequence of a
# batch with the sequence's own positions (bigbird draws its random blocks per n; selections choose from q and k).
PER_SEQUENCE = ("dense", "causal", "local", "sliding_window", "strided", "dilated", "fixed", "longformer")
# Selection patterns that run on a decode step's paged cache (serving/quest.py), each sequence at its own length.
PAGED_SELECTIONS = ("quest",)


def canonical(spec: str, batch: int) -> str:
    """The spec in its one written form: 'a,b,c' or 'uniform:LO-HI:COUNT' (COUNT from `batch` when left out).
    SparsebenchError, saying what is wrong, for anything else."""
    text = str(spec).strip().replace(" ", "")
    if not text:
        raise SparsebenchError("--seq-lens is empty: give lengths (512,4096,8192) or uniform:LO-HI[:COUNT]")
    if text.startswith("uniform"):
        match = _UNIFORM.fullmatch(text)
        if not match:
            raise SparsebenchError(f"--seq-lens {spec!r}: write a distribution as uniform:LO-HI or uniform:LO-HI:COUNT"
                                   " (positive integers, LO <= HI)")
        low, high, count = int(match[1]), int(match[2]), int(match[3] or batch)
        if low <= 0 or high < low or count <= 0:
            raise SparsebenchError(f"--seq-lens {spec!r}: needs 0 < LO <= HI and COUNT > 0")
        _check_sum(spec, count * high)
        return f"uniform:{low}-{high}:{count}"
    items = text.split(",")
    if not all(re.fullmatch(r"-?\d+", item) for item in items):
        raise SparsebenchError(f"--seq-lens {spec!r}: give comma-separated positive integers (512,4096,8192) or "
                               "uniform:LO-HI[:COUNT]")
    lengths = [int(item) for item in items]
    if any(n <= 0 for n in lengths):
        raise SparsebenchError(f"--seq-lens {spec!r}: every length must be a positive integer")
    _check_sum(spec, sum(lengths))
    return ",".join(map(str, lengths))


def _check_sum(spec: str, total: int) -> None:
    if total > MAX_TOKENS:
        raise SparsebenchError(f"--seq-lens {spec!r}: up to {total} tokens in one batch, more than {MAX_TOKENS} "
                               "(2^31 - 1) positions")


def draw(spec: str, seed: int) -> list[int]:
    """The lengths of a canonical spec: the list, or COUNT lengths uniform in [LO, HI] from `seed`."""
    match = _UNIFORM.fullmatch(spec)
    if not match:
        return [int(x) for x in spec.split(",")]
    low, high, count = int(match[1]), int(match[2]), int(match[3])
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (count,), generator=gen).tolist()


def own_count(spec: str) -> int | None:
    """How many sequences a spec holds by itself (a list, or uniform:LO-HI:COUNT); None when --batch gives it."""
    match = _UNIFORM.fullmatch(spec)
    if match:
        return int(match[3]) if match[3] else None
    return len(spec.split(","))


def count(spec: str) -> int:
    """How many sequences a canonical spec holds (the batch)."""
    match = _UNIFORM.fullmatch(spec)
    return int(match[3]) if match else len(spec.split(","))


def check_page_size(page_size: int) -> None:
    """A page holds a power of two of tokens: the decode kernels find a position's page and slot with a shift and
    a mask, as paged caches do (vLLM and FlashInfer use 16 by default)."""
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size <= 0 or page_size & (page_size - 1):
        raise SparsebenchError(f"--page-size {page_size!r} must be a power of two (1, 2, 4, ..., 16 by default): "
                               "the paged decode kernels split a position into page and slot by shift and mask")


def check_pattern(name: str) -> None:
    """Only a rule that does not depend on n applies inside each sequence of a batch (and quest, in decode, on the
    paged cache)."""
    if name not in PER_SEQUENCE and name not in PAGED_SELECTIONS:
        raise SparsebenchError(f"pattern {name} cannot apply per sequence with --seq-lens (its rule depends on the "
                               f"whole length or on q and k); patterns that can: {', '.join(PER_SEQUENCE)}, and "
                               f"in decode {', '.join(PAGED_SELECTIONS)}")


def check_page_match(name: str, page: int, page_size: int) -> None:
    """quest scores the cache's own pages: its page must be the cache's page size."""
    if page != page_size:
        raise SparsebenchError(f"{name}:page={page} on a paged cache of --page-size {page_size}: {name} selects the "
                               f"cache's pages, so give {name}:page={page_size} or --page-size {page}")
