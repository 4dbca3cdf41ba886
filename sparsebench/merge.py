"""Shard results into one result set: one results.csv and one meta.json, as if from one machine; or repeated
runs of one sweep into the typical run of each case (`median_runs`, a gate baseline).

Inputs are results.csv files or directories: a directory's `shard-K-of-N/` subdirectories when it has any (what
`run --shard`, torchrun/srun ranks and Slurm arrays write), else its own results.csv. Each shard's meta.json lists
the cases it owns, so a shard that died part-way is named with the cases it did not finish.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.errors import SparsebenchError
from sparsebench.results import (
    COLUMNS,
    KEY_COLUMNS,
    RESULTS_NAME,
    SCHEMA_VERSION,
    Meta,
    ResultSet,
    case_key,
    is_dense_reference,
    key_text,
    merge_ceilings,
    read_meta,
    read_results,
    results_file,
    write_meta,
)
from sparsebench.results.labels import mode_label, pattern_label, shape_text
from sparsebench.runner.shard import Shard, parse_dirname

Key = tuple[str, ...]
INT_COLUMNS = ("schema_version", "batch", "heads", "kv_heads", "seq_len", "q_len", "head_dim", "nnz", "n_samples",
               "steps", "corpus_bytes", "gpu_index")
SHARED_META = ("sparsebench_version", "sparsebench_sha256", "torch", "cuda", "git_sha", "python", "config",
               "config_file")


@dataclass
class Part:
    """One input: its rows, its meta.json and, for a shard, which one it is."""

    path: Path  # results.csv (it may not exist yet: a shard that died before its first row)
    frame: pd.DataFrame
    meta: Meta
    versions: set[int]  # the schema versions its rows (or, without rows, its meta.json) were written with
    shard: Shard | None

    @property
    def name(self) -> str:
        return f"shard {self.shard}" if self.shard else str(self.path)


@dataclass
class Merged:
    """The combined rows and meta.json, and what is wrong with the set."""

    frame: pd.DataFrame
    meta: dict[str, Any]
    missing_shards: list[Shard] = field(default_factory=list)
    missing_cases: list[tuple[str, Key]] = field(default_factory=list)  # (shard, case key)
    duplicates: list[tuple[Key, list[str]]] = field(default_factory=list)  # (case key, inputs that hold it)
    unfinished: list[str] = field(default_factory=list)  # shards whose run did not finish

    @property
    def complete(self) -> bool:
        return not (self.missing_shards or self.missing_cases or self.duplicates)

    def problems(self) -> list[str]:
        """One line per missing shard, missing case and duplicate case."""
        lines = [f"missing shard {s}: no results (run it with --shard {s})" for s in self.missing_shards]
        lines += [f"{name} did not finish" for name in self.unfinished]
        lines += [f"missing case ({shard}): {case_label(key)}" for shard, key in self.missing_cases]
        lines += [f"duplicate case in {' and '.join(where)}: {case_label(key)}" for key, where in self.duplicates]
        return lines

    def summary(self) -> str:
        """The problems in one line."""
        parts = []
        if self.missing_shards:
            parts.append(f"{len(self.missing_shards)} shard(s) missing ({', '.join(map(str, self.missing_shards))})")
        if self.missing_cases:
            parts.append(f"{len(self.missing_cases)} case(s) missing")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} case(s) in more than one input")
        return "; ".join(parts)


def case_label(key: Key) -> str:
    """A case key as people read it: pattern(params) impl n=... dtype mode B/H/KV/D device."""
    row = dict(zip(KEY_COLUMNS, key))
    return (f"{pattern_label(row['pattern'], row['params'])} {row['impl']} n={row['seq_len']} {row['dtype']} "
            f"{mode_label(row['mode'], row['q_len'])} {shape_text(row)} {row['device']}")


def has_shards(directory: Path) -> bool:
    return any(_shard_dirs(directory))


def _shard_dirs(directory: Path) -> list[Path]:
    """The shard-K-of-N subdirectories that hold a results.csv or a meta.json."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and parse_dirname(p.name)
             and ((p / RESULTS_NAME).exists() or (p / "meta.json").exists())]
    return sorted(found, key=lambda p: (parse_dirname(p.name).count, parse_dirname(p.name).index))


def find_results(inputs: list[Path]) -> list[Path]:
    """The results.csv of every input, in order, each once."""
    out: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            shards = _shard_dirs(path)
            if shards:
                out += [p / RESULTS_NAME for p in shards]
            elif (path / RESULTS_NAME).is_file():
                out.append(path / RESULTS_NAME)
            else:
                raise SparsebenchError(f"{path}: no results.csv and no shard-K-of-N directories in it")
        elif path.is_file():
            out.append(path)
        else:
            raise SparsebenchError(f"{path}: no such file or directory")
    unique = {p.resolve(): p for p in reversed(out)}
    return [p for p in out if unique.get(p.resolve()) is p]


