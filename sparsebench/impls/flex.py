"""`flex`: FlexAttention with a BlockMask, compiled; it skips key blocks that the mask empties."""

from __future__ import annotations

from functools import lru_cache

import torch

from sparsebench.impls.base import Impl, Prepared
from sparsebench.patterns import Pattern

BLOCK_SIZE = 128  # FlexAttention's default tile


@lru_cache(maxsize=1)
def compiled_flex():
    """One compiled flex_attention per process: recompiles per shape and mask are cached by dynamo."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    # Every mask_mod and shape is a new graph. Past dynamo's default cache limit (8) it silently falls back
    # to eager flex_attention, which materialises all n^2 scores: a sweep must never measure that.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit,
                                                            1024)
    return torch.compile(flex_attention, dynamic=False)


def block_mask_for(pattern: Pattern, n: int, device: torch.device | str, block: int = BLOCK_SIZE,
                   chunk_entries: int = 1 << 26, q_len: int | None = None):
    """The BlockMask that `create_block_mask(pattern.mask_mod_for(n, device), None, None, n, n)` builds, made
    from the pattern's row masks a band of query blocks at a time (about `chunk_entries` mask entries each).
    `q_len`: decode, the queries are the last q_len positions (a BlockMask of q_len x n).

    create_block_mask evaluates mask_mod on all n^2 pairs at once, with int64 intermediates: 32 GiB at
    n = 65536. Like it, blocks past n count as masked (so a padded block is partial, never full).
    """
    from torch.nn.attention.flex_attention import BlockMask

    rows_total, offset = (n, 0) if q_len is None else (q_len, n - q_len)
    nb, qb = -(-n // block), -(-rows_total // block)
    rows_per_band = block * max(1, chunk_entries // (nb * block * block))
    partial, full = [], []
    for start in range(0, qb * block, rows_per_band):
        stop = min(start + rows_per_band, qb * block)
        mask = torch.zeros(stop - start, nb * block, dtype=torch.bool, device=device)
        if start < rows_total:
            rows = torch.arange(start, min(stop, rows_total), device=device) + offset
            mask[: len(rows), :n] = pattern.rows_mask(rows, n, device)
        kept = mask.view(-1, block, nb, block).sum(dim=(1, 3))  # (query blocks of the band, nb)
        partial.append((kept > 0) & (kept < block * block))
        full.append(kept == block * block)

    def ordered(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(count, indices) per query block, kept indices first: BlockMask's (B, H, rows[, cols]) layout."""
        dense = torch.cat(blocks).to(torch.int32)
        indices = torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)
        return dense.sum(-1, dtype=torch.int32)[None, None], indices[None, None]

    mask_mod = pattern.mask_mod_for(n, device)
    if offset:
        base = mask_mod

        def mask_mod(b, h, q_idx, kv_idx):  # decode: query i is at position n - q_len + i
            return base(b, h, q_idx + offset, kv_idx)

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(rows_total, n))


class FlexImpl(Impl):
    name = "flex"
    description = "torch flex_attention + BlockMask (compiled); skips empty 128x128 blocks"

    def device_reason(self, pattern, device_type, dtype, mode):
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError:
            return f"flex_attention needs torch >= 2.5 (found {torch.__version__})"
        if device_type == "cpu" and mode == "fwdbwd":
            return "flex_attention on CPU is inference only (no backward) in current torch"
        return None

    def prepare(self, pattern, n, device, dtype, q_len=None) -> Prepared:
        block_mask = block_mask_for(pattern, n, device, q_len=q_len)
        blocks = int(block_mask.kv_num_blocks.sum())
        if block_mask.full_kv_num_blocks is not None:
            blocks += int(block_mask.full_kv_num_blocks.sum())
        nb, qb = -(-n // BLOCK_SIZE), -(-(q_len or n) // BLOCK_SIZE)
        # A decode block's rows fit in one query block (q_len <= 128): it reads the K/V rows of its key blocks.
        kv_rows = min(n, blocks * BLOCK_SIZE) if q_len is not None and qb == 1 else None
        return Prepared(pattern, n, state=block_mask, q_len=q_len, kv_rows=kv_rows,
                        executed_pairs=blocks * BLOCK_SIZE * (BLOCK_SIZE if q_len is None else min(BLOCK_SIZE, q_len)),
                        extra={"block_density": blocks / float(nb * qb)})

    def forward(self, q, k, v, prep: Prepared):
        return compiled_flex()(q, k, v, block_mask=prep.state, enable_gqa=q.shape[1] != k.shape[1])

    def estimate_pairs(self, pattern, n):
        return 2 * pattern.nnz(n)  # block rounding: a rough upper bound for the preflight

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        elt = torch.finfo(dtype).bits // 8
        nb = -(-n // BLOCK_SIZE)
        return 4 * batch * heads * n * head_dim * elt * (3 if mode == "fwdbwd" else 1) + 8 * nb * nb
