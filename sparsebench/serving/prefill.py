"""Packed variable-length prefill: sequences of different lengths in one token stream, the pattern inside each.

- `sdpa`: the naive baseline, every sequence padded to the longest ((B, H, Lmax, D)), one SDPA call; its
  `padding_waste` is the share of padded token slots;
- `nested`: SDPA on nested (jagged) tensors (torch supports it for dense attention only); on a CPU torch has no
  fused kernel for it and its math fallback materialises every head's padded scores (the preflight counts them);
- `flex`: flex_attention over the packed stream with a document mask (attention-gym's `generate_doc_mask_mod`);
- `structured`: the generic block-sparse kernel (impls/kernels/blocksparse.py) over the stream with each
  sequence starting on a block boundary: blocks never straddle two sequences, so each sequence's blocks are
  planned from its own pattern at its own length and the buckets of all of them run as one kernel.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from sparsebench.impls.flex import BLOCK_SIZE, compiled_flex
from sparsebench.impls.kernels.blocksparse import BlockSparseKernel, _bucket_bias, block_size, plan
from sparsebench.patterns import Pattern
from sparsebench.serving.base import ServingImpl, ServingPrepared, causal_pairs
from sparsebench.serving.batch import ServingBatch


def _packed_to_padded_index(lengths: list[int], width: int, device: torch.device) -> torch.Tensor:
    """(T,) int64: each packed token's slot in a (B * width) padded layout."""
    return torch.cat([torch.arange(n) + i * width for i, n in enumerate(lengths)]).to(device)


