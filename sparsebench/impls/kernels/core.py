"""Shared pieces of the structured kernels: partial attention with its logsumexp, merging, the group loop.

Every kernel splits a pattern into a few *parts* whose key sets are disjoint for each query (a band,
gathered columns, a self term, ...). Each part returns its output and the logsumexp (lse) of its
scores; softmax over the union of the key sets is then the lse-weighted sum of the parts.

`select_backend` picks the backend of each part from the call (device, dtype, head dim, whether autograd is
needed) and two facts about the part: whether it has a mask, and whether it is merged with another part
through its lse. Kernels ask for it in one way, `Inputs.backend(masked=..., merged=...)`, per part:
- an unmasked part, merged with at most one other part: a fused kernel that returns the lse and has a
  backward ('cpu_flash': the CPU flash kernel; on CUDA in float16/bfloat16, 'cudnn' or 'cuda_flash'), run
  by `attend_merge` inside `_FusedMerge`, an autograd Function whose backward calls the kernel's own
  backward with the *merged* output and lse (as ring attention does), so the scores are never
  materialised, in the forward or the backward pass. Where no fused kernel fits (float32 on CUDA): 'matmul'.
- a masked part whose lse nobody needs (the kernel's only part: bands, bigbird's blocks, longformer's
  globals + band): 'sdpa', torch's SDPA with the bias as its mask (`attend_out`), fused on CPU and CUDA,
  forward and backward.
- a masked part that is merged (fixed's summary columns; longformer's band in CPU inference): in CPU
  inference 'cpu_flash', the CPU flash kernel with the bias as its mask (`attend`); otherwise 'matmul'
  (with autograd the part's lse needs a gradient, which the flash op does not give; the CUDA kernels are
  called without a mask here).
- 'matmul': plain matmul + logsumexp + exp in float32, chunked over query rows to bound memory; any device,
  dtype and autograd.
Dense and causal, and the global rows of longformer and bigbird, are whole attentions, not parts: torch's
public SDPA, which picks its own kernel.

The fused backends call private aten ops; `aten_ops` checks each once against the installed torch.

Masks are additive biases (0 kept, `neg_value` dropped) in the compute dtype, built once in `prepare`.
A large *finite* negative value keeps rows with no kept key finite (lse ~ -1e30, weight 0 in the merge),
so there is no NaN in the forward or the backward pass and no special case for empty rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from sparsebench.impls.kernels import aten_ops

NEG_LSE = -1e30  # the lse of an empty part, in float32
_SCORE_BUDGET = 1 << 22  # float32 scores per chunk in the matmul backend (16 MiB)
# Batch*head rows go in groups whose largest temporary stays at or below 16 MiB, under glibc's 32 MiB
# mmap threshold: larger buffers are mmapped and page-faulted afresh on every call (bigbird's gathered
# keys for 8 heads at n=8192, 116 MiB, ran 1.7x slower than 16 MiB groups). Groups are kept as large as
# that allows: every op is a thread-pool round trip, which is slow when other processes share the cores.
_GROUP_BYTES = 16 << 20


def neg_value(dtype: torch.dtype) -> float:
    """The masked-out bias: -1e30, or the most negative finite value for float16."""
    return max(torch.finfo(dtype).min, NEG_LSE)


def bias_from_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias (same shape as the boolean `keep`): 0 where kept, `neg_value` elsewhere."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, neg_value(dtype))


Backend = Literal["cpu_flash", "cudnn", "cuda_flash", "sdpa", "matmul"]
_HALF = (torch.float16, torch.bfloat16)

# The fused backends' private ops: (forward, backward).
FUSED_OPS: dict[Backend, tuple[aten_ops.AtenOp, aten_ops.AtenOp]] = {
    "cpu_flash": (aten_ops.CPU_FLASH, aten_ops.CPU_FLASH_BACKWARD),
    "cudnn": (aten_ops.CUDNN, aten_ops.CUDNN_BACKWARD),
    "cuda_flash": (aten_ops.CUDA_FLASH, aten_ops.CUDA_FLASH_BACKWARD),
}


def select_backend(device: torch.device, dtype: torch.dtype, head_dim: int, needs_grad: bool, *,
                   masked: bool, merged: bool) -> Backend:
    """The backend that computes one part of a kernel (see the module docstring).

    Unmasked parts: 'cpu_flash' on CPU. On CUDA, half precision and head_dim a multiple of 8 only: 'cudnn'
    (head_dim <= 128) unless torch's cuDNN SDPA is switched off (`torch.backends.cuda.enable_cudnn_sdp(False)`),
    else 'cuda_flash' (head_dim <= 256). On an H200 (torch 2.11, bf16, D=64) cuDNN's kernel ran dense attention
    at 465 TFLOP/s and flash's at 301, so cuDNN comes first (docs/results/h200). Anything else: 'matmul'.
    Masked parts: 'sdpa' when not merged; when merged, 'cpu_flash' in CPU inference, else 'matmul'.
    """
    if masked:
        if not merged:
            return "sdpa"
        cpu_inference = device.type == "cpu" and not needs_grad
        return "cpu_flash" if cpu_inference else "matmul"
    if device.type == "cpu":
        return "cpu_flash"
    if device.type != "cuda" or dtype not in _HALF or head_dim % 8:
        return "matmul"
    if head_dim <= 128 and torch.backends.cudnn.is_available() and torch.backends.cuda.cudnn_sdp_enabled():
        return "cudnn"
    return "cuda_flash" if head_dim <= 256 else "matmul"


def private_ops(device_type: str, dtype: torch.dtype, needs_grad: bool) -> list[aten_ops.AtenOp]:
    """The private ops that `select_backend` may pick on this device and dtype, for any head dim and part."""
    if device_type == "cpu":
        backends = ["cpu_flash"]
    elif device_type == "cuda" and dtype in _HALF:
        backends = ["cudnn", "cuda_flash"]
    else:
        backends = []
    return [op for backend in backends for op in FUSED_OPS[backend][: 2 if needs_grad else 1]]


@dataclass(frozen=True)
class Inputs:
    """What the backend choice needs to know about one call's q, k, v (shared by every part)."""

    device: torch.device
    dtype: torch.dtype
    head_dim: int
    needs_grad: bool

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Inputs:
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        return cls(q.device, q.dtype, q.shape[-1], needs_grad)

    def backend(self, *, masked: bool, merged: bool) -> Backend:
        """The backend of a part with (masked) or without a bias mask, merged through its lse or alone."""
        return select_backend(self.device, self.dtype, self.head_dim, self.needs_grad, masked=masked, merged=merged)


