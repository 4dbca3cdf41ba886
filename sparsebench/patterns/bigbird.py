"""`bigbird` (Zaheer et al. 2020): block-level window, global and seeded random blocks."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch

from sparsebench.errors import PatternError
from sparsebench.patterns.base import MaskMod, Pattern, positive

# The block table is (blocks, blocks) and each query block draws one number per block: 16384 blocks (n = 2^20 at
# block 64) are a 256 MiB table and about 6 s of draws on a 2-core CPU; beyond that, a larger block.
MAX_BLOCKS = 2**14


@dataclass(frozen=True)
class BigBird(Pattern):
    """Query block i sees key blocks i-1, i, i+1, the first g blocks and r random blocks; global blocks see all."""

    block: int = 64
    global_blocks: int = 1
    random_blocks: int = 3
    mask_seed: int = 0
    name = "bigbird"
    doc = "blocks of b: window i-1..i+1, first g blocks (both ways), r random blocks drawn with mask_seed"
    renamed: ClassVar[dict[str, str]] = {"seed": "mask_seed"}  # results written before the rename say seed=

    def check_params(self) -> None:
        positive(self, "block")
        for name in ("global_blocks", "random_blocks", "mask_seed"):
            if getattr(self, name) < 0:
                raise PatternError(f"bigbird: {name} must be >= 0, got {getattr(self, name)}")

    def validate(self, n: int) -> None:
        super().validate(n)
        if self.num_blocks(n) > MAX_BLOCKS:
            raise PatternError(f"bigbird: n={n} makes {self.num_blocks(n)} blocks of {self.block}; at most "
                               f"{MAX_BLOCKS} (its block table and random draws grow with blocks^2): use a larger "
                               "block")

    def num_blocks(self, n: int) -> int:
        return -(-n // self.block)

    def random_picks(self, n: int) -> torch.Tensor:
        """(nb, r) int64: the random key blocks of each query block, -1 where none (global rows, few blocks)."""
        return _random_picks(self.num_blocks(n), self.global_blocks, self.random_blocks, self.mask_seed).clone()

    def block_table(self, n: int) -> torch.Tensor:
        """Boolean (nb, nb) table: True where query block i sees key block j."""
        nb = self.num_blocks(n)
        idx = torch.arange(nb)
        table = (idx[:, None] - idx[None, :]).abs() <= 1
        table[:, : self.global_blocks] = True  # everyone sees the global blocks
        table[: self.global_blocks, :] = True  # global blocks see everyone
        picks = self.random_picks(n)
        rows, slots = (picks >= 0).nonzero(as_tuple=True)
        table[rows, picks[rows, slots]] = True
        return table

    def mask_mod(self, b, h, q, k):
        raise PatternError("bigbird's mask depends on n: use mask_mod_for(n)")

    def mask_mod_for(self, n: int, device: torch.device | str = "cpu") -> MaskMod:
        table = self.block_table(n).to(device)
        size = self.block

        def bigbird_mask(b, h, q, k):
            return table[q // size, k // size]

        return bigbird_mask

    def block_counts(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept keys per query row of each block, rows per block), both (nb,) int64: O(n / b) memory."""
        nb, b = self.num_blocks(n), self.block
        sizes = torch.full((nb,), b, dtype=torch.int64)
        sizes[-1] = n - b * (nb - 1)  # the last block may be partial
        g = min(self.global_blocks, nb)
        idx = torch.arange(nb)
        counts = torch.full((nb,), int(sizes[:g].sum()), dtype=torch.int64)  # the global key blocks
        for offset in (-1, 0, 1):  # the window's blocks that are not global ones
            j = idx + offset
            inside = (j >= g) & (j < nb)
            counts += torch.where(inside, sizes[j.clamp(0, nb - 1)], 0)
        picks = self.random_picks(n)  # never a window or global block
        counts += torch.where(picks >= 0, sizes[picks.clamp(min=0)], 0).sum(1)
        counts[:g] = n  # global rows see every key
        return counts, sizes

    def row_counts(self, n: int) -> torch.Tensor:
        counts, _ = self.block_counts(n)
        return counts[torch.arange(n) // self.block]

    def count_pairs(self, n: int) -> int:
        counts, sizes = self.block_counts(n)
        return int((counts * sizes).sum())


@lru_cache(maxsize=32)
def _random_picks(nb: int, g: int, r: int, seed: int) -> torch.Tensor:
    """Per query block i >= g, r key blocks among those it does not already see (window, globals): the r
    smallest of nb uniform draws, one row after the other from one generator, so a seed always gives the
    same mask. O(nb) memory per row, (nb, r) in all."""
    r = min(r, nb)
    picks = torch.full((nb, r), -1, dtype=torch.int64)
    if r == 0:
        return picks  # no draws needed: the generator is this function's own
    gen = torch.Generator().manual_seed(seed)
    for i in range(g, nb):
        draws = torch.rand(nb, generator=gen)
        draws[:g] = 2.0  # seen already: the global blocks and the window
        draws[max(i - 1, 0) : i + 2] = 2.0
        values, pick = draws.topk(r, largest=False)
        picks[i] = torch.where(values < 2.0, pick, -1)  # fewer than r blocks left unseen
    return picks
