"""`bigbird` (Zaheer et al. 2020): block-level window, global and seeded random blocks."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import MaskMod, Pattern, positive


@dataclass(frozen=True)
class BigBird(Pattern):
    """Query block i sees key blocks i-1, i, i+1, the first g blocks and r random blocks; global blocks see all."""

    block: int = 64
    global_blocks: int = 1
    random_blocks: int = 3
    seed: int = 0
    name = "bigbird"
    doc = "blocks of b: window i-1..i+1, first g blocks (both ways), r seeded random blocks"

    def check_params(self) -> None:
        positive(self, "block")
        for name in ("global_blocks", "random_blocks", "seed"):
            if getattr(self, name) < 0:
                raise PatternError(f"bigbird: {name} must be >= 0, got {getattr(self, name)}")

    def num_blocks(self, n: int) -> int:
        return -(-n // self.block)

    def block_table(self, n: int) -> torch.Tensor:
        """Boolean (nb, nb) table: True where query block i sees key block j. Cached per (params, nb)."""
        return _block_table(self.num_blocks(n), self.global_blocks, self.random_blocks, self.seed).clone()

    def mask_mod(self, b, h, q, k):
        raise PatternError("bigbird's mask depends on n: use mask_mod_for(n)")

    def mask_mod_for(self, n: int, device: torch.device | str = "cpu") -> MaskMod:
        table = self.block_table(n).to(device)
        size = self.block

        def bigbird_mask(b, h, q, k):
            return table[q // size, k // size]

        return bigbird_mask

    def row_counts(self, n: int) -> torch.Tensor:
        table = self.block_table(n)
        sizes = torch.full((table.shape[0],), self.block, dtype=torch.int64)
        sizes[-1] = n - self.block * (table.shape[0] - 1)  # the last block may be partial
        per_block_row = (table.long() * sizes[None, :]).sum(1)
        return per_block_row.repeat_interleave(sizes)


@lru_cache(maxsize=32)
def _block_table(nb: int, g: int, r: int, seed: int) -> torch.Tensor:
    idx = torch.arange(nb)
    table = (idx[:, None] - idx[None, :]).abs() <= 1
    table[:, :g] = True  # everyone sees the global blocks
    table[:g, :] = True  # global blocks see everyone
    gen = torch.Generator().manual_seed(seed)
    for i in range(g, nb):
        # r random blocks among those not already seen: the r smallest of uniform draws, so one seed
        # always gives the same mask, in O(nb) per row.
        draws = torch.rand(nb, generator=gen).masked_fill(table[i], 2.0)
        pick = draws.topk(min(r, nb), largest=False).indices
        table[i, pick[draws[pick] < 2.0]] = True
    return table
