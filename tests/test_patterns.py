"""Every pattern's dense mask, mask_mod and nnz against a brute-force loop over DESIGN.md's rules."""

from __future__ import annotations

import pytest
import torch
from conftest import StorageSizes

from sparsebench.errors import PatternError
from sparsebench.patterns import PATTERNS, causal_of, get_pattern
from sparsebench.patterns.bigbird import _random_picks

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

# Parameter grids for the closed-form nnz: edge values (window 1-3, stride 1, summary == length, no globals, ...).
GRID = {
    "dense": [{}], "causal": [{}],
    "local": [{"window": w} for w in (2, 3, 4, 5, 64, 200)],
    "strided": [{"stride": s} for s in (1, 2, 3, 8, 100)],
    "sliding_window": [{"window": w} for w in (1, 2, 5, 64, 300)],
    "dilated": [{"window": w, "dilation": d} for w in (1, 2, 4, 64) for d in (1, 2, 3, 7)],
    "fixed": [{"length": n, "summary": c} for n in (1, 2, 5, 16) for c in (1, 2, 5) if c <= n],
    "longformer": [{"window": w, "global_tokens": g} for w in (1, 2, 3, 9, 256) for g in (0, 1, 3, 100)],
    "bigbird": [{"block": b, "global_blocks": g, "random_blocks": r} for b in (1, 3, 16) for g in (0, 1, 5)
                for r in (0, 3)],
}


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
    p = get_pattern("bigbird", block=16, global_blocks=1, random_blocks=2, mask_seed=3)
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


def test_bigbird_mask_seed_fixes_the_mask():
    a, b = get_pattern("bigbird", mask_seed=1), get_pattern("bigbird", mask_seed=1)
    assert torch.equal(a.dense_mask(1024), b.dense_mask(1024))
    assert not torch.equal(a.dense_mask(1024), get_pattern("bigbird", mask_seed=2).dense_mask(1024))


def test_bigbird_old_seed_name_still_builds_the_same_pattern():
    """Results written before the rename carry params 'seed=N'; they must still rebuild their pattern."""
    with pytest.warns(DeprecationWarning, match="'seed' is now called 'mask_seed'"):
        old = get_pattern("bigbird", block=16, seed=2)
    assert old == get_pattern("bigbird", block=16, mask_seed=2)
    assert old.params["mask_seed"] == 2 and "seed" not in old.params
    with pytest.raises(PatternError, match="mask_seed"), pytest.warns(DeprecationWarning):
        get_pattern("bigbird", seed=1, mask_seed=2)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_mask_mod_works_with_flex_block_mask(name):
    from torch.nn.attention.flex_attention import create_block_mask

    p = get_pattern(name)
    n = 300
    bm = create_block_mask(p.mask_mod_for(n), None, None, n, n, device="cpu", BLOCK_SIZE=128)
    assert torch.equal(bm.to_dense()[0, 0].bool().repeat_interleave(128, 0).repeat_interleave(128, 1)[:n, :n]
                       | ~p.dense_mask(n), torch.ones(n, n, dtype=torch.bool))


@pytest.mark.parametrize("name", list(PATTERNS))
def test_closed_form_nnz_matches_the_row_counts(name):
    """nnz's closed forms (bigbird: per block) against the row counts, which are checked against brute force."""
    # bigbird draws nb random numbers per block row: fewer and smaller n keep it quick with block = 1
    sizes = [*range(1, 70, 3), 127, 128, 129, 257] if name == "bigbird" else [*range(1, 70), 127, 128, 129, 1000]
    for params in GRID[name]:
        pattern = get_pattern(name, **params)
        for n in sizes:
            assert pattern.nnz(n) == int(pattern.row_counts(n).sum()), (params, n)


def test_bigbird_nnz_matches_its_block_table():
    for params in GRID["bigbird"]:
        pattern = get_pattern("bigbird", **params)
        for n in (1, 2, 17, 48, 100, 257):
            keys_per_block = torch.full((pattern.num_blocks(n),), pattern.block)
            keys_per_block[-1] = n - pattern.block * (len(keys_per_block) - 1)
            pairs = keys_per_block @ pattern.block_table(n).long() @ keys_per_block
            assert pattern.nnz(n) == int(pairs), (params, n)


@pytest.mark.parametrize("name,params", [
    *[(name, {"block": 512} if name == "bigbird" else {}) for name in PATTERNS],
    pytest.param("bigbird", {}, marks=pytest.mark.slow, id="bigbird-block64"),  # 16384 blocks: ~10 s of draws
])
def test_nnz_takes_less_than_a_byte_per_row(name, params):
    """At n = 2^20, nnz builds no tensor of n bytes or more (an n^2 mask would be 1 TiB, an (n/b)^2 table of
    int64 counts 4 GiB, even one int64 count per row 8 MiB): it is a closed form or O(n / block)."""
    n = 2**20
    pattern = get_pattern(name, **params)
    _random_picks.cache_clear()  # bigbird's draws must happen inside the measurement
    with StorageSizes() as mode:
        nnz = pattern.nnz(n)
    assert mode.largest < n
    assert nnz == int(pattern.row_counts(n).sum())  # the same count as the O(n) route


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
