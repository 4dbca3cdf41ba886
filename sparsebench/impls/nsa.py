"""nsa: flash-linear-attention's NSA selection kernel (`fla.ops.nsa.parallel_nsa`) on a block selection.

Optional (`pip install flash-linear-attention`), CUDA only (Triton). What the kernel takes (fla's
`ops/nsa/parallel.py`): q (B, T, HQ, D), k and v (B, T, H, D) sequence-major; per query token and key/value head
the indices of its selected key blocks, `block_indices` (B, T, H, S) (a negative index is unused), with their
number `block_counts` (B, T, H); keys after the token's own position are masked (it is always causal), and the
group G = HQ / H must be a power of two of at least 16 (a Triton tile). Only the selection branch runs: no gate,
no compressed or sliding branch, so the output is attention over the kept keys, as sparsebench's other
implementations compute it. The selection is made by the pattern (inside the latency, as everywhere) and handed
to the kernel; a selection that differs between the query heads of a group cannot be (topk_blocks:shared=1 is
NSA's shared selection). Its work: every kept block of a token at or before it, whole (the mask is applied to
the computed scores).
"""

from __future__ import annotations

import torch

from sparsebench.errors import SparsebenchError
from sparsebench.impls.selection_kernels import SelectionKernel, group_layout
from sparsebench.patterns import Pattern


class NsaImpl(SelectionKernel):
    name = "nsa"
    description = "flash-linear-attention's NSA selection kernel (CUDA, optional), given the selected blocks"
    package = "fla.ops.nsa"
    install = "pip install flash-linear-attention"
    modes = frozenset({"fwd", "fwdbwd", "decode"})

    def unsupported_reason(self, pattern: Pattern, device: str, dtype: torch.dtype, mode: str) -> str | None:
        reason = super().unsupported_reason(pattern, device, dtype, mode)
        if reason is None and not pattern.is_causal:
            return "NSA's kernel is causal; this selection is not (causal=0)"
        return reason

    def run_selection(self, q, k, v, selection, cache):
        from fla.ops.nsa import parallel_nsa

        B, H, L, D = q.shape
        KVH, b = k.shape[1], selection.block
        if (H // KVH) < 16 or (H // KVH) & (H // KVH - 1):
            raise SparsebenchError(f"NSA's kernel needs heads / kv_heads a power of two >= 16 (a Triton tile); "
                                   f"got {H} / {KVH} (e.g. --heads 16 --kv-heads 1)")
        if b < 16 or b & (b - 1):
            raise SparsebenchError(f"NSA's kernel takes blocks of a power of two >= 16 positions; got {b}")
        indices, counts = token_blocks(group_layout(selection, H, KVH, "NSA's kernel"), L, selection.rows_per_block)
        # sequence-major copies: the kernel's layout (a model using it keeps q, k, v so; here the copies are timed)
        q_, k_, v_ = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        out = parallel_nsa(q_, k_, v_, block_indices=indices, block_counts=counts, block_size=b, scale=D ** -0.5)
        pairs = counts.sum(dim=1).double().mean() * b  # per token, its kept blocks, whole
        return out.transpose(1, 2), int(round(float(pairs)))


def token_blocks(layout: torch.Tensor, rows: int, rows_per_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NSA's `block_indices` (B, rows, KVH, S) int64 (each token's kept key blocks in ascending order, then -1)
    and `block_counts` (B, rows, KVH) int64, from a (B, KVH, QB, KB) layout whose row r covers query rows
    [r * rows_per_block, (r + 1) * rows_per_block)."""
    counts = layout.sum(dim=-1)  # (B, KVH, QB)
    S = max(1, int(counts.max()))
    order = torch.sort(layout.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :S]
    ranked = torch.sort(torch.where(torch.arange(S, device=layout.device) < counts[..., None], order,
                                    layout.shape[-1]), dim=-1).values  # kept blocks ascending, padding last
    blocks = torch.where(ranked < layout.shape[-1], ranked, -1)
    row = torch.arange(rows, device=layout.device) // rows_per_block
    return blocks[:, :, row].transpose(1, 2).contiguous(), counts[:, :, row].transpose(1, 2).contiguous()
