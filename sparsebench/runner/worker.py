"""Worker process: measures the cases of one group on shared inputs, one JSON line per event on stdout.

Protocol (protocol.py, every message stamped with its VERSION; stdin: one JSON object {"cases": [...],
"settings": {...}}, optionally "latency_only": true, which a worker of an older tree ignores: it measures all):
  {"event": "ready", "start_s": ...}              after imports
  {"event": "ceilings", "values": {...}}          when the job asks for the device's ceilings (before any case)
  {"event": "start", "index": i}                   before case i
  {"event": "result", "index": i, "measurement": {...}}   after case i (a results.Measurement)
A crash, OOM kill or timeout therefore always names the case that was running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

T0 = time.perf_counter()

import torch  # noqa: E402

from sparsebench.errors import Unsupported, is_oom_message  # noqa: E402
from sparsebench.plugins import register_all  # noqa: E402
from sparsebench.results import Measurement  # noqa: E402
from sparsebench.runner import protocol  # noqa: E402
from sparsebench.runner.cases import Case, MeasureSettings  # noqa: E402
from sparsebench.runner.gpus import gpu_columns  # noqa: E402
from sparsebench.runner.inputs import make_inputs  # noqa: E402
from sparsebench.runner.launcher import PARENT_PID_ENV  # noqa: E402
from sparsebench.runner.measure_case import measure  # noqa: E402
from sparsebench.runner.measure_serving import make_serving_inputs, measure_serving  # noqa: E402

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent() -> None:
    """End this worker when the sparsebench process that started it dies, however it dies (SIGKILL included):
    the kernel's parent-death signal on Linux, and a thread that watches the parent pid everywhere."""
    parent = int(os.environ.get(PARENT_PID_ENV) or 0)
    if not parent:
        return  # started by hand
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the watchdog below still does it, within a second

    def watchdog() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        if os.getpgrp() == os.getpid():  # a session of its own (the launcher's): take compile sub-processes along
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()  # exits at once if the parent is gone already


_OUT = sys.stdout
sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol


def emit(event: str, **fields: object) -> None:
    _OUT.write(protocol.event(event, **fields))
    _OUT.flush()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or is_oom_message(str(exc))


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def main() -> None:
    exit_with_parent()
    try:
        job = protocol.read_job(sys.stdin.read())
    except protocol.ProtocolError as exc:
        print(exc, file=sys.stderr)  # the launcher's row for the case names it
        sys.exit(2)
    register_all(job.get("plugins", {}))
    cases = [Case(**c) for c in job["cases"]]
    settings = MeasureSettings(**job["settings"])
    emit(event="ready", start_s=time.perf_counter() - T0)
    if job.get("ceilings"):
        from sparsebench.measure.ceilings import measure_ceilings

        emit(event="ceilings", values=measure_ceilings(cases[0].device, cases[0].torch_dtype))
    inputs = (make_serving_inputs if cases[0].serving else make_inputs)(cases[0], settings)  # one shape per group
    for index, case in enumerate(cases):
        emit(event="start", index=index)
        try:
            if case.serving:
                measured = measure_serving(case, inputs, settings)
            else:
                measured = measure(case, inputs, settings, latency_only=bool(job.get("latency_only")))
        except Unsupported as exc:  # found only when it runs (e.g. a forced SDPA backend): torch's reason
            measured = Measurement("unsupported", _one_line(exc).removeprefix("Unsupported: "))
        except Exception as exc:  # one failed case is a status row, never the end of the sweep
            measured = Measurement("oom" if _is_oom(exc) else "error", _one_line(exc))
        if case.device_type == "cuda":
            torch.cuda.empty_cache()
            measured.extra.update(gpu_columns(case.device))  # the physical GPU this process measured on
        emit(event="result", index=index, measurement=measured.to_dict())


if __name__ == "__main__":
    main()