def _no(*_: object) -> bool:
    return False


@dataclass(frozen=True)
class Traits:
    """What a pattern's specialised kernel does, known before it is built: what the preflight's estimates and
    the private-op check of `structured` read, written beside each builder.

    private_ops(device_type, mode): a part may run on a fused backend, through torch's private aten ops
        (the kernels that merge parts through their logsumexp; `select_backend` decides at build time).
    keeps_scores(device_type, dtype, mode): a part runs on the chunked matmul path, which keeps float32 scores
        and probabilities.
    all_rows_share: every query row attends to one gathered key set (columns), not a key window per block.
    gathered(pattern): key blocks gathered per query block (copies of K and V).
    sdpa: the kernel is one SDPA call (dense, causal): SDPA's estimates.
    padding: pairs computed per kept pair (partial blocks, padding slots): at most 1.5 for the blocked kernels.
    row_padding: keys computed per query row beyond that (up to one 64-key block).
    """

    private_ops: Callable[[str, str], bool] = _no
    keeps_scores: Callable[[str, torch.dtype, str], bool] = _no
    all_rows_share: bool = False
    gathered: Callable[[Any], int] = lambda pattern: 1
    sdpa: bool = False
    padding: float = 1.5
    row_padding: int = 64

    def estimate_pairs(self, pattern: Any, n: int) -> int:
        """(q, k) pairs the kernel computes per batch and head at length n, from the exact nnz; no kernel built."""
        return int(self.padding * pattern.nnz(n)) + self.row_padding * n

    def estimate_bytes(self, pattern: Any, batch: int, heads: int, n: int, head_dim: int, dtype: torch.dtype,
                       mode: str, device_type: str) -> int:
        """An O(nnz) upper bound of one call's extra memory (not for `sdpa` kernels: SDPA's own estimate).

        Padded/gathered copies of K and V (bigbird gathers m key blocks per query block) and six more (N, D)
        float32 tensors (padded Q, outputs and the parts merged into them), three times over with autograd;
        then either the float32 scores and probabilities that the chunked matmul path keeps (4 bytes per
        padded pair in inference, which keeps at most one chunk; 2 x (8 + element size) with autograd), or,
        on the fused kernels, the per-block key windows that a backward (or bigbird's gather) materialises.
        """
        elt = torch.finfo(dtype).bits // 8
        pairs = self.padding * pattern.nnz(n)
        copies = (2 * self.gathered(pattern) + 6) * n * head_dim * 4
        if self.keeps_scores(device_type, dtype, mode):
            work = 4 * pairs if mode == "fwd" else 2 * (8 + elt) * pairs
        else:
            # query rows that share one key window: all of them for gathered columns, a block for the others
            rows = n if self.all_rows_share else getattr(pattern, "block", per_device(BLOCK, device_type))
            work = pairs / rows * head_dim * elt * (2 if mode == "fwd" else 4)
        return int(batch * heads * ((1 if mode == "fwd" else 3) * copies + work))


