"""Peak memory of one call above what is already held: allocator peak on CUDA, RSS high-water on CPU."""

from __future__ import annotations

import ctypes
import resource
import threading
import time
from collections.abc import Callable

import torch

MIB = 1024 * 1024


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


def cpu_peak_mib(fn: Callable[[], object]) -> float:
    """Peak RSS during fn() minus RSS before it, in MiB.

    With a resettable high-water mark (Linux) this is exact per call; otherwise it falls back to
    ru_maxrss, which is only right in a fresh process whose earlier work used less memory.
    """
    _trim_heap()
    before_kib = _read_status_kib("VmRSS")
    if _reset_rss_peak() and before_kib is not None:
        fn()
        peak_kib = _read_status_kib("VmHWM") or before_kib
    else:
        before_kib = before_kib or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak_kib - before_kib, 0) / 1024.0


def cuda_peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Allocator peak during fn() above the memory allocated before it, in MiB (exact)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB


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
