"""Where one call's time goes on a GPU: host time per call, GPU kernel time, kernel launches, the top kernels.

    PYTHONPATH=. python3 scripts/gpu_profile.py [--seq 32768] [--mode fwd] IMPL/PATTERN[:k=v,...] ...

For each case: the mask/index build (setup), the wall time per call with calls queued back to back, the
host time to *enqueue* a call (when it is close to the wall time, the GPU waits on the CPU: launch-bound),
the summed kernel time per call from torch.profiler and the number of kernels, and the kernels that take
the most time. Inputs are random (never zeros) and the case is warmed up before anything is timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sparsebench.resolve import get_impl, get_pattern  # noqa: E402
from sparsebench.runner.config import parse_pattern_spec  # noqa: E402

CALLS = 10


def profile_case(spec: str, n: int, mode: str, batch: int, heads: int, head_dim: int, top: int) -> None:
    impl_name, _, pattern_spec = spec.partition("/")
    impl = get_impl(impl_name)
    name, params = parse_pattern_spec(pattern_spec, {})
    pattern = get_pattern(name, **params)
    dtype, device = torch.bfloat16, torch.device("cuda")
    reason = impl.unsupported_reason(pattern, "cuda", dtype, mode)
    if reason:
        print(f"{spec}: unsupported: {reason}")
        return
    q, k, v = (torch.randn(batch, heads, n, head_dim, device=device, dtype=dtype, requires_grad=mode == "fwdbwd")
               for _ in range(3))
    grad_out = torch.randn_like(q)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prep = impl.prepare(pattern, n, device, dtype)
    torch.cuda.synchronize()
    setup_ms = (time.perf_counter() - t0) * 1e3

    def call() -> None:
        if mode == "fwd":
            with torch.no_grad():
                impl.forward(q, k, v, prep)
        else:
            torch.autograd.grad(impl.forward(q, k, v, prep), (q, k, v), grad_out)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(CALLS):
        call()
    enqueue_ms = (time.perf_counter() - t0) * 1e3 / CALLS
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3 / CALLS

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    kernel_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / CALLS
    launches = sum(e.count for e in kernels) / CALLS
    print(f"{spec} n={n} {mode}: setup {setup_ms:.1f} ms; wall {wall_ms:.3f} ms/call, host enqueue "
          f"{enqueue_ms:.3f} ms/call, kernels {kernel_ms:.3f} ms/call in {launches:.0f} launches")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]:
        share = e.self_device_time_total / 1e3 / CALLS / kernel_ms if kernel_ms else 0.0
        print(f"    {share:6.1%} {e.self_device_time_total / 1e3 / CALLS:8.3f} ms x{e.count // CALLS:<3} "
              f"{e.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="IMPL/PATTERN[:k=v,...], e.g. structured/sliding_window:window=1024")
    parser.add_argument("--seq", type=int, default=32768)
    parser.add_argument("--mode", choices=("fwd", "fwdbwd"), default="fwd")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "error: no CUDA GPU: this script profiles GPU kernels\n")
    for spec in args.cases:
        try:
            profile_case(spec, args.seq, args.mode, args.batch, args.heads, args.head_dim, args.top)
        except Exception as exc:  # one failed case must not hide the others
            print(f"{spec}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
