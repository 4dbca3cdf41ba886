"""A baseline from another machine: deterministic metrics still gated, latency findings only warnings."""

from __future__ import annotations

from pathlib import Path

import pytest
from gate_data import FLEX, MACHINE, make_rows, write_run
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.machine import Machine, differences

XEON = {**MACHINE, "cpu": "Intel(R) Xeon(R) Platinum 8375C"}


def gate_run(tmp_path: Path, baseline: list[dict], current: list[dict], base_meta: dict | None,
             cur_meta: dict | None, *args: str):
    base = write_run(tmp_path / "base", baseline, base_meta)
    cur = write_run(tmp_path / "cur", current, cur_meta)
    confirm = [] if "--confirm" in args else ["--confirm", "0"]  # synthetic rows: nothing to re-run
    result = CliRunner().invoke(app, ["gate", str(base), str(cur), *confirm, "--threshold", "1.15", *args])
    assert "Traceback" not in result.output, result.output
    return result


def test_machine_from_meta_and_differences() -> None:
    h100 = {"cpu": "AMD EPYC 9654", "cpu_count": 16, "gpus": [{"name": "NVIDIA H100 80GB HBM3"}] * 2}
    a100 = {**h100, "gpus": [{"name": "NVIDIA A100-SXM4-80GB"}]}
    assert Machine.from_meta(h100) == Machine("AMD EPYC 9654", 16, ("NVIDIA H100 80GB HBM3",))
    assert Machine.from_meta(h100).describe() == "AMD EPYC 9654, 16 cores, NVIDIA H100 80GB HBM3"
    assert Machine.from_meta(MACHINE).describe() == "AMD EPYC, 2 cores, no GPU"
    assert Machine.from_meta({}).describe() == "unknown machine"
    assert differences(Machine.from_meta(h100), Machine.from_meta(a100)) == [
        "GPU NVIDIA H100 80GB HBM3 vs NVIDIA A100-SXM4-80GB"]
    assert differences(Machine.from_meta(MACHINE), Machine.from_meta({**MACHINE, "cpu_count": 4})) == ["cores 2 vs 4"]
    # what one side does not record cannot differ (an older meta.json, or none)
    assert differences(Machine.from_meta({"cpu": "AMD EPYC"}), Machine.from_meta(XEON)) == [
        "CPU AMD EPYC vs Intel(R) Xeon(R) Platinum 8375C"]
    assert differences(Machine.from_meta({}), Machine.from_meta(XEON)) == []
    assert differences(Machine.from_meta(MACHINE), Machine.from_meta(dict(MACHINE))) == []


def test_other_machine_latency_regression_is_a_warning(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), MACHINE, XEON)
    assert result.exit_code == 0, result.output
    assert f"WARNING {FLEX}: latency/dense 1." in result.output and "[other machine: not gated]" in result.output
    notes = [line for line in result.output.splitlines() if "baseline from another machine" in line]
    assert notes == ["note: baseline from another machine (CPU AMD EPYC vs Intel(R) Xeon(R) Platinum 8375C): "
                     "latency findings are warnings; flops, density, memory and status are still gated "
                     "(--strict-machine exits 3 instead)"]
    assert "cpu differs" not in result.output  # said once, by the machine note


def test_other_machine_still_gates_deterministic_metrics(tmp_path: Path) -> None:
    current = make_rows(2, slow={FLEX: 1.5}, change={FLEX: {"flops_executed": 1, "peak_mem_mib": 500.0}})
    result = gate_run(tmp_path, make_rows(1), current, MACHINE, {**MACHINE, "cpu_count": 8})
    assert result.exit_code == 1, result.output
    assert f"REGRESSION {FLEX}: flops_executed changed" in result.output
    assert f"REGRESSION {FLEX}: peak memory" in result.output
    assert "cores 2 vs 8" in result.output


def test_other_machine_improvement_is_a_warning_too(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 0.6}), MACHINE, XEON)
    assert result.exit_code == 0, result.output
    assert f"WARNING {FLEX}: latency/dense 1.6" in result.output and "IMPROVEMENT" not in result.output


def test_other_gpu_is_another_machine(tmp_path: Path) -> None:
    h100 = {"cpu": "AMD EPYC 9654", "cpu_count": 16, "gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}
    a100 = {**h100, "gpus": [{"name": "NVIDIA A100-SXM4-80GB"}]}
    base, cur = make_rows(1, device="cuda"), make_rows(2, device="cuda", slow={FLEX: 1.5})
    result = gate_run(tmp_path, base, cur, h100, a100)
    assert result.exit_code == 0 and "GPU NVIDIA H100 80GB HBM3 vs NVIDIA A100-SXM4-80GB" in result.output
    result = gate_run(tmp_path, base, cur, h100, a100, "--strict-machine")
    assert result.exit_code == 3, result.output


def test_strict_machine_exits_3_in_one_line(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(1), MACHINE, XEON, "--strict-machine")
    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") == 1 and "another machine (CPU AMD EPYC vs Intel" in result.stderr


def test_strict_machine_on_one_machine_gates_as_usual(tmp_path: Path) -> None:
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), MACHINE, dict(MACHINE),
                      "--strict-machine")
    assert result.exit_code == 1 and f"REGRESSION {FLEX}: latency/dense" in result.output, result.output
    assert "another machine" not in result.output


@pytest.mark.parametrize("base_meta, cur_meta", [(None, XEON), (MACHINE, None), (None, None)])
def test_unknown_machine_gates_latency(tmp_path: Path, base_meta: dict | None, cur_meta: dict | None) -> None:
    """Without a meta.json on both sides nothing proves another machine: latency stays gated."""
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), base_meta, cur_meta,
                      "--strict-machine")
    assert result.exit_code == 1, result.output


def test_other_machine_does_not_rerun_latency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--confirm re-runs regressions; a latency finding on another machine is none, so nothing is re-run."""
    def runner(current: Path, *_):
        raise AssertionError("nothing to re-run")

    monkeypatch.setattr("sparsebench.services.gate.rerunner", runner)
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), MACHINE, XEON, "--confirm", "2")
    assert result.exit_code == 0, result.output


def test_other_machine_reason_in_summary(tmp_path: Path) -> None:
    summary = tmp_path / "gate.md"
    result = gate_run(tmp_path, make_rows(1), make_rows(2, slow={FLEX: 1.5}), MACHINE, XEON, "--summary",
                      str(summary))
    assert result.exit_code == 0, result.output
    assert "> note: baseline from another machine (CPU AMD EPYC vs Intel" in summary.read_text()
