"""A result set: the rows of one results file (or of a directory of shards merged), its meta.json and where it
came from, read once and handed to every reader (plot, gate, export, history)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from sparsebench.results.dirs import RESULTS_NAME
from sparsebench.results.schema import benchmark_rows, read_meta, read_results


class Meta(Mapping[str, Any]):
    """meta.json, read-only: every key as written (old files load as they are), the ones readers use typed."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = MappingProxyType(dict(data or {}))

    @classmethod
    def read(cls, results_csv: str | Path) -> Meta:
        """The meta.json beside a results.csv (empty when there is none)."""
        return cls(read_meta(results_csv))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Meta({dict(self._data)!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain, mutable copy (to write a new meta.json from)."""
        return dict(self._data)

    @property
    def label(self) -> str:
        """The run's name for legends ('' when none was given)."""
        return str(self._data.get("label") or "")

    @property
    def git_sha(self) -> str:
        """The commit the run was measured at, without its '+dirty' mark ('' when unknown)."""
        return str(self._data.get("git_sha") or "").removesuffix("+dirty")

    @property
    def date(self) -> str:
        """When the run started (ISO 8601, as written; '' when unknown)."""
        return str(self._data.get("date") or "")

    @property
    def config(self) -> dict[str, Any]:
        """The sweep's settings as run (a `SweepConfig` as a dict; {} for merges and old files)."""
        config = self._data.get("config")
        return dict(config) if isinstance(config, dict) else {}

    @property
    def ceilings(self) -> dict[str, Any]:
        """Measured device ceilings: device type -> dtype -> name -> value."""
        ceilings = self._data.get("ceilings")
        return dict(ceilings) if isinstance(ceilings, dict) else {}

    @property
    def shard(self) -> dict[str, Any] | None:
        """The shard this run was (index, count and its case keys), None for a whole sweep."""
        shard = self._data.get("shard")
        return dict(shard) if isinstance(shard, dict) else None

    @property
    def merged(self) -> bool:
        """True for the meta.json of a merge of shards."""
        return "merged" in self._data


@dataclass(frozen=True)
class ResultSet:
    """Rows, meta.json and origin of one result set. `source`: the path as named (a file, a run's directory, a
    directory of shards); `csv_path`: the results.csv read (None: shards merged in memory); `notes`: what a
    reader should say about it (e.g. shards missing)."""

    frame: pd.DataFrame
    meta: Meta
    source: Path
    csv_path: Path | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def read(cls, csv_path: str | Path, source: str | Path | None = None) -> ResultSet:
        """One results.csv and the meta.json beside it; SparsebenchError (NotComparable for another schema)
        when it is not one."""
        csv_path = Path(csv_path)
        return cls(read_results(csv_path), Meta.read(csv_path), Path(source or csv_path), csv_path)

    @property
    def path(self) -> Path:
        """The results.csv this set is, or would be in its directory: what labels and output folders go by."""
        if self.csv_path is not None:
            return self.csv_path
        return self.source / RESULTS_NAME if self.source.is_dir() else self.source

    @property
    def benchmarks(self) -> pd.DataFrame:
        """The attention benchmark rows (without `sparsebench train`'s)."""
        return benchmark_rows(self.frame)
