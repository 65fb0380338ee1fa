"""DistributedDataParallel on 2 CPU processes (gloo): identical weights, one record."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ckmbench.method import RunContext
from ckmbench.training import Trainer

from train_helpers import ToyData, toy_config, toy_loss, toy_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = toy_model()
    ctx = RunContext(seed=5, progress=False, fit_dir=Path(out) / "state")
    Trainer(model, toy_config(6, batch_size=8), ctx, name="toy").fit(ToyData(), toy_loss())
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = toy_model().state_dict()
    assert not all(torch.equal(a[k], start[k]) for k in a)  # it did train
    assert (tmp_path / "state" / "toy" / "train_state.pt").exists()  # written by rank 0 alone


# physdiff: a training step calls the DDP-wrapped network three times (the x0 loss, then the
# two-call DDIM of the physics losses) before its one backward pass.
@pytest.mark.slow
@pytest.mark.parametrize("method, task, steps, stages", [("cgdm", "sr4", 12, 1), ("physdiff", "envgen-static", 6, 3)])
def test_torchrun_cli_run_stores_one_record(tmp_path, method, task, steps, stages):
    ckmbench = shutil.which("ckmbench")
    if ckmbench is None:
        pytest.skip("the ckmbench console script is not installed")
    store = tmp_path / "store.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CKMBENCH_STORE": str(store), "CKMBENCH_FITS": str(tmp_path / "fits")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", ckmbench, "run",
           "-m", method, "-t", task, "-d", "city-tiny", "-p", "tiny", "--max-test", "2", "--no-progress",
           "--keep-train-state", "--runs-dir", str(tmp_path / "runs"), "--store", str(store)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    assert len(records) == 1 and records[0]["status"] == "done"
    assert records[0]["fit"]["source"] == "trained" and records[0]["fit"]["steps_done"] == steps
    states = [torch.load(f, map_location="cpu", weights_only=True) for f in (tmp_path / "fits").rglob("train_state.pt")]
    assert len(states) == stages and all(state["world_size"] == 2 for state in states)  # each stage on both ranks
    assert len(list((tmp_path / "runs").iterdir())) == 1
