"""The fit cache under kills and damage: --refit resumes an unfinished fit, --restart starts
again, a fit file's sha256 is checked before it is scored (issue 20)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from ckmbench.errors import CkmError
from ckmbench.fitting import fit_method, report_fit
from ckmbench.method import Method, RunContext
from ckmbench.specs import MethodSpec
from ckmbench.training import Trainer

from train_helpers import ToyData, toy_config, toy_loss, toy_model


class ToyLearner(Method):
    """A learned method trained by the project's Trainer (6 steps, a state every 2)."""

    name = "toylearner"

    def __init__(self, profile="tiny", hparams=None):
        super().__init__(profile, hparams)
        self.model = toy_model()

    def fit(self, train, val, task, ctx):
        if ctx.fit_dependency is not None and (self.hparams or {}).get("teacher"):
            ctx.fit_dependency(self.hparams["teacher"])
        result = Trainer(self.model, toy_config(6), ctx, name="toy").fit(ToyData(), toy_loss())
        report_fit(ctx, result)

    def predict(self, obs, ctx):
        return torch.zeros(len(obs), 1, *obs.out_shape)

    def state_dict(self):
        return {"net": self.model.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["net"])


def toy_spec(name="toylearner", fits_dir=None, teacher=None):
    hp = {"teacher": teacher} if teacher else {}
    return MethodSpec(name=name, factory=lambda p, h: ToyLearner(p, {**hp, **h}), tasks=("sr4",), kind="learned",
                      profiles={"tiny": dict(hp), "small": dict(hp), "paper": dict(hp)}, fits_dir=fits_dir)


class ToyRegistry:
    """What ``ctx.fit_dependency`` asks of a registry."""

    def __init__(self, *specs):
        self.specs = {s.name: s for s in specs}

    def method(self, name):
        return self.specs[name]

    def method_version(self, name):
        return "toy", "t"


def fit(spec, registry=None, **kw):
    method = spec.factory("tiny", dict(spec.profiles["tiny"]))
    ctx = RunContext(seed=0, profile="tiny", progress=False)
    info = fit_method(method, spec, version="t", train_task=types.SimpleNamespace(name="sr4"), train_name="toy",
                      train_hash="h", profile="tiny", hparams=dict(spec.profiles["tiny"]), seed=0, train=None,
                      val=None, ctx=ctx, registry=registry, **kw)
    return method, info


def stop_after(monkeypatch, steps: int):
    """Each fit from now on meets its time budget after ``steps`` training steps (a deterministic budget)."""
    original, calls = Trainer._one_step, {"n": 0}

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= steps:
            self.ctx.deadline = 0.0
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_one_step", counted)
    return calls


