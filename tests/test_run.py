"""`sparsebench run`: bad input, isolation (crash, OOM kill, timeout), preflight, memory, resume, output."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.results import COLUMNS, REQUIRED_COLUMNS, latest, parse_samples, read_results

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "fault_impls.py"  # test-only implementations that fail or slow down on purpose
FAST = ["--min-run-time", "0.05", "--heads", "2", "--head-dim", "32"]


def invoke(args, env=None):
    return CliRunner().invoke(app, args, env=env)


def run_ok(tmp_path, *args, env=None):
    result = invoke(["run", "--out-dir", str(tmp_path), *FAST, *args], env=env)
    assert result.exit_code == 0, result.stderr
    return read_results(tmp_path / "results.csv")


@pytest.mark.parametrize("args,needle", [
    (["--seq", "0"], "--seq"),
    (["--seq", "abc"], "--seq"),
    (["--pattern", "nope"], "choose from: dense, causal, local"),
    (["--impl", "nope"], "choose from: seed"),
    (["--device", "cuda:7"], "cuda"),
    (["--device", "tpu"], "unknown device"),
    (["--config", "/no/such/file.toml"], "cannot read config"),
    (["--dtype", "int8"], "unknown dtype"),
    (["--mode", "bwd"], "unknown mode"),
    (["--pattern", "local", "--window", "0"], "window"),
    (["--pattern", "local:window=x"], "bad pattern parameter"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    result = invoke(["run", "--out-dir", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text,needle", [
    ("seq = 'x'", "'seq'"), ("sequence = [1]", "unknown key 'sequence'"), ("seq = [", "invalid config"),
    ("[params]\nwindw = 3", "windw"), ("timeout = 'slow'", "'timeout'"),
])
def test_bad_config_names_the_key(text, needle, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = invoke(["run", "--config", str(config), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke(["run", "--seq", "64", "--out-dir", str(blocker / "sub")])
    assert result.exit_code == 2 and "cannot write" in result.stderr


def test_configs_in_repo_are_valid():
    from sparsebench.runner.config import SweepConfig, load_config

    for path in (ROOT / "configs").glob("*.toml"):
        if path.name != "gate.toml":
            SweepConfig(**load_config(path))


@pytest.mark.slow  # worker processes
def test_run_writes_tidy_rows_with_dense_baseline(tmp_path):
    frame = run_ok(tmp_path, "--pattern", "local", "--pattern", "strided", "--seq", "200", "--impl", "eager")
    assert list(frame.columns) == COLUMNS and set(REQUIRED_COLUMNS) <= set(frame.columns)
    assert list(zip(frame.pattern, frame.impl)) == [("dense", "sdpa"), ("local", "eager"), ("strided", "eager")]
    assert (frame.status == "ok").all()
    local = frame[frame.pattern == "local"].iloc[0]
    assert local.params == "window=64"
    assert local.flops_useful == 4 * 1 * 2 * 32 * local.nnz
    assert local.flops_executed == 4 * 1 * 2 * 32 * 200 * 200  # eager computes every pair
    assert local.speedup_vs_dense == pytest.approx(local.dense_latency_ms / local.latency_ms)
    assert local.max_abs_err < 1e-4
    samples = parse_samples(local.samples_ms)
    assert len(samples) >= 5 and min(samples) <= local.latency_ms <= max(samples)
    assert local.n_calls >= 1 + 2 + 1 + len(samples)  # first call, warm-up, memory call, one per sample at least
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["torch"] and meta["cpu"] and meta["config"]["seq"] == [200] and meta["harness"]["workers"] == 1


def test_explicit_unsupported_impl_is_a_row(tmp_path):
    frame = run_ok(tmp_path, "--pattern", "causal", "--seq", "64", "--impl", "seed", "--impl", "flex",
                   "--mode", "fwdbwd")
    rows = frame.set_index("impl")
    assert rows.loc["seed", "status"] == "unsupported" and "local" in rows.loc["seed", "error"]
    assert rows.loc["flex", "status"] == "unsupported" and "inference only" in rows.loc["flex", "error"]


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("fault,status", [("kill", "oom"), ("oom", "oom"), ("raise", "error")])
def test_a_failing_case_becomes_a_row_and_the_sweep_goes_on(fault, status, tmp_path):
    frame = run_ok(tmp_path, "--pattern", "local", "--seq", "128", "--seq", "256", "--impl", f"{FAULTS}:eager_{fault}",
                   "--impl", "sdpa")
    by = {(r.impl, r.pattern, r.seq_len): r for r in frame.itertuples()}
    for n in (128, 256):
        assert by[("faulty_eager", "local", n)].status == status
        assert by[("sdpa", "local", n)].status == "ok"  # ran after the failure, in a new worker
        assert by[("sdpa", "dense", n)].status == "ok"


@pytest.mark.slow
def test_timeout_becomes_a_row(tmp_path):
    # The hang is injected (an hour's sleep), so the limit can be generous: it must also cover the worker's
    # start-up (interpreter, torch import, ceilings) on a busy machine, where the other cases must pass.
    frame = run_ok(tmp_path, "--pattern", "local", "--seq", "128", "--impl", f"{FAULTS}:eager_hang", "--impl", "sdpa",
                   "--timeout", "30")
    by = frame.set_index("impl")
    assert by.loc["faulty_eager", "status"] == "timeout"
    assert (frame[frame.impl == "sdpa"].status == "ok").all()


@pytest.mark.slow  # worker processes
def test_preflight_skips_what_cannot_fit(tmp_path):
    # eager at n = 131072 needs B*H*n^2*4 bytes = 128 GiB of scores: far beyond this machine.
    frame = run_ok(tmp_path, "--pattern", "local", "--seq", "131072", "--impl", "eager", "--impl", "structured",
                   "--heads", "1", "--min-run-time", "0.05")
    by = frame.set_index("impl")
    assert by.loc["eager", "status"] == "skipped" and "preflight" in by.loc["eager", "error"]
    assert by.loc["structured", "status"] == "ok"


@pytest.mark.slow  # worker processes
def test_eager_peak_memory_holds_its_score_matrix(tmp_path):
    frame = run_ok(tmp_path, "--pattern", "causal", "--seq", "4096", "--impl", "eager", "--impl", "sdpa")
    rows = frame.set_index(["pattern", "impl"])
    scores_mib = 1 * 2 * 4096 * 4096 * 4 / 2**20  # B * H * n^2 * 4 bytes
    assert rows.loc[("causal", "eager"), "peak_mem_mib"] >= scores_mib
    assert rows.loc[("causal", "sdpa"), "peak_mem_mib"] < scores_mib / 10


@pytest.mark.slow  # worker processes
def test_resume_skips_done_cases(tmp_path):
    run_ok(tmp_path, "--pattern", "local", "--seq", "64", "--impl", "eager")
    frame = run_ok(tmp_path, "--pattern", "local", "--seq", "64", "--seq", "96", "--impl", "eager", "--resume")
    assert len(frame) == 4  # 2 from the first run, 2 new
    assert not frame.duplicated(["pattern", "impl", "seq_len"]).any()
    assert frame[(frame.seq_len == 96) & (frame.impl == "eager")].speedup_vs_dense.notna().all()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert [run["config"]["seq"] for run in meta["earlier_runs"]] == [[64]]  # the first run's config is kept
    assert meta["config"]["seq"] == [64, 96]
    assert "matmul_tflops" in meta["ceilings"]["cpu"]["float32"]


@pytest.mark.slow  # worker processes
def test_resume_measures_the_dense_reference_again(tmp_path):
    """A resumed shape group gets its own dense reference: no speed-up compares two runs."""
    run_ok(tmp_path, "--pattern", "local", "--seq", "64", "--impl", "eager")
    frame = run_ok(tmp_path, "--pattern", "local", "--seq", "64", "--impl", "eager", "--impl", "structured",
                   "--resume")
    assert len(frame) == 4  # dense and eager from the first run; dense again and structured from the second
    first, second = frame.run_id.unique()
    dense = frame[frame.pattern == "dense"].set_index("run_id")
    structured = frame[frame.impl == "structured"].iloc[0]
    assert structured.run_id == second
    assert structured.dense_latency_ms == dense.loc[second, "latency_ms"]
    eager = frame[frame.impl == "eager"].iloc[0]
    assert eager.run_id == first and eager.dense_latency_ms == dense.loc[first, "latency_ms"]
    assert list(latest(frame).pattern).count("dense") == 1  # readers take the latest row of a case


@pytest.mark.slow
def test_ctrl_c_keeps_finished_rows(tmp_path):
    from test_faults import start_hanging_run  # the eager case hangs after the dense row is written

    proc, _ = start_hanging_run(tmp_path)
    csv = tmp_path / "results.csv"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted: 1 finished row(s) of this run kept in" in err and "--resume" in err
    frame = read_results(csv)
    assert list(frame.impl) == ["sdpa"] and frame.status.iloc[0] == "ok"  # the dense reference survived


def test_command_line_overrides_the_config_file(tmp_path):
    """Options on the command line replace the TOML's values; what they do not name comes from the TOML.
    seed implements only local and strided, so these cases are rows without a worker process."""
    config = tmp_path / "sweep.toml"
    config.write_text('patterns = ["dilated", "bigbird"]\nimpls = ["seed"]\nseq = [64]\nheads = [1]\n'
                      "timeout = 30\n[params]\nwindow = 8\ndilation = 3\nmask_seed = 1\n")
    out = tmp_path / "out"
    result = invoke(["run", "--config", str(config), "--out-dir", str(out), "--seq", "96", "--heads", "2",
                     "--window", "16", "--mask-seed", "2"])
    assert result.exit_code == 0, result.stderr
    frame = read_results(out / "results.csv").set_index("pattern")
    assert (frame.impl == "seed").all() and (frame.status == "unsupported").all()
    assert (frame.seq_len == 96).all() and (frame.heads == 2).all()
    assert frame.loc["dilated", "params"] == "dilation=3;window=16"
    assert frame.loc["bigbird", "params"] == "block=64;global_blocks=1;mask_seed=2;random_blocks=3"
    config_meta = json.loads((out / "meta.json").read_text())["config"]
    assert config_meta["seq"] == [96] and config_meta["heads"] == [2] and config_meta["timeout"] == 30
    assert config_meta["params"] == {"window": 16, "dilation": 3, "mask_seed": 2}
    assert config_meta["patterns"] == ["dilated", "bigbird"] and config_meta["impls"] == ["seed"]


@pytest.mark.slow
def test_run_gate_exit_codes(tmp_path):
    """`run --gate BASELINE`: exit 1 when an implementation got slower, 0 when it did not.

    The slowdown is injected (tests/fault_impls.py: structured, busy-waiting in each call). The passing run is
    3x faster than its baseline rather than an A/A pair: on a shared machine two equal runs can differ
    significantly (README, "Does it cry wolf?"), and this test is about the exit codes, not the noise."""
    sweep = ["run", *FAST, "--pattern", "local:window=16", "--seq", "256", "--impl"]
    base = tmp_path / "base"
    assert invoke([*sweep, f"{FAULTS}:structured_x1", "--out-dir", str(base)]).exit_code == 0
    slow = invoke([*sweep, f"{FAULTS}:structured_x3", "--out-dir", str(tmp_path / "slow"),
                   "--gate", str(base / "results.csv")])
    assert slow.exit_code == 1, slow.output
    assert "REGRESSION local(window=16)/faulty_structured/256/float32/fwd: latency/dense" in slow.output
    fast = invoke([*sweep, f"{FAULTS}:structured_x1", "--out-dir", str(tmp_path / "fast"),
                   "--gate", str(tmp_path / "slow" / "results.csv")])
    assert fast.exit_code == 0, fast.output
    assert "gate PASS" in fast.output and "IMPROVEMENT local(window=16)/faulty_structured/256" in fast.output
    assert read_results(tmp_path / "fast" / "results.csv").status.eq("ok").all()  # the run was written first


def test_command_line_options_go_over_a_config_file_s_settings_typed():
    from sparsebench.runner.config import SweepOptions

    file = {"patterns": ["local"], "seq": [256], "timeout": 30.0, "input_seed": 3, "params": {"window": 16}}
    config = SweepOptions(seq=[128], timeout=None, input_seed=0, params={"stride": 4}).over(file)
    assert config.seq == [128] and config.patterns == ["local"]  # given: over the file; not given: the file's
    assert config.timeout == 30.0 and config.input_seed == 0  # a seed of 0 is given
    assert config.params == {"window": 16, "stride": 4}
    assert SweepOptions(timeout=5.0).over({}).timeout == 5.0 and SweepOptions().over({}).timeout == 600.0
