"""Scale-out planning: the deterministic split, the torchrun/srun environment, GPU slots, option checks."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sparsebench.cli import app
from sparsebench.errors import SparsebenchError
from sparsebench.runner import Sweep, SweepConfig, load_config
from sparsebench.runner.config import SweepOptions, expand
from sparsebench.runner.distributed import from_env
from sparsebench.runner.gpus import Gpu, cpu_slots, gpu_columns, gpu_slots, local_rank_gpu, node_gpus, parse_gpus
from sparsebench.runner.scale import plan
from sparsebench.runner.shard import Shard, assign, group_work, parse_dirname
from sparsebench.runner.slurm import config_toml, parse_params

# Many shape groups of unequal work: patterns x impls x 5 lengths x 2 dtypes x 2 modes x 2 GQA shapes.
SWEEP = SweepConfig(patterns=["local", "strided", "causal", "bigbird"], impls=["sdpa", "eager", "seed", "flex"],
                    seq=[256, 512, 1024, 2048, 4096], devices=["cpu"], dtypes=["float32", "bfloat16"],
                    modes=["fwd", "fwdbwd"], heads=[8], kv_heads=[8, 2])


def keys(cases) -> list[tuple]:
    return [c.key() for c in cases]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 8, 16, 40, 97])
def test_the_shards_union_is_exactly_the_unsharded_sweep(count):
    cases, unsupported = expand(SWEEP)
    assert len({c.group() for c in cases}) == 40 and unsupported  # the sweep has rows of both kinds
    parts = [Shard(k, count).select(cases, unsupported) for k in range(1, count + 1)]
    sharded = [key for run, unsup in parts for key in keys(run) + keys(c for c, _ in unsup)]
    assert len(sharded) == len(set(sharded))  # no case in two shards
    assert sorted(sharded) == sorted(keys(cases) + keys(c for c, _ in unsupported))
    owners: dict[tuple, set[int]] = {}
    for k, (run, unsup) in enumerate(parts, start=1):
        for case in [*run, *(c for c, _ in unsup)]:
            owners.setdefault(case.group(), set()).add(k)
        # each shard keeps the sweep's order: its groups whole, each group's dense reference first
        for _, group in itertools.groupby(run, key=lambda c: c.group()):
            group = list(group)
            assert group[0] == group[0].reference() and group[1:] == [c for c in cases if c in group[1:]]
    assert all(len(shards) == 1 for shards in owners.values())  # a shape group is never split


def test_the_split_is_deterministic_and_balanced():
    cases, unsupported = expand(SWEEP)
    work = group_work(cases, unsupported)
    shuffled = dict(reversed(list(work.items())))  # the order groups are found in does not matter
    assert assign(work, 4) == assign(shuffled, 4)
    loads = [sum(w for g, w in work.items() if assign(work, 4)[g] == k) for k in range(1, 5)]
    assert max(loads) <= 1.1 * sum(loads) / 4  # largest first to the least loaded: close to even
    assert max(loads) < max(work.values()) + sum(loads) / 4  # the greedy bound
    # the same sweep expanded in another process gives the same split (keys as text, no hash seed)
    assert Shard(2, 4).select(*expand(SWEEP)) == Shard(2, 4).select(cases, unsupported)


def test_more_shards_than_groups_leaves_some_empty():
    config = SweepConfig(patterns=["local"], impls=["eager"], seq=[64, 128], devices=["cpu"])
    cases, unsupported = expand(config)
    sizes = [len(Shard(k, 5).select(cases, unsupported)[0]) for k in range(1, 6)]
    assert sorted(sizes) == [0, 0, 0, 2, 2]


@pytest.mark.parametrize("text,shard", [("1/1", Shard(1, 1)), ("3/8", Shard(3, 8)), (" 2 / 4 ", Shard(2, 4))])
def test_shard_parse(text, shard):
    assert Shard.parse(text) == shard
    assert parse_dirname(shard.dirname) == shard


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "x", "1-4", "-1/4"])
def test_bad_shard_is_a_usage_error(text):
    with pytest.raises(SparsebenchError, match="K/N|between 1 and N"):
        Shard.parse(text)
    assert parse_dirname(f"shard-{text}") is None


def test_sweep_cases_of_a_shard_keep_their_dense_reference_on_resume():
    config = SweepConfig(patterns=["local", "strided"], impls=["eager", "sdpa"], seq=[64, 96, 128], devices=["cpu"])
    sweep = Sweep(config, Shard(1, 2))
    cases, _ = sweep.cases()
    done = {c.key() for c in cases if c.pattern != "strided"}  # resumed: dense and local done
    left, _ = sweep.cases(done)
    assert {c.pattern for c in left} == {"dense", "strided"}  # the dense reference is measured again
    assert {c.group() for c in left} == {c.group() for c in cases}


@pytest.mark.parametrize("env,expected", [
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, ("torchrun", 3, 8, 1)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "2"}, ("srun", 5, 16, 2)),
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, ("torchrun", 1, 2, 1)),
    ({"RANK": "0", "WORLD_SIZE": "1"}, None),  # one process: no sharding
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"}, None),  # a Slurm array task
    ({}, None),
])
def test_rank_from_the_environment(env, expected):
    rank = from_env(env)
    assert (rank.launcher, rank.rank, rank.world_size, rank.local_rank) == expected if expected else rank is None
    if rank:
        assert rank.shard == Shard(rank.rank + 1, rank.world_size)


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "a", "WORLD_SIZE": "2"}])
def test_bad_rank_variables(env):
    with pytest.raises(SparsebenchError, match="RANK"):
        from_env(env)


GPUS = [Gpu(0, "NVIDIA H100 80GB HBM3"), Gpu(1, "NVIDIA A100-SXM4-80GB"), Gpu(3, "NVIDIA A100-SXM4-80GB")]


def test_parse_gpus():
    assert parse_gpus("all", GPUS) == GPUS
    assert parse_gpus("3,1,3", GPUS) == [GPUS[2], GPUS[1]]
    with pytest.raises(SparsebenchError, match="GPU 2 is not available"):
        parse_gpus("0,2", GPUS)
    with pytest.raises(SparsebenchError, match="indices"):
        parse_gpus("cuda:0", GPUS)
    with pytest.raises(SparsebenchError, match="no GPU"):
        parse_gpus("all", [])


def test_each_slot_sees_one_gpu_by_its_physical_index():
    slots = gpu_slots(GPUS[1:])
    assert [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
                                      {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}]
    assert [s.gpu for s in slots] == GPUS[1:]


def test_cpu_slots_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [s.env["OMP_NUM_THREADS"] for s in cpu_slots(3, cpu_count=8)] == ["2", "2", "2"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_slots(2, cpu_count=8)[0].env == {}  # the user's setting stands


def test_node_gpus_are_the_visible_ones(monkeypatch):
    monkeypatch.setenv("SPARSEBENCH_FAKE_GPUS", "0=A,1=B,2=B,3=C")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [g.index for g in node_gpus()] == [0, 1, 2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # e.g. what Slurm gave this job
    assert node_gpus() == [Gpu(2, "B"), Gpu(3, "C")]
    assert local_rank_gpu(1, node_gpus()) == Gpu(3, "C")
    with pytest.raises(SparsebenchError, match="local rank 2"):
        local_rank_gpu(2, node_gpus())
    assert local_rank_gpu(5, [Gpu(6, "A")]) == Gpu(6, "A")  # the launcher gave each rank its own GPU


def test_rows_name_the_gpu_the_worker_measured_on():
    seen = []

    def lookup(index: int) -> dict:
        seen.append(index)
        return {"gpu_index": 3, "gpu_name": "NVIDIA H100 80GB HBM3"}

    assert gpu_columns("cpu", lookup) == {}
    assert gpu_columns("cuda", lookup) == {"gpu_index": 3, "gpu_name": "NVIDIA H100 80GB HBM3"}
    assert gpu_columns("cuda:1", lookup) and seen == [0, 1]  # the device as the worker sees it


CPU = SweepConfig(patterns=["local"], seq=[64], devices=["cpu"])


@pytest.mark.parametrize("kwargs,env,needle", [
    ({"gpu_list": "all"}, {}, "--device cuda"),
    ({"gpu_list": "0", "jobs": 2}, {}, "choose one"),
    ({"shards": 4}, {}, "--shards goes with --launcher slurm"),
    ({"launcher": "slurm"}, {}, "needs --shards"),
    ({"launcher": "pbs"}, {}, "unknown --launcher"),
    ({"launcher": "slurm", "shards": 4, "shard": "1/4"}, {}, "drop --shard"),
    ({"shard": "1/2"}, {"RANK": "0", "WORLD_SIZE": "2"}, "drop --shard"),
    ({"gpu_list": "all"}, {"RANK": "0", "WORLD_SIZE": "2"}, "drop --gpus"),
])
def test_scale_out_options_that_cannot_work_together(kwargs, env, needle, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SPARSEBENCH_FAKE_GPUS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SparsebenchError, match=needle):
        plan(CPU, Path("out"), **kwargs)


def test_plans(monkeypatch, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARSEBENCH_FAKE_GPUS", "0=A,1=B")
    assert plan(CPU, tmp_path).out_dir == tmp_path and not plan(CPU, tmp_path).slots  # serial by default
    sharded = plan(CPU, tmp_path, shard="2/3")
    assert sharded.out_dir == tmp_path / "shard-2-of-3" and not sharded.slots
    assert [s.gpu for s in plan(CPU, tmp_path, gpu_list="all").slots] == [Gpu(0, "A"), Gpu(1, "B")]
    assert len(plan(CPU, tmp_path, jobs=2).slots) == 2 and not plan(CPU, tmp_path, jobs=1).slots
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranked = plan(CPU, tmp_path)
    assert ranked.shard == Shard(2, 2) and [s.gpu for s in ranked.slots] == [Gpu(1, "B")]  # LOCAL_RANK's GPU
    assert "torchrun rank 1 of 2" in ranked.describe()


def test_the_array_config_reads_back_as_the_same_sweep(tmp_path):
    config = SweepConfig(patterns=["local:window=32", "bigbird"], seq=[64, 128], impls=["sdpa"], devices=["cpu"],
                         kv_heads=[], params={"mask_seed": 3}, timeout=30.5)
    path = tmp_path / "sweep.toml"
    path.write_text(config_toml(config))
    assert SweepConfig(**load_config(path)) == config
    # as each task's `run --config` reads it, serving sweeps too (whose readers refuse settings a sweep ignores)
    for sweep in (config, SweepConfig(patterns=["causal"], seq_lens=["100,300"], batch=[2], devices=["cpu"]),
                  SweepConfig(patterns=["local"], seq_lens=["uniform:64-256"], seq_lens_seed=3, batch=[4],
                              modes=["decode"], page_size=8, devices=["cpu"])):
        path.write_text(config_toml(sweep))
        assert SweepOptions().over(load_config(path)) == sweep
    assert parse_params(["account=abc", "mail-type=END"]) == {"account": "abc", "mail_type": "END"}
    with pytest.raises(SparsebenchError, match="KEY=VALUE"):
        parse_params(["account"])


@pytest.mark.parametrize("args,needle", [
    (["--shard", "5/4"], "between 1 and N"),
    (["--shard", "two"], "K/N"),
    (["--gpus", "all", "--device", "cpu"], "--gpus"),
    (["--shards", "3"], "--launcher slurm"),
    (["--shard", "1/2", "--gate", "README.md"], "--gate"),
])
def test_bad_scale_out_options_are_one_line_and_exit_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSEBENCH_FAKE_GPUS", raising=False)
    result = CliRunner().invoke(app, ["run", "--seq", "64", "--out-dir", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_empty_shard_writes_an_empty_result(tmp_path):
    """More shards than shape groups: the extra shards write a header and their meta.json, and exit 0."""
    args = ["run", "--pattern", "causal", "--impl", "seed", "--seq", "64", "--device", "cpu",
            "--out-dir", str(tmp_path)]  # seed runs only local and strided: an unsupported row, no worker
    results = [CliRunner().invoke(app, [*args, "--shard", f"{k}/3"]) for k in (1, 2, 3)]
    assert [r.exit_code for r in results] == [0, 0, 0], [r.output for r in results]
    lines = [len((tmp_path / f"shard-{k}-of-3" / "results.csv").read_text().splitlines()) for k in (1, 2, 3)]
    assert sorted(lines) == [1, 1, 2]  # two headers alone, one header and the unsupported row
    assert "all 3 shards finished: merged 1 rows" in results[2].output
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 2
