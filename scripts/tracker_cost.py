"""Does the memory tracker slow down the call it tracks? If not, that call can be a timed sample.

For each implementation of one pattern and length (by default the README's first command: strided, n = 8192),
in one process as a worker measures them: the first call, then ROUNDS pairs of single calls timed as the
worker times them (torch.utils.benchmark, one thread), one plain and one inside the CPU memory tracker
(PeakMemory: gc, heap trim, RSS high-water reset), their order alternating between rounds. Prints each call
in order, the medians and their ratio, and the tracked peak at one thread against the default threads (the
peak the memory-tracked call recorded before it became a timed sample).

    python3 scripts/tracker_cost.py --pattern strided --seq 8192 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsebench.measure import memory, timing  # noqa: E402
from sparsebench.resolve import get_impl  # noqa: E402  (after the sys.path insert)
from sparsebench.runner.cases import Case  # noqa: E402
from sparsebench.runner.config import SweepConfig, expand  # noqa: E402
from sparsebench.runner.measure_case import make_inputs  # noqa: E402


def measure(case: Case, inputs: tuple, rounds: int) -> dict:
    impl, pattern = get_impl(case.impl), case.build_pattern()
    q, k, v, _ = inputs
    prep = impl.prepare(pattern, case.seq_len, torch.device("cpu"), case.torch_dtype)

    def call() -> torch.Tensor:
        with torch.no_grad():
            return impl.forward(q, k, v, prep)

    t0 = time.perf_counter()
    call()
    first_s = time.perf_counter() - t0
    peak_default, _ = memory.tracked_call(call, "cpu")  # as the memory call was made: default threads
    plain: list[float] = []
    tracked: list[float] = []
    peaks: list[float] = []
    order: list[str] = []
    for r in range(rounds):
        for kind in ("plain", "tracked") if r % 2 == 0 else ("tracked", "plain"):
            if kind == "plain":
                plain += timing.time_cpu_calls(call, 1)
            else:
                peak, (ms,) = memory.tracked_call(lambda: timing.time_cpu_calls(call, 1), "cpu")
                tracked.append(ms)
                peaks.append(peak)
            order.append(f"{kind[0]}{(plain if kind == 'plain' else tracked)[-1]:.0f}")
    return {"first_s": first_s, "plain": plain, "tracked": tracked, "order": order,
            "peak_default": peak_default, "peak_one_thread": statistics.median(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="strided")
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--impl", action="append", help="Implementations (default: all of the default sweep).")
    args = parser.parse_args()
    cases, _ = expand(SweepConfig(patterns=[args.pattern], seq=[args.seq], devices=["cpu"],
                                  impls=args.impl or []))
    inputs = make_inputs(cases[0])
    print(f"{args.pattern} n={args.seq}, torch {torch.__version__}, {torch.get_num_threads()} default threads; "
          "calls timed with one thread (torch.utils.benchmark), p = plain, t = tracked, in order (ms)")
    print("| case | first call (s) | calls in order (ms) | plain median (ms) | tracked median (ms) | tracked/plain "
          "| peak MiB, default threads | peak MiB, one thread |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        m = measure(case, inputs, args.rounds)
        p, t = statistics.median(m["plain"]), statistics.median(m["tracked"])
        print(f"| {case.pattern} {case.impl} | {m['first_s']:.2f} | {' '.join(m['order'])} | {p:.0f} | {t:.0f} "
              f"| {t / p:.3f} | {m['peak_default']:.0f} | {m['peak_one_thread']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
