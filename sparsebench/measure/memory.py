"""Peak memory of one call above what is already held: the allocator's peak of live tensor bytes on CUDA and on
CPU (exact, the same in every run), and the RSS high-water mark on CPU as information."""

from __future__ import annotations

import ctypes
import gc
import resource
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch

MIB = 1024 * 1024
T = TypeVar("T")


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0, /proc/self/clear_refs '5')."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    # Hand freed heap pages back to the OS, so the next call's growth shows up in RSS.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak extra memory from `start()` to `peak_mib()`, above what was held at the start.

    CUDA: the allocator peak (exact). CPU: the RSS high-water mark, reset at the start through
    /proc/self/clear_refs (Linux >= 4.0), so it is exact per call; without it, ru_maxrss, which is only
    right in a fresh process whose earlier work used less memory.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _trim_heap()
        rss = _read_status_kib("VmRSS")
        self.hwm_reset = rss is not None and _reset_rss_peak()
        self.base = rss if self.hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / MIB
        peak = _read_status_kib("VmHWM") if self.hwm_reset else None
        peak = peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(peak - self.base, 0) / 1024.0


def call_peak_mib(fn: Callable[[], object], device: torch.device | str) -> float:
    """Peak extra memory of one call of fn(), in MiB."""
    return tracked_call(fn, device)[0]


def tracked_call(fn: Callable[[], T], device: torch.device | str) -> tuple[float, T]:
    """(peak extra memory in MiB, fn's result) of one call of fn(). The tracker's own work (gc, heap trim,
    /proc reads) is before and after the call, so a call timed inside fn is timed as an untracked one."""
    tracker = PeakMemory(device)
    tracker.start()
    result = fn()
    return tracker.peak_mib(), result


def tensor_peak_mib(fn: Callable[[], T]) -> tuple[float, T]:
    """(peak of live CPU tensor bytes during one call of fn() above what was live at its start, in MiB; fn's
    result).

    Exact and deterministic: every allocation and free of the CPU allocator during the call is reported to
    torch's profiler (memory events only: no shapes, no stacks) with the allocator's running total of the bytes
    it allocated while profiling, so the peak is the largest running total minus the total at the start of the
    call (read off a one-byte marker allocated first). Memory that is not a tensor's (the Python heap, a
    library's private buffers) is not counted: the RSS high-water mark (`PeakMemory`) is kept for that.
    The call runs on one thread, as the timed calls do (some kernels allocate a buffer per thread: the figure
    must not depend on the machine's core count), and with Python's garbage collector off, as timeit runs them
    (a collection in the middle of the call would free tensors at a moment that depends on the heap's history).
    The profiler is started through torch.autograd's own entry points, which cost under a millisecond; the
    torch.profiler.profile wrapper spends seconds on its first use in a process. It slows the call it tracks,
    so that call is never a timed one.
    """
    from torch._C._profiler import _EventType, _ExperimentalConfig
    from torch.autograd import ProfilerActivity, _disable_profiler, _enable_profiler, _prepare_profiler
    from torch.autograd.profiler import ProfilerConfig, ProfilerState

    config = ProfilerConfig(ProfilerState.KINETO, False, True, False, False, False, _ExperimentalConfig())
    activities = {ProfilerActivity.CPU}
    threads, collecting = torch.get_num_threads(), gc.isenabled()
    torch.set_num_threads(1)
    gc.disable()
    try:
        _prepare_profiler(config, activities)
        _enable_profiler(config, activities)
        try:
            marker = torch.empty(1, dtype=torch.uint8)
            marker_ptr = marker.data_ptr()
            result = fn()
            del marker
        finally:
            profile = _disable_profiler()
    finally:
        torch.set_num_threads(threads)
        if collecting:
            gc.enable()
    events = []
    stack = list(profile.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields))
    marks = sorted((t, e.total_allocated) for t, e in events if e.ptr == marker_ptr and e.alloc_size == 1)
    if not marks:  # no allocation reported at all (a profiler without memory events)
        return float("nan"), result
    base = marks[0][1]  # the running total with the marker allocated: it is live during the whole call
    return max(max(e.total_allocated for _, e in events) - base, 0) / MIB, result


class NvmlSampler:
    """Samples the device's used memory through NVML in a thread (information only: it includes the
    CUDA context and other processes, and misses spikes shorter than the interval)."""

    def __init__(self, device_index: int, interval_s: float = 0.0005) -> None:
        self.interval_s = interval_s
        self.peak_mib = float("nan")
        self.context_mib = float("nan")
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:  # no NVML (driver, container): the column stays empty
            self._handle = None

    def _used_mib(self) -> float:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._used_mib())
            time.sleep(self.interval_s)

    def __enter__(self) -> NvmlSampler:
        if self._handle is not None:
            self.context_mib = self._used_mib()  # context, inputs and other processes before the call
            self.peak_mib = self.context_mib
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, self._used_mib())