# Positions per block, by device type: the band kernels' query blocks and the generic block-sparse kernel's
# blocks. 32 measured best on CPU (band kernels). The CUDA value is provisional until measured on a GPU: an H200
# run showed cuDNN's SDPA kernel working on 64x128 tiles, so a 32-query block wastes half of each tile.
BLOCK = {"cpu": 32, "cuda": 64}


def per_device(table: dict[str, int], device_type: str) -> int:
    """A tuning constant for this device type; the CPU's for devices without an entry of their own."""
    return table.get(device_type, table["cpu"])


def _fused_forward(q, k, v, causal: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """(out, lse (B, H, L) float32, what the backward needs besides q, k, v, out, lse) from a fused kernel."""
    if backend == "cpu_flash":
        out, lse = aten_ops.CPU_FLASH(q, k, v, 0.0, causal)
        return out, lse, ()
    if backend == "cudnn":
        # cuDNN's lse is (B, H, L, 1); its output may follow q's layout rather than be contiguous
        out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = aten_ops.CUDNN(q, k, v, None, True, 0.0, causal)
        return out, lse.view(lse.shape[:3]), (cum_q, cum_k, max_q, max_k, seed, offset)
    out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = aten_ops.CUDA_FLASH(q, k, v, 0.0, causal)
    return out, lse, (cum_q, cum_k, max_q, max_k, seed, offset)


def _fused_backward(grad_out, q, k, v, out, lse, causal: bool, backend: str, extra: tuple):
    """(dq, dk, dv) from the fused kernel's own backward, given the (merged) out and lse."""
    if backend == "cpu_flash":
        return aten_ops.CPU_FLASH_BACKWARD(grad_out, q, k, v, out, lse, 0.0, causal)
    cum_q, cum_k, max_q, max_k, seed, offset = extra
    if backend == "cudnn":  # no bias: None is passed as an undefined tensor
        return aten_ops.CUDNN_BACKWARD(
            grad_out, q, k, v, out, lse.unsqueeze(-1), seed, offset, None, cum_q, cum_k, max_q, max_k, 0.0, causal)
    return aten_ops.CUDA_FLASH_BACKWARD(
        grad_out, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, causal, seed, offset)


class _FusedMerge(torch.autograd.Function):
    """A fused kernel's attention of (q, k, v), merged with a disjoint `other` part (out, lse) when one is given.

    Backward: for the union softmax with merged output O and lse L, the fused part's gradients are the
    kernel's backward evaluated with (O, L) in place of its own output and lse: its probabilities become
    exp(s - L), the union's, and its row term becomes dO . O (the ring-attention identity). The other
    part gets d out = w dO and d lse = w (dO . out_other - dO . O), w = its merge weight.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, backend: str, other_out, other_lse):
        out, lse, extra = _fused_forward(q, k, v, causal, backend)
        weight = None
        if other_out is not None:
            weight = torch.sigmoid(other_lse - lse)  # float32
            # The lerp runs in the output's dtype: in half precision, float32 copies of both outputs would
            # multiply the merge's memory traffic, and the result is rounded to half precision anyway.
            out = torch.lerp(out, other_out.to(out.dtype), weight.unsqueeze(-1).to(out.dtype))
            lse = torch.logaddexp(lse, other_lse)
        out = out.contiguous()
        lse = lse.contiguous()
        ctx.causal, ctx.backend, ctx.extra = causal, backend, extra
        ctx.save_for_backward(q, k, v, out, lse, other_out, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, other_out, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq, dk, dv = _fused_backward(grad_out, q, k, v, out, lse, ctx.causal, ctx.backend, ctx.extra)
        d_other_out = d_other_lse = None
        if other_out is not None:
            g = grad_out.float()
            d_other_out = (weight.unsqueeze(-1) * g).to(other_out.dtype)
            d_other_lse = weight * (torch.linalg.vecdot(g, other_out.float()) - torch.linalg.vecdot(g, out.float()))
        return dq, dk, dv, None, None, d_other_out, d_other_lse


def attend_merge(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: Backend,
                 other: tuple[torch.Tensor, torch.Tensor] | None = None, causal: bool = False) -> torch.Tensor:
    """Softmax over the keys of an unmasked part (q against k, v) and of a disjoint `other` part (out, lse).

    Shapes as in `attend`; `other` is (out like q's output, lse like its lse) or None. Returns the merged
    output in q's dtype. `backend`: a fused one (`_FusedMerge`) or 'matmul' (`attend`, then `merge`).
    """
    if backend == "matmul":
        part = attend(q, k, v, backend=backend, causal=causal)
        return (part[0] if other is None else merge(part, other)).to(q.dtype)
    if backend not in FUSED_OPS:
        raise ValueError(f"attend_merge runs on a fused backend or matmul, not {backend!r}")
    if q.dim() == 3:  # the kernels want (batch, heads, L, D)
        other = None if other is None else (other[0][None], other[1][None])
        return attend_merge(q[None], k[None], v[None], backend=backend, other=other, causal=causal)[0]
    if q.device.type == "cuda":  # the CUDA kernels want dense rows; a strided view of keys is copied (small)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    other_out, other_lse = (None, None) if other is None else other
    return _FusedMerge.apply(q, k, v, causal, backend, other_out, other_lse)


def attend_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, *,
               backend: Backend, causal: bool = False) -> torch.Tensor:
    """One attention whose lse nobody needs, on 'sdpa': torch's SDPA with the bias (or None) as its mask, or
    `causal` (k <= q, local indices), on any device and with autograd (CPU flash, or CUDA memory-efficient
    attention: no score matrix in either pass).

    Shapes as in `attend`; the bias is in q's dtype. Returns out (*, L, D) in q's dtype.
    """
    if backend != "sdpa":
        raise ValueError(f"attend_out runs on sdpa, not {backend!r}")
    if q.dim() == 3:  # 4-D, or SDPA takes its slow math path on CPU
        bias = bias[None] if bias is not None and bias.dim() == 3 else bias
        return attend_out(q[None], k[None], v[None], bias, backend=backend, causal=causal)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None, *,
           backend: Backend, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One partial attention with scale 1/sqrt(D), on 'cpu_flash' (no autograd) or 'matmul'.

    q: (*, L, D); k, v: (*, S, D), 3-D or 4-D; bias broadcastable to (*, L, S); `causal` keeps k <= q
    (local indices). Returns out (*, L, D) in q's dtype and lse (*, L) in float32.
    """
    if backend == "matmul":
        return _attend_matmul(q, k, v, bias, causal)
    if backend != "cpu_flash":
        raise ValueError(f"attend runs on cpu_flash or matmul, not {backend!r}")
    if q.dim() == 3:  # the flash kernel wants (batch, heads, L, D) and a 2-D or 4-D mask
        bias = bias[None] if bias is not None and bias.dim() == 3 else bias
        out, lse = attend(q[None], k[None], v[None], bias, backend=backend, causal=causal)
        return out[0], lse[0]
    # the CPU flash kernel wants the mask in q's dtype
    mask = None if causal or bias is None else bias.to(q.dtype)
    return aten_ops.CPU_FLASH(q, k, v, 0.0, causal, attn_mask=mask)


def _attend_matmul(q, k, v, bias, causal) -> tuple[torch.Tensor, torch.Tensor]:
    """Matmul backend: any device, dtype and autograd; float32 softmax, chunked over query rows."""
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    # Blocked callers have short L and many leading dims: never split below 128 rows.
    chunk = max(128, _SCORE_BUDGET // max(1, math.prod(q.shape[:-2]) * S))
    kt = k.transpose(-2, -1)
    outs, lses = [], []
    for start in range(0, L, chunk):
        stop = min(L, start + chunk)
        scores = torch.matmul(q[..., start:stop, :], kt).float() * scale  # (*, rows, S)
        if bias is not None:
            scores = scores + (bias if bias.shape[-2] == 1 else bias[..., start:stop, :])
        if causal:
            above = torch.arange(S, device=q.device)[None, :] > torch.arange(start, stop, device=q.device)[:, None]
            scores = scores.masked_fill(above, NEG_LSE)
        lse = torch.logsumexp(scores, dim=-1)  # (*, rows)
        probs = torch.exp(scores - lse.unsqueeze(-1))
        outs.append(_contiguous_grad(torch.matmul(probs.to(v.dtype), v)))
        lses.append(lse)
    if len(outs) == 1:
        return outs[0], lses[0]
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous. `out.sum().backward()` sends an
    expanded (stride 0) gradient, on which CPU bmm takes a naive path ~500x slower than BLAS."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    return _ContiguousGrad.apply(x) if x.requires_grad else x


def merge(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Softmax over the union of two disjoint key sets, from each part's (out, lse); float32 result.

    The weight of part b is exp(lse_b) / (exp(lse_a) + exp(lse_b)) = sigmoid(lse_b - lse_a), so the
    merge is one lerp: stable for an empty part (lse -1e30 gives weight exactly 0 or 1) and few ops.
    """
    (out_a, lse_a), (out_b, lse_b) = a, b
    return torch.lerp(out_a.float(), out_b.float(), torch.sigmoid(lse_b - lse_a).unsqueeze(-1))


def pad_rows(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zero-pad x (*, N, D) along the sequence dim; x itself when nothing is added.

    A cat with small zero blocks: F.pad would first fill the whole output, then copy x over it.
    """
    if before == 0 and after == 0:
        return x
    zeros = [x.new_zeros(*x.shape[:-2], rows, x.shape[-1]) for rows in (before, after)]
    return torch.cat([zeros[0], x, zeros[1]], dim=-2)


@dataclass(kw_only=True)
class Kernel:
    """A prepared kernel for one (pattern, n, device, dtype): call it with q (B, H, N, D) and k, v (B, KVH, N, D).

    Subclasses implement `run` on (G, N, D) groups of batch*head rows; each part there asks the call's
    `Inputs` for its backend. Rows q < `global_rows` see every
    key: they are one small dense SDPA, and `run` returns only the rows after them.
    """

    n: int
    executed_pairs: int  # (q, k) pairs computed per batch and query head, block padding included
    kv_rows: int | None = None  # K/V rows read per batch and key/value head when fewer than n (decode)
    global_rows: int = 0
    largest_temp: int = 1  # size of the largest temporary, in (N, D) float32 tensors per batch*head row

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        """(G, N, D) -> (G, N - global_rows, D): the output of the non-global rows."""
        raise NotImplementedError

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (B, H, N, D); k, v: (B, KVH, N, D) with KVH dividing H -> (B, H, N, D)."""
        rep = q.shape[1] // k.shape[1]
        if rep == 1:
            return self._attend(q, k, v)
        # GQA/MQA: query head h reads key/value head h // rep. The query heads with the same offset r in their
        # group (r, r + rep, ...) pair one to one with the key/value heads, so each offset is one multi-head
        # call against K and V as they are: they are never repeated per query head.
        out = q.new_empty(q.shape)
        for r in range(rep):
            out[:, r::rep] = self._attend(q[:, r::rep], k, v)
        return out

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, H, N, D = q.shape
        if N != self.n:
            raise ValueError(f"kernel prepared for n={self.n}, called with n={N}")
        n_global = min(self.global_rows, N)
        inputs = Inputs.of(q, k, v)
        q3, k3, v3 = (x.reshape(B * H, N, D) for x in (q, k, v))
        # The group bound is for CPU caches and malloc; on a GPU more groups only mean more kernel launches.
        step = max(1, _GROUP_BYTES // (self.largest_temp * N * D * 4)) if q.device.type == "cpu" else B * H
        if n_global == 0 and step >= B * H:  # one group: no output copy
            return self.run(q3, k3, v3, inputs).reshape(B, H, N, D)
        out = q3.new_empty(B * H, N, D)  # written in slices: autograd records them (CopySlices)
        if n_global:  # 4-D, or SDPA falls back to its slow math path on CPU
            out[:, :n_global] = F.scaled_dot_product_attention(q3[None, :, :n_global], k3[None], v3[None])[0]
        for s in range(0, B * H, step) if n_global < N else ():
            group = slice(s, s + step)
            out[group, n_global:] = self.run(q3[group], k3[group], v3[group], inputs)
        return out.view(B, H, N, D)

    def state_bytes(self) -> int:
        """Bytes held by the prepared tensors (masks, indices), to check they grow with nnz, not n^2."""
        return _tensor_bytes(self)


def _tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(x) for x in obj)
    if hasattr(obj, "__dict__"):
        return sum(_tensor_bytes(x) for x in vars(obj).values())
    return 0
