"""Every pattern's dense mask, mask_mod and nnz against a brute-force loop over DESIGN.md's rules."""

from __future__ import annotations

import pytest
import torch

from sparsebench.errors import PatternError
from sparsebench.patterns import PATTERNS, causal_of, get_pattern

SIZES = [1, 2, 7, 64, 130, 257]


def rule(name: str, p, q: int, k: int, n: int) -> bool:
    """DESIGN.md's table, written as plainly as possible."""
    if name == "dense":
        return True
    if name == "causal":
        return k <= q
    if name == "local":
        return q - p.window // 2 <= k < q + p.window // 2
    if name == "strided":
        return k % p.stride == 0 or k == q
    if name == "sliding_window":
        return q - p.window < k <= q
    if name == "dilated":
        return any(k == q - j * p.dilation for j in range(p.window)) and k >= 0
    if name == "fixed":
        return (k // p.length == q // p.length or k % p.length >= p.length - p.summary) and k <= q
    if name == "longformer":
        return abs(q - k) <= p.window / 2 or q < p.global_tokens or k < p.global_tokens
    raise AssertionError(name)


SMALL = {"local": {"window": 6}, "sliding_window": {"window": 5}, "dilated": {"window": 4, "dilation": 3},
         "fixed": {"length": 16, "summary": 3}, "longformer": {"window": 9, "global_tokens": 3},
         "strided": {"stride": 5}, "bigbird": {"block": 16, "random_blocks": 2}}


@pytest.mark.parametrize("name", [n for n in PATTERNS if n != "bigbird"])
@pytest.mark.parametrize("params", ["default", "small"])
def test_mask_matches_brute_force(name, params):
    pattern = get_pattern(name, **(SMALL.get(name, {}) if params == "small" else {}))
    for n in SIZES:
        expected = torch.tensor([[rule(name, pattern, q, k, n) for k in range(n)] for q in range(n)])
        assert torch.equal(pattern.dense_mask(n), expected), (name, n)
        assert pattern.nnz(n) == int(expected.sum()), (name, n)
        assert torch.equal(pattern.row_counts(n), expected.sum(1)), (name, n)


def test_seed_rules_are_the_write_ups_loops():
    from sparsebench.impls.seed import seed_mask

    for n in (1, 31, 100, 1000):
        assert torch.equal(get_pattern("local").dense_mask(n), seed_mask("local", n) == 1)
        assert torch.equal(get_pattern("strided").dense_mask(n), seed_mask("strided", n) == 1)


def test_bigbird_block_rule():
    p = get_pattern("bigbird", block=16, global_blocks=1, random_blocks=2, seed=3)
    n = 16 * 10 + 5  # partial last block
    table = p.block_table(n)
    nb = table.shape[0]
    assert nb == 11
    for i in range(nb):
        for j in (i - 1, i, i + 1):
            if 0 <= j < nb:
                assert table[i, j]
        assert table[i, 0]
    assert table[0].all()  # the global block sees everyone
    # rows past the globals have window + global + exactly r random blocks (when enough are left)
    for i in range(1, nb):
        window = {j for j in (i - 1, i, i + 1) if 0 <= j < nb} | {0}
        assert int(table[i].sum()) == len(window) + 2
    mask = p.dense_mask(n)
    expected = torch.tensor([[bool(table[q // 16, k // 16]) for k in range(n)] for q in range(n)])
    assert torch.equal(mask, expected)
    assert p.nnz(n) == int(expected.sum())


def test_bigbird_seed_fixes_the_mask():
    a, b = get_pattern("bigbird", seed=1), get_pattern("bigbird", seed=1)
    assert torch.equal(a.dense_mask(1024), b.dense_mask(1024))
    assert not torch.equal(a.dense_mask(1024), get_pattern("bigbird", seed=2).dense_mask(1024))


@pytest.mark.parametrize("name", list(PATTERNS))
def test_mask_mod_works_with_flex_block_mask(name):
    from torch.nn.attention.flex_attention import create_block_mask

    p = get_pattern(name)
    n = 300
    bm = create_block_mask(p.mask_mod_for(n), None, None, n, n, device="cpu", BLOCK_SIZE=128)
    assert torch.equal(bm.to_dense()[0, 0].bool().repeat_interleave(128, 0).repeat_interleave(128, 1)[:n, :n]
                       | ~p.dense_mask(n), torch.ones(n, n, dtype=torch.bool))


def test_nnz_needs_no_dense_matrix():
    # 2**20 squared booleans would be 1 TiB: nnz must come from the closed forms.
    n = 2**20
    for name in PATTERNS:
        assert 0 < get_pattern(name).nnz(n) <= n * n


def test_causal_of_intersects():
    local = get_pattern("local", window=8)
    p, n = causal_of(local), 40
    assert torch.equal(p.dense_mask(n), local.dense_mask(n) & get_pattern("causal").dense_mask(n))
    assert p.nnz(n) == int(p.dense_mask(n).sum())
    assert causal_of(get_pattern("sliding_window")) == get_pattern("sliding_window")


@pytest.mark.parametrize("name,params", [
    ("local", {"window": 0}), ("local", {"window": 1}), ("strided", {"stride": 0}), ("strided", {"stride": -2}),
    ("sliding_window", {"window": 0}), ("dilated", {"dilation": 0}), ("fixed", {"summary": 200}),
    ("longformer", {"global_tokens": -1}), ("bigbird", {"block": 0}), ("local", {"stride": 4}),
    ("nope", {}), ("local", {"window": 2.5}),
])
def test_bad_parameters_are_rejected(name, params):
    with pytest.raises(PatternError):
        get_pattern(name, **params)


def test_bad_sequence_length():
    with pytest.raises(PatternError):
        get_pattern("local").nnz(0)
