"""Test-only implementations that fail or slow down on purpose, loaded as plugins like any user code:

    sparsebench run --impl tests/fault_impls.py:eager_hang ...

`<impl>_<fault>` is the built-in implementation `<impl>` (eager, structured, ...) whose case fails so, in its
worker, before anything is built: kill (SIGKILL, as the kernel's OOM killer does), raise, oom (CUDA's error),
alloc (a real CPU allocation failure) or hang. `<impl>_x<factor>` is `<impl>` with each forward call `factor`
times slower (a busy-wait after the call; `structured_x3`, `structured_x1p3` for 1.3, `structured_x1` as is).

Every variant of `<impl>` registers under one name, `faulty_<impl>`: a run measured with one variant resumes,
merges and gates against a run measured with another (`structured_x1` as the baseline of `structured_x3`), and a
re-run (gate --confirm) loads the variant its run's meta.json names.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from sparsebench.impls import IMPLS, Impl
from sparsebench.impls.base import Prepared
from sparsebench.patterns import Pattern

FAULTS = ("kill", "raise", "oom", "alloc", "hang")


def inject(fault: str) -> None:
    """Fail the way `fault` names (one of FAULTS)."""
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "raise":
        raise RuntimeError("injected failure")
    if fault == "oom":
        raise torch.OutOfMemoryError("injected out of memory")
    if fault == "alloc":
        torch.empty(2**60, dtype=torch.uint8)  # beyond any address space: the CPU allocator's own error
    if fault == "hang":
        time.sleep(3600)


def faulty(base: str, fault: str = "", factor: float = 1.0) -> type[Impl]:
    """The built-in implementation `base` with `fault` injected when its case is prepared, or each forward call
    `factor` times slower."""
    parent = type(IMPLS[base])

    class Faulty(parent):  # type: ignore[misc, valid-type]
        name = f"faulty_{base}"
        description = f"{base}, {fault or f'{factor:g}x slower'} (test only)"
        in_default_sweep = False  # only where a sweep names it (a test session keeps it registered)

        def prepare(self, pattern: Pattern, n: int, device, dtype: torch.dtype, q_len: int | None = None) -> Prepared:
            inject(fault)
            return super().prepare(pattern, n, device, dtype, q_len=q_len)

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prep: Prepared) -> torch.Tensor:
            if factor == 1.0:
                return super().forward(q, k, v, prep)
            t0 = time.perf_counter()
            out = super().forward(q, k, v, prep)
            if out.device.type == "cuda":
                torch.cuda.synchronize(out.device)
            # busy-wait rather than sleep: sleep granularity would blur short calls
            end = time.perf_counter() + (factor - 1.0) * (time.perf_counter() - t0)
            while time.perf_counter() < end:
                pass
            return out

    Faulty.__name__ = Faulty.__qualname__ = f"{base}_{fault or f'x{factor:g}'}"
    return Faulty


def __getattr__(attr: str) -> type[Impl]:
    """`eager_hang`, `structured_x3`, `structured_x1p3`: the variant that the attribute names."""
    base, _, variant = attr.rpartition("_")
    if base in IMPLS and variant in FAULTS:
        return faulty(base, fault=variant)
    if base in IMPLS and variant.startswith("x"):
        try:
            return faulty(base, factor=float(variant[1:].replace("p", ".")))
        except ValueError:
            pass
    raise AttributeError(attr)
