"""Measure the accuracy of the built-in implementations to set the per-dtype tolerances (docs/accuracy/README.md).

For every built-in pattern (default parameters), implementation, dtype and length that runs on the device, in
this process (no workers: accuracy does not depend on isolation): the forward's rel_err and max_abs_err on the
sampled rows (measure/accuracy.py) and, in fwdbwd, the gradient check's dQ, dK and dV relative errors
(measure/gradients.py), on the same seeded inputs as a sweep. Writes every measurement to a CSV and prints the
distribution by dtype and n, the tolerances and their margins as markdown.

    python scripts/tolerance_study.py --impls seed eager sdpa structured --out docs/accuracy/study.csv
    python scripts/tolerance_study.py --from-csv docs/accuracy/study.csv   # the tables again, current tolerances
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time

import torch

from sparsebench.errors import Unsupported
from sparsebench.impls import IMPLS
from sparsebench.measure import accuracy, gradients
from sparsebench.patterns import PATTERNS
from sparsebench.runner.cases import DTYPES, Case
from sparsebench.runner.measure_case import make_inputs

# Longest n per implementation on a CPU: eager and seed materialise n x n scores (seed also builds its mask in
# Python), the backward of every implementation keeps them.
MAX_N = {"seed": 1024, "eager": 4096}
MAX_N_FWDBWD = 4096


def measure(impl_name: str, pattern: str, dtype: str, mode: str, n: int, device: str, heads: int,
            head_dim: int) -> dict | None:
    impl = IMPLS[impl_name]
    case = Case(pattern, "", impl_name, device, dtype, mode, 1, heads, heads, n, n, head_dim)
    built = case.build_pattern()
    if impl.unsupported_reason(built, device, case.torch_dtype, mode) is not None:
        return None
    q, k, v, _ = make_inputs(case)
    try:
        prep = impl.prepare(built, n, torch.device(device), case.torch_dtype)
        with torch.no_grad():
            out = impl.forward(q, k, v, prep)
    except Unsupported:
        return None
    err, rel = accuracy.output_errors(out, q, k, v, built)
    row = {"impl": impl_name, "pattern": pattern, "dtype": dtype, "mode": mode, "seq_len": n, "rel_err": rel,
           "max_abs_err": err, "ref_max": err / rel if rel else float("nan")}
    if mode == "fwdbwd":
        grad = gradients.check(lambda *x: impl.forward(*x, prep), q, k, v, built)
        row.update({f"{name}_err": value for name, value in grad.errors.items()})
        row["grad_err"] = grad.worst[1]
    return row


def table(rows: list[dict], column: str, tolerances: dict[str, float]) -> list[str]:
    """Markdown: per dtype and n, the median and max of `column`, the worst case, and the margin to the tolerance."""
    lines = [f"| dtype | n | cases | median {column} | max {column} | worst case | tolerance | margin |",
             "|---|---|---|---|---|---|---|---|"]
    for dtype in DTYPES:
        for n in sorted({r["seq_len"] for r in rows}):
            values = [r for r in rows if r["dtype"] == dtype and r["seq_len"] == n and column in r]
            if not values:
                continue
            worst = max(values, key=lambda r: r[column])
            tol = tolerances[dtype]
            lines.append(f"| {dtype} | {n} | {len(values)} | {statistics.median(r[column] for r in values):.2g} | "
                         f"{worst[column]:.2g} | {worst['pattern']}/{worst['impl']} | {tol:.1e} | "
                         f"{tol / worst[column]:.1f}x |" if worst[column] > 0 else "| ... |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    parser.add_argument("--impls", nargs="+", default=["seed", "eager", "sdpa", "structured", "flex"])
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS))
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--out", help="CSV of every measurement")
    parser.add_argument("--from-csv", help="print the tables of an earlier --out CSV instead of measuring")
    args = parser.parse_args()
    rows = read_rows(args.from_csv) if args.from_csv else measure_all(args)
    if args.out:
        columns = list(dict.fromkeys(c for r in rows for c in r))
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(rows)
    print_tables(rows)


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key, value in list(row.items()):
            if key == "seq_len":
                row[key] = int(value)
            elif key.endswith(("_err", "_max")):
                if value == "":
                    del row[key]
                else:
                    row[key] = float(value)
    return rows


def measure_all(args: argparse.Namespace) -> list[dict]:
    rows = []
    start = time.perf_counter()
    for mode in args.modes:
        for n in args.seq:
            if mode == "fwdbwd" and n > MAX_N_FWDBWD and args.device == "cpu":
                continue
            for dtype in args.dtypes:
                for impl in args.impls:
                    if n > MAX_N.get(impl, n) and args.device == "cpu":
                        continue
                    for pattern in args.patterns:
                        row = measure(impl, pattern, dtype, mode, n, args.device, args.heads, args.head_dim)
                        if row is not None:
                            rows.append(row)
                            print(f"{time.perf_counter() - start:7.1f}s {row}", file=sys.stderr, flush=True)
    return rows


def print_tables(rows: list[dict]) -> None:
    forward = [r for r in rows if r["mode"] == "fwd"]
    backward = [r for r in rows if r["mode"] == "fwdbwd"]
    tol = {d: accuracy.TOLERANCE[t] for d, t in DTYPES.items()}
    grad_tol = {d: accuracy.GRAD_TOLERANCE[t] for d, t in DTYPES.items()}
    print("### Forward: rel_err\n")
    print("\n".join(table(forward, "rel_err", tol)))
    print("\n### Forward+backward: grad_err (worst of dQ, dK, dV)\n")
    print("\n".join(table(backward, "grad_err", grad_tol)))
    for name in gradients.NAMES:
        print(f"\n#### {name}\n")
        print("\n".join(table(backward, f"{name}_err", grad_tol)))


if __name__ == "__main__":
    main()
