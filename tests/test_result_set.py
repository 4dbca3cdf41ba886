"""A result set is read once, from a results.csv, a run's directory or a directory of shards, into one frozen
value with a read-only meta.json."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from sparsebench.merge import open_result_set
from sparsebench.results import KEY_COLUMNS, RESULTS_NAME, Meta, ResultSet, read_results
from sparsebench.runner.cases import Case

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "baselines" / "ci-cpu"


def test_a_file_and_its_directory_open_to_the_same_set(tmp_path: Path) -> None:
    by_file, by_dir = open_result_set(BASELINE / RESULTS_NAME), open_result_set(BASELINE)
    assert by_file.frame.equals(by_dir.frame) and by_file.frame.equals(read_results(BASELINE / RESULTS_NAME))
    assert by_file.meta == by_dir.meta and by_file.meta.config and by_file.notes == ()
    assert by_file.path == by_dir.path == BASELINE / RESULTS_NAME and by_dir.source == BASELINE


def test_a_directory_of_shards_opens_merged_with_notes(tmp_path: Path) -> None:
    shard = tmp_path / "shard-1-of-2"
    shard.mkdir()
    shutil.copy(BASELINE / RESULTS_NAME, shard / RESULTS_NAME)
    found = open_result_set(tmp_path)
    assert found.csv_path is None and found.path == tmp_path / RESULTS_NAME
    assert len(found.frame) == len(read_results(BASELINE / RESULTS_NAME))
    assert any("shard" in note and "2/2" in note for note in found.notes), found.notes


def test_a_result_set_and_its_meta_are_read_only() -> None:
    found = ResultSet.read(BASELINE / RESULTS_NAME)
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.frame = found.frame  # type: ignore[misc]
    with pytest.raises(TypeError):
        found.meta["label"] = "x"  # type: ignore[index]
    copy = found.meta.to_dict()
    copy["label"] = "x"
    assert Meta(copy).label == "x" and found.meta.get("label") != "x"
    assert found.meta.git_sha == str(found.meta.get("git_sha") or "").removesuffix("+dirty")


def test_case_fields_are_the_key_columns() -> None:
    """A Case is one row's key: its fields and the schema's KEY_COLUMNS must not drift apart."""
    assert [f.name for f in dataclasses.fields(Case)] == KEY_COLUMNS


def test_readers_read_meta_through_its_typed_properties() -> None:
    from sparsebench.history import HistoryRun
    from sparsebench.runner.sweep import Sweep

    meta = Meta({"date": "2026-12-01T10:00:00Z", "git_sha": "abc1234+dirty", "config": {"timeout": 42.0},
                 "shard": "not a table"})
    assert meta.date == "2026-12-01T10:00:00Z" and meta.git_sha == "abc1234" and meta.shard is None
    assert Meta({}).date == "" and Meta({"config": "x"}).config == {}
    run = HistoryRun("a", read_results(Path(__file__).parents[1] / "baselines" / "ci-cpu" / "results.csv"),
                     {"date": "2026-12-01T10:00:00Z", "git_sha": "abc1234+dirty"})  # a plain dict is taken
    assert isinstance(run.meta, Meta) and run.sha == "abc1234" and run.date.hour == 10
    assert Sweep.from_meta(meta).config.timeout == 42.0  # a re-run's timing settings: the run's own
