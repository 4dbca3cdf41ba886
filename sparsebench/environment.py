"""Environment metadata for meta.json and `sparsebench info` (torch, CUDA, GPU via pynvml, CPU, git)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from sparsebench._version import __version__


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_digest() -> str:
    """sha256 (16 hex digits) of sparsebench's own source, every .py file by its path: the code a run measured
    with, exact where a commit is not (uncommitted edits, an install without git, a docs-only commit)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_sha() -> str:
    """The sha of the sparsebench checkout (with '+dirty' for local changes), or '' outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("+dirty" if sha and dirty else "")


def gpus() -> list[dict[str, Any]]:
    """GPU name, memory, driver and clocks through pynvml; [] without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    driver = pynvml.nvmlSystemGetDriverVersion()
    out = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        info = {"index": i, "name": _text(pynvml.nvmlDeviceGetName(h)), "driver": _text(driver),
                "memory_total_mib": mem.total // 2**20, "memory_used_mib": mem.used // 2**20}
        for key, clock in (("sm_clock_mhz", pynvml.NVML_CLOCK_SM), ("mem_clock_mhz", pynvml.NVML_CLOCK_MEM)):
            try:
                info[key] = pynvml.nvmlDeviceGetClockInfo(h, clock)
                info["max_" + key] = pynvml.nvmlDeviceGetMaxClockInfo(h, clock)
            except Exception:
                pass
        try:
            info["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
        except Exception:
            pass
        out.append(info)
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def device_name(device: str) -> str:
    """A human name for 'cpu', 'cuda' or 'cuda:N'."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        return torch.cuda.get_device_name(index)
    return cpu_model()


def _program() -> str:
    name = Path(sys.argv[0]).name
    return "python -m sparsebench" if name == "__main__.py" else name


def collect(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import psutil

    return {
        "sparsebench_version": __version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([_program(), *sys.argv[1:]]),
        "git_sha": git_sha(),
        "sparsebench_sha256": package_digest(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus() if torch.cuda.is_available() else [],
        **(extra or {}),
    }
