"""`sparsebench info`: device and environment information (GPU name, memory, driver, clocks via pynvml)."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from rich.text import Text

from sparsebench import environment
from sparsebench.cli.common import stdout_console as console


def info_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of a table.")) -> None:
    """Show the environment that results would be recorded with."""
    env = environment.collect()
    if as_json:
        print(json.dumps(env, indent=2, default=str))
        return
    table = Table(title="sparsebench environment", show_header=False)
    for key, value in env.items():
        if key != "gpus":
            table.add_row(key, Text(str(value)))
    console.print(table)
    if not env["gpus"]:
        console.print("no CUDA GPU visible: benchmarks run on the CPU", style="yellow")
    for gpu in env["gpus"]:
        gpu_table = Table(title=f"GPU {gpu['index']}", show_header=False)
        for key, value in gpu.items():
            gpu_table.add_row(key, Text(str(value)))
        console.print(gpu_table)
