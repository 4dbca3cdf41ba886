"""PeakMemory on CPU: the RSS high-water mark reset per call, and ru_maxrss where it cannot be reset."""

from __future__ import annotations

import builtins
import resource
from types import SimpleNamespace

import pytest
import torch

from sparsebench.measure import memory

MIB = 2**20


def hold(nbytes: int) -> torch.Tensor:
    """A tensor whose pages are all touched, so they count in RSS."""
    return torch.ones(nbytes // 4, dtype=torch.float32)


def test_peak_is_the_high_water_mark_of_the_call():
    kept = hold(32 * MIB)  # held before the call: not part of its peak
    tracker = memory.PeakMemory("cpu")
    tracker.start()
    if not tracker.hwm_reset:
        pytest.skip("/proc/self/clear_refs is not writable here (the fallback is tested below)")
    hold(96 * MIB)  # allocated and freed within the call
    peak = tracker.peak_mib()
    assert 90 <= peak < 96 + 32, peak
    del kept


def test_without_clear_refs_the_peak_comes_from_ru_maxrss(monkeypatch):
    """Where /proc/self/clear_refs cannot be written (old kernels, some containers), the tracker uses the
    process's ru_maxrss: the growth of the lifetime high-water mark across the call."""
    real_open = builtins.open

    def no_clear_refs(path, *args, **kwargs):
        if str(path) == "/proc/self/clear_refs":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    maxrss_kib = iter([500_000, 500_000 + 48 * 1024])  # at start(), then at peak_mib(): 48 MiB more
    monkeypatch.setattr(memory, "open", no_clear_refs, raising=False)
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=next(maxrss_kib)))
    tracker = memory.PeakMemory("cpu")
    tracker.start()
    assert not tracker.hwm_reset
    assert tracker.peak_mib() == pytest.approx(48.0)

