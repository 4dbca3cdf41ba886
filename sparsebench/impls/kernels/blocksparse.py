"""Generic block-sparse attention: any pattern, including a user's mask_mod, from its block layout alone.

The sequence is cut into blocks of b positions. For each query block, the key blocks that hold at least one
kept pair are found once from the pattern's row masks (a band of query blocks at a time: never an n x n mask),
and the query blocks are split into buckets, each one attention call:
- shared: query blocks that need exactly the same key blocks (a document's blocks, a prefix) attend to those
  blocks gathered once, so a block-diagonal mask costs its blocks' work and no copies per query block;
- causal: consecutive query blocks that each need every key from one key block s up to themselves (full
  blocks, a causal diagonal block), as in the causal part of a prefix LM or of a causal document: one causal
  SDPA call over blocks [s, last] on views of Q, K and V (the rows before the run are computed and dropped,
  so a run is taken only where they are the smaller part);
- window: consecutive query blocks whose key blocks are m consecutive blocks at a fixed offset from the query
  block, as in a band: key windows that are overlapping views (unfold) of K and V, nothing gathered;
- gathered: the rest, bucketed by how many key blocks they need (powers of two, so padding a bucket to its
  largest count costs at most 2x), each query block's key blocks gathered.
All but causal carry an additive mask that is zero on full blocks, the pattern's rule on partial ones, and
-inf-like on padding slots and keys past n; a bucket whose blocks are all full runs without one. Work is the
visited blocks x b^2, memory the gathered key blocks: both follow the pattern's block density.

This is what `structured` runs for patterns it has no specialised kernel for (user masks), and what the
`blocksparse` implementation runs for every pattern, so its speed beside the specialised kernels is measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import torch

from sparsebench.impls.kernels.core import BLOCK, Kernel, attend_out, bias_from_mask, pad_rows, per_device
from sparsebench.patterns import Pattern

BAND_ENTRIES = 1 << 24  # mask entries evaluated at once while building the layout
SHARED_MIN_BLOCKS = 2  # query blocks with one key-block list that make a shared group
RUN_MIN_BLOCKS = 4  # consecutive query blocks with a causal or sliding key-block range that make one call


class BucketKind(str, Enum):
    """How a bucket's call finds its keys (see the module docstring). A str, so it reads and prints as its name."""

    shared = "shared"
    causal = "causal"
    window = "window"
    gathered = "gathered"

    def __str__(self) -> str:
        return self.value


@dataclass
class Bucket:
    """Query blocks computed by one attention call (the kinds are in the module docstring)."""

    kind: BucketKind
    query_blocks: torch.Tensor  # (nq,) query block indices, ascending
    key_blocks: torch.Tensor  # (nq, m) each query block's key blocks, padding slots at block 0; causal: (nq, 0)
    masked: bool  # whether the call needs a mask: a partial block, a padding slot, or keys past n
    slot_ok: torch.Tensor | None = None  # gathered: (nq, m) bool, False on padding slots
    first: int = 0  # causal: the first key block s; window: the first query block's first key block
    span: int = 0  # causal: blocks in its one call, from the first key block to the last query block
    bias: torch.Tensor | None = None  # (nq, b, m * b) additive mask when masked, built by blocksparse_kernel

    def pairs(self, b: int) -> int:
        """(q, k) pairs its call computes per batch*head row, padding and (causal) dropped rows included."""
        if self.kind is BucketKind.causal:
            return self.span * b * (self.span * b + 1) // 2
        return self.key_blocks.numel() * b * b

    def copies(self, b: int) -> int:
        """Rows of K and V it copies per batch*head row (the gathers), both counted."""
        return 2 * b * {BucketKind.shared: self.key_blocks.shape[1],
                        BucketKind.gathered: self.key_blocks.numel()}.get(self.kind, 0)


