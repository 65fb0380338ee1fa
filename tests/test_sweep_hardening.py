"""Sweeps under hostile plugins and kills: a plugin's sys.exit is its own run's error, launched
workers end with their parent, --resume skips finished runs, leftovers of killed runs go (issue 20)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from ckmbench.hookspecs import hookimpl
from ckmbench.method import Method
from ckmbench.plugins import load_registry
from ckmbench.results import read_records
from ckmbench.runner import RunConfig, run
from ckmbench.specs import MethodSpec


class ExitsInPredict(Method):
    name = "exits-in-predict"

    def predict(self, obs, ctx):
        sys.exit(7)


class ExitsInFit(Method):
    name = "exits-in-fit"

    def fit(self, train, val, task, ctx):
        raise SystemExit("bye")

    def predict(self, obs, ctx):
        return torch.zeros(len(obs), 1, *obs.out_shape)


class InterruptsItself(Method):
    name = "interrupts-itself"

    def predict(self, obs, ctx):
        raise KeyboardInterrupt  # raised by the plugin, no Ctrl-C


def hostile_registry():
    mod = types.ModuleType("hostile_methods")

    def register_methods(register):
        for cls in (ExitsInPredict, ExitsInFit, InterruptsItself):
            register(MethodSpec(name=cls.name, factory=lambda p, h, cls=cls: cls(p, h), tasks=("sr4",)))

    mod.ckmbench_register_methods = hookimpl(register_methods)
    return load_registry(extra_plugins=(mod,))


def cfg(tmp_path, **kw):
    base = dict(method="bilinear", task="sr4", dataset="city-tiny", profile="tiny", store=str(tmp_path / "r.jsonl"),
                runs_dir=str(tmp_path / "runs"), progress=False, max_test=2, examples=0)
    base.update(kw)
    return RunConfig(**base)


def test_a_plugin_that_exits_is_an_error_record_naming_it(tmp_path):
    reg = hostile_registry()
    exits = run(cfg(tmp_path, method="exits-in-predict"), reg)
    fit = run(cfg(tmp_path, method="exits-in-fit"), reg)
    interrupted = run(cfg(tmp_path, method="interrupts-itself"), reg)
    for record, where in ((exits, "in predict"), (fit, "in fit"), (interrupted, "in predict")):
        assert record["status"] == "error" and where in record["message"], record["message"]
        assert f"method '{record['method']}' of plugin 'hostile_methods'" in record["message"]
    assert "SystemExit: 7" in exits["message"] and "SystemExit: bye" in fit["message"]
    assert "KeyboardInterrupt" in interrupted["message"]
    assert [r["status"] for r in read_records(tmp_path / "r.jsonl")] == ["error"] * 3


def test_a_sweep_goes_on_past_a_plugin_that_exits(tmp_path, monkeypatch, capsys):
    from ckmbench import cli, plugins

    reg = hostile_registry()
    monkeypatch.setattr(plugins, "registry", lambda: reg)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "-m", "exits-in-predict,exits-in-fit,bilinear", "-t", "sr4", "-d", "city-tiny", "-p", "tiny",
                  "--max-test", "2", "--store", str(tmp_path / "r.jsonl"), "--no-progress"])
    assert exit_.value.code == 1
    assert "2 of 3 run(s) did not finish" in capsys.readouterr().err
    records = read_records(tmp_path / "r.jsonl")
    assert [(r["method"], r["status"]) for r in records] == [
        ("exits-in-predict", "error"), ("exits-in-fit", "error"), ("bilinear", "done")]


# ------------------------------------------------------------------ launched workers
SLOW_PLUGIN = '''
import os, time
import torch
from ckmbench.hookspecs import hookimpl
from ckmbench.method import Method
from ckmbench.specs import MethodSpec


class SlowFit(Method):
    name = "slow-fit"

    def fit(self, train, val, task, ctx):
        open(os.path.join(os.environ["SLOW_FIT_DIR"], "fitting-%d" % os.getpid()), "w").close()
        time.sleep(120)

    def predict(self, obs, ctx):
        return torch.zeros(len(obs), 1, *obs.out_shape)


@hookimpl
def ckmbench_register_methods(register):
    register(MethodSpec(name="slow-fit", factory=lambda p, h: SlowFit(p, h), tasks=("sr4",)))
'''


def installed_slow_plugin(root):
    """A plugin distribution on PYTHONPATH (so spawned workers load it too): method slow-fit."""
    (root / "fake_slow_plugin.py").write_text(SLOW_PLUGIN)
    info = root / "fake_slow_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-slow-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ckmbench]\nslow = fake_slow_plugin\n")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_a_local_sweep_ends_its_workers(tmp_path):
    import os
    import signal
    import subprocess
    import time

    installed_slow_plugin(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "SLOW_FIT_DIR": str(marks), "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "ckmbench.cli", "run", "-m", "slow-fit", "-t", "sr4",
                              "-d", "city-tiny", "-p", "tiny", "--seeds", "0,1", "--launcher", "local", "--jobs", "2", "--max-test", "1",
                              "--store", str(tmp_path / "r.jsonl")], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.2)
            workers = [int(p.name.split("-")[1]) for p in marks.glob("fitting-*")]
        assert len(workers) == 2, sweep.stderr.read().decode() if sweep.poll() is not None else "workers never fitted"
        sweep.kill()  # kill -9 of the sweep
        sweep.wait()
        end = time.monotonic() + 5
        while any(alive(w) for w in workers) and time.monotonic() < end:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "workers outlived their killed sweep"
    finally:
        if sweep.poll() is None:
            sweep.kill()
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)


# ------------------------------------------------------------------ --resume
def test_resume_skips_the_runs_a_killed_sweep_finished(tmp_path, capsys):
    from ckmbench import cli

    store = tmp_path / "r.jsonl"
    common = ["-t", "sr4", "-d", "city-tiny", "-p", "tiny", "--max-test", "2", "--store", str(store), "--no-progress"]
    cli.main(["run", "-m", "bilinear", *common])  # what the killed sweep finished
    capsys.readouterr()
    cli.main(["run", "-m", "bilinear,bicubic", "--resume", *common])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("skipped")] == [
        line for line in out.splitlines() if line.startswith("skipped bilinear on sr4 seed 0: done already")]
    assert out.count("skipped") == 1
    assert [r["method"] for r in read_records(store)] == ["bilinear", "bicubic"]


def test_resume_sees_a_done_record_waiting_in_the_pending_folder(tmp_path):
    first = run(cfg(tmp_path, pending=True), None)
    again = run(cfg(tmp_path, resume=True), None)
    assert again["status"] == "skipped" and again["record_id"] == first["record_id"]
    assert run(cfg(tmp_path, resume=True, shard=(0, 1)), None)["status"] == "done"  # a shard is another record
    assert run(cfg(tmp_path, resume=True, seed=1), None)["status"] == "done"  # another seed: another config
    assert run(cfg(tmp_path, resume=True, shard=(0, 1)), None)["status"] == "skipped"


# ------------------------------------------------------------------ leftovers of killed runs
def dead_pid() -> int:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_killed_runs_go_at_the_next_run(tmp_path, monkeypatch, capsys):
    from ckmbench import cli, runner
    from ckmbench.leftovers import writer

    store, runs = tmp_path / "r.jsonl", tmp_path / "runs"
    common = ["-t", "sr4", "-d", "city-tiny", "-p", "tiny", "--max-test", "2", "--store", str(store), "--no-progress"]

    def full_disk(record, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "append_record", full_disk)  # the store write fails after the examples file
    with pytest.raises(SystemExit):
        cli.main(["run", "-m", "bilinear", *common])
    monkeypatch.undo()
    orphan = next((tmp_path / "examples").glob("*.npz"))
    stamp = writer()
    dead = {**stamp, "pid": dead_pid()}

    def run_folder(name, who, files=("config.json",)):
        folder = runs / name
        folder.mkdir(parents=True)
        for f in files:
            (folder / f).write_text(json.dumps({"writer": who}))
        return folder

    killed = run_folder("20260101-000000-cgdm-sr4-city-tiny-aaaaaaaa", dead)
    live = run_folder("20260101-000000-cgdm-sr4-city-tiny-bbbbbbbb", stamp)  # this process: still running
    elsewhere = run_folder("20260101-000000-cgdm-sr4-city-tiny-cccccccc", {**dead, "host": "another-node"})
    finished = run_folder("20260101-000000-cgdm-sr4-city-tiny-dddddddd", dead, ("config.json", "record.json"))
    capsys.readouterr()
    cli.main(["run", "-m", "bilinear", *common])  # the orphan's writer (this process) lives: kept
    assert orphan.exists() and killed.exists() is False
    assert live.exists() and elsewhere.exists() and finished.exists()
    assert "removed 1 leftover(s)" in capsys.readouterr().err
    mark = orphan.with_name(f".{orphan.stem}.writing")
    mark.write_text(json.dumps(dead))  # its writer has ended since
    cli.main(["run", "-m", "bilinear", *common])
    assert not orphan.exists() and not mark.exists()
    stored = [r["examples"] for r in read_records(store)]
    assert len(stored) == 2 and all((tmp_path / e).exists() for e in stored)  # referenced files stay
    assert not list((tmp_path / "examples").glob(".*.writing"))
