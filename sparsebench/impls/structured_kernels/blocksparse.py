"""Generic block-sparse attention: any pattern, including a user's mask_mod, from its block layout alone.

The sequence is cut into blocks of b positions. For each query block, the key blocks that hold at least one
kept pair are found once in `prepare` from the pattern's row masks (a band of query blocks at a time: never an
n x n mask). Query blocks that need exactly the same key blocks (a document's blocks, a prefix) form a shared
group: their key blocks are gathered once and attended by all of the group's queries in one call, so a
block-diagonal mask costs its blocks' work and no copies per query block. The other query blocks are bucketed
by how many key blocks they need (powers of two), so that padding a bucket to its largest count costs at most
2x; each bucket is one SDPA call over gathered key blocks per query block. Both carry an additive mask that is
zero on full blocks, the pattern's rule on partial ones, and -inf-like on padding slots and keys past n; one
whose blocks are all full (no partial block, no padding) runs with no mask at all. Work is the visited blocks
x b^2, memory the gathered key blocks: both follow the pattern's block density.

This is what `structured` runs for patterns it has no specialised kernel for (user masks), and what the
`blocksparse` implementation runs for every pattern, so its speed beside the specialised kernels is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.impls.structured_kernels.core import Kernel, attend_out, bias_from_mask, pad_rows, per_device
from sparsebench.patterns import Pattern

BLOCK = {"cpu": 32, "cuda": 64}  # positions per block; CPU measured with the band kernels, CUDA provisional
BAND_ENTRIES = 1 << 24  # mask entries evaluated at once while building the layout
SHARED_MIN_BLOCKS = 2  # query blocks with one key-block list that make a shared group


@dataclass
class Bucket:
    """Query blocks that need up to m key blocks each, padded to m; `shared`: all of them the same m blocks."""

    query_blocks: torch.Tensor  # (nq,) query block indices
    key_blocks: torch.Tensor  # (nq * m,) key block indices, padding slots point at block 0; shared: (m,)
    bias: torch.Tensor | None  # (nq, b, m * b) additive mask, or None when every slot is a full block
    shared: bool = False


@dataclass(kw_only=True)
class BlockSparseKernel(Kernel):
    """Buckets of query blocks against their gathered key blocks (see the module docstring)."""

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
            qb = qp.index_select(1, bucket.query_blocks)  # (rows, nq, b, D)
            bias = bucket.bias
            if bucket.shared:  # every query of the group against the same keys, gathered once
                qb = qb.reshape(rows, 1, nq * b, D)
                kb, vb = (x.index_select(1, bucket.key_blocks).view(rows, 1, -1, D) for x in (kp, vp))
                bias = None if bias is None else bias.reshape(1, nq * b, -1)
            else:  # (rows, nq, m*b, D): each query block's key blocks, gathered
                kb, vb = (x.index_select(1, bucket.key_blocks).view(rows, nq, -1, D) for x in (kp, vp))
            part = attend_out(qb, kb, vb, None if bias is None else bias[None], backend=backend)
            # in place (no copy of `out`); index_copy_ from a non-contiguous source is a slow serial loop
            out.index_copy_(1, bucket.query_blocks, part.reshape(rows, nq, b, D).contiguous())
        return out.reshape(rows, nb * b, D)[:, :N]


def blocksparse_kernel(pattern: Pattern, n: int, device: torch.device, dtype: torch.dtype,
                       block: int | None = None) -> BlockSparseKernel:
    b = block or per_device(BLOCK, device.type)
    counts = _block_counts(pattern, n, b)  # (nb, nb) kept pairs per (query block, key block), on the CPU
    needed = counts > 0
    full = counts == _block_area(n, b)
    per_row = needed.sum(dim=1)
    buckets, pairs = [], 0
    for query_blocks in _shared_groups(needed):
        key_blocks = needed[query_blocks[0]].nonzero().flatten()
        m = len(key_blocks)
        slot_ok = torch.ones(len(query_blocks), m, dtype=torch.bool)
        all_full = bool(full[query_blocks[:, None], key_blocks[None, :]].all())
        bias = None if all_full and n % b == 0 else _bucket_bias(pattern, n, b, query_blocks,
                                                                 key_blocks.expand(len(query_blocks), m), slot_ok,
                                                                 device, dtype)
        buckets.append(Bucket(query_blocks.to(device), key_blocks.to(device), bias, shared=True))
        pairs += len(query_blocks) * b * m * b
        per_row[query_blocks] = 0  # done: out of the per-block buckets below
    sizes = torch.where(per_row > 0, 2 ** torch.ceil(torch.log2(per_row.clamp(min=1).double())).long(), 0)
    for m in sorted(set(sizes.tolist()) - {0}):
        query_blocks = (sizes == m).nonzero().flatten()
        m_used = int(per_row[query_blocks].max())  # at most m, and no padding beyond what the bucket needs
        order = torch.sort(needed[query_blocks].to(torch.int8), dim=1, descending=True, stable=True).indices
        key_blocks = order[:, :m_used]  # (nq, m_used): kept blocks first, then (masked) padding
        slot_ok = torch.arange(m_used)[None, :] < per_row[query_blocks][:, None]
        all_full = bool((full[query_blocks[:, None], key_blocks] | ~slot_ok).all()) and bool(slot_ok.all())
        bias = None if all_full and n % b == 0 else _bucket_bias(pattern, n, b, query_blocks, key_blocks, slot_ok,
                                                                 device, dtype)
        buckets.append(Bucket(query_blocks.to(device), key_blocks.flatten().to(device), bias))
        pairs += len(query_blocks) * b * m_used * b
    # the per-block buckets gather m (N, D) tensors' worth of keys per row; a shared group only its own blocks
    largest = max([len(bk.key_blocks) // len(bk.query_blocks) for bk in buckets if not bk.shared] + [1])
    return BlockSparseKernel(n=n, executed_pairs=pairs, block=b, buckets=buckets, largest_temp=largest)


def _shared_groups(needed: torch.Tensor) -> list[torch.Tensor]:
    """Query blocks (ascending) that need the very same non-empty set of key blocks, SHARED_MIN_BLOCKS or more
    of them per set."""
    groups: dict[bytes, list[int]] = {}
    for block, row in enumerate(needed.to(torch.uint8).numpy()):
        if row.any():
            groups.setdefault(row.tobytes(), []).append(block)
    return [torch.tensor(blocks) for blocks in groups.values() if len(blocks) >= SHARED_MIN_BLOCKS]


def _block_area(n: int, b: int) -> torch.Tensor:
    """(nb, nb) positions per block pair: b * b, less at the ragged last row and column of blocks."""
    sizes = torch.full((-(-n // b),), b)
    sizes[-1] = n - b * (len(sizes) - 1)
    return sizes[:, None] * sizes[None, :]


def _block_counts(pattern: Pattern, n: int, b: int) -> torch.Tensor:
    """(nb, nb) int64: kept pairs in each block pair, from the row masks a band of query blocks at a time."""
    nb = -(-n // b)
    per_band = max(1, BAND_ENTRIES // (b * nb * b))
    out = torch.zeros(nb, nb, dtype=torch.int64)
    for first in range(0, nb, per_band):
        last = min(nb, first + per_band)
        rows = torch.arange(first * b, min(n, last * b))
        mask = torch.zeros(len(rows), nb * b, dtype=torch.bool)
        mask[:, :n] = pattern.rows_mask(rows, n)
        mask = torch.cat([mask, mask.new_zeros((last - first) * b - len(rows), nb * b)])
        out[first:last] = mask.view(last - first, b, nb, b).sum(dim=(1, 3))
    return out


def _bucket_bias(pattern: Pattern, n: int, b: int, query_blocks: torch.Tensor, key_blocks: torch.Tensor,
                 slot_ok: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(nq, b, m * b) additive mask of one bucket: the rule on each gathered key, masked on padding slots and
    on positions past n (query rows past n keep every key of a real slot, so their softmax stays defined)."""
    nq, m = key_blocks.shape
    keys = (key_blocks[:, :, None] * b + torch.arange(b)).reshape(nq, m * b)  # (nq, m*b) key positions
    keep = torch.zeros(nq, b, m * b, dtype=torch.bool)
    for i, block in enumerate(query_blocks.tolist()):  # one query block's rows at a time: O(b * n)
        rows = torch.arange(block * b, min(n, block * b + b))
        row_mask = pattern.rows_mask(rows, n)  # (rows, n)
        valid = keys[i] < n
        keep[i, : len(rows), valid] = row_mask[:, keys[i][valid]]
        keep[i, len(rows):, valid] = True  # padded query rows (dropped): any defined softmax
    keep &= slot_ok.repeat_interleave(b, dim=1)[:, None, :]
    return bias_from_mask(keep.to(device), dtype)
