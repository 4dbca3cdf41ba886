"""A user selector for `--pattern examples/selector.py:moba`: MoBA's top-k key blocks, written from scratch.

It keeps what the built-in topk_blocks keeps (the tests check it), so it shows the contract end to end:
select(q, k, **int_params) -> bool layout (B, H or 1, ceil(L / block), ceil(N / block)).
"""

import torch


def moba(q, k, block=64, topk=8, causal=1):
    """Own block + the top-k earlier key blocks by mean query . mean key (MoBA), ties to the lower block."""
    B, H, L, D = q.shape
    n = k.shape[2]
    qb, kb = -(-L // block), -(-n // block)

    def means(x, blocks):  # (B, h, N, D) -> (B, h, blocks, D): each block's mean over the positions it has
        padded = torch.zeros(*x.shape[:2], blocks * block, D, device=x.device)
        padded[:, :, : x.shape[2]] = x
        sizes = torch.full((blocks,), float(block), device=x.device)
        sizes[-1] = x.shape[2] - block * (blocks - 1)
        return padded.view(*x.shape[:2], blocks, block, D).sum(3) / sizes[:, None]

    scores = means(q, qb) @ means(k, kb).repeat_interleave(H // k.shape[1], dim=1).transpose(-1, -2)
    i, j = torch.arange(qb)[:, None], torch.arange(kb)[None, :]
    candidates = (j < i) if causal else (j != i)
    order = torch.sort(scores.masked_fill(~candidates, float("-inf")), dim=-1, descending=True, stable=True).indices
    keep = torch.arange(kb) < candidates.sum(-1, keepdim=True).clamp(max=topk)
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, keep.expand_as(order)) | (j == i)
