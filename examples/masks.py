"""Two masks in the attention-gym style, to benchmark as sparsebench patterns.

    sparsebench run --pattern examples/masks.py:prefix_lm --pattern examples/masks.py:document --seq 4096

A mask_mod(b, h, q_idx, kv_idx) -> bool is a pattern as it is; a function of n returning one (a factory) can
depend on the length, and its integer keyword arguments are the pattern's parameters
(`--pattern examples/masks.py:document:docs=4`).
"""

import torch

PREFIX = 1024  # tokens of the prefix, seen in both directions


def prefix_lm(b, h, q_idx, kv_idx):
    """prefix LM: the first 1024 tokens see each other both ways; the rest is causal"""
    return (kv_idx <= q_idx) | (kv_idx < PREFIX)


def document(n, docs=8, device="cpu"):
    """document masking: n tokens packed from `docs` equal documents; a token sees its own document only"""
    lengths = [n // docs + (i < n % docs) for i in range(docs)]
    document_id = torch.repeat_interleave(torch.arange(docs, device=device), torch.tensor(lengths, device=device))

    def mask_mod(b, h, q_idx, kv_idx):
        return document_id[q_idx] == document_id[kv_idx]

    return mask_mod
