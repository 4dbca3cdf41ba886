"""Interleaved A/B of the CPU kernel of block selections: the working tree's kernels/selected_blocks.py against the
same file at a git revision, beside causal SDPA, on topk_blocks (64, 16) over --inputs structured (a check while
developing on a loaded machine; the committed figures come from `sparsebench run --config configs/selection.toml`).

    python scripts/selected_blocks_ab.py 8192 fwd --rev HEAD --reps 5

One thread, CPU, fp32, B=1, H=8, D=64, seed 0. Each round runs causal SDPA, the old kernel and the new one, in
that order, selection included; prints the median of each (CPU time of this process, less sensitive to the other
processes on a loaded machine than wall time, which is printed beside it) and the share of the ideal speed-up
(causal pairs / kept pairs) each kernel reaches.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from selection_speed import blocks_case  # the same case as `selection_speed.py blocks` (this script's folder)

from sparsebench.impls.kernels import selected_blocks

KERNEL = "sparsebench/impls/kernels/selected_blocks.py"


def kernel_at(rev: str):
    """The kernel module as it is at git revision `rev`."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "show", f"{rev}:{KERNEL}"], cwd=root, check=True, capture_output=True,
                          text=True).stdout
    path = Path(tempfile.mkdtemp()) / "selected_blocks_old.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("selected_blocks_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int)
    parser.add_argument("mode", nargs="?", default="fwd", choices=["fwd", "fwdbwd"])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the timed calls run
    q, k, v, pattern, run = blocks_case(args.n, args.mode)

    def kernel(module):
        def call():
            sel = pattern.select(q, k)
            layout = sel.layout.expand(q.shape[0], q.shape[1], *sel.layout.shape[2:])
            run(module.selected_block_attention(q, k, v, layout, 64, True)[0])
        return call

    fns = {"causal": lambda: run(F.scaled_dot_product_attention(q, k, v, is_causal=True)),
           "old": kernel(kernel_at(args.rev)), "new": kernel(selected_blocks)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    walls: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(args.reps):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.process_time() - c0)
            walls[name].append(time.perf_counter() - t0)
    ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    wall = {name: statistics.median(values) * 1e3 for name, values in walls.items()}
    ideal = args.n * (args.n + 1) / 2 / float(pattern.select(q, k).pair_counts().double().mean())
    print(f"n={args.n} {args.mode}, median of {args.reps} interleaved rounds; ideal {ideal:.2f}x")
    for name in fns:
        ratio = ms["causal"] / ms[name]
        print(f"  {name:6s} CPU {ms[name]:7.1f} ms  {ratio:5.2f}x  {100 * ratio / ideal:3.0f}% of ideal | wall "
              f"{wall[name]:7.1f} ms  {100 * wall['causal'] / wall[name] / ideal:3.0f}% of ideal  "
              f"(CPU ms: {' '.join(f'{1e3 * t:.0f}' for t in times[name])})")
    print(f"  new / old: CPU {ms['new'] / ms['old']:.3f}, wall {wall['new'] / wall['old']:.3f}")


if __name__ == "__main__":
    main()
