"""What makes a row `ok`: the output's error relative to its magnitude, and in fwdbwd dQ, dK and dV, each against
a float64 reference of the same pattern; planted faults must fail, a correct kernel must not."""

from __future__ import annotations

import pytest
import torch

from sparsebench.impls import IMPLS
from sparsebench.measure import accuracy, gradients
from sparsebench.patterns import get_pattern
from sparsebench.plugins import FunctionImpl
from sparsebench.runner import measure_case
from sparsebench.runner.cases import Case, MeasureSettings

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FAST = MeasureSettings(min_run_time=0.01, min_samples=3, warmup=1)


def sampled_reference(n: int, pattern: str = "dense") -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 64, generator=gen) for _ in range(3))
    rows = accuracy.sample_rows(n)
    return q, k, v, rows, accuracy.reference_rows(q, k, v, get_pattern(pattern), rows)


@pytest.mark.parametrize("n", [1024, 32768, 65536])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [0.0, 0.75])
def test_zero_and_scaled_outputs_fail_at_every_n_and_dtype(n, dtype, scale):
    """Dense attention at long n has the smallest outputs (about n**-0.5): there an absolute tolerance went blind
    (bfloat16's 3e-2 passed an all-zero output at 65536). rel_err does not depend on the output's scale."""
    q, k, v, rows, ref = sampled_reference(n)
    out = torch.zeros(q.shape, dtype=dtype)
    out[..., rows, :] = (scale * ref).to(dtype)
    err, rel = accuracy.output_errors(out, q.to(dtype), k.to(dtype), v.to(dtype), get_pattern("dense"), rows)
    assert rel > 5 * accuracy.TOLERANCE[dtype], rel
    if n == 65536 and dtype == torch.bfloat16 and scale == 0.0:
        assert err < 3e-2  # what the absolute check (max_abs_err <= 3e-2) let through


@pytest.mark.parametrize("n", [1024, 65536])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_correctly_rounded_output_passes_with_margin(n, dtype):
    """The reference rounded to the dtype (the best any kernel can return) is far inside the tolerance."""
    q, k, v, rows, ref = sampled_reference(n)
    out = torch.zeros(q.shape, dtype=dtype)
    out[..., rows, :] = ref.to(dtype)
    _, rel = accuracy.output_errors(out, q, k, v, get_pattern("dense"), rows)
    assert rel < accuracy.TOLERANCE[dtype] / 4, rel


# --- gradients -----------------------------------------------------------------------------------------------

def sdpa(q, k, v, pattern):
    mask = pattern.dense_mask(q.shape[-2], q.device)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def zero_dk(q, k, v, pattern):
    """Exact forward, dK silently zero (K detached: the bug of a hand-written backward)."""
    return sdpa(q, k.detach() + 0 * k, v, pattern)


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward scales the gradient."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def dv_scaled(q, k, v, pattern):
    """Exact forward, dV scaled by 0.9."""
    return sdpa(q, k, ScaleGrad.apply(v, 0.9), pattern)


class BadBackward(torch.autograd.Function):
    """Identity on K in the forward; the backward fails in the way `kind` names."""

    @staticmethod
    def forward(ctx, x, kind):
        ctx.kind = kind
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if ctx.kind == "raises":
            raise RuntimeError("my backward broke")
        if ctx.kind == "none":
            return None, None
        return grad[..., :-1], None  # wrong shape


def bad_dk(kind):
    def fn(q, k, v, pattern):
        return sdpa(q, BadBackward.apply(k, kind), v, pattern)

    return fn


def measure_function(fn, monkeypatch, name="user_fn", pattern="causal", n=128, dtype="float32", kv_heads=2):
    monkeypatch.setitem(IMPLS, name, FunctionImpl(name, fn))
    case = Case(pattern, "", name, "cpu", dtype, "fwdbwd", 1, 2, kv_heads, n, n, 32)
    return measure_case.measure(case, measure_case.make_inputs(case), FAST)


