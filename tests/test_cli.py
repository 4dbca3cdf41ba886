"""`sparsebench list`, `info` and the top-level app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.impls import IMPLS
from sparsebench.patterns import PATTERNS


def test_list_shows_every_pattern_and_impl_with_defaults():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    for name in [*PATTERNS, *IMPLS]:
        assert name in result.stdout
    assert "window=64" in result.stdout and "stride=8" in result.stdout
    assert "inference only" in result.stdout


def test_bigbird_mask_seed_has_one_name():
    """The name `list` shows is the config key, the CSV params key and, with - for _, the option."""
    from sparsebench.patterns import get_pattern
    from sparsebench.runner.cases import case_params

    listed = CliRunner().invoke(app, ["list"]).stdout
    assert "mask_seed=0" in listed and "seed=0" not in listed.replace("mask_seed=0", "")
    assert "--mask-seed" in CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).stdout
    assert "mask_seed=5" in case_params(get_pattern("bigbird", mask_seed=5))


def test_info_json():
    result = CliRunner().invoke(app, ["info", "--json"])
    assert result.exit_code == 0
    env = json.loads(result.stdout)
    assert env["torch"] and env["cpu"] and isinstance(env["gpus"], list)


def test_unknown_command_is_one_line():
    result = CliRunner().invoke(app, ["frobnicate"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
