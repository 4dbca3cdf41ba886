"""scripts/gpu_check.sh: its budget arithmetic, and a dry run (GPU_CHECK_DRY=1, a fake step runner) that proves the
order of the steps, the compact block at the end of the output and the files that come back from the device."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["imports", "info", "targets", "baselines", "cudnn-test", "tests", "profile", "gqa", "decode",
         "serving-prefill", "serving-decode", "selection", "aa-base", "aa", "patterns"]
AA = ["aa-base", "aa"]  # a call of their own (GPU_CHECK_ONLY): no cap, recorded as such in the main call
BACK = {"steps.txt", "summary.txt", "profile.txt", "aa.md", "sweep/results.csv", "sweep/meta.json",
        "selection/results.csv", "logs.tgz"}
MAX_FILES = 8  # what the device tool brings back, at most two folders down


def script_caps() -> tuple[dict[str, int], int, int]:
    text = SCRIPT.read_text()
    table = re.search(r"CAPS=\((.*?)\)", text, re.S)[1]
    caps = dict((name, int(s)) for name, s in re.findall(r"([\w-]+):(\d+)", table))
    budget = int(re.search(r"budget=\$\{2:-(\d+)\}", text)[1])
    reserve = int(re.search(r"^reserve=(\d+)", text, re.M)[1])
    return caps, budget, reserve


def test_caps_and_reserve_add_up_to_the_documented_budget():
    caps, budget, reserve = script_caps()
    header = SCRIPT.read_text().split("set -uo")[0]
    assert sum(caps.values()) + reserve == budget == 380
    assert f"BUDGET_S = {budget} s = the steps' caps ({sum(caps.values())} s" in header
    assert f"+ a {reserve} s reserve" in header and "timeout_s of 440 s" in header
    # every capped step runs, in the order of the table; only `patterns` takes the time left over
    steps = re.findall(r"^step ([\w-]+) ", SCRIPT.read_text(), re.M)
    assert steps == STEPS and list(caps) == [s for s in STEPS[:-1] if s not in AA]


def dry_run(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GPU_CHECK_DRY": "1", **env})


def block(stdout: str) -> list[str]:
    """The compact block: the lines from its title to the end of the output."""
    lines = stdout.rstrip("\n").splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("== gpu_check: budget"))
    return lines[start:]


def files_under(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_dry_run_brings_back_at_most_8_files_and_ends_with_the_step_block(tmp_path):
    out = tmp_path / "out"
    proc = dry_run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = files_under(out)
    assert files == BACK - {"aa.md"} and len(files) <= MAX_FILES
    assert all(f.count("/") <= 2 for f in files)
    assert not list(out.rglob("sparsebench.lock"))
    with tarfile.open(out / "logs.tgz") as tar:
        packed = {Path(n).as_posix().removeprefix("./") for n in tar.getnames()}
    assert {"run.log", "info.json", "pytest_cudnn.log", "pytest_cuda.log"} <= packed
    assert not any(n.endswith("sparsebench.lock") for n in packed)

    # the block comes after the summary, as the last lines, and names every step with its exit code and seconds
    lines = block(proc.stdout)
    assert proc.stdout.index("targets (best sparse implementation") < proc.stdout.index(lines[0])
    caps, budget, reserve = script_caps()
    assert lines[0].startswith(f"== gpu_check: budget {budget} s = caps {sum(caps.values())} s + reserve {reserve} s")
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert list(rows) == [*STEPS, "summary"]
    for name, (rc, seconds, limit, *_rest) in rows.items():
        if name in AA:
            assert rc == "-" and 'GPU_CHECK_ONLY="aa-base aa"' in " ".join(_rest), (name, _rest)
            continue
        assert rc == "0" and seconds.isdigit(), (name, rc, seconds)
        if name in caps:
            assert limit == str(caps[name])  # nothing overran: every capped step got its whole cap
    assert int(rows["targets"][3]) > 0 and int(rows["decode"][3]) > 0  # rows written into the sweep
    assert int(rows["baselines"][3]) > 0 and int(rows["selection"][3]) > 0  # selection: its own folder
    assert rows["tests"][3] == "-"  # not a run step
    # the serving batches' rows land in the same sweep file, told apart by their lengths and page size
    serving = [r for r in csv.DictReader(open(out / "sweep" / "results.csv", newline="")) if r["seq_lens"]]
    assert {(r["mode"], r["seq_lens"], r["batch"], r["page_size"]) for r in serving} == {
        ("fwd", "uniform:512-8192:16", "16", ""), ("decode", "uniform:1024-32768:32", "32", "16")}
    assert {r["pattern"] for r in serving} == {"dense", "causal", "local", "quest"}
    assert lines[-1].startswith("files (7): ")  # aa.md comes from the A/A call
    assert (out / "steps.txt").read_text().splitlines() == lines
    # the cuDNN path's test runs first, the rest after without it
    pytest_runs = re.findall(r"\(fake: pytest (.*)\)", proc.stdout)
    assert len(pytest_runs) == 2
    assert pytest_runs[0].endswith(" -m cuda tests/test_structured.py::test_cuda_fused_backends_match_reference")
    assert "--deselect tests/test_structured.py::test_cuda_fused_backends_match_reference" in pytest_runs[1]
    assert pytest_runs[1].endswith(" tests/test_structured.py tests/test_cuda.py")
    assert "selection, n = 32768" in proc.stdout and "selection target" in proc.stdout  # the summary's own table


def test_a_step_name_that_is_no_step_is_refused_at_once(tmp_path):
    proc = dry_run(tmp_path / "out", "200", GPU_CHECK_ONLY="aa_base aa")
    assert proc.returncode == 2 and "GPU_CHECK_ONLY: no step named aa_base" in proc.stderr
    assert not (tmp_path / "out" / "steps.txt").exists()


@pytest.mark.slow
def test_the_aa_call_runs_the_aa_steps_only_on_the_whole_budget(tmp_path):
    """GPU_CHECK_ONLY="aa-base aa" (the second call of a lease): the other steps are skipped, the A/A steps get
    the budget's time (no cap of their own), and their summary and runs come back."""
    out = tmp_path / "out"
    proc = dry_run(out, "200", GPU_CHECK_ONLY="aa-base aa")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split()[0]: line for line in block(proc.stdout)[2:-1]}
    assert all("skipped: not in GPU_CHECK_ONLY" in rows[name] for name in STEPS if name not in AA)
    for name in AA:
        rc, _seconds, limit = rows[name].split()[1:4]
        assert rc == "0" and int(limit) > 100, rows[name]  # 200 - 30 s reserve - what went before
    assert int(rows["aa-base"].split()[4]) > 0  # rows in its own results file
    assert files_under(out) == {"steps.txt", "aa.md", "logs.tgz"}
    assert (out / "aa.md").read_text().startswith("- A/A")
    with tarfile.open(out / "logs.tgz") as tar:
        packed = {Path(n).as_posix().removeprefix("./") for n in tar.getnames()}
    assert {"aa/base/results.csv", "aa/aa10/results.csv"} <= packed