def load(paths: list[Path]) -> list[Part]:
    """Read each results.csv (a missing one of a shard that has a meta.json reads as no rows)."""
    parts = []
    for path in paths:
        meta = Meta(read_meta(path))
        if path.exists():
            frame, versions = read_results(path, allow_empty=True), _row_versions(path)
        elif meta:
            frame, versions = pd.DataFrame(columns=COLUMNS), set()
        else:
            raise SparsebenchError(f"{path}: no such file")
        if not versions and isinstance(meta.get("schema_version"), int):
            versions = {meta["schema_version"]}
        info = meta.shard
        shard = Shard(int(info["index"]), int(info["count"])) if info else parse_dirname(path.parent.name)
        parts.append(Part(path, frame, meta, versions, shard))
    return parts


def _row_versions(path: Path) -> set[int]:
    """The schema_version values of a results.csv as written (read_results reads every version as the latest)."""
    with open(path, newline="") as fh:
        rows = csv.DictReader(fh)
        values = {row.get("schema_version") or "" for row in rows}
    return {int(float(v)) for v in values if v.strip()}


def merge(parts: list[Part]) -> Merged:
    """Combine the inputs; raise SparsebenchError when they cannot be one result set (schema versions, splits
    or sweep configurations that differ). Missing and duplicate cases are reported in the result."""
    if not parts:
        raise SparsebenchError("nothing to merge")
    versions = {v for part in parts for v in part.versions}
    if len(versions) > 1:
        listing = ", ".join(f"{part.name} v{'/v'.join(map(str, sorted(part.versions)))}" for part in parts
                            if part.versions)
        raise SparsebenchError(f"the inputs mix result schema versions ({listing}); merge results of one version")
    shards = [part for part in parts if part.shard]
    counts = sorted({part.shard.count for part in shards})
    if len(counts) > 1:
        raise SparsebenchError(f"the inputs come from different splits (into {' and '.join(map(str, counts))} "
                               "shards); merge the shards of one split")
    check_one_sweep(parts)
    seen = [part.shard.index for part in shards]
    repeated = sorted({i for i in seen if seen.count(i) > 1})
    if repeated:
        raise SparsebenchError(f"shard {repeated[0]}/{counts[0]} is given more than once")

    where: dict[Key, list[str]] = {}
    for part in parts:
        for key in dict.fromkeys(case_key(r) for r in part.frame.to_dict("records")):
            where.setdefault(key, []).append(part.name)
    merged = Merged(_concat([part.frame for part in parts]), {})
    if merged.frame.empty:
        raise SparsebenchError(f"no result rows in {' or '.join(part.name for part in parts)}; nothing to merge")
    merged.duplicates = [(key, names) for key, names in where.items() if len(names) > 1]
    if counts:
        merged.missing_shards = [Shard(i, counts[0]) for i in range(1, counts[0] + 1) if i not in seen]
    for part in shards:
        owned = [tuple(key_text(v) for v in key) for key in part.meta.shard.get("cases", [])] \
            if part.meta.shard else []
        merged.missing_cases += [(part.name, key) for key in owned if key not in where]
        if "harness" not in part.meta:
            merged.unfinished.append(part.name)
    merged.meta = _meta(parts, merged)
    return merged


MIN_REPEATS = 3
# Recorded per run; repeats of one sweep must share them (a median across machines or installs is no one's run).
SAME_MACHINE_META = ("hostname", "cpu", "cpu_count", "torch", "cuda", "sparsebench_version", "git_sha")


