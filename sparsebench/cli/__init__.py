"""The Typer app: one module per subcommand, registered explicitly here."""

from __future__ import annotations

import typer

from sparsebench.cli import common, gate, info, list_cmd, plot, run, train

app = typer.Typer(
    name="sparsebench",
    help="Is your sparse attention really faster? Benchmark, plot and gate dense vs sparse attention.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    common.state["debug"] = debug


app.command("list")(list_cmd.list_cmd)
app.command("info")(info.info_cmd)
app.command("run")(run.run_cmd)
app.command("plot")(plot.plot_cmd)
app.command("gate")(gate.gate_cmd)
app.command("train")(train.train_cmd)


def main() -> None:
    app()
