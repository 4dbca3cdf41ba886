"""In-process speed ratios of the selection targets, interleaved with their references so that machine load
affects both sides alike (a check while developing; the committed figures come from `sparsebench run`).

    python scripts/selection_speed.py blocks 8192 fwd   # topk_blocks (64, 16) structured vs causal SDPA
    python scripts/selection_speed.py quest 65536       # quest (16, 256) structured decode vs dense SDPA decode
    python scripts/selection_speed.py tokens 16384      # topk_tokens (2048) structured vs SDPA with its mask

One thread, CPU, fp32, B=1, H=8, D=64, --inputs structured (seed 0); the best of a few interleaved calls.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sparsebench.impls import selection
from sparsebench.patterns import get_pattern
from sparsebench.runner.inputs import structured_qkv


def best_ms(fns: dict, reps: int) -> dict[str, float]:
    """Best wall time of each function over `reps` interleaved rounds, after one warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(values) * 1e3 for name, values in times.items()}


def blocks_case(n: int, mode: str):
    """q, k, v (structured, seed 0; requiring grad in fwdbwd), topk_blocks (64, 16), and `run(out)`: the
    backward of out in fwdbwd, nothing in fwd."""
    q, k, v = structured_qkv(1, 8, 8, n, 64, 0)
    grad = mode == "fwdbwd"
    g = torch.randn_like(q)
    for x in (q, k, v):
        x.requires_grad_(grad)

    def run(out):
        if grad:
            torch.autograd.grad(out, (q, k, v), g)

    return q, k, v, get_pattern("topk_blocks", block=64, topk=16), run


def blocks(n: int, mode: str, reps: int) -> None:
    q, k, v, pattern, run = blocks_case(n, mode)
    ms = best_ms({"causal": lambda: run(F.scaled_dot_product_attention(q, k, v, is_causal=True)),
                  "topk_blocks": lambda: run(selection.structured(q, k, v, pattern.select(q, k),
                                                                   selection.SelectState())[0])}, reps)
    ideal = n * (n + 1) / 2 / float(pattern.select(q, k).pair_counts().double().mean())
    ratio = ms["causal"] / ms["topk_blocks"]
    print(f"n={n} {mode}: causal SDPA {ms['causal']:.0f} ms, topk_blocks structured {ms['topk_blocks']:.0f} ms: "
          f"{ratio:.2f}x; ideal {ideal:.2f}x; {100 * ratio / ideal:.0f}% of ideal")


def quest(n: int, reps: int) -> None:
    q, k, v = structured_qkv(1, 8, 8, n, 64, 0)
    q = q[:, :, -1:].contiguous()
    pattern = get_pattern("quest", page=16, topk=256)
    state = selection.SelectState()
    ms = best_ms({"dense": lambda: F.scaled_dot_product_attention(q, k, v),
                  "quest": lambda: selection.structured(q, k, v, pattern.select(q, k, state.cache), state)}, reps)
    print(f"n={n} decode: dense SDPA {ms['dense']:.2f} ms, quest structured {ms['quest']:.2f} ms: "
          f"{ms['dense'] / ms['quest']:.2f}x")


def tokens(n: int, reps: int) -> None:
    q, k, v = structured_qkv(1, 8, 8, n, 64, 0)
    pattern = get_pattern("topk_tokens", topk=2048)
    state = selection.SelectState()
    ms = best_ms({"causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                  "select": lambda: pattern.select(q, k),
                  "masked": lambda: selection.sdpa(q, k, v, pattern.select(q, k), state),
                  "structured": lambda: selection.structured(q, k, v, pattern.select(q, k), state)}, reps)
    print(f"n={n} fwd: select {ms['select']:.0f} ms; SDPA with the selection's mask {ms['masked']:.0f} ms, "
          f"topk_tokens structured {ms['structured']:.0f} ms (both with the selection): "
          f"{ms['masked'] / ms['structured']:.2f}x; causal SDPA {ms['causal']:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["blocks", "quest", "tokens"])
    parser.add_argument("n", type=int)
    parser.add_argument("mode", nargs="?", default="fwd", choices=["fwd", "fwdbwd"])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the timed calls run
    if args.target == "blocks":
        blocks(args.n, args.mode, args.reps)
    elif args.target == "tokens":
        tokens(args.n, args.reps)
    else:
        quest(args.n, max(args.reps, 10))


if __name__ == "__main__":
    main()