@dataclass(kw_only=True)
class BlockSparseKernel(Kernel):
    """The buckets of query blocks, one attention call each (see the module docstring)."""

    block: int
    buckets: list[Bucket]

    def run(self, q, k, v, inputs):
        rows, N, D = q.shape
        b = self.block
        nb = -(-N // b)
        qp, kp, vp = (pad_rows(x, 0, nb * b - N).view(rows, nb, b, D) for x in (q, k, v))
        out = qp.new_zeros(rows, nb, b, D)
        backend = inputs.backend(masked=True, merged=False)
        for bucket in self.buckets:
            nq = len(bucket.query_blocks)
            bias = None if bucket.bias is None else bucket.bias[None]
            if bucket.kind is BucketKind.causal:  # views of the blocks [first, last]; the rows before the run dropped
                first, end = bucket.first, bucket.first + bucket.span
                qc, kc, vc = (x[:, first:end].reshape(rows, 1, -1, D) for x in (qp, kp, vp))
                part = attend_out(qc, kc, vc, None, backend=backend, causal=True)[:, 0, (end - nq - first) * b:]
            else:
                qb = qp.index_select(1, bucket.query_blocks)  # (rows, nq, b, D)
                if bucket.kind is BucketKind.shared:  # every query of the group against the same keys, gathered once
                    qb = qb.reshape(rows, 1, nq * b, D)
                    kb, vb = (x.index_select(1, bucket.key_blocks[0]).view(rows, 1, -1, D) for x in (kp, vp))
                    bias = None if bias is None else bias.reshape(1, 1, nq * b, -1)
                elif bucket.kind is BucketKind.window:  # overlapping views of K and V: nothing gathered
                    kb, vb = (_block_windows(x, bucket.first, bucket.key_blocks.shape[1], nq) for x in (kp, vp))
                else:  # (rows, nq, m*b, D): each query block's key blocks, gathered
                    kb, vb = (x.index_select(1, bucket.key_blocks.flatten()).view(rows, nq, -1, D)
                              for x in (kp, vp))
                part = attend_out(qb, kb, vb, bias, backend=backend)
            # in place (no copy of `out`); index_copy_ from a non-contiguous source is a slow serial loop
            out.index_copy_(1, bucket.query_blocks, part.reshape(rows, nq, b, D).contiguous())
        return out.reshape(rows, nb * b, D)[:, :N]


def block_size(device_type: str) -> int:
    """Positions per block on this device type."""
    return per_device(BLOCK, device_type)


def blocksparse_kernel(pattern: Pattern, n: int, device: torch.device, dtype: torch.dtype,
                       block: int | None = None) -> BlockSparseKernel:
    """The kernel for `pattern` at length n: its buckets (`plan`), their masks built and moved to `device`."""
    b = block or block_size(device.type)
    buckets = []
    for bucket in plan(pattern, n, b):  # never the cached plan: setup_ms is the whole of this kernel's setup
        bias = _bucket_bias(pattern, n, b, bucket, device, dtype) if bucket.masked else None
        buckets.append(dataclasses.replace(bucket, query_blocks=bucket.query_blocks.to(device),
                                           key_blocks=bucket.key_blocks.to(device), bias=bias))
    # a gathered bucket copies m (N, D) tensors' worth of keys per row; the other kinds copy at most one
    largest = max([bk.key_blocks.shape[1] for bk in buckets if bk.kind is BucketKind.gathered] + [1])
    return BlockSparseKernel(n=n, executed_pairs=sum(bk.pairs(b) for bk in buckets), block=b, buckets=buckets,
                             largest_temp=largest)


def plan(pattern: Pattern, n: int, b: int) -> tuple[Bucket, ...]:
    """The buckets of `pattern` at length n in blocks of b, on the CPU and without masks."""
    kept, diag_causal = _block_counts(pattern, n, b)  # kept pairs per (query block, key block)
    needed = kept > 0
    full = kept == _block_area(n, b)
    left = needed.any(dim=1)  # query blocks not in a bucket yet
    # each query block's first and last needed key block, and how many it needs: contiguous when they agree
    starts, counts = needed.to(torch.int8).argmax(dim=1), needed.sum(dim=1)
    contiguous = len(needed) - needed.flip(1).to(torch.int8).argmax(dim=1) - starts == counts

    def masked(query_blocks: torch.Tensor, key_blocks: torch.Tensor) -> bool:
        return n % b != 0 or not bool(full[query_blocks[:, None], key_blocks].all())

    buckets = []
    for query_blocks in _shared_groups(needed):
        key_blocks = needed[query_blocks[0]].nonzero().flatten().expand(len(query_blocks), -1)
        buckets.append(Bucket(BucketKind.shared, query_blocks, key_blocks, masked(query_blocks, key_blocks)))
        left[query_blocks] = False
    for query_blocks, first in _causal_runs(starts, counts, full, diag_causal, left):
        buckets.append(Bucket(BucketKind.causal, query_blocks, torch.empty(len(query_blocks), 0, dtype=torch.long),
                              False, first=first, span=int(query_blocks[-1]) + 1 - first))
        left[query_blocks] = False
    for query_blocks, first, m in _window_runs(starts, counts, contiguous, left):
        key_blocks = first + torch.arange(len(query_blocks))[:, None] + torch.arange(m)[None, :]
        buckets.append(Bucket(BucketKind.window, query_blocks, key_blocks, masked(query_blocks, key_blocks),
                              first=first))
        left[query_blocks] = False
    per_row = torch.where(left, counts, 0)
    sizes = torch.where(per_row > 0, 2 ** torch.ceil(torch.log2(per_row.clamp(min=1).double())).long(), 0)
    for m in sorted(set(sizes.tolist()) - {0}):
        query_blocks = (sizes == m).nonzero().flatten()
        m_used = int(per_row[query_blocks].max())  # at most m, and no padding beyond what the bucket needs
        order = torch.sort(needed[query_blocks].to(torch.int8), dim=1, descending=True, stable=True).indices
        key_blocks = order[:, :m_used]  # (nq, m_used): kept blocks first, then (masked) padding
        slot_ok = torch.arange(m_used)[None, :] < per_row[query_blocks][:, None]
        padded = not bool(slot_ok.all())
        buckets.append(Bucket(BucketKind.gathered, query_blocks, key_blocks, padded or masked(query_blocks, key_blocks),
                              slot_ok=slot_ok))
    return tuple(buckets)


@lru_cache(maxsize=8)
def cached_plan(pattern: Pattern, n: int, b: int) -> tuple[Bucket, ...]:
    """`plan`, kept for the estimates below, which the preflight and `impl="auto"` ask for before a kernel."""
    return plan(pattern, n, b)


def plan_bytes(pattern: Pattern, batch: int, heads: int, n: int, head_dim: int, dtype: torch.dtype,
               mode: str, device_type: str) -> int:
    """Peak extra memory of one call, from the plan: the padded Q, K, V and output, each bucket's query and
    output blocks and gathered keys (the largest bucket in inference; all of them, twice, and the key windows'
    gradients when a backward keeps and differentiates them, plus the full-size K and V gradients that a
    gather's backward scatters into), and the buckets' masks. Measured: 1.1-2.2x the allocator's peak on the
    CPU (docs/results/cpu-examples)."""
    b = block_size(device_type)
    buckets = cached_plan(pattern, n, b)
    elt = torch.finfo(dtype).bits // 8

    def temp(bk: Bucket, grad: bool) -> int:  # rows of D values per batch*head row
        windows = 2 * bk.key_blocks.numel() * b if grad and bk.kind is BucketKind.window else 0
        causal = bk.span * b if bk.kind is BucketKind.causal else 0
        return 2 * len(bk.query_blocks) * b + bk.copies(b) + windows + causal

    padded = 4 * -(-n // b) * b
    if mode == "fwdbwd":
        rows = 3 * padded + padded // 2 + 2 * sum(temp(bk, True) for bk in buckets)
    else:
        rows = padded + max([temp(bk, False) for bk in buckets] + [0])
    masks = sum(bk.key_blocks.numel() * b * b for bk in buckets if bk.masked)
    return int(batch * heads * rows * head_dim * elt + masks * elt)


def plan_pairs(pattern: Pattern, n: int, device_type: str) -> int:
    """Exact pairs the kernel computes per batch*head row, from the plan."""
    b = block_size(device_type)
    return sum(bk.pairs(b) for bk in cached_plan(pattern, n, b))


def plan_masked_share(pattern: Pattern, n: int, device_type: str) -> float:
    """The share of all n^2 pairs that the kernel computes in masked or gathered buckets, where it does what
    SDPA with a mask does plus the masks' and gathers' copies."""
    b = block_size(device_type)
    masked = [bk for bk in cached_plan(pattern, n, b) if bk.masked or bk.kind is BucketKind.gathered]
    return sum(bk.pairs(b) for bk in masked) / (n * n)


def _shared_groups(needed: torch.Tensor) -> list[torch.Tensor]:
    """Query blocks (ascending) that need the very same non-empty set of key blocks, SHARED_MIN_BLOCKS or more
    of them per set."""
    groups: dict[bytes, list[int]] = {}
    for block, row in enumerate(needed.to(torch.uint8).numpy()):
        if row.any():
            groups.setdefault(row.tobytes(), []).append(block)
    return [torch.tensor(blocks) for blocks in groups.values() if len(blocks) >= SHARED_MIN_BLOCKS]


def _causal_runs(starts: torch.Tensor, counts: torch.Tensor, full: torch.Tensor, diag_causal: torch.Tensor,
                 left: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Runs of RUN_MIN_BLOCKS or more consecutive query blocks (among those `left`) that each need every key
    from one first key block s up to themselves: blocks [s, qb) full, the diagonal block causal, no other.
    A run is taken when the rows of the blocks [s, first query block), computed and dropped, cost at most
    the run's own pairs. Returns (query blocks, s)."""
    keys = []
    for qb in range(len(left)):
        s = int(starts[qb])
        causal = bool(left[qb]) and counts[qb] == qb - s + 1 and bool(diag_causal[qb]) and bool(full[qb, s:qb].all())
        keys.append(s if causal else None)
    runs = []
    for begin, end in _runs(keys):
        s = keys[begin]
        dropped, own = (begin - s) ** 2, (end - s) ** 2 - (begin - s) ** 2  # triangles, in half blocks^2
        if end - begin >= RUN_MIN_BLOCKS and dropped <= own:
            runs.append((torch.arange(begin, end), s))
    return runs


def _window_runs(starts: torch.Tensor, counts: torch.Tensor, contiguous: torch.Tensor,
                 left: torch.Tensor) -> list[tuple[torch.Tensor, int, int]]:
    """Runs of RUN_MIN_BLOCKS or more consecutive query blocks (among those `left`) whose key blocks are one
    contiguous range of m blocks at a fixed offset from the query block, as in a band: query block qb needs
    [qb + offset, qb + offset + m). Returns (query blocks, the run's first key block, m)."""
    keys = [(int(starts[qb]) - qb, int(counts[qb])) if left[qb] and bool(contiguous[qb]) else None
            for qb in range(len(left))]
    return [(torch.arange(begin, end), begin + keys[begin][0], keys[begin][1]) for begin, end in _runs(keys)
            if end - begin >= RUN_MIN_BLOCKS]


def _runs(keys: list) -> list[tuple[int, int]]:
    """[begin, end) of each maximal run of equal keys that are not None."""
    runs, begin = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[begin]:
            if keys[begin] is not None:
                runs.append((begin, i))
            begin = i
    return runs


def _block_windows(x: torch.Tensor, first: int, m: int, nq: int) -> torch.Tensor:
    """(rows, nb, b, D) -> (rows, nq, m * b, D): window i is blocks [first + i, first + i + m), an overlapping
    view (unfold) of x."""
    rows, _, b, D = x.shape
    return x[:, first: first + nq + m - 1].unfold(1, m, 1).permute(0, 1, 4, 2, 3).reshape(rows, nq, m * b, D)


def _block_area(n: int, b: int) -> torch.Tensor:
    """(nb, nb) positions per block pair: b * b, less at the ragged last row and column of blocks."""
    sizes = torch.full((-(-n // b),), b)
    sizes[-1] = n - b * (len(sizes) - 1)
    return sizes[:, None] * sizes[None, :]


def _block_counts(pattern: Pattern, n: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(nb, nb) int64: kept pairs in each block pair, and (nb,) bool: whether the diagonal block keeps exactly
    the causal pairs (k <= q, within n); from the row masks, a band of query blocks at a time."""
    nb = -(-n // b)
    per_band = max(1, BAND_ENTRIES // (b * nb * b))
    out = torch.zeros(nb, nb, dtype=torch.int64)
    diag_causal = torch.zeros(nb, dtype=torch.bool)
    pos = torch.arange(nb * b).view(nb, b)
    causal = torch.ones(b, b, dtype=torch.bool).tril()
    for first in range(0, nb, per_band):
        last = min(nb, first + per_band)
        rows = torch.arange(first * b, min(n, last * b))
        mask = torch.zeros(len(rows), nb * b, dtype=torch.bool)
        mask[:, :n] = pattern.rows_mask(rows, n)
        mask = torch.cat([mask, mask.new_zeros((last - first) * b - len(rows), nb * b)])
        blocks = mask.view(last - first, b, nb, b)
        # counts of at most b * b in int32: a bool sum promotes the whole band to int64, 2-3x slower
        out[first:last] = blocks.view(torch.uint8).sum(dim=3, dtype=torch.int32).sum(dim=1)
        own = torch.arange(first, last)
        diag = blocks[torch.arange(last - first), :, own, :]  # (blocks, b, b): each query block's own keys
        inside = (pos[own, :, None] < n) & (pos[own, None, :] < n)
        diag_causal[first:last] = ((diag == causal) | ~inside).all(dim=(1, 2))
    return out, diag_causal


def _bucket_bias(pattern: Pattern, n: int, b: int, bucket: Bucket, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """(nq, b, m * b) additive mask of one bucket: the rule on each key of its slots, masked on padding slots
    and on positions past n (query rows past n keep every key of a real slot, so their softmax stays defined)."""
    nq, m = bucket.key_blocks.shape
    keys = (bucket.key_blocks[:, :, None] * b + torch.arange(b)).reshape(nq, m * b)  # (nq, m*b) key positions
    keep = torch.zeros(nq, b, m * b, dtype=torch.bool)
    for i, block in enumerate(bucket.query_blocks.tolist()):  # one query block's rows at a time: O(b * n)
        rows = torch.arange(block * b, min(n, block * b + b))
        row_mask = pattern.rows_mask(rows, n)  # (rows, n)
        valid = keys[i] < n
        keep[i, : len(rows), valid] = row_mask[:, keys[i][valid]]
        keep[i, len(rows):, valid] = True  # padded query rows (dropped): any defined softmax
    if bucket.slot_ok is not None:
        keep &= bucket.slot_ok.repeat_interleave(b, dim=1)[:, None, :]
    return bias_from_mask(keep.to(device), dtype)