class PaddedSdpa(ServingImpl):
    name = "sdpa"
    modes = frozenset({"fwd"})

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        lengths, device = batch.lengths, batch.q.device
        B, L = len(lengths), max(lengths)
        valid = torch.arange(L, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]  # (B, L)
        causal = pattern.name == "causal"
        if pattern.name == "dense":
            mask = valid[:, None, None, :]  # (B, 1, 1, L): padding keys out
        elif causal:
            mask = None  # is_causal: a real query never reaches a padding key past itself
        elif pattern.causal_rule:
            mask = pattern.dense_mask(L, device)[None, None]  # k <= q: the same for every sequence
        else:  # the rule and the padding keys; padding query rows keep every key (defined, dropped)
            mask = (pattern.dense_mask(L, device)[None] & valid[:, None, :]) | ~valid[:, :, None]
            mask = mask[:, None]
        pairs = B * (causal_pairs(L) if causal else L * L)
        return ServingPrepared(state=(_packed_to_padded_index(lengths, L, device), mask, causal, L),
                               executed_pairs=pairs, padding_waste=1.0 - sum(lengths) / float(B * L))

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        index, mask, causal, L = prep.state
        B = len(batch.lengths)

        def padded(x: torch.Tensor) -> torch.Tensor:  # (1, H, T, D) -> (B, H, L, D), zeros in the padding
            heads, _, dim = x.shape[1:]
            out = x.new_zeros(heads, B * L, dim).index_copy_(1, index, x[0])
            return out.view(heads, B, L, dim).transpose(0, 1)

        q, k, v = (padded(x) for x in (batch.q, batch.k, batch.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             enable_gqa=q.shape[1] != k.shape[1])
        heads, dim = out.shape[1], out.shape[-1]
        return out.transpose(0, 1).reshape(heads, B * L, dim).index_select(1, index)[None]


class NestedSdpa(ServingImpl):
    name = "nested"
    modes = frozenset({"fwd"})

    def unsupported_reason(self, pattern: Pattern, mode: str, heads: int, kv_heads: int) -> str | None:
        if pattern.name != "dense":
            return (f"torch {torch.__version__.split('+')[0]}'s SDPA on nested (jagged) tensors takes neither "
                    "is_causal nor attn_mask: only dense runs on it")
        if heads != kv_heads:
            return "SDPA on nested (jagged) tensors does not take GQA/MQA (enable_gqa)"
        return super().unsupported_reason(pattern, mode, heads, kv_heads)

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        offsets = torch.tensor(batch.offsets, dtype=torch.int64, device=batch.q.device)
        return ServingPrepared(state=offsets, executed_pairs=sum(n * n for n in batch.lengths))

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        def jagged(x: torch.Tensor) -> torch.Tensor:  # (1, H, T, D) -> (B, H, j, D): (T, H, D) values
            values = x[0].transpose(0, 1).contiguous()
            return torch.nested.nested_tensor_from_jagged(values, prep.state).transpose(1, 2)

        out = F.scaled_dot_product_attention(jagged(batch.q), jagged(batch.k), jagged(batch.v))
        return out.transpose(1, 2).values().transpose(0, 1)[None]


class DocumentFlex(ServingImpl):
    name = "flex"
    modes = frozenset({"fwd"})

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        from torch.nn.attention.flex_attention import create_block_mask

        device, total = batch.q.device, sum(batch.lengths)
        lengths = torch.tensor(batch.lengths, device=device)
        doc = torch.repeat_interleave(torch.arange(len(batch.lengths), device=device), lengths)  # (T,)
        start = torch.tensor(batch.offsets[:-1], device=device)[doc]  # (T,) each token's sequence start
        rule = pattern.mask_mod_for(max(batch.lengths), device)  # the rule does not depend on n (PER_SEQUENCE)

        def document_mask(b, h, q_idx, kv_idx):
            return (doc[q_idx] == doc[kv_idx]) & rule(b, h, q_idx - start[q_idx], kv_idx - start[kv_idx])

        block_mask = create_block_mask(document_mask, None, None, total, total, device=device)
        blocks = int(block_mask.kv_num_blocks.sum())
        if block_mask.full_kv_num_blocks is not None:
            blocks += int(block_mask.full_kv_num_blocks.sum())
        nb = -(-total // BLOCK_SIZE)
        return ServingPrepared(state=block_mask, executed_pairs=blocks * BLOCK_SIZE * BLOCK_SIZE,
                               extra={"block_density": blocks / float(nb * nb)})

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        return compiled_flex()(batch.q, batch.k, batch.v, block_mask=prep.state,
                               enable_gqa=batch.q.shape[1] != batch.k.shape[1])


class PackedBlockSparse(ServingImpl):
    name = "structured"
    modes = frozenset({"fwd"})

    def prepare(self, pattern: Pattern, batch: ServingBatch) -> ServingPrepared:
        device, dtype = batch.q.device, batch.q.dtype
        b = block_size(device.type)
        buckets, first_block, slots = [], 0, []
        for n in batch.lengths:
            for bucket in plan(pattern, n, b):  # this sequence's blocks, numbered from its first block
                bias = _bucket_bias(pattern, n, b, bucket, device, dtype) if bucket.masked else None
                buckets.append(dataclasses.replace(
                    bucket, query_blocks=(bucket.query_blocks + first_block).to(device),
                    key_blocks=(bucket.key_blocks + first_block).to(device), first=bucket.first + first_block,
                    bias=bias))
            slots.append(torch.arange(n) + first_block * b)
            first_block += -(-n // b)
        largest = max([bk.key_blocks.shape[1] for bk in buckets if bk.kind == "gathered"] + [1])
        kernel = BlockSparseKernel(n=first_block * b, executed_pairs=sum(bk.pairs(b) for bk in buckets), block=b,
                                   buckets=buckets, largest_temp=largest)
        return ServingPrepared(state=(kernel, torch.cat(slots).to(device)), executed_pairs=kernel.executed_pairs)

    def forward(self, batch: ServingBatch, prep: ServingPrepared) -> torch.Tensor:
        kernel, index = prep.state

        def aligned(x: torch.Tensor) -> torch.Tensor:  # (1, H, T, D) -> (1, H, blocks * b, D)
            return x.new_zeros(*x.shape[:2], kernel.n, x.shape[-1]).index_copy_(2, index, x)

        out = kernel(aligned(batch.q), aligned(batch.k), aligned(batch.v))
        return out.index_select(2, index)
