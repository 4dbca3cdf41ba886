"""The Typer app: one module per subcommand, registered explicitly here."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from sparsebench.cli import common, export, gate, history, info, list_cmd, merge, plot, run, train

try:  # typer >= 0.2x vendors its own click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exc

_ABORT = (typer.Abort, getattr(click_exc, "Abort", typer.Abort))
_HELP = getattr(click_exc, "NoArgsIsHelpError", ())  # click >= 8.2: `sparsebench` alone prints the help



class OneLineErrors(TyperGroup):
    """Usage errors (bad option values, unknown options) as one line on stderr with exit code 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _HELP:  # the help was printed already
            sys.exit(0)
        except click_exc.ClickException as exc:
            common.err_console.print(f"error: {exc.format_message()}", markup=False)
            sys.exit(exc.exit_code)
        except _ABORT:
            common.err_console.print("interrupted", markup=False)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
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
app.command("export")(export.export_cmd)
app.command("history")(history.history_cmd)
app.command("merge")(merge.merge_cmd)
app.command("train")(train.train_cmd)


def main() -> None:
    app()
