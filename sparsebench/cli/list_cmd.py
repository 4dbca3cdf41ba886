"""`sparsebench list`: the patterns (parameters, defaults) and implementations (what each supports)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from sparsebench.cli.common import err_console
from sparsebench.cli.common import stdout_console as console
from sparsebench.impls import IMPLS
from sparsebench.patterns import PATTERNS, SELECTIONS, pattern_params
from sparsebench.plugins import load_entry_points


def list_cmd() -> None:
    """List the patterns and implementations, installed plugins included."""
    warnings = load_entry_points()
    patterns = Table(title="patterns")
    for col in ("pattern", "rule", "parameters (defaults)"):
        patterns.add_column(col)
    for name, cls in [*PATTERNS.items(), *SELECTIONS.items()]:  # static rules, then selections (from q and k)
        params = ", ".join(f"{k}={v}" for k, v in pattern_params(name).items()) or "-"
        patterns.add_row(escape(name), escape(cls.doc), escape(params))
    impls = Table(title="implementations")
    for col in ("impl", "what it is", "patterns", "devices", "dtypes", "modes"):
        impls.add_column(col)
    for name, impl in IMPLS.items():
        dtypes = ", ".join(sorted(str(d).removeprefix("torch.") for d in impl.dtypes))
        patterns_ = ", ".join(sorted(impl.patterns)) if impl.patterns else "all"
        impls.add_row(escape(name), escape(impl.description), patterns_, ", ".join(sorted(impl.devices)), dtypes,
                      ", ".join(sorted(impl.modes)))
    console.print(patterns)
    console.print(impls)
    for warning in warnings:  # a broken plugin is one line here, never a failed command
        err_console.print(f"warning: {warning}", markup=False)
    console.print("CPU flex_attention is inference only (fwd, decode). sdpa[...] force one SDPA backend: run "
                  "when named with --impl.", style="dim")
