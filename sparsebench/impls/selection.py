"""Implementations driven by a selection pattern's per-call kept set (patterns/selection).

The selection runs inside every measured call (its time is part of latency_ms, as in a model), without
gradient: gradients flow through attention, not through the selection (as MoBA and NSA train). Each
implementation turns the Selection into what it runs:
- eager, sdpa: a dense (B, Hs, L, N) boolean mask built from the selection (the baselines);
- structured: a gathered block-sparse kernel driven by the per-call, per-head layout: block selections on the
  CPU on the flash kernel in L2-sized chunks with a backward of its own (kernels/selected_blocks.py), elsewhere
  `gathered_blocks`; token selections by row chunks against their causal keys with a mask made from the
  indices, the chunk's kept key blocks gathered where they are few (kernels/selected_tokens.py); decode
  selections on their gathered pages (`gathered_pages`); work ~ kept blocks (token selections: visited keys).
  (The generic kernel of kernels/blocksparse.py plans buckets once per pattern, shared by every head; a
  selection's layout differs per head and per call, so it has this kernel of its own, on the same fused SDPA
  calls.)
- flex: a BlockMask built from the selection on every call (its build inside the latency), its mask_mod
  reading the selection from buffers updated in place, so the compiled kernel is reused across calls.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.nn.functional as F

from sparsebench.impls.base import Impl, Prepared, default_scale, repeat_kv
from sparsebench.impls.kernels import selected_blocks, selected_tokens
from sparsebench.impls.kernels.core import neg_value
from sparsebench.impls.selection_kernels import SelectionKernel
from sparsebench.patterns import Pattern
from sparsebench.patterns.selection import Selection, SelectionPattern
from sparsebench.patterns.selection.topk_tokens import TopkTokens

GATHER_ELEMENTS = 1 << 23  # gathered K values per chunk of query blocks (32 MiB in float32)
PAGE_GATHER_BYTES = 1 << 20  # gathered K bytes per group of heads in decode (as much again of V): L2-resident
RUNNERS = ("eager", "sdpa", "structured", "flex")


@dataclass
class SelectState:
    """Per-case state of a selection implementation: the last selection (for its statistics) and flex's
    buffers, made on the first call (their shapes need the inputs)."""

    last: Selection | None = None
    flex: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)  # a selection's cache metadata (quest's page bounds)


class SelectionImpl(Impl):
    """A built-in implementation's way of running a selection pattern (see the module docstring)."""

    def __init__(self, base: Impl) -> None:
        self.base = base
        self.name = base.name
        self.description = base.description
        self.in_default_sweep = base.in_default_sweep

    def unsupported_reason(self, pattern: Pattern, device: str, dtype: torch.dtype, mode: str) -> str | None:
        if isinstance(self.base, SelectionKernel):  # an optional third-party kernel: its own limits
            return self.base.unsupported_reason(pattern, device, dtype, mode)
        if self.name not in RUNNERS:
            return f"{self.name} does not run selection patterns (those that do: {', '.join(RUNNERS)})"
        if mode not in pattern.modes:
            return f"{pattern.name} runs in {' and '.join(sorted(pattern.modes))} only, not {mode}"
        device_type = torch.device(device).type
        if self.name == "flex" and mode == "decode":
            return "flex runs selection patterns in fwd and fwdbwd (decode selections: eager, sdpa, structured)"
        if self.name == "flex":
            return self.base.device_reason(pattern, device_type, dtype, mode)
        return None

    def prepare(self, pattern, n, device, dtype, q_len=None) -> Prepared[SelectState]:
        pattern.validate(n)
        return Prepared(pattern, n, state=SelectState(), executed_pairs=n * n, q_len=q_len)

    def forward(self, q, k, v, prep: Prepared[SelectState]) -> torch.Tensor:
        selection = prep.pattern.select(q, k, prep.state.cache)
        prep.state.last = selection
        if isinstance(self.base, SelectionKernel):
            out, pairs = self.base.run_selection(q, k, v, selection, prep.state.cache)
        else:
            run = {"eager": eager, "sdpa": sdpa, "structured": structured, "flex": flex}[self.name]
            out, pairs = run(q, k, v, selection, prep.state)
        prep.executed_pairs = pairs
        if "metadata_ms" in prep.state.cache:  # cache metadata built on the first call: setup, not latency
            prep.extra["metadata_ms"] = prep.state.cache["metadata_ms"]
        if selection.offset and self.name == "structured":  # decode: the kept pages, and the bounds (2 per page)
            prep.kv_rows = int(prep.state.cache.get("kv_rows", k.shape[2]))
        return out

    def estimate_pairs(self, pattern, n):
        if self.name == "structured" and isinstance(pattern, TopkTokens):  # row chunks against their causal keys
            return n * (n + 1) // 2
        return n * n if self.name in ("eager", "sdpa") else pattern.nnz(n)

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        elt = torch.finfo(dtype).bits // 8
        io = 4 * batch * heads * n * head_dim * elt * (3 if mode == "fwdbwd" else 1)
        if self.name == "eager":
            return batch * heads * n * n * (1 + 2 * elt * (2 if mode == "fwdbwd" else 1)) + io
        if self.name in ("sdpa", "flex"):
            return batch * heads * n * n + io
        if isinstance(pattern, TopkTokens):  # one row chunk's mask, or every chunk's kept for the backward
            return io + batch * elt * (n * (n + 1) // 2 if mode == "fwdbwd" else selected_tokens.MASK_ENTRIES)
        return io + 4 * GATHER_ELEMENTS * elt * (2 if mode == "fwdbwd" else 1)


def for_pattern(impl: Impl, pattern: Pattern) -> Impl:
    """The implementation that runs `pattern`: `impl` itself, or its selection runner for a selection pattern."""
    return selection_impl(impl) if isinstance(pattern, SelectionPattern) else impl


@cache
def selection_impl(impl: Impl) -> SelectionImpl:
    """One selection runner per implementation object (callers that cache prepared state by impl reuse it)."""
    return SelectionImpl(impl)


def mean_pairs(counts: torch.Tensor, heads: int) -> int:
    """Pairs per batch and head (the executed_pairs convention), from (B, Hs) counts."""
    return int(round(float(counts.double().mean()))) if counts.numel() else 0


# --- eager and SDPA: a dense mask ------------------------------------------------------------------------------
def eager(q, k, v, selection: Selection, state: SelectState):
    k, v = repeat_kv(q, k, v)
    scores = torch.matmul(q, k.transpose(-2, -1)) * default_scale(q.shape[-1])  # (B, H, L, N)
    scores = scores.masked_fill(~selection.dense_mask(), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v), q.shape[2] * k.shape[2]


def sdpa(q, k, v, selection: Selection, state: SelectState):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=selection.dense_mask(), enable_gqa=q.shape[1] != k.shape[1])
    return out, q.shape[2] * k.shape[2]