def test_refit_resumes_an_unfinished_fit_and_steps_grow(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    spec = toy_spec()
    done, calls = [], stop_after(monkeypatch, 2)
    for _ in range(3):  # `--refit --time-budget` run three times: 2, 4, 6 steps
        _, info = fit(spec, refit=True)
        done.append(info["steps_done"])
        calls["n"] = 0
    assert done == [2, 4, 6]
    assert info["source"] == "trained" and info["resumed_from"] == 4 and not info["budget_reached"]


def test_refit_retrains_a_finished_fit_from_step_0(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    spec = toy_spec()
    _, first = fit(spec)
    assert first["source"] == "trained" and first["steps_done"] == 6
    assert fit(spec)[1]["source"] == "cache"
    _, again = fit(spec, refit=True)
    assert again["source"] == "trained" and again["resumed_from"] is None and again["steps_done"] == 6


def test_restart_throws_the_train_state_away(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    spec = toy_spec()
    stop_after(monkeypatch, 2)
    assert fit(spec, refit=True)[1]["steps_done"] == 2
    monkeypatch.undo()
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    _, info = fit(spec, restart=True)
    assert info["source"] == "trained" and info["resumed_from"] is None and info["steps_done"] == 6


def test_a_killed_refit_resumes(tmp_path, monkeypatch):
    from train_helpers import crash_then_resume

    spec = toy_spec()

    def fit_at(root):
        monkeypatch.setenv("CKMBENCH_FITS", str(root))
        return fit(spec, refit=True)[1]

    info = crash_then_resume(monkeypatch, fit_at, tmp_path / "fits", crash_at=5)
    assert info["resumed_from"] == 4 and info["steps_done"] == 6


def test_refit_and_restart_leave_a_dependency_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    teacher, student = toy_spec("teacher"), toy_spec("student", teacher="teacher")
    reg = ToyRegistry(teacher, student)
    _, first = fit(student, registry=reg)
    teacher_dir = next((tmp_path / "fits").glob("teacher-*"))
    stamp = (teacher_dir / "fit.pt").stat().st_mtime_ns
    for flags in ({"refit": True}, {"restart": True}):
        _, info = fit(student, registry=reg, **flags)
        assert info["source"] == "trained"
        assert (teacher_dir / "fit.pt").stat().st_mtime_ns == stamp  # the teacher's fit was reused, not retrained


# ------------------------------------------------------------------ fit checksums
def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_fit_records_its_sha256_and_a_flipped_byte_is_refused(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    spec = toy_spec()
    _, info = fit(spec)
    folder = Path(info["dir"])
    meta = json.loads((folder / "fit.json").read_text())
    assert meta["fit_sha256"] == hashlib.sha256((folder / "fit.pt").read_bytes()).hexdigest()
    flip_a_byte(folder / "fit.pt")
    with pytest.raises(CkmError, match=r"^fit file damaged: .*fit\.pt; run with --refit"):
        fit(spec)
    _, again = fit(spec, refit=True)  # the fix the message names
    assert again["source"] == "trained" and fit(spec)[1]["source"] == "cache"


def test_a_cached_fit_from_before_checksums_is_trained_again_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    spec = toy_spec()
    _, info = fit(spec)
    meta_path = Path(info["dir"]) / "fit.json"
    meta = json.loads(meta_path.read_text())
    del meta["fit_sha256"]
    meta_path.write_text(json.dumps(meta))
    _, again = fit(spec)
    assert again["source"] == "trained" and "fit_sha256" in json.loads(meta_path.read_text())
    assert fit(spec)[1]["source"] == "cache"


def shipped_copy(tmp_path, monkeypatch, stamp: bool):
    """A fit made in one cache, copied (weights and fit.json) into a plugin's fits folder."""
    import shutil

    from ckmbench.fitcache import stamp_fit

    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "maker"))
    _, info = fit(toy_spec())
    folder = tmp_path / "shipped" / Path(info["dir"]).name
    folder.mkdir(parents=True)
    shutil.copy(Path(info["dir"]) / "fit.pt", folder / "fit.pt")
    meta = json.loads((Path(info["dir"]) / "fit.json").read_text())
    del meta["fit_sha256"]  # as the shipped fits of older releases are
    (folder / "fit.json").write_text(json.dumps(meta))
    if stamp:
        assert len(stamp_fit(folder)) == 64
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "user"))
    return toy_spec(fits_dir=str(tmp_path / "shipped")), folder


def test_a_stamped_shipped_fit_is_used_and_a_damaged_one_refused(tmp_path, monkeypatch):
    spec, folder = shipped_copy(tmp_path, monkeypatch, stamp=True)
    assert fit(spec)[1]["source"] == "shipped"
    flip_a_byte(folder / "fit.pt")
    with pytest.raises(CkmError, match=r"^shipped fit damaged: .*fit\.pt; reinstall ckmbench$"):
        fit(spec)


def test_a_shipped_fit_without_checksum_is_refused(tmp_path, monkeypatch):
    spec, _ = shipped_copy(tmp_path, monkeypatch, stamp=False)
    with pytest.raises(CkmError, match=r"^shipped fit damaged: .*no fit_sha256.*reinstall ckmbench$"):
        fit(spec)


def test_every_fit_shipped_with_the_diffusion_plugin_carries_its_checksum():
    """The integrator stamps retrained shipped fits with ``ckmbench.fitcache.stamp_fit``."""
    from ckmbench.digest import file_sha256
    from ckmbench_plugins.diffusion import SHIPPED_FITS

    folders = sorted(p for p in Path(SHIPPED_FITS).glob("*") if (p / "fit.json").exists())
    if not folders:
        pytest.skip("no fits shipped")
    for folder in folders:
        meta = json.loads((folder / "fit.json").read_text())
        assert meta.get("fit_sha256") == file_sha256(folder / "fit.pt"), f"{folder}: run stamp_fit on it"
