"""User code: implementation and pattern plugins (specs, entry points), mask_mod patterns, the generic kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import brute_force_attention
from typer.testing import CliRunner

import sparsebench
from sparsebench.cli import app
from sparsebench.impls.kernels.blocksparse import BucketKind
from sparsebench.patterns import PATTERNS
from sparsebench.resolve import get_impl, get_pattern
from sparsebench.results import read_results

ROOT = Path(__file__).resolve().parents[1]
MASKS = str(ROOT / "examples" / "masks.py")
MY_ATTENTION = str(ROOT / "examples" / "my_attention.py")
FAST = ["--min-run-time", "0.02", "--heads", "2", "--timeout", "120"]


@pytest.fixture(autouse=True)
def restore_registries():
    """Plugins loaded by a test leave the process's registries as they were (other tests list every pattern)."""
    from sparsebench import plugins
    from sparsebench.impls import IMPLS

    impls, patterns, loaded = dict(IMPLS), dict(PATTERNS), plugins.LOADED
    plugins.LOADED = plugins.Plugins()
    yield
    IMPLS.clear()
    IMPLS.update(impls)
    PATTERNS.clear()
    PATTERNS.update(patterns)
    plugins.LOADED = loaded


def invoke(args: list[str], cwd: Path | None = None):
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(old)


reference = brute_force_attention  # float64


@pytest.mark.parametrize("n", [1000, 1537])
@pytest.mark.parametrize("name,params", [("prefix_lm", {}), ("document", {}), ("document", {"docs": 3})])
def test_mask_mod_nnz_is_exact(name, params, n):
    pattern = get_pattern(f"{MASKS}:{name}", **params)
    mm = pattern.mask_mod_for(n)
    expected = sum(int(mm(0, 0, torch.tensor(q), torch.arange(n)).sum()) for q in range(n))  # row by row
    assert pattern.nnz(n) == expected
    assert torch.equal(pattern.dense_mask(n).sum(), torch.tensor(expected))


def check_generic_kernel(pattern, n: int) -> set[str]:
    """blocksparse against the float64 reference, forward and backward; returns the kinds of its buckets."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3))
    impl = get_impl("blocksparse")
    prep = impl.prepare(pattern, n, "cpu", torch.float64)
    out = impl.forward(q, k, v, prep)
    want = reference(q, k, v, pattern.dense_mask(n))
    torch.testing.assert_close(out, want, atol=1e-10, rtol=0)
    grad = torch.randn_like(out)
    got, expected = torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-9, rtol=0)
    return {bucket.kind for bucket in prep.state.buckets}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_generic_kernel_matches_float64_on_every_builtin_pattern(name):
    """blocksparse (what structured runs for user masks) on every built-in pattern, forward and backward."""
    check_generic_kernel(get_pattern(name), 517)


def prefix_causal(b, h, q_idx, kv_idx):
    """a prefix of 200 seen both ways, then causal: the generic kernel's causal runs"""
    return (kv_idx <= q_idx) | (kv_idx < 200)


def strictly_causal(b, h, q_idx, kv_idx):
    """causal without the diagonal (row 0 keeps key 0): diagonal blocks are not causal, so no causal run"""
    return (kv_idx < q_idx) | (kv_idx == 0)