def median_runs(parts: list[Part]) -> Merged:
    """Repeated runs of one sweep as one result set: for each case, the row of the run whose latency over its own
    run's dense reference (a dense reference: its latency) is the median of the case's ok rows, the lower middle of
    an even count. A case ok in fewer than half of the runs keeps its first failed row.

    Why: one run's ratios move with the minute it ran in (a dense reference measured while the machine was busy
    makes every case of its shape look faster), and a gate baseline of one such run turns that minute into a false
    alarm on every later run. The median run of each case is typical, and stays one real measurement: its own
    samples and its own dense reference (`dense_latency_ms`), as the gate normalises them."""
    if len(parts) < MIN_REPEATS:
        raise SparsebenchError(f"--median needs at least {MIN_REPEATS} runs of one sweep (got {len(parts)})")
    shards = [part.name for part in parts if part.shard]
    if shards:
        raise SparsebenchError(f"{shards[0]}: --median takes whole runs, not shards (merge each run's shards first)")
    check_one_sweep(parts)
    for key in SAME_MACHINE_META:
        values = {_text(part.meta.get(key)) for part in parts}
        if len(values) > 1:
            raise SparsebenchError(f"the runs differ in {key} ({', '.join(sorted(values))}): --median takes repeated "
                                   "runs on one machine with one install")
    per_run = []
    for part in parts:
        rows: dict[Key, dict[str, Any]] = {}
        for row in part.frame.to_dict("records"):
            if rows.setdefault(case_key(row), row) is not row:
                raise SparsebenchError(f"{part.name}: the case {case_label(case_key(row))} appears twice; "
                                       "--median takes runs of one sweep")
        per_run.append(rows)
    keys = list(dict.fromkeys(key for rows in per_run for key in rows))
    for part, rows in zip(parts, per_run):
        absent = [key for key in keys if key not in rows]
        if absent:
            raise SparsebenchError(f"{part.name} lacks {len(absent)} case(s) the other runs have, e.g. "
                                   f"{case_label(absent[0])}; --median takes complete runs of one sweep")
    chosen = [_median_row([rows[key] for rows in per_run]) for key in keys]
    frame = _concat([pd.DataFrame(chosen)])
    if frame.empty:
        raise SparsebenchError(f"no result rows in {' or '.join(part.name for part in parts)}; nothing to merge")
    meta = dict(parts[0].meta)
    meta["date"] = min(str(part.meta.get("date") or "") for part in parts) or meta.get("date")
    meta["merged"] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(part.path) for part in parts],
        "median_of": len(parts),
        "dates": [part.meta.get("date") for part in parts],
    }
    return Merged(frame, meta)


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of the median run among the ok ones (see median_runs)."""
    ok = [row for row in rows if row["status"] == "ok"]
    if len(ok) * 2 < len(rows):
        return next(row for row in rows if row["status"] != "ok")

    def relative(row: dict[str, Any]) -> float:
        latency = float(row["latency_ms"])
        return latency if is_dense_reference(row) else latency / float(row["dense_latency_ms"])

    ranked = sorted(ok, key=lambda row: (math.isnan(relative(row)), relative(row)))
    return ranked[(len(ranked) - 1) // 2]


def check_one_sweep(parts: list[Part]) -> None:
    """Raise SparsebenchError unless the inputs are results of one sweep: the same `config` in every meta.json
    (patterns, lengths, impls, devices, dtypes, modes, shapes and timing settings; hosts and GPU models may
    differ). An input without one cannot be told apart, so it merges only on its own."""
    if len(parts) < 2:
        return
    unknown = [part for part in parts if not part.meta.config]
    if unknown:
        raise SparsebenchError(f"{unknown[0].name}: no sweep configuration recorded (no meta.json with a config "
                               "beside it), so it cannot be shown to belong to the same sweep as the other inputs; "
                               "merge the results of one sweep")
    first = parts[0]
    for part in parts[1:]:
        if _text(part.meta.config) != _text(first.meta.config):
            old, new = first.meta.config, part.meta.config
            keys = sorted(k for k in {*old, *new} if _text(old.get(k)) != _text(new.get(k)))
            raise SparsebenchError(f"{first.name} and {part.name} ran different sweep configurations (their "
                                   f"meta.json differ in {', '.join(keys)}); merge the results of one sweep")


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def _meta(parts: list[Part], merged: Merged) -> dict[str, Any]:
    """The merged meta.json: what the shards share, every host and GPU, and each shard's own meta.json."""
    metas = [part.meta for part in parts]
    meta: dict[str, Any] = {}
    for key in SHARED_META:
        values = [m[key] for m in metas if key in m]
        distinct = list({_text(v): v for v in values}.values())
        if distinct:
            meta[key] = distinct[0] if len(distinct) == 1 else distinct
    dates = sorted(str(m["date"]) for m in metas if m.get("date"))
    if dates:
        meta["date"] = dates[0]
    meta["hosts"] = sorted({str(m["hostname"]) for m in metas if m.get("hostname")})
    meta["gpus"] = _gpus(parts)
    # every shard's user plugins, each distinct entry once (shards that ran other code keep both: gate --confirm
    # then refuses to re-run rather than pick one)
    plugin_entries = [p for m in metas for p in m.get("plugins") or [] if isinstance(p, dict)]
    if plugin_entries:
        meta["plugins"] = list({_text(p): p for p in plugin_entries}.values())
    meta["ceilings"] = _ceilings(parts)
    meta["merged"] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(part.path) for part in parts],
        "shards": parts[0].shard.count if parts[0].shard else None,
        "missing_shards": [str(s) for s in merged.missing_shards],
        "missing_cases": len(merged.missing_cases),
        "duplicates": len(merged.duplicates),
    }
    meta["merged_from"] = [{"path": str(part.path), **part.meta} for part in parts]
    return meta