# --- structured: gathered key blocks or gathered keys -------------------------------------------------------------
def structured(q, k, v, selection: Selection, state: SelectState):
    """Block selections: the gathered blocks of their layout. Token selections: row chunks against their causal
    keys (or their kept key blocks, where few), each query masked to its own keys (kernels/selected_tokens.py:
    the union-of-blocks path this replaced, and a per-query gather, both cost more; the measurements are there)."""
    if selection.offset or selection.rows_per_block != selection.block:
        return gathered_pages(q, k, v, selection, state)
    if selection.indices is not None:
        return selected_tokens.token_attention(q, k, v, selection.indices, selection.layout, selection.block)
    if selected_blocks.supported(q) is None:
        b = selection.block
        layout = selection.layout.expand(q.shape[0], q.shape[1], *selection.layout.shape[2:])
        out, executed = selected_blocks.selected_block_attention(q, k, v, layout, b, selection.causal)
        return out, mean_pairs(executed, q.shape[1]) * b * b
    return gathered_blocks(q, k, v, selection)


def gathered_pages(q, k, v, selection: Selection, state: SelectState):
    """Decode over per-query kept pages (layout (B, H, L, pages), one layout row per query), m slots a query.
    Where no kept key needs a mask (every slot used, every key at or before its query: quest's case) on the CPU,
    `sparse_pages` reads the kept K and V rows in place; otherwise each query's kept pages of K and V are
    gathered (unused slots and positions past n masked) for fused SDPA calls (`gathered_page_attention`). K and
    V are read where they are when n fills the pages (a padded copy of the cache costs more than dense attention;
    whole pages, as Quest's paged cache reads them: a gather by rows of D values ran at a third the speed). Records
    the K/V rows read per batch and key/value head (the union of the kept pages of its queries and heads, plus
    the page bounds: two D-vectors per page, as much as one K and V row) in state.cache["kv_rows"].
    Tried and dropped (n = 65536, page 16, topk 256): F.embedding_bag for V alone, K still gathered for SDPA: no
    faster than the gather of V into an L2-resident buffer; all heads gathered at once (16 MiB): 3x slower."""
    B, H, L, D = q.shape
    KVH, n, b = k.shape[1], k.shape[2], selection.block
    layout = selection.layout.expand(B, H, L, selection.layout.shape[-1])
    pages = layout.shape[-1]
    counts = layout.sum(dim=-1)  # (B, H, L)
    m = int(counts.max())
    uniform = bool((counts == m).all())  # every query keeps m pages (quest: topk + 1)
    if uniform:  # kept pages in ascending order, straight from the mask
        slots = layout.nonzero()[:, -1].view(B, H, L, m)
    else:  # each kept page goes to slot (kept pages before it); unused slots read page 0, masked
        slot = torch.where(layout, layout.cumsum(dim=-1) - 1, m)
        slots = torch.zeros(B, H, L, m + 1, dtype=torch.int64, device=q.device)
        slots.scatter_(-1, slot, torch.arange(pages, device=q.device).expand_as(slot))
        slots = slots[..., :m]
    bias = None  # no mask when every slot is used and every kept key is at or before its query (quest's case)
    if not (uniform and L == 1 and n == pages * b):  # one query at n - 1 with whole pages: every key is before it
        slot_ok = torch.arange(m, device=q.device) < counts[..., None]
        key_pos = (slots[..., None] * b + torch.arange(b, device=q.device)).reshape(B, H, L, m * b)
        position = torch.arange(selection.offset, n, device=q.device)[None, None, :, None]
        keep = slot_ok.repeat_interleave(b, dim=-1) & (key_pos <= position)
        if not bool(keep.all()):
            bias = torch.where(keep, 0.0, neg_value(q.dtype)).to(q.dtype).view(B * H, L, 1, m * b)
    if bias is None and q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64):
        out = sparse_pages(q, k, v, slots, b)
    else:
        # (B * KVH * pages, b, D): a view of K and V when n fills the pages, else a padded copy (a ragged cache)
        kp, vp = (x if n == pages * b else F.pad(x, (0, 0, 0, pages * b - n)) for x in (k, v))
        kp, vp = kp.reshape(-1, b, D), vp.reshape(-1, b, D)
        base = (torch.arange(B, device=q.device)[:, None] * KVH + torch.arange(H, device=q.device) // (H // KVH))
        flat = (base[:, :, None, None] * pages + slots).reshape(B * H, -1)
        out = gathered_page_attention(q, kp, vp, flat, bias, m * b, state)
    per_kv_head = layout.reshape(B, KVH, -1, pages).any(dim=2).sum(dim=-1).double().mean()  # union of kept pages
    state.cache["kv_rows"] = min(n, round(float(per_kv_head) * b)) + pages
    return out, mean_pairs(counts.sum(dim=-1), H) * b


def sparse_pages(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, b: int) -> torch.Tensor:
    """Decode attention over kept pages without copying them, where no key needs a mask: the scores of the kept
    keys by torch.sparse.sampled_addmm (q . k at the positions of a CSR pattern, K read in place), a softmax over
    them, and the weighted sum of their V rows by F.embedding_bag (per_sample_weights, V read in place).
    Interleaved at n = 65536 (page 16, 257 pages a head, 8 heads, 1 thread, a loaded machine) against the gather
    of the kept K and V pages into L2-sized buffers then SDPA: about 2x faster (1.2 ms against 2.5 ms), the same
    output to 3e-7. CPU, float32 and float64 (what both ops run)."""
    B, H, L, D = q.shape
    KVH, n = k.shape[1], k.shape[2]
    rep = H // KVH
    batch, rows, kept = B * KVH, rep * L, slots.shape[-1] * b  # per key/value head: its heads' query rows
    keys = (slots[..., None] * b + torch.arange(b, device=q.device)).reshape(batch, rows * kept)
    crow = (torch.arange(rows + 1, device=q.device) * kept).expand(batch, rows + 1)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the two ops used here are tested
        warnings.simplefilter("ignore")
        pattern = torch.sparse_csr_tensor(crow, keys, q.new_zeros(batch, rows * kept), size=(batch, rows, n),
                                          check_invariants=False)
        scores = torch.sparse.sampled_addmm(pattern, q.reshape(batch, rows, D), k.reshape(batch, n, D).transpose(1, 2),
                                            beta=0.0).values().view(batch * rows, kept)
    weights = torch.softmax(scores * default_scale(D), dim=-1)
    flat = (keys.view(batch, rows, kept) + (torch.arange(batch, device=q.device) * n)[:, None, None]).view(-1, kept)
    out = F.embedding_bag(flat, v.reshape(batch * n, D), per_sample_weights=weights, mode="sum")
    return out.view(B, H, L, D)


def gathered_page_attention(q, kp, vp, flat, bias, keys: int, state: SelectState) -> torch.Tensor:
    """SDPA over each query's kept pages of K and V (kp, vp: (B * KVH * pages, b, D); flat: (B * H, L * m) rows
    of them), gathered a few heads at a time: so that the gathered pages are still in the core's cache when SDPA
    reads them, into workspace kept across the calls of the case (a fresh buffer of this size is page-faulted on
    every call)."""
    B, H, L, D = q.shape
    b = kp.shape[1]
    m = keys // b
    group = max(1, PAGE_GATHER_BYTES // (L * m * b * D * q.element_size()))
    work = state.cache.setdefault("page_workspace", {})
    kbuf, vbuf = (workspace(work, name, (min(group, B * H) * L * m, b, D), x) for name, x in (("k", kp), ("v", vp)))
    q3, out = q.reshape(B * H, L, 1, D), q.new_empty(B * H, L, 1, D)
    for first in range(0, B * H, group):
        last = min(B * H, first + group)
        rows = flat[first:last].reshape(-1)
        kg, vg = (torch.index_select(x, 0, rows, out=buf[:len(rows)]).view(last - first, L, m * b, D)
                  for x, buf in ((kp, kbuf), (vp, vbuf)))
        out[first:last] = F.scaled_dot_product_attention(q3[first:last], kg, vg,
                                                         attn_mask=None if bias is None else bias[first:last])
    return out.view(B, H, L, D)


def workspace(work: dict, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A buffer of `shape` kept in `work` under `name` (made again when the shape, dtype or device changes)."""
    buf = work.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = work[name] = like.new_empty(shape)
    return buf


def gathered_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: Selection):
    """Block-sparse attention over a per-(batch, head) block layout: each query block attends to its kept key
    blocks, gathered into m slots (its other kept blocks in ascending order, unused slots masked, then its own
    block last), in chunks of query blocks; one fused SDPA call per chunk, with an additive mask made of a
    per-key row (unused slots, positions past n) and, with the causal rule, a triangle on the own block's slot.
    Token selections run on the union layout, each query masked to its own keys. Returns (out, executed pairs
    per batch and head: kept blocks x block^2)."""
    B, H, L, D = q.shape
    KVH, n, b = k.shape[1], k.shape[2], selection.block
    layout = selection.layout.expand(B, H, *selection.layout.shape[2:])  # (B, H, QB, KB)
    qb_count, nb = layout.shape[2:]
    own = torch.arange(qb_count, device=q.device)
    i, j = own[:, None], torch.arange(nb, device=q.device)[None, :]
    others = layout & (j != i)
    counts = others.sum(dim=-1)  # (B, H, QB)
    m = int(counts.max()) + 1
    order = torch.sort(others.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :m - 1]
    other_ok = torch.arange(m - 1, device=q.device) < counts[..., None]
    own_ok = layout.diagonal(dim1=-2, dim2=-1)[..., None]  # (B, H, QB, 1): a user's layout may drop it
    slots = torch.cat([torch.where(other_ok, order, own[:, None]), own[:, None].expand_as(own_ok)], dim=-1)
    slot_ok = torch.cat([other_ok, own_ok], dim=-1)  # (B, H, QB, m)
    pad_q, pad_k = qb_count * b - L, nb * b - n
    qp = F.pad(q, (0, 0, 0, pad_q)).view(B * H, qb_count, b, D)
    kp, vp = (F.pad(x, (0, 0, 0, pad_k)).view(B * KVH * nb, b, D) for x in (k, v))
    # row of (batch, key/value head, block) in kp's first dimension, for each slot
    base = (torch.arange(B, device=q.device)[:, None] * KVH + torch.arange(H, device=q.device) // (H // KVH)) * nb
    rows = base[:, :, None, None] + slots  # (B, H, QB, m)
    neg = neg_value(q.dtype)
    triangle = torch.zeros(b, b, dtype=q.dtype, device=q.device)
    if selection.causal:
        triangle.masked_fill_(torch.ones(b, b, dtype=torch.bool, device=q.device).triu(1), neg)
    tokens = None
    if selection.indices is not None:  # (B, 1, QB, KB, b, b): each block pair's kept (query, key) pairs
        tokens = F.pad(selection.dense_mask(), (0, pad_k, 0, pad_q)).view(B, -1, qb_count, b, nb, b)
        tokens = tokens.permute(0, 1, 2, 4, 3, 5)
    step = max(1, GATHER_ELEMENTS // max(1, B * H * m * b * D))
    outs = []
    for first in range(0, qb_count, step):
        last = min(qb_count, first + step)
        c = last - first
        flat = rows[:, :, first:last].reshape(-1)
        kg, vg = (x.index_select(0, flat).view(B * H, c, m * b, D) for x in (kp, vp))
        key_pos = (slots[:, :, first:last, :, None] * b + torch.arange(b, device=q.device)).reshape(B, H, c, m * b)
        keep = slot_ok[:, :, first:last].repeat_interleave(b, dim=-1) & (key_pos < n)
        if tokens is None and bool(keep.all()):  # every slot used, no position past n: one mask for all blocks
            bias = torch.zeros(b, m * b, dtype=q.dtype, device=q.device)
            bias[:, (m - 1) * b:] = triangle
            bias = bias.expand(B, H, c, b, m * b)
        else:
            bias = torch.where(keep, 0.0, neg).to(q.dtype)[..., None, :].expand(B, H, c, b, m * b).contiguous()
            bias[..., (m - 1) * b:] += triangle  # the own block (k <= q inside it when causal)
        if tokens is not None:
            q_ix = torch.arange(first, last, device=q.device)[None, None, :, None]
            pairs = tokens[torch.arange(B, device=q.device)[:, None, None, None], 0, q_ix, slots[:, :, first:last]]
            bias.masked_fill_(~pairs.permute(0, 1, 2, 4, 3, 5).reshape(B, H, c, b, m * b), neg)
        # 4-D, with an additive mask: the fused CPU kernel (5-D or boolean masks take SDPA's slow math path)
        part = F.scaled_dot_product_attention(qp[:, first:last], kg, vg, attn_mask=bias.reshape(B * H, c, b, m * b))
        outs.append(part)
    out = torch.cat(outs, dim=1).reshape(B, H, qb_count * b, D)[:, :, :L]
    kept = (counts + own_ok[..., 0]).sum(dim=-1)
    return out, mean_pairs(kept, H) * b * b


# --- flex: a BlockMask from the selection, every call ---------------------------------------------------------------
def flex(q, k, v, selection: Selection, state: SelectState):
    from torch.nn.attention.flex_attention import BlockMask

    from sparsebench.impls.flex import compiled_flex

    B, H, L, _ = q.shape
    n, b = k.shape[2], selection.block
    buffers = state.flex
    if not buffers:  # the mask_mod reads these buffers; they are updated in place on every call
        buffers["layout"] = torch.zeros_like(selection.layout)
        hs = selection.layout.shape[1]
        if selection.indices is not None:
            buffers["dense"] = torch.zeros(B, hs, L, n, dtype=torch.bool, device=q.device)
        buffers["mask_mod"] = _flex_mask_mod(buffers, b, selection.causal, hs, selection.indices is not None)
    buffers["layout"].copy_(selection.layout)
    if "dense" in buffers:
        buffers["dense"].copy_(selection.dense_mask())
    layout = selection.layout.expand(B, H, *selection.layout.shape[2:])
    qb_count, nb = layout.shape[2:]
    i = torch.arange(qb_count, device=q.device)[:, None]
    j = torch.arange(nb, device=q.device)[None, :]
    whole = torch.ones_like(layout[0, 0])
    if selection.causal:
        whole &= j < i  # the diagonal block is partial
    whole &= (i + 1) * b <= L
    whole &= (j + 1) * b <= n  # ragged blocks are partial
    full = layout & whole if selection.indices is None else torch.zeros_like(layout)
    partial = layout & ~full

    def ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = blocks.sum(-1, dtype=torch.int32)
        indices = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return counts, indices

    block_mask = BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=b,
                                          mask_mod=buffers["mask_mod"], seq_lengths=(L, n))
    out = compiled_flex()(q, k, v, block_mask=block_mask, enable_gqa=H != k.shape[1])
    return out, mean_pairs(layout.sum(dim=(-1, -2)), H) * b * b


def _flex_mask_mod(buffers: dict, b: int, causal: bool, hs: int, tokens: bool):
    layout = buffers["layout"]
    dense = buffers.get("dense")

    def selection_mask(batch, head, q_idx, kv_idx):
        h = head if hs > 1 else head * 0
        if tokens:
            return dense[batch, h, q_idx, kv_idx]
        kept = layout[batch, h, q_idx // b, kv_idx // b]
        return kept & (kv_idx <= q_idx) if causal else kept

    return selection_mask


def full_reference(group: list) -> list:
    """The extra reference cases a shape group needs: causal SDPA, beside the dense reference, when the group
    has a causal selection pattern (its speedup_vs_full is against the causal attention it replaces)."""
    import dataclasses

    from sparsebench.measure.quality import full_is_causal

    if not any(isinstance(p := c.build_pattern(), SelectionPattern) and full_is_causal(p) for c in group):
        return []
    return [dataclasses.replace(group[0], pattern="causal", params="", impl="sdpa")]
