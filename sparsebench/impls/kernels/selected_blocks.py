"""Block-sparse attention over a per-call, per-head block layout (selection patterns), on the CPU flash kernel.

Each query block attends to its kept key blocks. The layout differs per head and per call, so nothing is planned
ahead. Query blocks are grouped by how many blocks they keep: a group's query blocks run on exactly their kept
blocks (the others in ascending order, then the own block last), gathered from K and V a few query blocks at a
time (`GATHER_BYTES` of K per chunk), and attended by the CPU flash kernel with one (b, slots * b) additive mask
per group (the causal triangle on the own block's slot; none without causal). Query blocks that keep a block with
positions past n (ragged lengths) or drop their own block (a user's layout) run on `m` slots, unused ones
masked, with a mask each. Executed work is the kept blocks (plus the masked slots of those few).

The backward pass is an autograd Function of its own: it gathers the same blocks again and calls the flash
kernel's backward per chunk with the saved output and logsumexp, scattering dK and dV back with index_add. No
score matrix is kept, and no gathered copy of K or V outlives its chunk.

Why not torch's SDPA on the gathered keys with one additive mask for every query block (the first version): the
mask, the zero padding of q, k, v, the gathered chunks of 32 MiB and the concatenation of the outputs were all
fresh large allocations, page-faulted on every call, which took more time than the attention itself. Why the
own block is not a separate part merged through its logsumexp: the shared mask costs the flash kernel ~7% (201
against 188 us a query block of 16 + 1 blocks, best of 30 interleaved rounds, CPU, fp32, 1 thread), a causal
call of the own blocks alone ~26 us a query block (54 ms for n = 16384, H = 8) and the merge more: at n = 16384
the forward took 546 against 531 ms that way (best of 7, interleaved).

What the grouping replaced, and what else was measured (CPU, fp32, B=1, H=8, D=64, topk_blocks 64/16 on
--inputs structured, one thread, interleaved on a loaded machine, CPU-time medians; scripts/selected_blocks_ab.py):
- Every query block on the same `m` slots with a mask per query block where some were unused: a causal top-k
  layout's first `topk` query blocks ran masked empty slots (1.067x the kept blocks at n=8192, 1.032x at 16384)
  and each such chunk built a mask of its own (masked_fill over (c, 1, b, m * b): most of the planning time,
  which was 52 ms of a 470 ms call at 8192). Grouped by count, consecutive query blocks as slices (no index
  copies of q and the output), the kept blocks ordered from nonzero instead of a sort of every layout row:
  planning ~3 ms at 8192, ~6 ms at 16384; with the chunk sizes below the forward takes 0.81-0.86x the time at
  8192 and 0.90-0.92x at 16384, forward+backward 0.89-0.91x at 8192 and no measurable change at 16384.
- Chunk size: 2 MiB of gathered K (7 query blocks of 17 slots) ran the forward ~0.9x the time of 1 MiB, 4 MiB no
  better than 2; the backward, which also holds the chunk's dK and dV, ran ~0.93x the time at 1 MiB than at 2 MiB
  and 1.2x at one query block per chunk (whose K, V, dK and dV would fit L2): the kernel's calls cost more than
  the cache saves. The forward kernel costs the same per query block at 1 to 14 query blocks per call
  (~230 us for 64 x 1088 pairs).
- Several query blocks stacked along the query axis on the union of their kept blocks, to give the flash kernel
  longer rows (it runs 64-row queries at ~60-75% of its throughput on 1024-row queries: torch splits queries
  into rows of 32 below 192 query rows, 64 below 768, 256 above): on structured inputs the union of 2, 3 or 4
  consecutive query blocks is 1.26x, 1.48x or 1.66x their kept pairs at n=8192 (1.32x, 1.59x, 1.84x at 16384),
  and 2 blocks (128 rows) stay in 32-row splits; 3-4 blocks would gain at most ~1.3x in throughput for 1.5-1.7x
  the work. Not done.
- A causal flag on the own block instead of the additive mask: the CPU kernel's causal mask is top-left aligned
  (query row i sees keys 0..i of its call), which would hide every slot but the first.
- The backward with bmm (recomputed probabilities from the saved logsumexp, dV, dP, dS, dQ and dK as five batched
  matmuls into buffers reused by every chunk, none of the flash backward's zero-filled outputs): the same time
  within the noise at n=2048 and 8192 (flash 0.84 s, bmm 0.89 s at 8192). Not done.
- Gathering: memory-bound, ~15% of the forward. Contiguous runs of kept blocks cannot be views, as the kernel
  needs each query block's keys at one stride (only a causal layout's first `topk` query blocks, ~7% of the
  gathered blocks at 8192, keep one run); reusing a gathered block across query blocks would need their kept
  sets at one common offset in one buffer. Not done.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsebench.impls.kernels import aten_ops
from sparsebench.impls.kernels.core import neg_value

GATHER_BYTES = 1 << 21  # gathered K bytes per chunk of query blocks in the forward (as much again of V)
BACKWARD_GATHER_BYTES = 1 << 20  # the same in the backward, which also holds a chunk's dK and dV


def supported(q: torch.Tensor) -> str | None:
    """None when this kernel runs q's device and dtype, else why not."""
    if q.device.type != "cpu":
        return "the flash kernel of selected blocks runs on the CPU"
    return aten_ops.CPU_FLASH.problem() or aten_ops.CPU_FLASH_BACKWARD.problem()


