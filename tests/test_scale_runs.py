"""Sweeps and shards (docs/scale.md): launched runs write per-run record files that
`ckmbench results collect` merges exactly once; shards merge to the unsharded numbers with
FID computed once on the merged features; seeds reuse only their own fit and show mean ± std."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ckmbench.cli import main
from ckmbench.metrics import fid as fid_module
from ckmbench.pending import collect, pending_dir
from ckmbench.results import read_records
from ckmbench.runner import RunConfig, run

from rms_folder import write_rms_folder

# maps 1..12 hold train, val and test scenes of the standard split; 701..704 are test-only
MAPS = list(range(1, 13)) + [701, 702, 703, 704]


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    return write_rms_folder(tmp_path_factory.mktemp("rms") / "root", maps=MAPS, n_tx=2, size=32)


def _run_cli(args, expect_exit=None):
    try:
        main(args)
    except SystemExit as exc:
        if exc.code != expect_exit:
            raise


def test_local_launcher_runs_in_parallel_and_collect_is_exactly_once(rms, tmp_path, capsys):
    store = tmp_path / "s" / "records.jsonl"
    _run_cli(["run", "-m", "bilinear,nearest", "-t", "sr4", "-d", "radiomapseer-dpm", "--data-root", str(rms),
              "--store", str(store), "--launcher", "local", "--jobs", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert "2 run(s) in 2 parallel process(es)" in out and "2 record(s) added" in out
    records = read_records(store)
    assert sorted(r["method"] for r in records) == ["bilinear", "nearest"]
    assert all(r["status"] == "done" for r in records)
    assert not list(pending_dir(store).glob("*.json"))
    # collecting again adds nothing; a file left by a collect that died after writing the store is skipped
    assert collect(store).appended == []
    (pending_dir(store) / f"{records[0]['record_id']}.json").write_text(json.dumps(records[0]))
    report = collect(store)
    assert report.appended == [] and report.skipped == 1
    assert len(read_records(store)) == 2 and not list(pending_dir(store).glob("*.json"))


def test_submitit_local_executor(rms, tmp_path, capsys):
    pytest.importorskip("submitit")
    store = tmp_path / "s" / "records.jsonl"
    _run_cli(["run", "-m", "bilinear", "-t", "sr4", "-d", "radiomapseer-dpm", "--data-root", str(rms),
              "--store", str(store), "--launcher", "submitit-local", "--seeds", "0,1", "--no-progress"])
    out = capsys.readouterr().out
    assert "submitted 2 job(s)" in out and "2 record(s) added" in out
    assert sorted(r["seed"] for r in read_records(store)) == [0, 1]
    assert list((store.parent / "submitit").glob("*_log.out"))


def test_launcher_config_errors(rms, tmp_path, capsys):
    bad = tmp_path / "res.toml"
    bad.write_text("[other]\nx = 1\n")
    _run_cli(["run", "-m", "bilinear", "-t", "sr4", "-d", "radiomapseer-dpm", "--data-root", str(rms),
              "--store", str(tmp_path / "r.jsonl"), "--launcher", "submitit-local", "--launcher-config", str(bad)],
             expect_exit=2)
    err = capsys.readouterr().err
    assert "no [submitit] table" in err and "\n" not in err.strip()


class FakeScorer:
    """Inception stand-in: a map's features are its 8x8 block means (per map, batch-free)."""

    calls = {"fid": 0, "features": 0}

    def __init__(self, *a, **k):
        self.weights = fid_module.FidWeights(fid_module.Path("fake.pt"), "0" * 64, "user", "fake")

    def features(self, maps):
        FakeScorer.calls["features"] += int(maps.shape[0])
        return torch.nn.functional.avg_pool2d(torch.as_tensor(maps).float(), 4).flatten(1)

    real_features = features
    notes = fid_module.FidScorer.notes
    __call__ = fid_module.FidScorer.__call__

    @staticmethod
    def fid_from_features(real, fake):
        FakeScorer.calls["fid"] += 1
        real, fake = real.double(), fake.double()
        return float(((real.mean(0) - fake.mean(0)) ** 2).sum() + (real.var(0) - fake.var(0)).abs().sum())


@pytest.fixture
def fake_fid(monkeypatch):
    monkeypatch.setattr(fid_module, "FidScorer", FakeScorer)
    monkeypatch.setattr(fid_module, "find_weights", lambda *a, **k: FakeScorer().weights)
    fid_module._SCORERS.clear()
    FakeScorer.calls.update(fid=0, features=0)
    yield FakeScorer.calls
    fid_module._SCORERS.clear()


def test_sharded_run_collects_to_the_unsharded_record(rms, tmp_path, fake_fid):
    store = tmp_path / "s" / "records.jsonl"
    base = dict(method="bilinear", task="inpaint", dataset="radiomapseer-dpm", data_root=str(rms), store=str(store),
                profile="small", progress=False, fid=True, examples=0)
    whole = run(RunConfig(**base))
    assert fake_fid["fid"] == 1 and whole["metrics"]["fid"] is not None
    fake_fid.update(fid=0)
    shards = [run(RunConfig(**base, shard=(i, 3))) for i in range(3)]
    assert fake_fid["fid"] == 0  # no shard computes FID
    assert sum(s["n_test"] for s in shards) == whole["n_test"] and all(s["shard"]["count"] == 3 for s in shards)
    assert len(read_records(store)) == 1  # the shards wait in the pending folder
    assert sorted(p.suffix for p in pending_dir(store).iterdir()) == [".json"] * 3 + [".npz"] * 3
    report = collect(store)
    assert fake_fid["fid"] == 1  # once, on the merged features
    merged = report.appended[0]
    assert merged["metrics"] == whole["metrics"]  # every number, FID included, bit for bit
    assert merged["n_test"] == whole["n_test"] and merged["config_hash"] == whole["config_hash"]
    assert merged["metric_notes"]["fid_n"] == whole["metric_notes"]["fid_n"] == whole["n_test"]
    assert merged["shard"]["records"] == [s["record_id"] for s in shards]
    assert collect(store).appended == [] and len(read_records(store)) == 2


