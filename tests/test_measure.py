"""Peak memory on CPU: the exact peak of live tensor bytes (deterministic, gated at 5%), and the RSS high-water
mark reset per call (information), with ru_maxrss where it cannot be reset."""

from __future__ import annotations

import builtins
import resource
from types import SimpleNamespace

import pytest
import torch

from sparsebench.measure import memory
from sparsebench.runner import measure_case
from sparsebench.runner.cases import Case

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
    """A call of SLOW_CALL_S or more: the RSS-tracked call is the first timed sample, two more follow."""
    from sparsebench.runner import measure_case

    monkeypatch.setattr(measure_case, "SLOW_CALL_S", 0.0)  # every call counts as slow
    calls = []
    rss, samples = measure_case._slow_case(lambda: calls.append(1), torch.device("cpu"), 0.0,
                                           slow_case_settings())
    assert len(samples) == measure_case.SLOW_SAMPLES == len(calls) == 3 and rss >= 0


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
    else:  # first call, 2 warm-up calls, the RSS and the tensor memory calls, then at least 5 timed samples
        assert m.n_calls >= 1 + 2 + 2 + 5 and len(m.samples) >= 5
    assert m.peak_mem_mib > 0 and m.rss_peak_mib >= 0


def test_every_timed_and_untimed_call_of_a_cpu_case_runs_on_one_thread(monkeypatch):
    """The first call too: torch.compile specialises to the thread count, so a first call on every thread left the
    first timed call to compile again (seconds in one sample)."""
    case = Case("local", "window=8", "eager", "cpu", "float32", "fwd", 1, 2, 2, 64, 64, 16)
    threads = []
    real = measure_case.get_impl("eager").forward
    monkeypatch.setattr(measure_case.get_impl("eager"), "forward",
                        lambda *a: threads.append(torch.get_num_threads()) or real(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # as a worker on a machine with cores to spare
    try:
        m = measure_case.measure(case, measure_case.make_inputs(case), slow_case_settings())
        assert torch.get_num_threads() == 2  # restored after
    finally:
        torch.set_num_threads(before)
    assert m.status == "ok" and len(threads) == m.n_calls and set(threads) == {1}


def eager_local_call(n: int = 1024, extra_bytes: int = 0):
    """An eager local-attention forward (it materialises (B, H, n, n) scores), and `extra_bytes` more in one more
    tensor, held during the call (a change that allocates that much more)."""
    case = Case("local", "window=64", "eager", "cpu", "float32", "fwd", 1, 2, 2, n, n, 32)
    q, k, v, _ = measure_case.make_inputs(case)
    impl = measure_case.get_impl("eager")
    prep = impl.prepare(case.build_pattern(), n, torch.device("cpu"), torch.float32)

    def call():
        held = torch.empty(extra_bytes, dtype=torch.uint8) if extra_bytes else None
        with torch.no_grad():
            out = impl.forward(q, k, v, prep)
        del held
        return out

    return call


def test_tensor_peak_counts_exactly_what_the_call_allocates():
    def call():
        a = torch.empty(10 * MIB, dtype=torch.uint8)
        b = torch.empty(5 * MIB, dtype=torch.uint8)
        del a
        c = torch.empty(3 * MIB, dtype=torch.uint8)
        return b, c

    kept = torch.ones(8 * MIB, dtype=torch.uint8)  # held before the call: not part of its peak
    peak, (b, c) = memory.tensor_peak_mib(call)
    assert peak == pytest.approx(15.0, abs=1e-3)  # a and b live together; c comes after a is freed
    del kept


def test_the_same_case_measured_10_times_gives_the_same_tensor_peak():
    call = eager_local_call()
    call()  # warm-up, as a case's calls before its memory call
    peaks = {memory.tensor_peak_mib(call)[0] for _ in range(10)}
    assert len(peaks) == 1 and next(iter(peaks)) >= 8.0, peaks


def test_10_percent_more_tensor_memory_is_caught_by_the_gate():
    """The peak of a change that holds 10% more tensor memory, against the original's, fails the default gate;
    the original against itself passes."""
    import pandas as pd

    from sparsebench import gate
    from tests.gate_data import FLEX, make_rows

    same = eager_local_call()
    same()
    base_mib, again_mib = (memory.tensor_peak_mib(same)[0] for _ in range(2))
    more = eager_local_call(extra_bytes=int(0.1 * base_mib * MIB))
    more()
    more_mib = memory.tensor_peak_mib(more)[0]
    assert more_mib == pytest.approx(1.1 * base_mib, rel=1e-4)

    def verdict(mib: float) -> str:
        base = pd.DataFrame(make_rows(1, change={FLEX: {"peak_mem_mib": base_mib}}))
        cur = pd.DataFrame(make_rows(1, change={FLEX: {"peak_mem_mib": mib}}))
        report = gate.compare(base, cur, gate_latency=False)
        return next(c for c in report.cases if c.name == FLEX).verdict

    assert verdict(again_mib) == gate.OK
    assert verdict(more_mib) == gate.REGRESSION


def test_latency_only_measures_the_latency_alone(monkeypatch):
    """The A/B gate's later rounds: no accuracy, quality or memory calls, the same timed calls. (How many timed
    calls a round makes depends on the machine's speed, so calls are not counted here: the checks are made to
    fail if they run.)"""
    import math

    case = Case("local", "window=8", "eager", "cpu", "float32", "fwd", 1, 2, 2, 64, 64, 16)
    full = measure_case.measure(case, measure_case.make_inputs(case), slow_case_settings())

    def not_in_latency_only(*args, **kwargs):
        raise AssertionError("an accuracy or quality check ran in a latency-only measurement")

    monkeypatch.setattr(measure_case.quality, "columns", not_in_latency_only)
    monkeypatch.setattr(measure_case.accuracy, "output_errors", not_in_latency_only)
    quick = measure_case.measure(case, measure_case.make_inputs(case), slow_case_settings(), latency_only=True)
    assert quick.status == "ok" and quick.latency_ms > 0 and len(quick.samples) >= 5
    assert math.isnan(quick.peak_mem_mib) and math.isnan(quick.max_abs_err) and not math.isnan(full.max_abs_err)