def causal_documents(b, h, q_idx, kv_idx):
    """causal within documents of 160 tokens (five blocks each): a causal run from each document's first block"""
    return (kv_idx <= q_idx) & (q_idx // 160 == kv_idx // 160)


def banded_from_70(b, h, q_idx, kv_idx):
    """a band 100 wide that starts at row 70, a window of key blocks sliding with the query block"""
    return (kv_idx <= q_idx) & (kv_idx > q_idx - 100) & (q_idx >= 70) | (kv_idx == q_idx)


@pytest.mark.parametrize("mask,kind", [(prefix_causal, "causal"), (strictly_causal, "gathered"),
                                       (causal_documents, "causal"), (banded_from_70, "window")])
@pytest.mark.parametrize("n", [517, 640])
def test_generic_kernel_matches_float64_on_user_masks(mask, kind, n):
    """The causal, windowed, shared and gathered buckets on masks that make each, at ragged and whole blocks."""
    assert kind in check_generic_kernel(sparsebench.api._pattern(mask, {}), n)


def test_generic_kernel_gathers_nothing_on_bands_and_causal_shapes():
    """sliding_window and a prefix-then-causal mask run as causal and window calls on views of K and V; the
    diagonal of a strictly causal mask is not causal, so it is not a causal call."""
    def kinds(pattern, n=1024):
        buckets = get_impl("blocksparse").prepare(pattern, n, "cpu", torch.float32).state.buckets
        return {bk.kind for bk in buckets}

    assert kinds(get_pattern("sliding_window", window=256)) == {BucketKind.causal, BucketKind.window}
    assert kinds(sparsebench.api._pattern(prefix_causal, {})) == {BucketKind.causal, BucketKind.shared}
    assert BucketKind.causal not in kinds(sparsebench.api._pattern(strictly_causal, {}))
    assert {"causal", "shared"} == {BucketKind.causal, BucketKind.shared}  # a kind reads as its name, too


def scattered(b, h, q_idx, kv_idx):
    """two thirds of the pairs, in every block: the generic kernel would be masked SDPA plus copies"""
    return (q_idx * 7 + kv_idx * 13) % 3 != 0


def test_auto_runs_user_masks_on_the_generic_kernel_unless_it_would_be_masked_everywhere():
    cpu = torch.device("cpu")
    for mask, expected in [(prefix_causal, "structured"), (causal_documents, "structured"), (scattered, "sdpa")]:
        pattern = sparsebench.api._pattern(mask, {})
        assert sparsebench.api.resolve_impl(pattern, "auto", cpu, torch.float32, "fwd", 1024) == expected


def test_structured_runs_a_user_mask_on_the_generic_kernel():
    pattern, n = get_pattern(f"{MASKS}:document", docs=5), 700
    q, k, v = (torch.randn(1, 4, n, 16) for _ in range(3))
    impl = get_impl("structured")
    prep = impl.prepare(pattern, n, "cpu", torch.float32)
    with torch.no_grad():
        out = impl.forward(q, k, v, prep)
    torch.testing.assert_close(out.double(), reference(q, k, v, pattern.dense_mask(n)), atol=1e-5, rtol=0)
    assert prep.executed_pairs < n * n / 3  # 5 documents: about a fifth of the pairs, block-rounded


@pytest.mark.slow  # worker processes
def test_user_function_and_mask_run_like_builtins(tmp_path):
    result = invoke(["run", "--pattern", f"{MASKS}:document:docs=4", "--pattern", "local", "--impl",
                     f"{MY_ATTENTION}:chunked_local", "--impl", "structured", "--seq", "256", *FAST,
                     "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    frame = read_results(tmp_path / "results.csv").set_index(["pattern", "impl"])
    assert frame.loc[("local", "chunked_local"), "status"] == "ok"
    assert frame.loc[("local", "chunked_local"), "max_abs_err"] < 1e-5
    assert frame.loc[("document", "structured"), "status"] == "ok"
    assert frame.loc[("document", "structured"), "params"] == "docs=4"
    assert frame.loc[("document", "chunked_local"), "status"] == "unsupported"  # it names the patterns it does
    meta = json.loads((tmp_path / "meta.json").read_text())
    files = {p["name"]: p["file"] for p in meta["plugins"]}
    assert files["chunked_local"].endswith("my_attention.py") and files["document"].endswith("masks.py")


IMPL_PLUGIN = '''
    import torch.nn.functional as F
    from sparsebench.impls.base import Impl, Prepared

    class HalfKeys(Impl):
        """dense attention over the first half of the keys only: wrong on purpose"""
        name = "half_keys"

        def prepare(self, pattern, n, device, dtype, q_len=None):
            return Prepared(pattern, n, executed_pairs=n * (n // 2))

        def unsupported_reason(self, pattern, device, dtype, mode):
            return None if pattern.name == "dense" and mode == "fwd" else "dense forward only"

        def forward(self, q, k, v, prep):
            half = k.shape[-2] // 2
            return F.scaled_dot_product_attention(q, k[..., :half, :], v[..., :half, :])

    def wrong_shape(q, k, v, pattern):
        return q[..., :1, :]

    def raises(q, k, v, pattern):
        raise RuntimeError("my kernel broke")
'''


@pytest.mark.slow  # worker processes
def test_impl_subclass_plugin_rows(tmp_path):
    """An Impl subclass: its executed_pairs give flops_executed, its wrong output is an `inaccurate` row; a
    function that returns the wrong shape or raises is an `error` row, and the sweep goes on."""
    (tmp_path / "myimpls.py").write_text(textwrap.dedent(IMPL_PLUGIN))
    result = invoke(["run", "--pattern", "dense", "--impl", "myimpls:HalfKeys", "--impl", "myimpls:wrong_shape",
                     "--impl", "myimpls:raises", "--seq", "128", *FAST, "--out-dir", "out"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    rows = read_results(tmp_path / "out" / "results.csv").set_index("impl")
    assert rows.loc["half_keys", "status"] == "inaccurate"
    assert rows.loc["half_keys", "flops_executed"] == 4 * 2 * 64 * 128 * 64
    assert rows.loc["wrong_shape", "status"] == "error" and "expected a tensor of q's shape" in \
        rows.loc["wrong_shape", "error"]
    assert rows.loc["raises", "status"] == "error" and "my kernel broke" in rows.loc["raises", "error"]
    assert rows.loc["sdpa", "status"] == "ok"


@pytest.mark.parametrize("args,message", [
    (["--impl", "nosuchmodule_xyz:fn"], "cannot import nosuchmodule_xyz"),
    (["--impl", "os:sep"], "is not callable"),
    (["--impl", "os:no_such_attribute"], "has no attribute 'no_such_attribute'"),
    (["--impl", "fastest"], "unknown implementation 'fastest'"),
    (["--pattern", "bad_masks:raises"], "its mask_mod raised ZeroDivisionError"),
    (["--pattern", "bad_masks:not_boolean"], "must return booleans"),
    (["--pattern", "bad_masks:three_args"], "expected a mask_mod(b, h, q_idx, kv_idx)"),
    (["--pattern", "bad_masks:empty_row"], "keeps no key"),
    (["--impl", f"{MASKS}:prefix_lm"], "taken"),
])
def test_bad_plugins_give_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "bad_masks.py").write_text(textwrap.dedent('''
        def raises(b, h, q, k):
            return 1 / 0
        def not_boolean(b, h, q, k):
            return q - k
        def three_args(b, q, k):
            return q >= k
        def empty_row(b, h, q, k):
            return (k < q)
    '''))
    if args[-1].endswith("prefix_lm"):  # a function named like a built-in would shadow it
        args, message = ["--impl", f"{tmp_path / 'shadow.py'}:sdpa"], "built-in"
        (tmp_path / "shadow.py").write_text("def sdpa(q, k, v, pattern):\n    return q\n")
    cmd = ["run", "--seq", "64", *FAST, "--out-dir", "out"]
    cmd += args if args[0] == "--pattern" else ["--pattern", "local", *args]
    result = invoke(cmd, cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "results.csv").exists()  # rejected before the sweep


def test_two_plugins_of_one_name_from_different_code_are_refused(tmp_path):
    """Results and the gate know a plugin by its name: a second `mask` would silently replace the first."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "masks_same_name.py").write_text("def mask(b, h, q, k):\n    return k <= q\n")
    result = invoke(["run", "--pattern", "a/masks_same_name.py:mask", "--pattern", "b/masks_same_name.py:mask",
                     "--seq", "64", *FAST, "--out-dir", "out"], cwd=tmp_path)
    assert result.exit_code == 2 and "both named 'mask'" in result.output, result.output
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.slow  # worker processes
def test_the_workers_run_the_code_the_run_names(tmp_path):
    """The current directory comes first, for the run and for its workers (started with `python -m`) alike, even
    where PYTHONPATH holds a module of the same name; the run names the file it loaded, and meta.json records
    it with its content hash."""
    (tmp_path / "v2").mkdir()
    (tmp_path / "probe_cwd_mod.py").write_text("def mask(b, h, q, k):\n    return k <= q\n")  # causal: 0.5
    (tmp_path / "v2" / "probe_cwd_mod.py").write_text("def mask(b, h, q, k):\n    return k == q\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "v2"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "sparsebench", "run", "--pattern", "probe_cwd_mod:mask",
                           "--impl", "eager", "--seq", "64", *FAST, "--out-dir", "out"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"pattern mask: {tmp_path / 'probe_cwd_mod.py'}" in proc.stderr
    rows = read_results(tmp_path / "out" / "results.csv")
    assert float(rows[rows.impl == "eager"].density.iloc[0]) == pytest.approx((64 * 65 / 2) / 64**2)
    plugin = json.loads((tmp_path / "out" / "meta.json").read_text())["plugins"][0]
    assert plugin["file"] == str(tmp_path / "probe_cwd_mod.py") and len(plugin["sha256"]) == 16


@pytest.mark.slow  # worker processes
def test_entry_point_plugins(tmp_path):
    """An installed package's entry points (a dist-info on the path) appear in `list` and run by name; a
    broken one is one warning line."""
    (tmp_path / "myplug.py").write_text("def plug_attention(q, k, v, pattern):\n"
                                        "    import torch.nn.functional as F\n"
                                        "    return F.scaled_dot_product_attention(q, k, v)\n"
                                        "plug_attention.patterns = {'dense'}\n"
                                        "def every_other(b, h, q, k):\n    return (k % 2 == 0) | (k == q)\n")
    info = tmp_path / "myplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sparsebench.impls]\nplug = myplug:plug_attention\n"
                                           "broken = myplug:missing\n[sparsebench.patterns]\nevery_other = "
                                           "myplug:every_other\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    listed = subprocess.run([sys.executable, "-m", "sparsebench", "list"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "plug_attention" in listed.stdout and "every_other" in listed.stdout
    assert "warning: plugin 'broken'" in listed.stderr and "Traceback" not in listed.stderr
    run = subprocess.run([sys.executable, "-m", "sparsebench", "run", "--pattern", "every_other", "--pattern",
                          "dense", "--impl", "plug_attention", "--impl", "structured", "--seq", "128", *FAST,
                          "--out-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = read_results(tmp_path / "out" / "results.csv").set_index(["pattern", "impl"])
    assert rows.loc[("dense", "plug_attention"), "status"] == "ok"
    assert rows.loc[("every_other", "structured"), "status"] == "ok"


def test_api_takes_a_mask_mod_and_a_function():
    q, k, v = (torch.randn(1, 2, 300, 16) for _ in range(3))

    def my_mask(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= 8

    def my_impl(q, k, v, pattern):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pattern.dense_mask(q.shape[-2]))

    want = reference(q, k, v, (torch.arange(300)[:, None] - torch.arange(300)).abs() <= 8)
    for impl in ("auto", "structured", my_impl):
        torch.testing.assert_close(sparsebench.attention(q, k, v, pattern=my_mask, impl=impl).double(), want,
                                   atol=1e-5, rtol=0)


@pytest.mark.slow  # worker processes
def test_benchmark_returns_the_rows(tmp_path):
    frame = sparsebench.benchmark(patterns=["local", f"{MASKS}:prefix_lm"], impls=["structured"], seq=[128],
                                  heads=2, min_run_time=0.02, out_dir=tmp_path)
    assert set(frame.pattern) == {"dense", "local", "prefix_lm"} and (frame.status == "ok").all()
    assert len(read_results(tmp_path / "results.csv")) == len(frame)
    with pytest.raises(sparsebench.errors.SparsebenchError, match="not importable"):
        sparsebench.benchmark(impls=[lambda q, k, v, p: q], seq=[64])


GRAD_PLUGIN = '''
    import torch
    import torch.nn.functional as F

    def attend(q, k, v, pattern):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.dense_mask(q.shape[-2], q.device))

    def zero_dk(q, k, v, pattern):
        """exact forward, K detached: dK silently zero"""
        return attend(q, k.detach() + 0 * k, v, pattern)

    class NoGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return None

    def none_dv(q, k, v, pattern):
        """the backward returns None for V"""
        return attend(q, k, NoGrad.apply(v), pattern)
'''


@pytest.mark.slow
def test_user_backward_faults_are_rows_and_the_sweep_goes_on(tmp_path):
    """fwdbwd: a wrong gradient is an `inaccurate` row naming it; a missing one an `error` row naming it; the
    built-ins of the same sweep are measured ok."""
    (tmp_path / "gradimpls.py").write_text(textwrap.dedent(GRAD_PLUGIN))
    result = invoke(["run", "--pattern", "causal", "--impl", "gradimpls:zero_dk", "--impl", "gradimpls:none_dv",
                     "--impl", "structured", "--mode", "fwdbwd", "--seq", "128", *FAST, "--out-dir", "out"],
                    cwd=tmp_path)
    assert result.exit_code == 0, result.output
    rows = read_results(tmp_path / "out" / "results.csv").set_index("impl")
    assert rows.loc["zero_dk", "status"] == "inaccurate" and rows.loc["zero_dk", "grad_err"] == 1.0
    assert rows.loc["zero_dk", "error"] == "dK rel error 1 > tolerance 1e-04"
    assert rows.loc["none_dv", "status"] == "error" and "dV: the backward returned no gradient (None)" in \
        rows.loc["none_dv", "error"]
    assert rows.loc["structured", "status"] == "ok" and rows.loc["structured", "grad_err"] < 1e-5
    assert rows.loc["sdpa", "status"] == "ok"