def test_incomplete_shards_wait_and_a_failed_shard_is_stored(rms, tmp_path):
    store = tmp_path / "s" / "records.jsonl"
    base = dict(method="bilinear", task="sr4", dataset="radiomapseer-dpm", data_root=str(rms), store=str(store),
                progress=False, examples=0)
    run(RunConfig(**base, shard=(0, 2)))
    report = collect(store)
    assert report.appended == [] and "shards done 0 of 2" in report.waiting[0]
    run(RunConfig(**base, shard=(1, 2)))
    assert collect(store).appended[0]["shard"]["count"] == 2
    with pytest.raises(Exception, match="at most"):
        run(RunConfig(**base, shard=(0, 99)))


def test_seeds_reuse_only_their_own_fit_and_show_mean_and_std(rms, tmp_path, capsys):
    store = tmp_path / "s" / "records.jsonl"
    args = ["run", "-m", "drrn", "-t", "sr4", "-d", "radiomapseer-dpm", "--data-root", str(rms), "--profile", "tiny",
            "--seeds", "0,1", "--store", str(store), "--no-progress"]
    _run_cli(args)
    first = read_records(store)
    assert [r["seed"] for r in first] == [0, 1]
    assert [r["fit"]["source"] for r in first] == ["trained", "trained"]  # seed 1 never reuses seed 0's fit
    assert first[0]["fit"]["key"] != first[1]["fit"]["key"] and first[0]["run_dir"] != first[1]["run_dir"]
    assert first[0]["metrics"]["psnr"] != first[1]["metrics"]["psnr"]
    _run_cli(args)
    again = read_records(store)[2:]
    assert [r["fit"]["source"] for r in again] == ["cache", "cache"]  # each seed its own fit
    assert [r["fit"]["key"] for r in again] == [r["fit"]["key"] for r in first]
    out = tmp_path / "lb"
    _run_cli(["leaderboard", "--store", str(store), "--out", str(out)])
    table = (out / "radiomapseer-dpm" / "sr4.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| drrn"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "2" and " ± " in cells[4]
    mean = np.mean([r["metrics"][table.split("Ranked on `")[1].split("`")[0]] for r in again])
    assert cells[4].strip("*").startswith(f"{mean:#.4g}".rstrip("."))


def test_slurm_resources_from_the_config_reach_the_sbatch_script(tmp_path, monkeypatch):
    """No Slurm here: a stand-in srun lets submitit build its executor; the sbatch script it
    would submit carries the [submitit] resources. Without srun the error is one line."""
    pytest.importorskip("submitit")
    from ckmbench.errors import CkmError
    from ckmbench.launch import load_resources, submitit_executor

    config = tmp_path / "slurm.toml"
    config.write_text('[submitit]\ntimeout_min = 1440\ngpus_per_node = 1\nslurm_partition = "gpu"\n')
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CkmError, match="cannot use Slurm here .*use --launcher local"):
        submitit_executor("slurm", tmp_path / "jobs", load_resources(str(config)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    executor = submitit_executor("slurm", tmp_path / "jobs", load_resources(str(config)))
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=1440", "--cpus-per-task=4", "--job-name=ckmbench"):
        assert f"#SBATCH {line}" in script


def test_a_paper_protocol_task_shards_too(rms, tmp_path):
    """Its own-way metric (EnvCDiff's 7x7 SSIM) is merged per sample like the others."""
    store = tmp_path / "s" / "records.jsonl"
    base = dict(method="bilinear", task="sr4-envcf@envcdiff", dataset="radiomapseer-dpm", data_root=str(rms),
                store=str(store), progress=False, examples=0)
    whole = run(RunConfig(**base))
    for i in range(2):
        run(RunConfig(**base, shard=(i, 2)))
    merged = collect(store).appended[0]
    assert merged["metrics"] == whole["metrics"] and "ssim_convention" in merged["metric_notes"]
    assert merged["metric_notes"]["ssim_convention"] == whole["metric_notes"]["ssim_convention"]


def test_pending_files_are_named_by_leaderboard_and_a_bad_one_is_one_line(rms, tmp_path, capsys):
    store = tmp_path / "s" / "records.jsonl"
    run(RunConfig(method="nearest", task="sr4", dataset="radiomapseer-dpm", data_root=str(rms), store=str(store),
                  progress=False, examples=0, pending=True))
    store.write_text("")
    _run_cli(["leaderboard", "--store", str(store), "--out", str(tmp_path / "lb")])
    assert "1 record file(s) of launched or sharded runs wait" in capsys.readouterr().err
    (pending_dir(store) / "broken.json").write_text("{not json")
    _run_cli(["results", "collect", "--store", str(store)], expect_exit=2)
    err = capsys.readouterr().err.strip()
    assert "broken.json is unreadable" in err and "remove it" in err and "\n" not in err
    (pending_dir(store) / "broken.json").unlink()
    _run_cli(["results", "collect", "--store", str(store)])
    assert [r["method"] for r in read_records(store)] == ["nearest"]
    _run_cli(["run", "-m", "nearest", "-t", "sr4", "--seed", "3", "--seeds", "0,1"], expect_exit=2)
    assert "pass one of them" in capsys.readouterr().err


def test_local_workers_each_see_one_gpu(monkeypatch):
    import multiprocessing

    from ckmbench.launch import pin_gpu

    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        pin_gpu(counter, ["2", "3"])
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["2", "3", "2"]
