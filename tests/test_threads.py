"""Thread choice of computing commands: --threads, $CKMBENCH_THREADS, $OMP_NUM_THREADS, idle cores, job shares."""

import os

import pytest
import torch

from ckmbench import launch, threads
from ckmbench.errors import CkmError
from ckmbench.runner import RunConfig, run


@pytest.fixture
def machine(monkeypatch):
    """An 8-core machine with a load average to set; no thread variables in the environment."""
    for var in (threads.ENV_VAR, *threads.CHILD_ENV_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "machine_cores", lambda: 8)
    state = {"load": 0.0}
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    return state


@pytest.fixture
def restore_threads():
    """Put torch, BLAS and the environment back as they were."""
    before = torch.get_num_threads()
    env = {k: os.environ.get(k) for k in threads.CHILD_ENV_VARS}
    yield
    torch.set_num_threads(before)
    while threads._BLAS_LIMIT:
        threads._BLAS_LIMIT.pop().restore_original_limits()
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("load, expected", [(0.0, 8), (0.9, 8), (2.5, 6), (7.5, 1), (30.0, 1)])
def test_default_is_the_idle_cores(machine, load, expected):
    machine["load"] = load
    assert threads.choose_threads() == expected


def test_unknown_load_uses_every_core(machine, monkeypatch):
    def no_load():
        raise OSError("no load average here")

    monkeypatch.setattr(threads.os, "getloadavg", no_load)
    assert threads.choose_threads() == 8


def test_precedence_flag_then_ckmbench_threads_then_omp(machine, monkeypatch):
    machine["load"] = 6.0  # 3 idle
    assert threads.choose_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads() == 2
    monkeypatch.setenv(threads.ENV_VAR, "5")
    assert threads.choose_threads() == 5
    assert threads.choose_threads(4) == 4


def test_never_more_than_the_machine_has(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert threads.choose_threads() == 8
    assert threads.choose_threads(32) == 8


def test_jobs_share_the_threads(machine, monkeypatch):
    assert threads.choose_threads(jobs=2) == 4
    assert threads.choose_threads(jobs=3) == 2
    assert threads.choose_threads(jobs=16) == 1  # at least one each
    machine["load"] = 4.0  # 5 idle: two jobs get 2 each, never 3 + 3 on 5 free cores
    assert threads.choose_threads(jobs=2) == 2
    monkeypatch.setenv(threads.ENV_VAR, "6")
    assert threads.choose_threads(jobs=3) == 2


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_environment_value_is_refused(machine, monkeypatch, value):
    monkeypatch.setenv(threads.ENV_VAR, value)
    with pytest.raises(CkmError, match=threads.ENV_VAR):
        threads.choose_threads()


def test_apply_sets_torch_blas_and_children(restore_threads):
    from threadpoolctl import threadpool_info

    threads.apply_threads(2)
    assert torch.get_num_threads() == 2
    assert all(os.environ[v] == "2" for v in threads.CHILD_ENV_VARS)
    assert all(p["num_threads"] == 2 for p in threadpool_info())
    threads.apply_threads(1)
    assert torch.get_num_threads() == 1
    assert all(p["num_threads"] == 1 for p in threadpool_info())


def test_local_jobs_get_their_share(machine, monkeypatch):
    """--launcher local --jobs 2 on 8 idle cores: each job's config asks for 4 threads."""
    seen = []

    class InlinePool:
        def __init__(self, max_workers, mp_context, initializer, initargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, cfg):
            seen.append(cfg["threads"])
            return type("Done", (), {"result": lambda self: {}})()

    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InlinePool)
    cfgs = [RunConfig(method="bilinear", task="sr4", seed=s) for s in range(3)]
    launch.launch_local(cfgs, jobs=2)
    assert seen == [4, 4, 4]
    seen.clear()
    launch.launch_local(cfgs, jobs=2, threads=2)
    assert seen == [1, 1, 1]


def test_record_carries_the_thread_count(tmp_path, restore_threads):
    record = run(RunConfig(method="bilinear", task="sr4", dataset="city-tiny", profile="tiny", progress=False,
                           store=str(tmp_path / "r.jsonl"), runs_dir=str(tmp_path / "runs"), max_test=2, threads=2))
    assert record["status"] == "done", record["message"]
    assert record["cost"]["threads"] == 2
    assert torch.get_num_threads() == 2


def test_cli_threads_option_reaches_the_record(tmp_path, restore_threads, monkeypatch):
    from ckmbench import cli
    from ckmbench.results import read_records

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = tmp_path / "r.jsonl"
    cli.main(["run", "-m", "bilinear", "-t", "sr4", "-d", "city-tiny", "-p", "tiny", "--no-progress", "--max-test", "2",
              "--store", str(store), "--threads", "2"])
    assert read_records(store)[-1]["cost"]["threads"] == min(2, threads.machine_cores())
    with pytest.raises(SystemExit):
        cli.main(["run", "-m", "bilinear", "-t", "sr4", "--threads", "0"])


@pytest.mark.parametrize("path", [("run",), ("evaluate",), ("leaderboard",), ("data", "generate"), ("data", "simulate")])
def test_every_computing_command_takes_threads(path):
    from ckmbench import cli

    command = cli.cli
    for name in path:
        command = command.commands[name]
    assert "threads" in [p.name for p in command.params]


def test_data_generate_shares_the_threads_between_its_workers(machine, monkeypatch, restore_threads):
    """`data generate --threads 4 --workers 2`: two scene processes, each with 2 threads."""
    from ckmbench import cli
    from ckmbench.data import builtin

    seen = {}

    def fake_load_city(name, shard=None, force=False, workers=0):
        seen.update(workers=workers, threads=torch.get_num_threads(), child=os.environ["OMP_NUM_THREADS"])
        raise CkmError("stop here")

    monkeypatch.setattr(builtin, "load_city", fake_load_city)
    with pytest.raises(SystemExit):
        cli.main(["data", "generate", "-d", "city-tiny", "--threads", "4", "--workers", "2"])
    assert seen == {"workers": 2, "threads": 2, "child": "2"}
    with pytest.raises(SystemExit):
        cli.main(["data", "generate", "-d", "city-tiny", "--threads", "3"])  # one worker per thread
    assert seen == {"workers": 3, "threads": 1, "child": "1"}