def selected_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor, block: int,
                             causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q (B, H, n, D) over k, v (B, KVH, n, D) restricted to the kept blocks of `layout`
    (B, H, QB, KB) bool, with k <= q inside kept blocks when `causal`. Scale 1/sqrt(D).
    Returns (out (B, H, n, D), executed blocks per (B, H): the kept blocks, plus the masked slots of query blocks
    that run on `m` slots)."""
    plan = _plan(q, k, layout, block, causal)
    out = _SelectedBlocks.apply(q, k, v, plan)
    return out, plan.executed


class _Plan:
    """The index work of one call (no gradient): groups of query entries with their K/V block rows and masks."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def chunks(self, budget: int):
        """(entries, flat K/V block rows, mask) per chunk of query entries whose gathered K takes `budget` bytes."""
        for entries, rows, mask_of in self.groups:
            slots = rows.shape[1]
            chunk = max(1, budget // (slots * self.block_bytes))
            index = entries.tolist()
            for first in range(0, len(entries), chunk):
                part = slice(first, first + chunk)
                yield _as_slice(entries[part], index[part]), rows[part].reshape(-1), mask_of(part)


def _plan(q: torch.Tensor, k: torch.Tensor, layout: torch.Tensor, b: int, causal: bool) -> _Plan:
    B, H, L, D = q.shape
    KVH, n = k.shape[1], k.shape[2]
    qb_count, nb = layout.shape[2:]
    dev = q.device
    own = torch.arange(qb_count, device=dev)
    others = layout & (torch.arange(nb, device=dev)[None, :] != own[:, None])
    counts = others.sum(dim=-1)  # (B, H, QB)
    own_ok = layout.diagonal(dim1=-2, dim2=-1)  # (B, H, QB): a user's layout may drop it
    m = (int(counts.max()) if counts.numel() else 0) + 1  # slots: the other kept blocks, then the own block
    # the other kept blocks in ascending order, per query block, from nonzero's row-major order (a stable sort of
    # every layout row took ~8 ms at n=16384, this ~2)
    hits = others.reshape(-1, nb).nonzero()
    start = torch.cumsum(counts.reshape(-1), 0) - counts.reshape(-1)
    order = torch.zeros(B * H * qb_count, m - 1, dtype=torch.long, device=dev)
    order[hits[:, 0], torch.arange(len(hits), device=dev) - start[hits[:, 0]]] = hits[:, 1]
    # row of (batch, key/value head, block) in the (B * KVH * nb, b, D) view of K and V, per query entry
    kv_head = torch.arange(H, device=dev) // (H // KVH)
    base = ((torch.arange(B, device=dev)[:, None] * KVH + kv_head) * nb)[:, :, None]  # (B, H, 1)
    order += base.expand(B, H, qb_count).reshape(-1, 1)  # (E, m - 1), E = B * H * QB
    own_rows = (base + own).reshape(-1, 1)
    counts, own_ok = counts.reshape(-1), own_ok.reshape(-1)
    # Clean entries keep their own block and no block past n: they run on exactly their kept blocks, grouped by
    # count, with one mask per group (the causal triangle on the own block, the last slot). The others (ragged
    # last block, dropped own block) run on m slots with a mask each, unused slots reading the own block.
    clean = own_ok
    if n % b:
        clean = clean & ~layout[..., nb - 1].reshape(-1)
    neg = neg_value(q.dtype)
    triangle = torch.ones(b, b, dtype=torch.bool, device=dev).triu(1)
    groups = []
    for c in torch.unique(counts[clean]).tolist():
        entries = torch.nonzero(clean & (counts == c))[:, 0]
        mask = None
        if causal:
            mask = torch.zeros(b, (c + 1) * b, dtype=q.dtype, device=dev)
            mask[:, c * b:].masked_fill_(triangle, neg)
        rows = torch.cat([order[entries, :c], own_rows[entries]], dim=1)
        groups.append((entries, rows, lambda part, mask=mask: mask))
    entries = torch.nonzero(~clean)[:, 0]
    if len(entries):
        other_ok = torch.arange(m - 1, device=dev) < counts[entries, None]
        rows = torch.cat([torch.where(other_ok, order[entries], own_rows[entries]), own_rows[entries]], dim=1)
        key_ok = torch.cat([other_ok, own_ok[entries, None]], dim=1).repeat_interleave(b, dim=-1)
        if n % b:  # positions past n in the ragged last block
            block_of = rows - base.expand(B, H, qb_count).reshape(-1)[entries, None]
            key_ok &= ((block_of * b)[..., None]
                       + torch.arange(b, device=dev) < n).reshape(key_ok.shape)
        shared = torch.zeros(b, m * b, dtype=q.dtype, device=dev)
        if causal:
            shared[:, (m - 1) * b:].masked_fill_(triangle, neg)
        groups.append((entries, rows, lambda part: shared.masked_fill(~key_ok[part, None, None, :], neg)))
    executed = torch.where(clean, counts + 1, m).view(B, H, qb_count).sum(dim=-1)
    return _Plan(b=b, qb=qb_count, nb=nb, groups=groups, block_bytes=b * D * q.element_size(), executed=executed)


def _as_slice(entries: torch.Tensor, index: list[int]) -> slice | torch.Tensor:
    """A run of consecutive entries (`index`: the same, as a list) as a slice (views of q, copies into the output,
    no indexing), else as is."""
    return slice(index[0], index[-1] + 1) if index[-1] - index[0] == len(index) - 1 else entries


def _take(x: torch.Tensor, entries: slice | torch.Tensor) -> torch.Tensor:
    return x[entries] if isinstance(entries, slice) else x.index_select(0, entries)


def _put(x: torch.Tensor, entries: slice | torch.Tensor, values: torch.Tensor) -> None:
    if isinstance(entries, slice):
        x[entries] = values
    else:
        x.index_copy_(0, entries, values)


class _Gather:
    """The kept blocks of K and V for a chunk of query blocks, gathered into two buffers reused by every chunk (a
    fresh allocation per chunk cost a third of the copy's time)."""

    def __init__(self, kp: torch.Tensor, vp: torch.Tensor, plan: _Plan, budget: int) -> None:
        self.kp, self.vp = kp, vp
        rows = max((min(len(r), max(1, budget // (r.shape[1] * plan.block_bytes))) * r.shape[1]
                    for _, r, _ in plan.groups), default=0)
        self.kbuf, self.vbuf = kp.new_empty(rows, *kp.shape[1:]), vp.new_empty(rows, *vp.shape[1:])

    def __call__(self, rows: torch.Tensor, entries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(entries, 1, m * b, D) views of K and V's blocks at `rows`."""
        r, D = len(rows), self.kp.shape[-1]
        kg = torch.index_select(self.kp, 0, rows, out=self.kbuf[:r])
        vg = torch.index_select(self.vp, 0, rows, out=self.vbuf[:r])
        return kg.view(entries, 1, -1, D), vg.view(entries, 1, -1, D)


def _blocks(x: torch.Tensor, blocks: int, b: int) -> torch.Tensor:
    """(B, H, N, D) -> (B * H * blocks, b, D): a view when N fills the blocks, else a zero-padded copy."""
    B, H, N, D = x.shape
    if N != blocks * b:
        x = F.pad(x, (0, 0, 0, blocks * b - N))
    return x.reshape(B * H * blocks, b, D)


class _SelectedBlocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: _Plan):
        B, H, L, D = q.shape
        b = plan.b
        qp = _blocks(q, plan.qb, b)[:, None]  # (E, 1, b, D)
        kp, vp = _blocks(k, plan.nb, b), _blocks(v, plan.nb, b)
        out = q.new_empty(qp.shape)
        lse = torch.empty(qp.shape[:3], dtype=torch.float32, device=q.device)
        gather = _Gather(kp, vp, plan, GATHER_BYTES)
        for entries, rows, mask in plan.chunks(GATHER_BYTES):
            qc = _take(qp, entries)
            kg, vg = gather(rows, len(qc))
            o, lse_part = aten_ops.CPU_FLASH(qc, kg, vg, 0.0, False, attn_mask=mask)
            _put(out, entries, o)
            _put(lse, entries, lse_part)
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, out, lse)
        return out.view(B, H, plan.qb * b, D)[:, :, :L]

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        plan = ctx.plan
        B, H, L, D = q.shape
        KVH, n = k.shape[1], k.shape[2]
        b = plan.b
        qp = _blocks(q, plan.qb, b)[:, None]
        kp, vp = _blocks(k, plan.nb, b), _blocks(v, plan.nb, b)
        g = _blocks(grad_out.contiguous(), plan.qb, b)[:, None]
        dq = torch.empty_like(qp)
        dk, dv = torch.zeros_like(kp), torch.zeros_like(vp)
        gather = _Gather(kp, vp, plan, BACKWARD_GATHER_BYTES)
        for entries, rows, mask in plan.chunks(BACKWARD_GATHER_BYTES):
            qc = _take(qp, entries)
            kg, vg = gather(rows, len(qc))
            dq_part, dkg, dvg = aten_ops.CPU_FLASH_BACKWARD(
                _take(g, entries), qc, kg, vg, _take(out, entries), _take(lse, entries), 0.0, False, attn_mask=mask)
            _put(dq, entries, dq_part)
            dk.index_add_(0, rows, dkg.reshape(-1, b, D))
            dv.index_add_(0, rows, dvg.reshape(-1, b, D))
        dq = dq.view(B, H, plan.qb * b, D)[:, :, :L]
        dk = dk.view(B, KVH, plan.nb * b, D)[:, :, :n]
        dv = dv.view(B, KVH, plan.nb * b, D)[:, :, :n]
        return dq, dk, dv, None