def test_a_correct_backward_is_ok(monkeypatch):
    m = measure_function(sdpa, monkeypatch)
    assert m.status == "ok", m.error
    assert m.grad_err < accuracy.GRAD_TOLERANCE[torch.float32] / 10


@pytest.mark.parametrize("fn, name, value", [(zero_dk, "dK", 1.0), (dv_scaled, "dV", 0.1)])
def test_a_wrong_gradient_is_inaccurate_naming_it(fn, name, value, monkeypatch):
    """Forward exact (rel_err tiny), one gradient wrong: the row is inaccurate, its error names the gradient and
    how far it is off."""
    m = measure_function(fn, monkeypatch)
    assert m.status == "inaccurate" and m.rel_err < 1e-5
    assert m.error == f"{name} rel error {value:.3g} > tolerance 1e-04", m.error
    assert m.grad_err == pytest.approx(value, rel=1e-3)


@pytest.mark.parametrize("kind, message", [
    ("raises", "dK: the backward raised RuntimeError: my backward broke"),
    ("none", "dK: the backward returned no gradient (None)"),
    ("shape", "dK: the backward raised RuntimeError: Function BadBackwardBackward returned an invalid gradient"),
])
def test_a_failing_backward_names_the_gradient(kind, message, monkeypatch):
    with pytest.raises(gradients.GradientError, match=message.replace("(", r"\(").replace(")", r"\)")):
        measure_function(bad_dk(kind), monkeypatch)


@pytest.mark.parametrize("pattern", ["dense", "causal", "local", "strided", "bigbird"])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_reference_gradients_are_autograd_in_float64(pattern, kv_heads):
    """The row-sparse reference equals float64 autograd of the masked softmax for every row, GQA included."""
    n, gen = 128, torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, n, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, kv_heads, n, 16, generator=gen, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    built = get_pattern(pattern, **({"block": 16} if pattern == "bigbird" else {}))
    rows = accuracy.sample_rows(n, 16)
    grad_out = gradients.upstream_gradient(q, rows)
    rep = 4 // kv_heads
    out = sdpa(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), built)
    expected = torch.autograd.grad(out, (q, k, v), grad_out)
    for got, want in zip(gradients.reference_grads(q, k, v, built, rows, grad_out), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["eager", "sdpa", "structured"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_builtin_backwards_pass_the_gradient_check(impl, dtype):
    case = Case("sliding_window", "window=32", impl, "cpu", dtype, "fwdbwd", 1, 2, 1, 256, 256, 32)
    q, k, v, _ = measure_case.make_inputs(case)
    built, kernel = case.build_pattern(), IMPLS[impl]
    prep = kernel.prepare(built, 256, torch.device("cpu"), case.torch_dtype)
    grad = gradients.check(lambda *x: kernel.forward(*x, prep), q, k, v, built)
    assert grad.worst[1] < accuracy.GRAD_TOLERANCE[case.torch_dtype] / 2, grad.errors


@pytest.mark.parametrize("impl", ["eager", "sdpa", "structured"])
def test_selection_rows_check_output_and_gradients_against_their_own_selection(impl):
    """A selection pattern's row is judged against the kept set its selection gives on the measured inputs:
    the built-ins pass forward and backward, and full causal attention in its place fails."""
    from sparsebench.measure import quality

    case = Case("topk_blocks", "block=32;topk=2", impl, "cpu", "float32", "fwdbwd", 1, 2, 1, 200, 200, 32)
    measured = measure_case.measure(case, measure_case.make_inputs(case), FAST)
    assert measured.status == "ok", measured.error
    assert measured.grad_err is not None and measured.grad_err < accuracy.GRAD_TOLERANCE[torch.float32]
    assert measured.rel_err < accuracy.TOLERANCE[torch.float32]

    q, k, v, _ = measure_case.make_inputs(case)
    rule = quality.checked_rule(case.build_pattern(), q, k)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert accuracy.output_errors(full, q, k, v, rule)[1] > 10 * accuracy.TOLERANCE[torch.float32]
