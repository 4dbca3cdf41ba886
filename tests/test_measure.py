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



def test_tracked_call_returns_the_peak_and_the_result():
    peak, result = memory.tracked_call(lambda: hold(64 * MIB).sum().item(), "cpu")
    assert result == 16 * MIB and peak >= 0


def slow_case_settings():
    from sparsebench.runner.cases import MeasureSettings

    return MeasureSettings(min_run_time=0.01, min_samples=5, warmup=2)


def test_a_slow_case_has_no_warm_up_and_three_samples(monkeypatch):
    """A call of SLOW_CALL_S or more: the memory-tracked call is the first timed sample, two more follow."""
    from sparsebench.runner import measure_case

    monkeypatch.setattr(measure_case, "SLOW_CALL_S", 0.0)  # every call counts as slow
    calls = []
    peak, samples = measure_case._slow_case(lambda: calls.append(1), torch.device("cpu"), 0.0,
                                            slow_case_settings())
    assert len(samples) == measure_case.SLOW_SAMPLES == len(calls) == 3 and peak >= 0


def test_a_slow_first_call_then_a_fast_one_is_a_fast_case(monkeypatch):
    """A first call slow from compilation: one more call shows the steady time, then the usual measurement."""
    from sparsebench.runner import measure_case

    monkeypatch.setattr(measure_case, "SLOW_CALL_S", 3600.0)
    calls = []
    assert measure_case._slow_case(lambda: calls.append(1), torch.device("cpu"), 7200.0,
                                   slow_case_settings()) is None
    assert len(calls) == 1
    assert measure_case._slow_case(lambda: calls.append(1), torch.device("cpu"), 0.5, slow_case_settings()) is None
    assert len(calls) == 1  # a fast first call: nothing more before the warm-up


@pytest.mark.parametrize("slow", [False, True])
def test_every_call_of_a_case_is_counted(slow, monkeypatch):
    from sparsebench.runner import measure_case
    from sparsebench.runner.cases import Case

    monkeypatch.setattr(measure_case, "SLOW_CALL_S", 0.0 if slow else 3600.0)
    case = Case("local", "window=8", "eager", "cpu", "float32", "fwd", 1, 2, 2, 64, 64, 16)
    counted = []
    real = measure_case.get_impl("eager").forward
    monkeypatch.setattr(measure_case.get_impl("eager"), "forward", lambda *a: counted.append(1) or real(*a))
    m = measure_case.measure(case, measure_case.make_inputs(case), slow_case_settings())
    assert m.status == "ok" and m.n_calls == len(counted)
    if slow:
        assert m.n_calls == measure_case.SLOW_CASE_CALLS and len(m.samples) == measure_case.SLOW_SAMPLES
    else:  # first call, 2 warm-up calls, the memory call, then at least 5 timed samples
        assert m.n_calls >= 1 + 2 + 1 + 5 and len(m.samples) >= 5
