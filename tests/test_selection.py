"""Selection patterns: each built-in against its brute-force rule, every implementation against a float64
reference of the same selection (awkward n, forward and backward, GQA), quality columns, inputs, user selectors."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.errors import PatternError, SparsebenchError
from sparsebench.impls import get_impl
from sparsebench.impls.selection import RUNNERS, for_pattern
from sparsebench.measure import quality
from sparsebench.patterns import PATTERNS, get_pattern
from sparsebench.patterns.selection.base import keep_top, keep_top_tokens, top_token_indices
from sparsebench.patterns.selection.topk_tokens import projection
from sparsebench.runner.cases import Case, MeasureSettings
from sparsebench.runner.inputs import check_inputs, load_qkv, make_inputs, structured_qkv


@pytest.fixture(autouse=True)
def restore_registries():
    """User selectors loaded by a test leave the registries as they were."""
    from sparsebench import plugins

    patterns, loaded = dict(PATTERNS), plugins.LOADED
    plugins.LOADED = plugins.Plugins()
    yield
    PATTERNS.clear()
    PATTERNS.update(patterns)
    plugins.LOADED = loaded


def int_inputs(B=2, H=4, KVH=2, n=200, D=8, seed=0, low=-2, high=3):
    """Small-integer q, k, v: block means and their dot products are exact in float32, and ties are common."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(low, high, (B, H, n, D), generator=gen).float()
    k = torch.randint(low, high, (B, KVH, n, D), generator=gen).float()
    v = torch.randn(B, KVH, n, D, generator=gen)
    return q, k, v