@pytest.mark.slow
def test_a_step_over_its_limit_is_cut_and_later_steps_get_what_is_left(tmp_path):
    """With a 60 s budget (30 s reserve), a hanging `info` is cut at its 10 s cap and says so in the block; the
    steps after it get what is left of the budget, not their caps, and the files are still the ones listed."""
    out = tmp_path / "out"
    proc = dry_run(out, "60", GPU_CHECK_FAKE_SLEEP="info=100")
    assert proc.returncode == 1
    rows = {line.split()[0]: line for line in block(proc.stdout)[2:-1]}
    assert rows["info"].split()[1] == "124" and "cut at its limit" in rows["info"]
    assert int(rows["info"].split()[2]) < 10 + 15 + 3  # the cap, then SIGKILL's grace at most
    for name in ("targets", "patterns"):  # limit = min(cap, 60 - elapsed - 30), elapsed > 10 s here
        assert "not run: budget spent" in rows[name] or 5 <= int(rows[name].split()[3]) < 20
    assert files_under(out) <= BACK and not list(out.rglob("sparsebench.lock"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without CUDA")
def test_without_cuda_the_import_check_fails_fast_with_one_line(tmp_path):
    out = tmp_path / "out"
    proc = dry_run(out, GPU_CHECK_DRY="0")
    assert proc.returncode == 1
    assert "gpu_check: import check failed: torch" in proc.stdout and "CUDA not available" in proc.stdout
    rows = {line.split()[0]: line for line in block(proc.stdout)[2:-1]}
    assert rows["imports"].split()[1] == "1"
    assert all("not run: the import check failed" in rows[name] for name in STEPS[1:] if name not in AA)
    assert files_under(out) <= BACK


def test_the_sweep_steps_use_only_options_that_run_has():
    """The dry run's fake runner accepts any option: the real `sparsebench run` must know each one the check passes,
    and each impl and pattern must exist, or a step would fail on the GPU with a usage error."""
    from typer.testing import CliRunner

    from sparsebench.cli import app
    from sparsebench.impls import IMPLS
    from sparsebench.patterns import PATTERNS
    from sparsebench.patterns.selection import SELECTIONS

    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).stdout
    commands = re.findall(r'"\$\{sb\[@\]\}" run (.*?)(?:>>|$)', SCRIPT.read_text().replace("\\\n", " "), re.M)
    assert len(commands) == 9  # targets, baselines, gqa, decode, serving-prefill, serving-decode, selection, aa-base,
    #                            patterns
    sweep = re.search(r"^sweep=\((.*)\)", SCRIPT.read_text(), re.M)[1]
    serving = re.search(r"^serving=\((.*?)\)$", SCRIPT.read_text(), re.M | re.S)[1]
    for command in commands:
        command = command.replace('"${sweep[@]}"', sweep).replace('"${serving[@]}"', serving)
        for option in re.findall(r"(--[a-z-]+)", command):
            assert re.search(rf"{option}\b", help_text), option
        for impl in re.findall(r"--impl '?([\w\[\]]+)", command):
            assert impl in IMPLS
        for pattern in re.findall(r"--pattern ([\w]+)", command):
            assert pattern in PATTERNS or pattern in SELECTIONS
