"""Banded blocks: `local`, `sliding_window`, `dilated` (a sliding window per residue class q mod d).

Queries go in blocks of `block` rows; block i needs only the keys [i*block + lo, i*block + block - 1 + hi],
a window of `block + hi - lo` keys. The windows are overlapping views (unfold) of the zero-padded K and V,
so no key is copied per block, and one attention call covers every block with a (blocks, rows, window)
bias that is shared by all batches and heads. Work is n * (block + hi - lo) pairs instead of n^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.impls.kernels.core import (
    BLOCK,
    Backend,
    Kernel,
    Traits,
    attend,
    attend_out,
    bias_from_mask,
    pad_rows,
    per_device,
)
from sparsebench.impls.kernels.dense import SdpaKernel

BAND = Traits()  # SDPA with a per-block mask: no private op, no kept scores, one key window per query block


def band_block(device_type: str) -> int:
    """Queries per band block on this device type (core.BLOCK): the window is block + span - 1 keys wide."""
    return per_device(BLOCK, device_type)


def band_pairs(n: int, lo: int, hi: int, block: int) -> int:
    """Pairs a band computes: ceil(n / block) query blocks of `block` rows, each against block + hi - lo keys."""
    return -(-n // block) * block * (block + hi - lo)


@dataclass
class Band:
    """The band q + lo <= k <= q + hi (lo <= 0 <= hi), keys k >= kmin only, over sequences of length n."""

    n: int
    lo: int
    hi: int
    kmin: int
    block: int
    bias: torch.Tensor  # (blocks, block, width) additive mask, shared by every batch and head

    @classmethod
    def build(cls, n: int, lo: int, hi: int, kmin: int, device: torch.device, dtype: torch.dtype) -> Band:
        """The band on `device`, in blocks of `band_block(device.type)` queries."""
        block = band_block(device.type)
        blocks = -(-n // block)
        width = block + hi - lo
        qpos = torch.arange(blocks * block, device=device).view(blocks, block, 1)
        kpos = (torch.arange(blocks, device=device) * block + lo).view(blocks, 1, 1) + torch.arange(
            width, device=device).view(1, 1, width)
        keep = (kpos >= qpos + lo) & (kpos <= qpos + hi) & (kpos >= kmin) & (kpos < n)
        return cls(n, lo, hi, kmin, block, bias_from_mask(keep, dtype))

    @property
    def blocks(self) -> int:
        return self.bias.shape[0]

    @property
    def width(self) -> int:
        return self.bias.shape[2]

    @property
    def pairs(self) -> int:
        return band_pairs(self.n, self.lo, self.hi, self.block)

    def query_blocks(self, q: torch.Tensor) -> torch.Tensor:
        """(G, n, D) -> (G, blocks, block, D), zero-padded at the end."""
        G, n, D = q.shape
        return pad_rows(q, 0, self.blocks * self.block - n).view(G, self.blocks, self.block, D)

    def key_windows(self, x: torch.Tensor) -> torch.Tensor:
        """(G, n, D) -> (G, blocks, width, D): window i starts at padded index i*block (-lo zeros before the
        keys, enough after them). Overlapping views of the padded K or V: nothing is copied per block."""
        padded = self.blocks * self.block
        return pad_rows(x, -self.lo, padded + self.hi - x.shape[1]).unfold(1, self.width, self.block).transpose(-2, -1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Backend) -> torch.Tensor:
        """q, k, v: (G, n, D) -> out (G, n, D): the band as the kernel's only part."""
        G, n, D = q.shape
        out = attend_out(self.query_blocks(q), self.key_windows(k), self.key_windows(v), self.bias[None],
                         backend=backend)
        return out.reshape(G, -1, D)[:, :n]

    def with_lse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 backend: Backend) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k, v: (G, n, D) -> out (G, n, D), lse (G, n): the band as one part of a merge."""
        G, n, D = q.shape
        out, lse = attend(self.query_blocks(q), self.key_windows(k), self.key_windows(v), self.bias[None],
                          backend=backend)
        return out.reshape(G, -1, D)[:, :n], lse.reshape(G, -1)[:, :n]


@dataclass(kw_only=True)
class BandKernel(Kernel):
    """One band over the whole sequence (local, sliding_window)."""

    band: Band

    def run(self, q, k, v, inputs):
        return self.band(q, k, v, inputs.backend(masked=True, merged=False))


def local_kernel(pattern, n: int, device, dtype) -> Kernel:
    """local: q - w//2 <= k < q + w//2 (every pair once w//2 >= n: then it is dense SDPA, not a wider band)."""
    half = pattern.window // 2
    if half >= n:
        return SdpaKernel(n=n, executed_pairs=n * n, causal=False)
    band = Band.build(n, -half, half - 1, 0, device, dtype)
    return BandKernel(n=n, executed_pairs=band.pairs, band=band)


def sliding_window_kernel(pattern, n: int, device, dtype) -> Kernel:
    """sliding_window: q - w < k <= q (causal once w >= n: then it is causal SDPA)."""
    if pattern.window >= n:
        return SdpaKernel(n=n, executed_pairs=n * (n + 1) // 2, causal=True)
    band = Band.build(n, 1 - pattern.window, 0, 0, device, dtype)
    return BandKernel(n=n, executed_pairs=band.pairs, band=band)


@dataclass(kw_only=True)
class DilatedKernel(Kernel):
    """dilated: k = q - j*d, j in [0, w). Within a residue class r = q mod d it is a sliding window of w.

    The sequence is padded to a multiple of d and split into d interleaved subsequences of length
    ceil(n/d) that run as extra batch rows. Padded keys sit at the end of each class and the band is
    causal, so only padded queries (dropped) ever see them.
    """

    dilation: int
    band: Band

    def run(self, q, k, v, inputs):
        G, N, D = q.shape
        d, sub = self.dilation, self.band.n

        def split(x: torch.Tensor) -> torch.Tensor:  # (G, N, D) -> (G*d, N/d, D), class r = rows r, r+d, ...
            x = pad_rows(x, 0, sub * d - N).view(G, sub, d, D)
            return x.transpose(1, 2).reshape(G * d, sub, D)

        backend = inputs.backend(masked=True, merged=False)
        out = self.band(split(q), split(k), split(v), backend)  # (G*d, sub, D)
        return out.view(G, d, sub, D).transpose(1, 2).reshape(G, sub * d, D)[:, :N]


def dilated_kernel(pattern, n: int, device, dtype) -> DilatedKernel:
    d = pattern.dilation
    band = Band.build(-(-n // d), 1 - pattern.window, 0, 0, device, dtype)
    return DilatedKernel(n=n, executed_pairs=d * band.pairs, dilation=d, band=band)
