"""The GPUs of this node and the slots that parallel workers run in.

A slot is one GPU, pinned by setting CUDA_VISIBLE_DEVICES to its physical index in the worker process's
environment (with CUDA_DEVICE_ORDER=PCI_BUS_ID, so that the index means what nvidia-smi and NVML say), or a share of
the CPU (`--jobs`). Two GPUs are never visible to one worker, and a pinned worker cannot fall back to GPU 0.

SPARSEBENCH_FAKE_GPUS='0=NAME,1=NAME,...' replaces the NVML listing with a fake one, so that the scheduling can be
tested on a machine without GPUs: the workers then measure on the CPU, each pinned to its fake GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sparsebench.errors import SparsebenchError

FAKE_ENV = "SPARSEBENCH_FAKE_GPUS"


@dataclass(frozen=True)
class Gpu:
    """A physical GPU: its NVML index (nvidia-smi's numbering) and NVML name."""

    index: int
    name: str


@dataclass(frozen=True)
class Slot:
    """Where one parallel worker runs: a pinned GPU, or a share of the CPU."""

    label: str  # 'gpu 3', 'cpu 2'
    env: dict[str, str] = field(default_factory=dict)  # set in the worker process's environment
    gpu: Gpu | None = None

    def free_bytes(self, device: str) -> int:
        """Free memory of this slot's GPU (for the preflight), or of the case's device when none is pinned."""
        from sparsebench.runner.preflight import free_bytes

        if self.gpu is None or not device.startswith("cuda"):
            return free_bytes(device)
        return nvml_free_bytes(self.gpu.index)

    def to_dict(self) -> dict[str, Any]:
        return {"slot": self.label, **({"index": self.gpu.index, "name": self.gpu.name} if self.gpu else {})}


def fake_gpus(env: Mapping[str, str] | None = None) -> list[Gpu] | None:
    """The fake GPU list of SPARSEBENCH_FAKE_GPUS, or None when it is not set."""
    text = (os.environ if env is None else env).get(FAKE_ENV)
    if text is None:
        return None
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        index, _, name = item.partition("=")
        if not index.strip().isdigit():
            raise SparsebenchError(f"{FAKE_ENV}: write INDEX=NAME,INDEX=NAME, got {item!r}")
        out.append(Gpu(int(index), name.strip() or f"fake GPU {index.strip()}"))
    return out


def node_gpus() -> list[Gpu]:
    """The GPUs this process may use: NVML's list (or the fake one), narrowed to CUDA_VISIBLE_DEVICES when set."""
    fake = fake_gpus()
    gpus = fake if fake is not None else _nvml_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    by_index = {g.index: g for g in gpus}
    out = []
    for item in filter(None, (s.strip() for s in visible.split(","))):
        if not item.isdigit():
            raise SparsebenchError(f"CUDA_VISIBLE_DEVICES={visible!r}: sparsebench pins GPUs by index; give "
                                   "indices, not UUIDs")
        if int(item) in by_index:
            out.append(by_index[int(item)])
    return out


def _nvml_gpus() -> list[Gpu]:
    try:
        import pynvml

        pynvml.nvmlInit()
        return [Gpu(i, _text(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))))
                for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:
        return []


def nvml_free_bytes(index: int) -> int:
    """Free memory of the GPU with this NVML index (CPU memory for a fake GPU)."""
    if fake_gpus() is not None:
        from sparsebench.runner.preflight import free_bytes

        return free_bytes("cpu")
    import pynvml

    pynvml.nvmlInit()
    return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)


def parse_gpus(text: str, available: list[Gpu]) -> list[Gpu]:
    """'all' or '0,1,3' -> those GPUs of `available` (physical indices, as nvidia-smi numbers them)."""
    if not available:
        raise SparsebenchError("--gpus: no GPU found on this machine (NVML lists none)")
    if text.strip() == "all":
        return list(available)
    by_index = {g.index: g for g in available}
    chosen: list[Gpu] = []
    for item in (s.strip() for s in text.split(",")):
        if not item.isdigit():
            raise SparsebenchError(f"--gpus {text!r}: write all or indices such as 0,1,3")
        if int(item) not in by_index:
            raise SparsebenchError(f"--gpus {text}: GPU {item} is not available here (GPUs: "
                                   f"{', '.join(str(g.index) for g in available)})")
        if by_index[int(item)] not in chosen:
            chosen.append(by_index[int(item)])
    return chosen


def gpu_slots(gpus: list[Gpu]) -> list[Slot]:
    """One slot per GPU, each pinned to it alone."""
    return [Slot(f"gpu {g.index}", {"CUDA_VISIBLE_DEVICES": str(g.index), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, g)
            for g in gpus]


def cpu_slots(jobs: int, cpu_count: int | None = None) -> list[Slot]:
    """`jobs` CPU slots; each worker's torch gets an equal share of the cores (unless OMP_NUM_THREADS is set)."""
    threads = max(1, (cpu_count or os.cpu_count() or 1) // jobs)
    env = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": str(threads)}
    return [Slot(f"cpu {i + 1}", dict(env)) for i in range(jobs)]


def local_rank_gpu(local_rank: int, available: list[Gpu]) -> Gpu:
    """The GPU a rank pins: the LOCAL_RANK-th visible one (the only one, when the launcher gave each rank one)."""
    if len(available) == 1:
        return available[0]
    if not 0 <= local_rank < len(available):
        raise SparsebenchError(f"local rank {local_rank} has no GPU of its own: {len(available)} visible here")
    return available[local_rank]


@cache
def identify(device_index: int = 0) -> dict[str, Any]:
    """In a worker: the physical NVML index and name of the CUDA device it measures on ({} when unknown).

    Found through the device's UUID, so it is right whatever CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER say."""
    try:
        import torch

        props = torch.cuda.get_device_properties(device_index)
    except Exception:
        return {}
    out: dict[str, Any] = {"gpu_name": props.name}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{props.uuid}")
        out = {"gpu_index": int(pynvml.nvmlDeviceGetIndex(handle)), "gpu_name": _text(pynvml.nvmlDeviceGetName(handle))}
    except Exception:
        pass
    return out


def gpu_columns(device: str, lookup: Callable[[int], dict[str, Any]] = identify) -> dict[str, Any]:
    """The gpu_index and gpu_name columns of a row measured on `device` in this process."""
    if not device.startswith("cuda"):
        return {}
    return lookup(int(device.partition(":")[2] or 0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
