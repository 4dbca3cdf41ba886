"""Gradient check of forward+backward rows: dQ, dK and dV against a float64 reference of the same pattern.

The check runs one backward with its own seeded upstream gradient G that is non-zero only on the sampled query
rows S (the forward check's rows). Then every gradient has an exact float64 reference in O(|S| * n) memory and
time, for *all* of its rows:
  dQ_i = scale * sum_j dS_ij k_j          for i in S (exactly 0 for every other row),
  dK_j = scale * sum_{i in S} dS_ij q_i,  dV_j = sum_{i in S} P_ij G_i   for every key j,
with P the attention probabilities of the rows S and dS = P * (G V^T - rowsum(G * O)). With a dense upstream
gradient instead, dK_j and dV_j sum over every query row that attends to key j, each needing its full softmax
row: O(n^2) work in float64, minutes on a CPU at the lengths sparse attention is for. What the row-sparse
gradient gives up: a backward whose error is confined to query rows outside S shows in dQ (which must be exactly
zero there: the whole dQ is compared) but not in dK and dV; S holds the first and last rows and 64 rows evenly
spread, so every query block of n/64 rows or more has one.

Each gradient's error is relative, as the forward's rel_err: max |grad - ref| / max |ref|; `grad_err` is the
worst of the three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsebench.measure.accuracy import relative, row_probs, sample_rows
from sparsebench.patterns import Pattern

NAMES = ("dQ", "dK", "dV")
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class GradientError(RuntimeError):
    """The backward did not give a usable gradient (raised, None, wrong shape); the message names which."""


@dataclass
class GradCheck:
    errors: dict[str, float]  # dQ, dK, dV -> relative error

    @property
    def worst(self) -> tuple[str, float]:
        name = max(self.errors, key=self.errors.__getitem__)
        return name, self.errors[name]


def upstream_gradient(q: torch.Tensor, rows: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Seeded standard-normal on the sampled query rows, zero elsewhere, q's shape, dtype and device."""
    gen = torch.Generator().manual_seed(seed)
    grad = torch.zeros(q.shape, dtype=q.dtype)
    grad[..., rows, :] = torch.randn((*q.shape[:-2], len(rows), q.shape[-1]), generator=gen).to(q.dtype)
    return grad.to(q.device)


def reference_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, rows: torch.Tensor,
                    grad_out: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact float64 (dQ, dK, dV) for an upstream gradient that is zero outside `rows`: shapes of q, k, v."""
    (batch, heads, _, dim), kv_heads = q.shape, k.shape[1]
    rep, scale = heads // kv_heads, dim ** -0.5
    k64 = k.detach().double()[:, :, None]  # (B, KVH, 1, n, D)
    dq = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float64, device=q.device)
    dv = torch.zeros(k.shape, dtype=torch.float64, device=q.device)

    def by_key(x: torch.Tensor) -> torch.Tensor:  # (B, KVH, rep, r, n) -> (B, KVH, n, rep * r)
        return x.permute(0, 1, 4, 2, 3).flatten(3)

    for idx, probs, v64 in row_probs(q, k, v, pattern, rows, chunk):  # probs: (B, KVH, rep, r, n)
        g = grad_out[..., idx, :].double().view(batch, kv_heads, rep, len(idx), dim)
        qr = q.detach()[..., idx, :].double().view(batch, kv_heads, rep, len(idx), dim)
        dp = g @ v64.transpose(-2, -1)  # (B, KVH, rep, r, n)
        ds = probs * (dp - (probs * dp).sum(-1, keepdim=True))  # rowsum(P * dP) = rowsum(G * O)
        dq[..., idx, :] = (scale * ds @ k64).view(batch, heads, len(idx), dim)
        # summed over the rows and the query heads of each key/value head, in one product (no per-head copy)
        dk += scale * by_key(ds) @ qr.flatten(2, 3)
        dv += by_key(probs) @ g.flatten(2, 3)
    return dq, dk, dv


def backward(forward: Forward, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of one forward+backward; GradientError naming the gradient that is missing or misshapen,
    or the one whose backward raises (found by asking for each gradient alone)."""
    out = forward(q, k, v)
    try:
        grads = torch.autograd.grad(out, (q, k, v), grad_out, allow_unused=True)
    except Exception as exc:
        del out
        named = name_failing_gradient(forward, q, k, v, grad_out)
        if named is None:
            raise
        raise named from exc
    for name, grad, x in zip(NAMES, grads, (q, k, v)):
        if grad is None:
            raise GradientError(f"{name}: the backward returned no gradient (None) for an input that needs one")
        if grad.shape != x.shape:
            raise GradientError(f"{name}: the backward returned shape {tuple(grad.shape)}, expected "
                                f"{tuple(x.shape)}")
    return grads


def name_failing_gradient(forward: Forward, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          grad_out: torch.Tensor) -> GradientError | None:
    """The first of dQ, dK, dV whose backward fails when it is the only gradient asked for (the other inputs
    need none), as a GradientError; None when each works alone or the forward itself fails."""
    for i, name in enumerate(NAMES):
        inputs = [x.detach().requires_grad_(j == i) for j, x in enumerate((q, k, v))]
        try:
            out = forward(*inputs)
        except Exception:
            return None  # not the backward's fault
        try:
            (grad,) = torch.autograd.grad(out, inputs[i], grad_out, allow_unused=True)
        except Exception as exc:
            text = (f"{type(exc).__name__}: {exc}".strip().splitlines() or [""])[0][:200]
            return GradientError(f"{name}: the backward raised {text}")
        if grad is None:
            return GradientError(f"{name}: the backward returned no gradient (None) for an input that needs one")
    return None


def check(forward: Forward, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
          rows: torch.Tensor | None = None, seed: int = 1) -> GradCheck:
    """Relative errors of dQ, dK and dV of `forward` (q, k, v requiring grad) on the row-sparse upstream
    gradient (module docstring); GradientError when a gradient is missing, misshapen or its backward raises."""
    rows = sample_rows(q.shape[-2]) if rows is None else rows
    grad_out = upstream_gradient(q, rows, seed)
    grads = backward(forward, q, k, v, grad_out)
    refs = reference_grads(q, k, v, pattern, rows, grad_out)
    errors = {}
    for name, grad, ref in zip(NAMES, grads, refs):
        errors[name] = relative(float((grad.detach().double() - ref).abs().max()), float(ref.abs().max()))
    return GradCheck(errors)
