"""CUDA timing of microsecond calls with CUDA graphs, on the CPU with a stand-in for torch.cuda."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from sparsebench.measure import timing


class FakeCuda:
    """Enough of torch.cuda for time_cuda_graph: a graph records the calls made while capturing and replays
    them; events read a clock that each replayed call advances by `call_ms` (and nothing else does)."""

    def __init__(self, call_ms: float, capturable: bool = True) -> None:
        self.call_ms, self.capturable, self.clock_ms = call_ms, capturable, 0.0
        self.capturing: FakeCuda.CUDAGraph | None = None
        self.replays = 0
        cuda = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.t = 0.0

            def record(self) -> None:
                self.t = cuda.clock_ms

            def elapsed_time(self, other: Event) -> float:
                return other.t - self.t

        class CUDAGraph:
            def __init__(self) -> None:
                self.calls = 0

            def replay(self) -> None:
                cuda.replays += 1
                cuda.clock_ms += self.calls * cuda.call_ms

        self.Event, self.CUDAGraph = Event, CUDAGraph

    def Stream(self):  # noqa: N802 (torch.cuda's name)
        return self

    def wait_stream(self, other: object) -> None:
        pass

    def current_stream(self):
        return self

    @contextmanager
    def stream(self, stream: object):
        yield

    @contextmanager
    def graph(self, graph):
        if not self.capturable:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.capturing = graph
        yield
        self.capturing = None

    def synchronize(self) -> None:
        pass

    def fn(self) -> None:
        """The timed call: counted into the graph while capturing."""
        if self.capturing is not None:
            self.capturing.calls += 1


def test_a_graph_replays_enough_calls_and_each_sample_is_one_call():
    cuda = FakeCuda(call_ms=0.004)
    samples = timing.time_cuda_graph(cuda.fn, min_run_time=0.01, min_samples=5, call_ms=0.004, cuda=cuda)
    assert samples == pytest.approx([0.004] * len(samples))
    assert len(samples) >= 5 and cuda.replays == len(samples)
    assert cuda.clock_ms / cuda.replays == pytest.approx(250 * 0.004)  # a replay: ceil(1 ms / 0.004 ms) calls


def test_a_call_that_cannot_be_captured_gives_none():
    cuda = FakeCuda(call_ms=0.004, capturable=False)
    assert timing.time_cuda_graph(cuda.fn, 0.01, 5, 0.004, cuda=cuda) is None


def test_short_calls_take_the_graph_timing_and_report_the_launch_overhead():
    graphed = []

    def events(fn, min_run_time, min_samples):
        return [0.050, 0.030, 0.040]  # median 40 us: launch-bound

    def graphs(fn, min_run_time, min_samples, call_ms):
        graphed.append(call_ms)
        return [0.012, 0.010, 0.011]

    samples, overhead = timing.time_cuda_small(lambda: None, 0.01, 3, events=events, graphs=graphs)
    assert samples == [0.012, 0.010, 0.011] and graphed == [0.040]
    assert overhead == pytest.approx(0.029)


def test_long_calls_and_uncapturable_calls_keep_the_event_timing():
    def never(*args):
        raise AssertionError("a call of 0.5 ms is not timed with graphs")

    assert timing.time_cuda_small(lambda: None, 0.01, 3, events=lambda *a: [0.5, 0.6, 0.5], graphs=never) == \
        ([0.5, 0.6, 0.5], None)
    assert timing.time_cuda_small(lambda: None, 0.01, 3, events=lambda *a: [0.02] * 3,
                                  graphs=lambda *a: None) == ([0.02] * 3, None)
