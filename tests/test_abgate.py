"""The same-job A/B gate's checkouts and command: throwaway worktrees made and removed (also when interrupted),
each side's workers importing that side's plugin code, and bad input (refs, directories, plugins) as exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sparsebench import gate, paired
from sparsebench.cli import app
from sparsebench.errors import SparsebenchError
from sparsebench.runner import SweepConfig
from sparsebench.runner.checkout import checkouts
from sparsebench.runner.launcher import PACKAGE_ROOT
from sparsebench.runner.sweep import Sweep
from sparsebench.services import abgate

PLUGIN = '''import torch


def myattn(q, k, v, pattern):
    """The user's attention ({version})."""
    {body}
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pattern.dense_mask(q.shape[2]))
'''


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    """A user's repository: `mypkg/attn.py` whose first commit raises and whose second computes attention."""
    repo = tmp_path / "repo"
    (repo / "mypkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "README").write_text("a user's project\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "no plugin yet")
    (repo / "mypkg" / "__init__.py").write_text("")
    (repo / "mypkg" / "attn.py").write_text(PLUGIN.format(version="v1", body='raise RuntimeError("the v1 code")'))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "v1")
    (repo / "mypkg" / "attn.py").write_text(PLUGIN.format(version="v2", body="pass"))
    _git(repo, "commit", "-qam", "v2")
    return repo


def _worktrees(repo: Path) -> list[str]:
    return [line for line in _git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree")]


def test_checkouts_make_worktrees_of_each_ref_and_remove_them(user_repo):
    with checkouts(user_repo, "HEAD~1", "HEAD", cwd=user_repo) as (base, head):
        assert "the v1 code" in (base.tree / "mypkg" / "attn.py").read_text()
        assert "the v1 code" not in (head.tree / "mypkg" / "attn.py").read_text()
        assert base.commit == _git(user_repo, "rev-parse", "HEAD~1") and base.label.startswith("HEAD~1 (")
        assert base.source.cwd == str(base.tree) and base.source.root == PACKAGE_ROOT  # not a sparsebench tree
        assert len(_worktrees(user_repo)) == 3
        made = base.tree.parent
    assert _worktrees(user_repo) == [f"worktree {user_repo.resolve()}"]
    assert not made.exists()


def test_the_head_defaults_to_the_working_tree_as_it_is(user_repo):
    (user_repo / "mypkg" / "attn.py").write_text("# edited\n")
    with checkouts(user_repo, "HEAD", None, cwd=user_repo) as (base, head):
        assert head.tree == user_repo.resolve() and head.commit.endswith("+dirty")
        assert "working tree" in head.label and len(_worktrees(user_repo)) == 2


def test_an_interrupt_in_the_round_loop_leaves_no_worktree(user_repo, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Sweep, "measure", interrupted)
    config = SweepConfig(patterns=["local:window=8"], impls=["sdpa"], seq=[64], devices=["cpu"])
    with pytest.raises(KeyboardInterrupt):
        with checkouts(user_repo, "HEAD~1", None, cwd=user_repo) as (base, head):
            made = base.tree.parent
            abgate.run_ab(abgate.Arm(config, base.source, "base"), abgate.Arm(config, head.source, "head"), 3,
                          gate.Thresholds())
    assert len(_worktrees(user_repo)) == 1 and not made.exists()


def test_ctrl_c_in_the_command_exits_130_and_removes_the_worktrees(user_repo, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Sweep, "measure", interrupted)
    result = CliRunner().invoke(app, ["gate", "--base-ref", "HEAD~1", "--repo", str(user_repo), "--pattern",
                                      "local:window=8", "--impl", "sdpa", "--seq", "64", "--device", "cpu"])
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert len(_worktrees(user_repo)) == 1


@pytest.mark.parametrize("args, message", [
    (["--base-ref", "no-such-ref"], "--base-ref no-such-ref: no such commit"),
    (["--base-ref", "HEAD", "--head-ref", "nope~3"], "--head-ref nope~3: no such commit"),
    (["--base-ref", "HEAD~2", "--impl", "mypkg.attn:myattn"], "has no mypkg.attn"),
    (["--base-ref", "HEAD~2", "--impl", "mypkg/attn.py:myattn"], "has no mypkg/attn.py"),
    (["--base-ref", "HEAD", "--base-impl", "sdpa"], "give one of them"),
    (["--base-ref", "HEAD", "BASE.csv"], "BASELINE: not with --base-ref"),
    (["--pattern", "local"], "--pattern: only with --base-ref or --base-impl"),
    (["A.csv", "B.csv", "--rounds", "9"], "--rounds: only with --base-ref or --base-impl"),
    ([], "give BASELINE and CURRENT"),
])
def test_bad_input_is_one_line_and_exit_2(user_repo, monkeypatch, args, message):
    monkeypatch.chdir(user_repo)
    result = CliRunner().invoke(app, ["gate", *args, "--seq", "64", "--device", "cpu"] if args and
                                args[0] in ("--base-ref",) else ["gate", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert len(_worktrees(user_repo)) == 1


def test_a_directory_that_is_no_git_repository_is_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["gate", "--base-ref", "HEAD", "--repo", str(tmp_path), "--seq", "64"])
    assert result.exit_code == 2 and "not a git repository" in result.stderr


def test_checkouts_refuse_a_bad_ref_before_making_anything(user_repo):
    with pytest.raises(SparsebenchError, match="no such commit"):
        with checkouts(user_repo, "HEAD~9", None):
            pass
    assert len(_worktrees(user_repo)) == 1


@pytest.mark.slow
def test_each_side_imports_its_own_plugin_code(user_repo, monkeypatch, tmp_path):
    """base (v1) raises in every call, head (v2) computes: the rows show which tree each side's workers ran."""
    monkeypatch.chdir(user_repo)
    out = tmp_path / "ab"
    result = CliRunner().invoke(app, ["gate", "--base-ref", "HEAD~1", "--head-ref", "HEAD", "--impl",
                                      "mypkg.attn:myattn", "--pattern", "local:window=8", "--seq", "64", "--device",
                                      "cpu", "--rounds", "3", "--min-run-time", "0.02", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output  # the head fixed an error: an improvement, no regression
    base = pd.read_csv(out / "base" / "results.csv")
    head = pd.read_csv(out / "head" / "results.csv")
    mine = base[base["impl"] == "myattn"]
    assert len(mine) == 3 and (mine["status"] == "error").all() and mine["error"].str.contains("the v1 code").all()
    assert (head[head["impl"] == "myattn"]["status"] == "ok").all()
    assert "status error -> ok" in result.stderr and "HEAD~1 (" in result.stderr
    assert len(_worktrees(user_repo)) == 1


def test_two_implementations_are_paired_case_by_case():
    """--base-impl: the base impl's rows are compared with the head impl's of the same pattern and shape."""
    config = SweepConfig(patterns=["local:window=8"], impls=["sdpa"], seq=[64], devices=["cpu"])
    base, head, rename = abgate.impl_arms(config, "eager", "structured")
    assert (base.config.impls, head.config.impls, base.label, head.label) == (["eager"], ["structured"], "eager",
                                                                              "structured")
    assert rename({"impl": "eager", "pattern": "local"})["impl"] == "structured"
    assert rename({"impl": "sdpa", "pattern": "dense"})["impl"] == "sdpa"  # the dense reference keeps its name
    with pytest.raises(SparsebenchError, match="same implementation"):
        abgate.impl_arms(config, "sdpa", "sdpa")


@pytest.mark.slow
def test_base_impl_gate_runs_both_implementations_in_rounds(tmp_path):
    out = tmp_path / "ab"
    result = CliRunner().invoke(app, ["gate", "--base-impl", "eager", "--impl", "structured", "--pattern",
                                      "local:window=8", "--seq", "128", "--device", "cpu", "--rounds", "3",
                                      "--min-run-time", "0.02", "--out-dir", str(out), "--summary",
                                      str(tmp_path / "ab.md")])
    assert result.exit_code in (0, 1), result.output
    base = pd.read_csv(out / "base" / "results.csv")
    head = pd.read_csv(out / "head" / "results.csv")
    assert set(base["impl"]) == {"eager", "sdpa"} and set(head["impl"]) == {"structured", "sdpa"}
    assert base["run_id"].nunique() >= 3 and head["run_id"].nunique() >= 3  # more: confirmation rounds
    assert "local(window=8)/structured/128" in (tmp_path / "ab.md").read_text()
    assert "`structured` against `eager`" in (tmp_path / "ab.md").read_text()


def test_a_sparsebench_checkout_is_what_its_workers_import(tmp_path):
    from sparsebench.runner.checkout import source_of

    (tmp_path / "sparsebench" / "runner").mkdir(parents=True)
    (tmp_path / "sparsebench" / "runner" / "worker.py").write_text("")
    assert source_of(tmp_path, tmp_path / "sub") == abgate.WorkerSource(root=str(tmp_path), cwd=str(tmp_path / "sub"))
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert source_of(other, other).root == PACKAGE_ROOT


@pytest.mark.parametrize("protocol_py, speaks", [("VERSION = 1\n", "protocol 1"), (None, "a protocol older")])
def test_a_tree_whose_workers_speak_another_protocol_is_refused_before_any_round(tmp_path, protocol_py, speaks):
    (tmp_path / "sparsebench" / "runner").mkdir(parents=True)
    if protocol_py is not None:
        (tmp_path / "sparsebench" / "runner" / "protocol.py").write_text(protocol_py)
    config = SweepConfig(patterns=["local"], impls=["sdpa"], seq=[128], devices=["cpu"])
    old = abgate.Arm(config, abgate.WorkerSource(root=str(tmp_path)), "base abc123")
    this = abgate.Arm(config, abgate.THIS_PROCESS, "head")
    abgate.check_protocol(this)
    with pytest.raises(SparsebenchError, match=f"base abc123: its sparsebench workers speak {speaks}"):
        abgate.run_ab(old, this, 3, gate.Thresholds())


def test_confirmation_rounds_hold_the_flagged_cases_and_their_reference():
    """Dense-normalised: a flagged case and its shape's dense reference; SDPA-normalised: every SDPA case of its
    shape too (the other shape is not measured again)."""
    config = SweepConfig(patterns=["local:window=8", "strided:stride=4"], impls=["sdpa", "structured"],
                         seq=[64, 128], devices=["cpu"])
    cases, _ = Sweep(config).cases()
    flagged = next(c for c in cases if c.impl == "structured" and c.seq_len == 64 and c.pattern == "local")
    dense = abgate._with_references(cases, {flagged.key()}, None)
    assert [(c.pattern, c.impl) for c in dense] == [("dense", "sdpa"), ("local", "structured")]
    sdpa = abgate._with_references(cases, {flagged.key()}, None, sdpa=True)
    assert {(c.pattern, c.impl, c.seq_len) for c in sdpa} == {("dense", "sdpa", 64), ("local", "sdpa", 64),
                                                              ("strided", "sdpa", 64), ("local", "structured", 64)}


@pytest.mark.parametrize("args, pairs", [([], paired.DEFAULT_CONFIRM_PAIRS), (["--confirm-rounds", "4"], 4),
                                         (["--confirm", "0", "--confirm-rounds", "4"], 0)])
def test_confirmation_pairs_come_from_confirm_rounds(monkeypatch, args, pairs):
    """The flagged cases are re-measured on --confirm-rounds fresh pairs (default fewer than --rounds), none with
    --confirm 0."""
    seen = {}

    def run_ab(base, head, rounds, thresholds, **options):
        seen.update(options, rounds=rounds)
        raise SparsebenchError("measured nothing")

    monkeypatch.setattr(abgate, "run_ab", run_ab)
    result = CliRunner().invoke(app, ["gate", "--base-impl", "eager", "--impl", "structured", "--pattern", "local",
                                      "--seq", "64", "--device", "cpu", *args])
    assert result.exit_code == 2 and "measured nothing" in result.stderr
    assert seen["rounds"] == paired.DEFAULT_ROUNDS and seen["confirm_pairs"] == pairs
