"""Run one case N times, each a fresh `sparsebench run` (its own worker process), and print its CPU peak memory
per run: the exact peak of live tensor bytes (peak_mem_mib) beside the RSS high-water mark (rss_peak_mib).

    python scripts/memory_repeat.py --runs 10 -- --pattern local --impl structured --seq 2048 --mode fwdbwd
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="`sparsebench run` options, after --")
    args = parser.parse_args()
    run_args = [a for a in args.run_args if a != "--"]
    print("| run | case | peak_mem_mib (tensor bytes) | rss_peak_mib |")
    print("|---|---|---|---|")
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([sys.executable, "-m", "sparsebench", "run", *run_args, "--out-dir", out, "--quiet"],
                           check=True, stdout=subprocess.DEVNULL)
            frame = pd.read_csv(Path(out) / "results.csv")
        for row in frame.to_dict("records"):
            print(f"| {i + 1} | {row['pattern']}/{row['impl']}/{row['seq_len']}/{row['mode']} | "
                  f"{row['peak_mem_mib']:.6f} | {row['rss_peak_mib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