def _gpus(parts: list[Part]) -> list[dict[str, Any]]:
    """Every GPU that measured a row: host, physical index and NVML name."""
    out: dict[tuple, dict[str, Any]] = {}
    for part in parts:
        host = str(part.meta.get("hostname") or "")
        rows = part.frame.dropna(subset=["gpu_index"]) if "gpu_index" in part.frame else part.frame.iloc[:0]
        for index, name in rows[["gpu_index", "gpu_name"]].drop_duplicates().itertuples(index=False):
            gpu = {"host": host, "index": int(index), "name": "" if _blank(name) else str(name)}
            out.setdefault((host, gpu["index"]), gpu)
    return sorted(out.values(), key=lambda g: (g["host"], g["index"]))


def _ceilings(parts: list[Part]) -> dict[str, Any]:
    """The shards' measured ceilings per device type, where every shard measured the same model (a roof of one
    GPU model is no roof for another)."""
    models: dict[str, set[str]] = {}
    for part in parts:
        for device, name in part.frame[["device", "device_name"]].drop_duplicates().itertuples(index=False):
            models.setdefault(str(device), set()).add("" if _blank(name) else str(name))
    merged: dict[str, Any] = {}
    for part in parts:
        merged = merge_ceilings(part.meta.get("ceilings"), merged)  # the earlier shards' values win
    return {device: values for device, values in merged.items() if len(models.get(device, set())) <= 1}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ""


def write(merged: Merged, out_dir: Path) -> Path:
    """results.csv and meta.json into out_dir, each replaced in one step; returns the results.csv path."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = merged.frame.copy()
        for column in INT_COLUMNS:
            values = pd.to_numeric(frame[column], errors="coerce")
            if values.notna().any() and (values.dropna() % 1 == 0).all():
                frame[column] = values.astype("Int64")
        frame["schema_version"] = SCHEMA_VERSION
        csv_path = out_dir / RESULTS_NAME
        _replace(csv_path, lambda tmp: frame.to_csv(tmp, index=False))
        _replace(out_dir / "meta.json", lambda tmp: write_meta(tmp, merged.meta))
    except OSError as exc:
        raise SparsebenchError(f"cannot write the merged results to {out_dir}: {exc.strerror or exc}") from None
    return csv_path


def _replace(path: Path, write_to: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write_to(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_out_dir(out_dir: Path, paths: list[Path]) -> None:
    """Refuse to write over an input, or over a run's own results (only an earlier merge may be replaced)."""
    target = (Path(out_dir) / RESULTS_NAME).resolve()
    if any(p.resolve() == target for p in paths):
        raise SparsebenchError(f"--out {out_dir}: its results.csv is one of the inputs; merge into another directory")
    if target.exists() and "merged" not in read_meta(target):
        raise SparsebenchError(f"--out {out_dir}: it holds the results of a run, not of a merge; choose another "
                               "directory")


def load_merged(inputs: list[Path]) -> Merged:
    """find_results, load and merge in one step."""
    return merge(load(find_results(inputs)))


def open_result_set(path: Path) -> ResultSet:
    """The result set a path names: a results.csv, a run's directory (its results.csv), or a directory of shards
    (merged in memory), for every reader. Missing shards or cases are notes; duplicate cases are an error."""
    path = Path(path)
    if not (path.is_dir() and has_shards(path)):
        return ResultSet.read(results_file(path), source=path)
    merged = load_merged([path])
    if merged.duplicates:
        raise SparsebenchError(f"{path}: {merged.summary()} (sparsebench merge {path} --out DIR lists them)")
    if merged.frame.empty:
        raise SparsebenchError(f"{path}: no result rows in its shards")
    notes = (f"{path}: {merged.summary()}; using what there is",) if not merged.complete else ()
    return ResultSet(merged.frame, Meta(merged.meta), path, None, notes)


def materialize(path: Path, tmp_dir: Path) -> tuple[Path, list[str]]:
    """A results.csv for `path`: itself, a directory's results.csv, or a directory's shards merged into
    tmp_dir (with their meta.json), and the notes of open_result_set."""
    path = Path(path)
    if not (path.is_dir() and has_shards(path)):
        return (path / RESULTS_NAME if path.is_dir() else path), []
    found = open_result_set(path)
    return write(Merged(found.frame, found.meta.to_dict()), tmp_dir), list(found.notes)
