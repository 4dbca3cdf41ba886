"""How a results row reads to people: its pattern, mode, heads and shape, and the whole case. One home for each,
so that progress lines, tables, reports and figures name a case alike; the pattern's part is the pattern's own
label (`patterns.base.pattern_label`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sparsebench.patterns.base import pattern_label as _pattern_label


def params_items(params: Any) -> dict[str, str]:
    """A row's parameters ('window=64;block=8', a dict, or empty) as name -> value, in their order."""
    if isinstance(params, Mapping):
        return {str(k): str(v) for k, v in params.items()}
    if not isinstance(params, str):  # NaN: a row without parameters
        return {}
    items = (item.partition("=") for item in params.split(";") if item.strip())
    return {k.strip(): v.strip() for k, _, v in items}


def pattern_label(pattern: str, params: Any = "", sep: str = ",") -> str:
    """'local(window=64)' from a row's pattern and params, as the pattern labels itself."""
    return _pattern_label(str(pattern), params_items(params), sep)


def mode_label(mode: str, q_len: Any) -> str:
    """'fwd', 'fwdbwd', or 'decode(q_len=16)': a decode step's query rows belong to its mode."""
    return f"decode(q_len={q_len})" if mode == "decode" else str(mode)


def heads_text(heads: Any, kv_heads: Any) -> str:
    """'H=8', or 'H=8 KV=2' with grouped key/value heads."""
    return f"H={heads}" + (f" KV={kv_heads}" if kv_heads not in (None, heads) else "")


def serving_text(row: Mapping[str, Any]) -> str:
    """' seq_lens=uniform:512-4096:16 page=16' for a serving batch (a seed other than 0 named), else ''."""
    def cell(column: str) -> str:
        text = str(row.get(column, ""))
        return "" if text in ("", "nan", "None") else text.removesuffix(".0")

    if not cell("seq_lens"):
        return ""
    seed = f" seed={cell('seq_lens_seed')}" if cell("seq_lens_seed") not in ("", "0") else ""
    page = f" page={cell('page_size')}" if cell("page_size") else ""
    return f" seq_lens={cell('seq_lens')}{seed}{page}"


def shape_text(row: Mapping[str, Any]) -> str:
    """'B=1 H=8 KV=2 D=64' (KV only where it differs from H), and a serving batch's lengths and page size."""
    return f"B={row['batch']} {heads_text(row['heads'], row.get('kv_heads'))} D={row['head_dim']}{serving_text(row)}"


def row_label(row: Mapping[str, Any]) -> str:
    """'local(window=64) eager 8192 fwd': pattern(params) impl n mode, with GQA heads, dtype and device where
    they are not the defaults."""
    parts = [pattern_label(row["pattern"], row.get("params")), str(row["impl"]),
             serving_text(row).strip() or str(row["seq_len"]), mode_label(row["mode"], row.get("q_len"))]
    if row.get("kv_heads") not in (None, row.get("heads")):
        parts.append(f"kv_heads={row['kv_heads']}")
    parts += [str(row[c]) for c, default in (("dtype", "float32"), ("device", "cpu")) if row.get(c) != default]
    return " ".join(parts)
