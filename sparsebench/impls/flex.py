"""`flex`: FlexAttention with a BlockMask, compiled; it skips key blocks that the mask empties."""

from __future__ import annotations

from functools import lru_cache

import torch

from sparsebench.impls.base import Impl, Prepared

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
        from torch.nn.attention.flex_attention import create_block_mask

        block_mask = create_block_mask(pattern.mask_mod_for(n, device), None, None, n, n, device=device,
                                       BLOCK_SIZE=BLOCK_SIZE)
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

    def estimate_bytes(self, pattern, batch, heads, n, head_dim, dtype, mode):
        elt = torch.finfo(dtype).bits // 8
        nb = -(-n // BLOCK_SIZE)
        return 4 * batch * heads * n * head_dim * elt * (3 if mode == "fwdbwd" else 1) + 8 * nb * nb
