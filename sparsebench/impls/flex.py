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
                   chunk_entries: int = 1 << 26):
    """The BlockMask that `create_block_mask(pattern.mask_mod_for(n, device), None, None, n, n)` builds, made
    from the pattern's row masks a band of query blocks at a time (about `chunk_entries` mask entries each).

    create_block_mask evaluates mask_mod on all n^2 pairs at once, with int64 intermediates: 32 GiB at
    n = 65536. Like it, blocks past n count as masked (so a padded block is partial, never full).
    """
    from torch.nn.attention.flex_attention import BlockMask

    nb = -(-n // block)
    rows_per_band = block * max(1, chunk_entries // (nb * block * block))
    partial, full = [], []
    for start in range(0, nb * block, rows_per_band):
        stop = min(start + rows_per_band, nb * block)
        mask = torch.zeros(stop - start, nb * block, dtype=torch.bool, device=device)
        if start < n:
            rows = torch.arange(start, min(stop, n), device=device)
            mask[: len(rows), :n] = pattern.rows_mask(rows, n, device)
        kept = mask.view(-1, block, nb, block).sum(dim=(1, 3))  # (query blocks of the band, nb)
        partial.append((kept > 0) & (kept < block * block))
        full.append(kept == block * block)

    def ordered(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(count, indices) per query block, kept indices first: BlockMask's (B, H, rows[, cols]) layout."""
        dense = torch.cat(blocks).to(torch.int32)
        indices = torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)
        return dense.sum(-1, dtype=torch.int32)[None, None], indices[None, None]

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=block,
                                    mask_mod=pattern.mask_mod_for(n, device), seq_lengths=(n, n))


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

    def prepare(self, pattern, n, device, dtype) -> Prepared:
        block_mask = block_mask_for(pattern, n, device)
        blocks = int(block_mask.kv_num_blocks.sum())
        if block_mask.full_kv_num_blocks is not None:
            blocks += int(block_mask.full_kv_num_blocks.sum())
        nb = -(-n // BLOCK_SIZE)
        return Prepared(pattern, n, state=block_mask, executed_pairs=blocks * BLOCK_SIZE * BLOCK_SIZE,
                        extra={"block_density": blocks / float(nb * nb)})

    def forward(self, q, k, v, prep: Prepared):
        return compiled_flex()(q, k, v, block_mask=prep.state)

    def estimate_pairs(self, pattern, n):
        return 2 * pattern.nnz(n)  # block rounding: a rough upper bound for the preflight

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode, device_type="cpu"):
        elt = torch.finfo(dtype).bits // 8
        nb = -(-n // BLOCK_SIZE)
        return 4 * batch * heads * n * head_dim * elt * (3 if mode == "fwdbwd" else 1) + 8 * nb * nb