def brute_topk_blocks(q, k, block, topk, causal, shared=0):
    """topk_blocks' written rule, with Python loops and sorted() (ties to the lower j); shared: the score of a
    head is the sum over the query heads of its key/value head."""
    B, H, n, D = q.shape
    rep = H // k.shape[1]
    nb = -(-n // block)
    layout = torch.zeros(B, H, nb, nb, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            heads = range(h // rep * rep, (h // rep + 1) * rep) if shared else [h]
            qm = [[q[b, g, i * block:(i + 1) * block].double().mean(0) for i in range(nb)] for g in heads]
            km = [k[b, h // rep, j * block:(j + 1) * block].double().mean(0) for j in range(nb)]

            for i in range(nb):
                cands = [j for j in range(nb) if (j < i if causal else j != i)]
                score = {j: sum(float(means[i] @ km[j]) for means in qm) for j in cands}
                ranked = sorted(cands, key=lambda j: (-score[j], j))
                for j in ranked[:topk] + [i]:
                    layout[b, h, i, j] = True
    return layout


def brute_mask(layout, block, n, causal):
    B, H = layout.shape[:2]
    mask = torch.zeros(B, H, n, n, dtype=torch.bool)
    for qi in range(n):
        for ki in range(n):
            mask[:, :, qi, ki] = layout[:, :, qi // block, ki // block] & (ki <= qi or not causal)
    return mask


@pytest.mark.parametrize("causal", [1, 0])
@pytest.mark.parametrize("n,block,topk", [(200, 16, 3), (77, 8, 20), (64, 16, 1)])
def test_topk_blocks_follows_its_rule(causal, n, block, topk):
    q, k, _ = int_inputs(n=n)
    pattern = get_pattern("topk_blocks", block=block, topk=topk, causal=causal)
    sel = pattern.select(q, k)
    expected = brute_topk_blocks(q, k, block, topk, causal)
    assert torch.equal(sel.layout, expected)
    mask = brute_mask(expected, block, n, causal)
    assert torch.equal(sel.dense_mask(), mask)
    assert torch.equal(sel.pair_counts(), mask.sum(dim=(-1, -2)))
    assert torch.equal(pattern.select(q, k).layout, sel.layout)  # deterministic


@pytest.mark.parametrize("n,block,topk", [(200, 16, 3), (77, 8, 20)])
def test_shared_topk_blocks_selects_once_per_key_value_head(n, block, topk):
    q, k, _ = int_inputs(n=n, H=4, KVH=2)
    sel = get_pattern("topk_blocks", block=block, topk=topk, shared=1).select(q, k)
    assert torch.equal(sel.layout, brute_topk_blocks(q, k, block, topk, 1, shared=1))
    assert torch.equal(sel.layout[:, 0], sel.layout[:, 1]) and torch.equal(sel.layout[:, 2], sel.layout[:, 3])
    # the parameter added later is written only when set: earlier results keep their case key
    assert "shared" not in get_pattern("topk_blocks").params
    assert get_pattern("topk_blocks", shared=1).params["shared"] == 1


def test_keep_top_breaks_ties_to_the_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    everything = torch.ones(1, 5, dtype=torch.bool)
    assert keep_top(scores, everything, 2).tolist() == [[False, True, True, False, False]]
    assert keep_top_tokens(scores, everything, 2).tolist() == [[False, True, True, False, False]]
    some = torch.tensor([[True, False, True, True, True]])
    assert keep_top(scores, some, 3).tolist() == [[False, False, True, True, True]]


def test_keep_top_tokens_equals_the_sorting_rule():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (6, 50, 120), generator=gen).float()  # many ties
    cands = torch.rand(50, 120, generator=gen) < 0.6
    for topk in (1, 7, 40, 200):
        assert torch.equal(keep_top_tokens(scores, cands, topk), keep_top(scores, cands, topk))


def test_top_token_indices_equals_the_sorting_rule():
    gen = torch.Generator().manual_seed(3)
    for values, topk in ((4, 7), (4, 40), (1000, 40), (3, 64)):
        scores = torch.randint(0, values, (50, 300), generator=gen).float()  # ties, and sorted runs below
        scores[:, :20] = torch.arange(20.0).flip(0)
        cands = torch.rand(50, 300, generator=gen) < 0.5
        cands[:, :topk] = True  # every row has at least topk candidates
        got = top_token_indices(scores.masked_fill(~cands, float("-inf")), topk).sort(dim=-1).values
        expected = keep_top(scores, cands, topk).nonzero()[:, 1].view(50, topk)
        assert torch.equal(got, expected), (values, topk)


def test_topk_tokens_follows_its_rule():
    q, k, _ = int_inputs(B=2, H=4, KVH=2, n=90, D=8)
    pattern = get_pattern("topk_tokens", topk=10, index_dim=4)
    sel = pattern.select(q, k)
    P = projection(8, 4, 0).double()
    B, H, n, _ = q.shape
    for b in range(B):
        for t in range(n):
            scores = [sum(float((q[b, h, t].double() @ P) @ (k[b, h // 2, s].double() @ P)) for h in range(H))
                      for s in range(t + 1)]
            ranked = sorted(range(t + 1), key=lambda s: (-round(scores[s], 6), s))[:10]
            got = sorted(s for s in sel.indices[b, 0, t].tolist() if s >= 0)
            assert got == sorted(ranked), (b, t)
    mask = sel.dense_mask()
    assert mask.shape == (B, 1, n, n) and not bool(mask.triu(1).any())
    assert torch.equal(sel.pair_counts(), mask.sum(dim=(-1, -2)))
    # the layout is the union of the kept keys' blocks
    blocks = torch.zeros_like(sel.layout)
    for b, t, s in (mask[:, 0]).nonzero().tolist():
        blocks[b, 0, t // sel.block, s // sel.block] = True
    assert torch.equal(sel.layout, blocks)


def test_oracle_topk_keeps_the_blocks_of_largest_attention_mass():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 2, 70, 8, generator=gen) * 2, torch.randn(1, 1, 70, 8, generator=gen) * 2
    pattern = get_pattern("oracle_topk", block=16, topk=2)
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(70, 70, dtype=torch.bool).triu(1), -math.inf)
    p = torch.softmax(scores, dim=-1)
    nb = 5
    mass = torch.zeros(1, 2, nb, nb, dtype=torch.float64)
    for i in range(nb):
        for j in range(nb):
            mass[..., i, j] = p[..., i * 16:(i + 1) * 16, j * 16:(j + 1) * 16].sum(dim=(-1, -2))
    assert torch.allclose(pattern.block_mass(q, k).double(), mass, atol=1e-5)
    expected = torch.zeros(1, 2, nb, nb, dtype=torch.bool)
    for h in range(2):
        for i in range(nb):
            ranked = sorted(range(i), key=lambda j: (-float(mass[0, h, i, j]), j))
            for j in ranked[:2] + [i]:
                expected[0, h, i, j] = True
    assert torch.equal(pattern.select(q, k).layout, expected)


@pytest.mark.parametrize("params", [{"topk": 0}, {"topk": -3}, {"block": 0}, {"causal": 2}])
def test_bad_parameters_are_refused(params):
    with pytest.raises(PatternError):
        get_pattern("topk_blocks", **params)


def test_topk_reaching_every_block_is_refused_at_that_length():
    pattern = get_pattern("topk_blocks", topk=16, block=64)
    pattern.validate(64 * 18)
    with pytest.raises(PatternError, match="keeps every block"):
        pattern.validate(64 * 17)
    with pytest.raises(PatternError, match="keeps every causal key"):
        get_pattern("topk_tokens", topk=100).validate(100)


def test_cli_refuses_topk_zero_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "-p", "topk_blocks:topk=0", "-n", "256", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "topk must be > 0" in result.stderr


SELECTIONS = [("topk_blocks", {"block": 16, "topk": 3}), ("topk_blocks", {"block": 16, "topk": 3, "causal": 0}),
              ("topk_tokens", {"topk": 40}), ("oracle_topk", {"block": 16, "topk": 2})]


def dense_reference(q, k, v, mask):
    """float64 attention under a (B, Hs, L, n) mask, GQA by repeating K and V."""
    rep = q.shape[1] // k.shape[1]
    k, v = (x.double().repeat_interleave(rep, dim=1) for x in (k, v))
    scores = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1) @ v


@pytest.mark.parametrize("name,params", SELECTIONS, ids=lambda x: str(x))
@pytest.mark.parametrize("impl_name", [pytest.param(name, marks=pytest.mark.slow) if name == "flex" else name
                                       for name in RUNNERS])  # flex compiles once per selection
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_every_implementation_matches_the_selections_reference(name, params, impl_name, mode):
    n = 147  # not a multiple of any block
    pattern = get_pattern(name, **params)
    impl = for_pattern(get_impl(impl_name), pattern)
    reason = impl.unsupported_reason(pattern, "cpu", torch.float32, mode)
    if reason:
        assert impl_name == "flex" and mode == "fwdbwd" and "inference only" in reason
        return
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, n, 16, generator=gen).requires_grad_(mode == "fwdbwd")
    k, v = (torch.randn(2, 2, n, 16, generator=gen).requires_grad_(mode == "fwdbwd") for _ in range(2))
    prep = impl.prepare(pattern, n, "cpu", torch.float32)
    with torch.set_grad_enabled(mode == "fwdbwd"):
        out = impl.forward(q, k, v, prep)
    mask = pattern.select(q, k).dense_mask()
    q64, k64, v64 = (x.detach().double().requires_grad_(mode == "fwdbwd") for x in (q, k, v))
    with torch.set_grad_enabled(mode == "fwdbwd"):
        ref = dense_reference(q64, k64, v64, mask)
    assert out.shape == q.shape
    assert (out.detach().double() - ref.detach()).abs().max() < 1e-5
    assert 0 < prep.executed_pairs <= (-(-n // 128) * 128) ** 2  # blocks rounded up, at most 128 wide
    if mode == "fwdbwd":
        grad = torch.randn(out.shape, generator=gen)
        got = torch.autograd.grad(out, (q, k, v), grad)
        want = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
        for a, b in zip(got, want):
            assert (a.double() - b).abs().max() < 1e-4


@pytest.mark.parametrize("share", [0.0, 1.0])  # keys always a view of K and V, or the kept key blocks gathered
def test_token_kernel_in_row_chunks(share, monkeypatch):
    """The token selections' kernel in several row chunks (a ragged last one), with GQA, keys kept far from
    their queries (the kept blocks gathered) or near them: output and dQ, dK, dV against float64 attention
    under the selection's dense mask; executed pairs = rows x visited keys."""
    from sparsebench.impls.kernels import selected_tokens

    monkeypatch.setattr(selected_tokens, "MASK_ENTRIES", 16 * 300)  # 16-row chunks at n = 300
    monkeypatch.setattr(selected_tokens, "GATHER_SHARE", share)
    n, block = 300, 16
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(2, 4, n, 8, generator=gen).requires_grad_(True)
    k, v = (torch.randn(2, 2, n, 8, generator=gen).requires_grad_(True) for _ in range(2))
    # row i keeps key 0 (a sink) and every 5th key of its own block and the one before, up to itself
    rows = [sorted({0} | {j for j in range(i // block * block - block, i // block * block + block, 5) if 0 <= j <= i})
            for i in range(n)]
    idx = torch.tensor([r + [-1] * (8 - len(r)) for r in rows])[None, None].expand(2, 1, n, 8).contiguous()
    mask = torch.zeros(2, 1, n, n + 1, dtype=torch.bool).scatter_(-1, torch.where(idx < 0, n, idx), True)[..., :n]
    nb = -(-n // block)
    padded = torch.zeros(2, 1, nb * block, nb * block, dtype=torch.bool)
    padded[..., :n, :n] = mask
    layout = padded.view(2, 1, nb, block, nb, block).any(dim=5).any(dim=3)
    out, pairs = selected_tokens.token_attention(q, k, v, idx, layout, block)
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    ref = dense_reference(q64, k64, v64, mask)
    assert (out.detach().double() - ref.detach()).abs().max() < 1e-5
    grad = torch.randn(out.shape, generator=gen)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), want):
        assert (a.double() - b).abs().max() < 1e-4
    causal_keys = sum((min(n, s + 16) - s) * min(n, s + 16) for s in range(0, n, 16))  # rows x keys to its end
    if share == 0.0:
        assert pairs == causal_keys
    else:  # each chunk's kept blocks (key 0's, its own and the one before): rows x their keys
        gathered = sum((min(n, s + 16) - s) * sum(min(block, n - b * block)
                                                  for b in {j // block for r in rows[s: s + 16] for j in r})
                       for s in range(0, n, 16))
        assert pairs == gathered < causal_keys / 3


@pytest.mark.parametrize("causal", [1, 0])
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])  # one query block per chunk, or many
def test_selected_blocks_kernel_on_any_layout(causal, chunk_bytes, monkeypatch):
    """The CPU kernel of block selections on per-head layouts with unused slots, dropped own blocks, a ragged last
    block and GQA: output and dQ, dK, dV against float64 attention under the layout's dense mask."""
    from sparsebench.impls.kernels import selected_blocks
    from sparsebench.patterns.selection import Selection

    monkeypatch.setattr(selected_blocks, "GATHER_BYTES", chunk_bytes)
    monkeypatch.setattr(selected_blocks, "BACKWARD_GATHER_BYTES", chunk_bytes)
    n, b = 150, 16
    nb = -(-n // b)
    gen = torch.Generator().manual_seed(7)
    layout = torch.rand(2, 4, nb, nb, generator=gen) < 0.3
    i, j = torch.arange(nb)[:, None], torch.arange(nb)[None, :]
    if causal:
        layout &= j <= i
    layout[..., 0, 0] = True  # the first query block keeps a block with keys at or before every query in it
    layout[..., 1:, 0] |= ~layout[..., 1:, :].any(dim=-1)  # every query block keeps at least one block
    assert not bool(layout.diagonal(dim1=-2, dim2=-1).all())  # some own blocks dropped
    q = torch.randn(2, 4, n, 16, generator=gen).requires_grad_(True)
    k, v = (torch.randn(2, 2, n, 16, generator=gen).requires_grad_(True) for _ in range(2))
    out, executed = selected_blocks.selected_block_attention(q, k, v, layout, b, bool(causal))
    # query blocks that drop their own block or keep the ragged last one run on m slots, the others on their kept
    own = layout.diagonal(dim1=-2, dim2=-1)
    others = layout.sum(dim=-1) - own.long()
    clean = own & ~layout[..., -1]
    want = torch.where(clean, others + 1, int(others.max()) + 1).sum(dim=-1)
    assert torch.equal(executed, want) and bool((executed >= layout.sum(dim=(-1, -2))).all())
    mask = Selection(n=n, block=b, layout=layout, causal=bool(causal)).dense_mask()
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    ref = dense_reference(q64, k64, v64, mask)
    assert (out.detach().double() - ref.detach()).abs().max() < 1e-5
    grad = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
    for a, w in zip(got, want):
        assert (a.double() - w).abs().max() < 1e-4


def test_structured_executes_the_kept_blocks_only():
    q, k, v = int_inputs(B=1, H=2, KVH=2, n=256)
    pattern = get_pattern("topk_blocks", block=32, topk=2)
    impl = for_pattern(get_impl("structured"), pattern)
    prep = impl.prepare(pattern, 256, "cpu", torch.float32)
    impl.forward(q, k, v, prep)
    kept_blocks = pattern.select(q, k).kept_blocks().double().mean()
    assert prep.executed_pairs == int(kept_blocks) * 32 * 32 < 256 * 256 // 2


def test_static_implementations_refuse_selection_patterns():
    pattern = get_pattern("topk_blocks")
    for name in ("seed", "blocksparse"):
        reason = for_pattern(get_impl(name), pattern).unsupported_reason(pattern, "cpu", torch.float32, "fwd")
        assert reason and "selection" in reason
    assert "decode" in for_pattern(get_impl("sdpa"), pattern).unsupported_reason(pattern, "cpu", torch.float32,
                                                                                "decode")


def test_quality_columns():
    q, k, v = structured_qkv(1, 2, 2, 300, 16, seed=0)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    cols = quality.columns(dense, q, k, v, get_pattern("dense"))
    assert cols["recall"] == pytest.approx(1.0) and cols["err_vs_full"] < 1e-5
    local = get_pattern("sliding_window", window=32)
    mask = local.dense_mask(300)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    cols = quality.columns(out, q, k, v, local, rows=torch.arange(300))
    p = torch.softmax((q.double() @ k.double().transpose(-1, -2) / 4).masked_fill(
        torch.ones(300, 300, dtype=torch.bool).triu(1), -math.inf), dim=-1)  # causal full attention
    assert cols["recall"] == pytest.approx(float((p * mask).sum(-1).mean()), rel=1e-9)
    full = p @ v.double()
    assert cols["err_vs_full"] == pytest.approx(float((out.double() - full).abs().max()), rel=1e-6)
    pattern = get_pattern("topk_blocks", block=32, topk=2)
    sel_out = for_pattern(get_impl("sdpa"), pattern).forward(q, k, v, for_pattern(get_impl("sdpa"), pattern)
                                                             .prepare(pattern, 300, "cpu", torch.float32))
    cols = quality.columns(sel_out, q, k, v, pattern)
    counts = pattern.select(q, k).pair_counts().double()
    assert cols["density"] == pytest.approx(float(counts.mean()) / 300 ** 2)
    assert cols["density_min"] <= cols["density"] <= cols["density_max"]
    assert cols["max_abs_err"] < 1e-5 and cols["select_ms"] > 0 and 0 < cols["recall"] < 1


def test_oracle_recall_is_at_least_topk_blocks_on_structured_inputs():
    q, k, v = structured_qkv(1, 2, 2, 1024, 32, seed=1)
    recall = {}
    for name in ("topk_blocks", "oracle_topk"):
        pattern = get_pattern(name, block=64, topk=3)
        out = torch.zeros_like(q)
        recall[name] = quality.columns(out, q, k, v, pattern)["recall"]
    assert recall["oracle_topk"] >= recall["topk_blocks"] - 1e-9
    random_q, random_k = torch.randn(1, 2, 1024, 32), torch.randn(1, 2, 1024, 32)
    on_random = quality.columns(torch.zeros_like(q), random_q, random_k, v, get_pattern("oracle_topk", block=64,
                                                                                          topk=3))["recall"]
    assert recall["oracle_topk"] > on_random  # structure is what makes selection worth it


def test_structured_inputs_are_deterministic_from_the_seed():
    a = structured_qkv(1, 4, 2, 100, 8, seed=3)
    b = structured_qkv(1, 4, 2, 100, 8, seed=3)
    c = structured_qkv(1, 4, 2, 100, 8, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    assert a[0].shape == (1, 4, 100, 8) and a[1].shape == (1, 2, 100, 8)


def save(path: Path, **tensors):
    torch.save(tensors, path)
    return path


def test_a_file_fixes_the_shape_and_seq_takes_the_first_positions(tmp_path):
    q, k, v = torch.randn(1, 4, 50, 8), torch.randn(1, 2, 50, 8), torch.randn(1, 2, 50, 8)
    path = save(tmp_path / "qkv.pt", q=q.half(), k=k.half(), v=v.half())
    from sparsebench.runner.config import SweepConfig

    config = SweepConfig(patterns=["dense"], seq=[30], inputs=str(path))
    assert (config.batch, config.heads, config.kv_heads, config.head_dim, config.dtypes) == \
        ([1], [4], [2], [8], ["float16"])
    case = Case("dense", "", "sdpa", "cpu", "float16", "decode", 1, 4, 2, 30, 3, 8)
    got_q, got_k, got_v, _ = make_inputs(case, MeasureSettings(inputs=str(path)))
    assert torch.equal(got_k, k.half()[:, :, :30]) and torch.equal(got_q, q.half()[:, :, 27:30])
    with pytest.raises(SparsebenchError, match="longer than the 50 positions"):
        SweepConfig(patterns=["dense"], seq=[64], inputs=str(path))
    # a shape or dtype asked for that the file does not hold is refused, not silently replaced
    assert SweepConfig(patterns=["dense"], seq=[30], inputs=str(path), heads=[4], dtypes=["fp16"]).heads == [4]
    for asked, message in [({"heads": [8, 4]}, "holds heads 4, not 8, 4: leave out --heads"),
                           ({"dtypes": ["bfloat16"]}, "holds dtype float16, not bfloat16: leave out --dtype"),
                           ({"kv_heads": [4]}, "holds kv_heads 2, not 4: leave out --kv-heads")]:
        with pytest.raises(SparsebenchError, match=message):
            SweepConfig(patterns=["dense"], seq=[30], inputs=str(path), **asked)
    # on the command line, the default value typed out is asked for too; a config file's gives way to the file's
    from sparsebench.runner.config import SweepOptions

    with pytest.raises(SparsebenchError, match="holds heads 4, not 8: leave out --heads"):
        SweepOptions(patterns=["dense"], seq=[30], inputs=str(path), heads=[8]).over({})
    assert SweepOptions(patterns=["dense"], seq=[30], inputs=str(path)).over({"heads": [8]}).heads == [4]


@pytest.mark.parametrize("tensors,message", [
    ({"q": torch.randn(1, 2, 8, 4), "k": torch.randn(1, 2, 8, 4)}, "no tensor named v"),
    ({"q": torch.randn(1, 2, 8, 4), "k": torch.randn(1, 2, 9, 4), "v": torch.randn(1, 2, 9, 4)}, "mismatched"),
    ({"q": torch.randn(1, 3, 8, 4), "k": torch.randn(1, 2, 8, 4), "v": torch.randn(1, 2, 8, 4)}, "mismatched"),
    ({"q": torch.full((1, 2, 8, 4), math.nan), "k": torch.randn(1, 2, 8, 4), "v": torch.randn(1, 2, 8, 4)}, "NaN"),
    ({"q": torch.randn(2, 8, 4), "k": torch.randn(2, 8, 4), "v": torch.randn(2, 8, 4)}, "4-D"),
])
def test_bad_files_are_one_clear_error(tmp_path, tensors, message):
    path = save(tmp_path / "bad.pt", **tensors)
    with pytest.raises(SparsebenchError, match=message):
        load_qkv(path)


def test_bad_file_on_the_command_line_is_exit_2_before_the_sweep(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a tensor file")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "-p", "dense", "--inputs", str(path), "-o", str(out)])
    assert result.exit_code == 2 and "not a readable tensor file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (out / "results.csv").exists()
    assert "write one with torch.save({'q': q, 'k': k, 'v': v}, ...)" in result.stderr  # how to make one
    path.write_bytes(b"")
    result = CliRunner().invoke(app, ["run", "-p", "dense", "--inputs", str(path), "-o", str(out)])
    assert result.exit_code == 2 and "an empty file" in result.stderr
    result = CliRunner().invoke(app, ["run", "-p", "dense", "--inputs", "somewhere.npy", "-o", str(out)])
    assert result.exit_code == 2 and "not random, structured" in result.stderr


def test_check_inputs_refuses_bad_seed():
    class Config:
        inputs, input_seed, seq = "structured", -1, [8]

    with pytest.raises(SparsebenchError, match="input_seed"):
        check_inputs(Config())


SELECTOR = '''
import torch

def select(q, k, block=16, topk=2, causal=1):
    """Keep the first `topk` blocks and the diagonal."""
    B, H, L, _ = q.shape
    qb, kb = -(-L // block), -(-k.shape[2] // block)
    layout = torch.eye(qb, kb, dtype=torch.bool).repeat(B, H, 1, 1)
    layout[..., :topk] = True
    return layout

def wrong(q, k, block=16):
    return torch.ones(3, 3)
'''


def test_a_user_selector_runs_and_a_wrong_one_fails_its_case(tmp_path):
    from sparsebench import plugins
    from sparsebench.runner.measure_case import measure

    path = tmp_path / "selectors.py"
    path.write_text(textwrap.dedent(SELECTOR))
    name = plugins.load_pattern(f"{path}:select")
    pattern = get_pattern(name, topk=1)
    q, k, v = int_inputs(B=1, H=2, KVH=2, n=50)
    sel = pattern.select(q, k)
    assert sel.layout.shape == (1, 2, 4, 4) and sel.causal
    assert torch.equal(sel.layout[0, 0], torch.eye(4, dtype=torch.bool) | (torch.arange(4) == 0))
    case = Case(name, "topk=1", "structured", "cpu", "float32", "fwd", 1, 2, 2, 50, 50, 8)
    settings = MeasureSettings(min_run_time=0.01, min_samples=2, warmup=0)
    row = measure(case, (q, k, v, None), settings)
    assert row.status == "ok" and row.max_abs_err < 1e-5 and 0 < row.density < 1
    wrong = plugins.load_pattern(f"{path}:wrong")
    with pytest.raises(TypeError, match="expected torch.bool of shape"):
        measure(Case(wrong, "", "sdpa", "cpu", "float32", "fwd", 1, 2, 2, 50, 50, 8), (q, k, v, None), settings)


def test_the_example_selector_keeps_what_topk_blocks_keeps():
    from sparsebench import plugins

    name = plugins.load_pattern(str(Path(__file__).resolve().parents[1] / "examples" / "selector.py") + ":moba")
    q, k, _ = int_inputs(B=1, H=4, KVH=2, n=333)
    for causal in (0, 1):
        mine = get_pattern(name, block=32, topk=3, causal=causal).select(q, k)
        builtin = get_pattern("topk_blocks", block=32, topk=3, causal=causal).select(q, k)
        assert torch.equal(mine.layout, builtin.layout) and mine.causal == builtin.causal


@pytest.mark.parametrize("change,code,word", [({"recall": 0.89}, 1, "REGRESSION"), ({"err_vs_full": 0.31}, 1,
                                                                                     "REGRESSION"),
                                              ({"recall": 0.91}, 0, "improvement"), ({"recall": 0.9}, 0, None)])
def test_the_gate_fails_a_loss_of_quality(tmp_path, change, code, word):
    from gate_data import FLEX, make_rows
    from test_gate import gate_run

    quality_cols = {"recall": 0.9, "err_vs_full": 0.3}
    base = make_rows(1, change={FLEX: quality_cols})
    result = gate_run(tmp_path, base, make_rows(1, change={FLEX: {**quality_cols, **change}}))
    assert result.exit_code == code, result.output
    metric = next(iter(change))
    assert (word is not None) == (f"{metric} " in result.output), result.output
    if word:
        assert word.lower() in result.output.lower()


def test_the_gate_ignores_files_without_quality_columns(tmp_path):
    from gate_data import FLEX, make_rows
    from test_gate import gate_run

    result = gate_run(tmp_path, make_rows(1), make_rows(1, change={FLEX: {"recall": 0.5}}))
    assert result.exit_code == 0, result.output


def test_pareto_front_and_the_quality_figure():
    import pandas as pd

    from sparsebench.plots import impl_colors
    from sparsebench.plots_quality import has_quality, pareto_front, quality_figure

    points = [(1.0, 1.0), (2.0, 0.9), (3.0, 0.95), (4.0, 0.5), (0.5, 0.99)]
    assert pareto_front(points) == [(1.0, 1.0), (3.0, 0.95), (4.0, 0.5)]
    assert pareto_front([(1.0, 0.0), (2.0, 0.1), (3.0, 0.05)], larger_is_better=False) == [(1.0, 0.0), (3.0, 0.05)]
    rows = pd.DataFrame([
        {"pattern": p, "impl": "structured", "seq_len": 1024, "status": "ok", "recall": r, "err_vs_full": e,
         "speedup_vs_full": s} for p, r, e, s in
        [("causal", 1.0, 0.0, 1.0), ("topk_blocks", 0.8, 0.2, 2.0), ("topk_blocks", 0.9, 0.1, 1.5)]])
    assert has_quality(rows) and not has_quality(rows.drop(columns="recall"))
    # a static pattern on random q and k has a recall that means nothing; on structured inputs it is the question
    static = rows.assign(pattern=["causal", "local", "local"])
    assert not has_quality(static) and has_quality(static.assign(inputs="structured"))
    fig = quality_figure(rows, impl_colors(sorted(rows["impl"].unique())))
    assert len(fig.axes) == 2 and fig.axes[0].get_lines()  # the budget sweep is a line


def test_the_library_runs_selection_patterns():
    import sparsebench

    q, k, v = int_inputs(B=1, H=2, KVH=1, n=130)
    pattern = get_pattern("topk_blocks", block=32, topk=1)
    mask = pattern.select(q, k).dense_mask()
    want = dense_reference(q, k, v, mask)
    for impl in ("auto", "sdpa", "structured"):
        out = sparsebench.attention(q, k, v, pattern="topk_blocks", block=32, topk=1, impl=impl)
        assert (out.double() - want).abs().max() < 1e-5


def brute_quest(q, k, page, topk):
    """quest's written rule with Python loops: per-page min/max bounds, sum_d max(q_d min_d, q_d max_d)."""
    B, H, L, D = q.shape
    n, rep = k.shape[2], H // k.shape[1]
    pages = -(-n // page)
    layout = torch.zeros(B, H, L, pages, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            keys = k[b, h // rep].double()
            low = [keys[p * page:(p + 1) * page].amin(0) for p in range(pages)]
            high = [keys[p * page:(p + 1) * page].amax(0) for p in range(pages)]
            for i in range(L):
                qi = q[b, h, i].double()
                score = [float(torch.maximum(qi * low[p], qi * high[p]).sum()) for p in range(pages)]
                last = (n - 1) // page
                ranked = sorted([p for p in range(pages) if p != last], key=lambda p: (-score[p], p))
                for p in ranked[:topk] + [last]:
                    layout[b, h, i, p] = True
    return layout


def test_quest_follows_its_rule_and_caches_its_bounds():
    q, k, _ = int_inputs(B=2, H=4, KVH=2, n=101)
    q = q[:, :, -3:]  # decode: the last 3 positions
    pattern = get_pattern("quest", page=8, topk=3)
    cache: dict = {}
    sel = pattern.select(q, k, cache)
    assert torch.equal(sel.layout, brute_quest(q, k, 8, 3))
    mask = sel.dense_mask()  # (B, H, 3, n): kept pages, keys at or before each query's position
    for i, t in enumerate(range(98, 101)):
        keys = torch.arange(101)
        expected = sel.layout[:, :, i][..., keys // 8] & (keys <= t)
        assert torch.equal(mask[:, :, i], expected)
    assert "metadata_ms" in cache and pattern.bounds(k, cache) is cache["quest_bounds"]  # reused
    with pytest.raises(PatternError, match="keeps every page"):
        pattern.validate(8 * 4)


@pytest.mark.parametrize("impl_name", ["eager", "sdpa", "structured"])
def test_quest_decode_matches_its_reference(impl_name):
    gen = torch.Generator().manual_seed(7)
    n, q_len = 333, 4
    q = torch.randn(2, 4, q_len, 16, generator=gen)
    k, v = torch.randn(2, 2, n, 16, generator=gen), torch.randn(2, 2, n, 16, generator=gen)
    pattern = get_pattern("quest", page=16, topk=4)
    impl = for_pattern(get_impl(impl_name), pattern)
    assert impl.unsupported_reason(pattern, "cpu", torch.float32, "decode") is None
    prep = impl.prepare(pattern, n, "cpu", torch.float32, q_len=q_len)
    out = impl.forward(q, k, v, prep)
    mask = pattern.select(q, k).dense_mask()
    assert (out.double() - dense_reference(q, k, v, mask)).abs().max() < 1e-5
    assert "metadata_ms" in prep.extra
    if impl_name == "structured":
        assert prep.kv_rows < n  # the kept pages and the bounds, not the whole cache
    cols = quality.columns(out, q, k, v, pattern, cache=prep.state.cache)
    assert cols["max_abs_err"] < 1e-5 and 0 < cols["density"] < 1 and 0 < cols["recall"] <= 1


@pytest.mark.parametrize("n,q_len,in_place", [(320, 1, True), (333, 1, False), (320, 3, False)])
def test_quest_pages_in_place_or_gathered(n, q_len, in_place, monkeypatch):
    """One query over whole pages reads the kept K and V rows in place (sparse_pages); a ragged last page or
    several queries (keys after some of them in the last page) take the masked gather: both against float64
    attention under the selection's dense mask, with GQA."""
    from sparsebench.impls import selection as selection_impls

    taken = []
    for name in ("sparse_pages", "gathered_page_attention"):
        fn = getattr(selection_impls, name)
        monkeypatch.setattr(selection_impls, name, lambda *a, fn=fn, name=name: taken.append(name) or fn(*a))
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, q_len, 16, generator=gen)
    k, v = torch.randn(2, 2, n, 16, generator=gen), torch.randn(2, 2, n, 16, generator=gen)
    pattern = get_pattern("quest", page=16, topk=5)
    sel = pattern.select(q, k)
    out, pairs = selection_impls.structured(q, k, v, sel, selection_impls.SelectState())
    assert (out.double() - dense_reference(q, k, v, sel.dense_mask())).abs().max() < 1e-5
    assert taken == ["sparse_pages" if in_place else "gathered_page_attention"]
    assert pairs == float(sel.pair_counts().double().mean()) or not in_place  # in place: every kept key counted


def test_quest_outside_decode_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "-p", "quest", "-n", "4096", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "decode only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "flex" in for_pattern(get_impl("flex"), get_pattern("quest")).unsupported_reason(
        get_pattern("quest"), "cpu", torch.float32, "decode")


@pytest.mark.slow
def test_a_selection_sweep_end_to_end(tmp_path):
    from sparsebench.results import read_results

    out = tmp_path / "run"
    args = ["run", "-p", "topk_blocks:block=32,topk=2", "-p", "oracle_topk:block=32,topk=2", "-p", "local",
            "-n", "300", "--heads", "2", "--impl", "sdpa", "--impl", "structured", "--mode", "fwd",
            "--mode", "fwdbwd", "--inputs", "structured", "--input-seed", "3", "--min-run-time", "0.02",
            "-o", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = read_results(out / "results.csv")
    assert set(frame["status"]) == {"ok"}, frame[["pattern", "impl", "status", "error"]]
    selected = frame[frame["pattern"].isin(["topk_blocks", "oracle_topk"])]
    assert (selected["select_ms"] > 0).all() and (selected["density_min"] <= selected["density_max"]).all()
    assert ((selected["recall"] > 0) & (selected["recall"] < 1)).all()
    assert set(frame["inputs"]) == {"structured"} and frame["speedup_vs_full"].notna().all()
    causal = frame[(frame["pattern"] == "causal") & (frame["impl"] == "sdpa")]
    assert len(causal) == 2  # measured beside the causal selections, in each mode
    # one recall per pattern and inputs, whatever the implementation
    assert selected.groupby(["pattern", "mode"])["recall"].nunique().max() == 1
    plots = tmp_path / "plots"
    assert CliRunner().invoke(app, ["plot", str(out / "results.csv"), "--out", str(plots)]).exit_code == 0
    assert (plots / "cpu-float32-fwd-quality.png").exists()


def test_the_gate_does_not_compare_quality_across_inputs():
    from sparsebench.gate_quality import quality_findings

    base = {"recall": 0.9, "err_vs_full": 0.1, "inputs": "structured"}
    assert quality_findings(base, {**base, "recall": 0.5})[0][1] == "regression"
    found = quality_findings(base, {**base, "recall": 0.5, "inputs": "random"})
    assert [f[:2] for f in found] == [("inputs", "warning")]


def test_the_gate_tells_inputs_of_one_kind_apart_by_their_id():
    """Another seed or another file's content under the same kind is other inputs; a row without an id (written
    before the column) is compared on its kind alone."""
    from sparsebench.gate_quality import quality_findings

    base = {"recall": 0.9, "err_vs_full": 0.1, "inputs": "structured", "input_id": "seed=0"}
    found = quality_findings(base, {**base, "recall": 0.5, "input_id": "seed=1"})
    assert [f[:2] for f in found] == [("inputs", "warning")] and "seed=0 -> structured seed=1" in found[0][2]
    assert quality_findings({**base, "input_id": float("nan")}, {**base, "recall": 0.5})[0][:2] == \
        ("recall", "regression")


def test_err_vs_full_is_not_gated_where_both_rows_keep_all_the_mass():
    """Dense or causal rows: err_vs_full is rounding against full attention (max_abs_err gates the kernel)."""
    from sparsebench.gate_quality import quality_findings

    dense = {"recall": 1.0, "err_vs_full": 5.5e-6, "inputs": "structured", "input_id": "seed=0"}
    assert quality_findings(dense, {**dense, "err_vs_full": 6.6e-6}) == []
    assert quality_findings(dense, {**dense, "recall": 0.9, "err_vs_full": 0.2})[0][:2] == ("recall", "regression")
    window = {**dense, "recall": 0.95, "err_vs_full": 0.1}
    assert [f[:2] for f in quality_findings(window, {**window, "err_vs_full": 0.2})] == [("err_vs_full",
                                                                                         "regression")]


def test_rows_name_their_inputs_by_seed_and_by_file_content(tmp_path):
    from sparsebench.runner.inputs import input_id

    assert input_id("structured", 3) == "seed=3" and input_id("random", 0) == "seed=0"
    path = tmp_path / "qkv.pt"
    path.write_bytes(b"first")
    first = input_id(str(path), 0)
    path.write_bytes(b"other!")  # rewritten under the same name
    assert first.startswith("sha256=") and first.endswith(";seed=0") and input_id(str(path), 0) != first
    assert input_id(str(path), 1).endswith(";seed=1")  # the seed draws fwdbwd's output gradient


def test_same_inputs_by_kind_and_id_wherever_a_file_lies():
    from sparsebench.results import same_inputs

    row = lambda inputs, id_="": {"inputs": inputs, "input_id": id_}  # noqa: E731
    one, other = "sha256=00ff00ff00ff00ff;seed=0", "sha256=11ff00ff00ff00ff;seed=0"
    assert same_inputs(row("/a/qkv.pt", one), row("/b/copy.pt", one))  # the same content, moved
    assert not same_inputs(row("/a/qkv.pt", one), row("/a/qkv.pt", other))  # rewritten in place
    assert not same_inputs(row("random", "seed=0"), row("structured", "seed=0"))
    assert same_inputs(row("structured"), row("structured", "seed=3"))  # written before input_id: the kind alone
    assert not same_inputs(row("structured"), row("random", "seed=0"))
    assert same_inputs({"inputs": float("nan")}, row("random", "seed=0"))  # names none: matches any


def test_a_confirmation_run_measures_on_the_inputs_its_results_were_measured_on():
    """gate --confirm re-measures from the results' meta.json: its inputs and seed too, not random seed 0."""
    from sparsebench.runner.sweep import Sweep

    sweep = Sweep.from_meta({"config": {"inputs": "structured", "input_seed": 2, "min_run_time": 0.1}})
    assert (sweep.config.inputs, sweep.config.input_seed, sweep.config.min_run_time) == ("structured", 2, 0.1)
    assert sweep.inputs == {"inputs": "structured", "input_id": "seed=2"}


def test_the_run_table_shows_quality_where_it_means_something(capsys, tmp_path):
    """vs full and recall in run's table for selection patterns or structured/captured inputs; not on random
    q and k, where every row has a recall that means nothing."""
    from sparsebench.cli.run import _summary

    row = {"pattern": "local", "params": "window=64", "impl": "structured", "seq_len": 1024, "dtype": "float32",
           "mode": "fwd", "q_len": 1024, "heads": 2, "kv_heads": 2, "head_dim": 64, "device": "cpu",
           "latency_ms": 1.0, "status": "ok", "recall": 0.5, "speedup_vs_full": 2.0, "inputs": "random"}
    _summary([row], tmp_path / "results.csv", quiet=True)
    assert "recall" not in capsys.readouterr().err
    _summary([{**row, "inputs": "structured"}], tmp_path / "results.csv", quiet=True)
    assert "recall" in capsys.readouterr().err
    _summary([{**row, "pattern": "topk_blocks", "params": "block=64"}], tmp_path / "results.csv", quiet=True)
    out = capsys.readouterr().err
    assert "vs full" in out and "0.500" in out
