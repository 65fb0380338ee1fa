"""What stood between a user and a short paper-profile run (issue 23 §3): epoch-counted profiles,
dependency fits, devices torch cannot use, and the GBs a run folder and a fit leave behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckmbench.cli import _method_sets, _parse_sets, cli
from ckmbench.errors import CkmError
from ckmbench.fitting import DEPENDENCY_BUDGET_SHARE, _dependency_fitter
from ckmbench.method import Method, RunContext
from ckmbench.overrides import resolve_overrides, step_pairs
from ckmbench.plugins import registry, require_profile
from ckmbench.provenance import device_name
from ckmbench.runner import RunConfig, resolve_device, run
from ckmbench_plugins.radiomap.radiounet import phase_config


@pytest.fixture(scope="module")
def reg():
    return registry()


# ---------------------------------------------------------------- (a) epoch-counted profiles
@pytest.mark.parametrize("name,steps_key,epochs_key", [
    ("radiounet-c", "steps_u1", "epochs_u1"), ("radiounet-s", "steps_u2", "epochs_u2"),
    ("uvm-net", "steps_u1", "epochs_u1"), ("rme-gan", "steps_global", "epochs_global"),
    ("physdiff", "steps", "epochs"), ("physdiff", "region_steps", "region_epochs")])
def test_steps_alone_shortens_a_paper_profile(reg, name, steps_key, epochs_key):
    sets = _method_sets(reg, [name], "paper", _parse_sets((f"{steps_key}=2",)))[name]
    assert sets == {steps_key: 2, epochs_key: None}
    # null spelled either way, with the steps
    for word in ("null", "None"):
        sets = _method_sets(reg, [name], "paper", _parse_sets((f"{epochs_key}={word}", f"{steps_key}=3")))[name]
        assert sets == {epochs_key: None, steps_key: 3}


def test_radiounet_paper_phase_runs_the_steps_asked_for(reg):
    spec = reg.method("radiounet-c")
    hp = {**require_profile(spec, "paper"), **_method_sets(reg, ["radiounet-c"], "paper",
                                                          {"steps_u1": 2, "steps_u2": 2})["radiounet-c"]}
    assert phase_config(hp, "u1", n_train=600).steps == 2


def test_both_or_neither_length_is_one_line(reg):
    with pytest.raises(CkmError, match="epochs_u1=5 and --set steps_u1=2 both given"):
        _method_sets(reg, ["radiounet-c"], "paper", {"epochs_u1": 5, "steps_u1": 2})
    with pytest.raises(CkmError, match="without a length: add --set steps=N"):
        _method_sets(reg, ["physdiff"], "paper", _parse_sets(("epochs=null",)))
    # null only where a profile of the method leaves the key empty
    with pytest.raises(CkmError, match="batch_size"):
        _method_sets(reg, ["radiounet-c"], "paper", {"batch_size": None})


def test_step_pairs_of_radiounet_paper(reg):
    pairs = step_pairs(require_profile(reg.method("radiounet-c"), "paper"))
    assert pairs == {"epochs_u1": "steps_u1", "epochs_u2": "steps_u2", "lr_step_epochs": "lr_step_every",
                     "val_every_epochs": "val_every"}
    # a text key keeps the word "none" as text
    assert resolve_overrides(reg.method("cgdm"), "tiny", {"amp": "none"}) in ({"amp": "none"}, {"amp": None})


# ---------------------------------------------------------------- (b) dependency fits
def test_dotted_keys_are_checked_against_the_dependency(reg):
    assert _method_sets(reg, ["licgdm"], "tiny", {"cgdm.steps": 3})["licgdm"] == {"cgdm.steps": 3}
    with pytest.raises(CkmError, match="method 'cgdm' has no hyper-parameter 'stepz'"):
        _method_sets(reg, ["licgdm"], "tiny", {"cgdm.stepz": 3})
    with pytest.raises(CkmError, match="takes a whole number"):
        _method_sets(reg, ["licgdm"], "tiny", {"cgdm.steps": "many"})
    with pytest.raises(CkmError, match="'nosuch' is not a method"):
        _method_sets(reg, ["licgdm"], "tiny", {"nosuch.steps": 3})


class _Recorder(Method):
    name = "dep"
    seen: dict = {}

    def fit(self, train, val, task, ctx):
        _Recorder.seen.update(hparams=dict(self.hparams), deadline=ctx.deadline)


class _Spec:
    name, kind, fits_dir = "dep", "learned", None
    profiles = {"tiny": {"steps": 10, "epochs": None}}
    factory = staticmethod(lambda profile, hp: _Recorder(profile, hp))


class _Registry:
    def method(self, name):
        return _Spec()

    def method_version(self, name):
        return "x", "0"


def test_dependency_gets_its_dotted_keys_and_part_of_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    left = 100.0
    ctx = RunContext(profile="tiny", progress=False, hparams={"dep.steps": 4, "steps": 99},
                     deadline=time.monotonic() + left)
    fitted = _dependency_fitter(_Registry(), ctx, train_task=type("T", (), {"name": "sr4"})(), train_name="d",
                                train_hash="h", profile="tiny", seed=0, train=None, val=None)
    before = time.monotonic()
    fitted("dep")
    assert _Recorder.seen["hparams"]["steps"] == 4
    share = _Recorder.seen["deadline"] - before
    assert left * DEPENDENCY_BUDGET_SHARE - 5 < share <= left * DEPENDENCY_BUDGET_SHARE + 0.5


def test_licgdm_teacher_takes_the_dotted_steps(tmp_path, reg):
    common = dict(dataset="city-tiny", profile="tiny", runs_dir=str(tmp_path / "runs"),
                  store=str(tmp_path / "s.jsonl"), progress=False, max_test=1, examples=0)
    rec = run(RunConfig(method="licgdm", task="sr4", hparams={"cgdm.steps": 2}, **common), reg)
    assert rec["status"] == "done", rec["message"]
    cgdm = run(RunConfig(method="cgdm", task="sr4", hparams={"steps": 2}, **common), reg)
    assert cgdm["fit"]["source"] == "cache" and cgdm["fit"]["steps_done"] == 2


# ---------------------------------------------------------------- (c) devices
def test_a_device_torch_cannot_use_is_refused_in_one_line():
    with pytest.raises(CkmError, match="device 'mps' cannot be used here") as err:
        resolve_device("mps")
    assert "\n" not in str(err.value)
    out = CliRunner().invoke(cli, ["run", "-m", "bilinear", "-t", "sr4", "-d", "city-tiny", "--device", "mps"])
    assert out.exit_code != 0 and "device 'mps' cannot be used here" in str(out.exception)  # before any work
    assert device_name("mps") == "mps"  # a record never calls another device "cpu"


# ---------------------------------------------------------------- (d) weights written once
def _drrn(tmp_path, **kw):
    return RunConfig(method="drrn", task="sr4", dataset="city-tiny", profile="tiny", runs_dir=str(tmp_path / "runs"),
                     store=str(tmp_path / "s.jsonl"), progress=False, max_test=1, examples=0, **kw)


def test_run_folder_links_the_fit_and_the_train_state_goes(tmp_path, reg, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    rec = run(_drrn(tmp_path), reg)
    assert rec["status"] == "done", rec["message"]
    fit_dir, run_dir = Path(rec["fit"]["dir"]), Path(rec["run_dir"])
    assert os.path.samefile(run_dir / "checkpoint.pt", fit_dir / "fit.pt")
    assert not list(fit_dir.rglob("train_state.pt"))
    kept = run(_drrn(tmp_path, refit=True, keep_train_state=True), reg)
    assert list(Path(kept["fit"]["dir"]).rglob("train_state.pt"))


def test_run_folder_points_at_the_fit_across_filesystems(tmp_path, reg, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    rec = run(_drrn(tmp_path), reg)
    run_dir = Path(rec["run_dir"])
    assert not (run_dir / "checkpoint.pt").exists()
    pointer = run_dir / "checkpoint.json"
    assert pointer.stat().st_size < 1000
    again = run(_drrn(tmp_path, checkpoint=str(pointer)), reg)
    assert again["status"] == "done" and again["metrics"] == rec["metrics"]


# ---------------------------------------------------------------- (e) benchmarks/paper_smoke.py
def _bench(name):
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_smoke_shortens_every_length_and_the_dependency(reg):
    smoke = _bench("paper_smoke")
    rad = smoke.shortened(reg, "radiounet-c", "paper")
    assert rad["steps_u1"] == rad["steps_u2"] == 2 and rad["batch_size"] == 1 and rad["val_max"] == 1
    lic = smoke.shortened(reg, "licgdm", "paper")
    assert lic["finetune_steps"] == 2 and lic["cgdm.steps"] == 2 and lic["cgdm.batch_size"] == 1
    assert lic["sample_steps"] == 2 and smoke.shortened(reg, "srgan-mse", "paper")["srresnet.steps"] == 2
    for name in smoke.learned_methods(reg):  # every shortened paper profile passes the --set checks
        _method_sets(reg, [name], "paper", smoke.shortened(reg, name, "paper"))


def test_paper_smoke_image_folder_loads(tmp_path):
    from ckmbench.data.registry import load_dataset

    root = _bench("paper_smoke").write_image_folder(tmp_path / "maps", 32, n_scenes=3, tx_per_scene=1)
    ds = load_dataset("imagefolder", root=str(root), progress=False)
    assert ds.shape == (32, 32) and [len(ds.split(s)) for s in ("train", "val", "test")] == [1, 1, 1]


def test_paper_smoke_tiny_prints_a_row_per_method(tmp_path, capsys):
    smoke = _bench("paper_smoke")
    assert smoke.main(["--profile", "tiny", "--methods", "drrn", "--data-dir", str(tmp_path),
                       "--json", str(tmp_path / "rows.json")]) == 0
    import json

    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["status"] == "done" and row["steps_done"] == 2 and row["params"] > 0
    assert row["s_per_train_step"] > 0 and row["s_per_sampling_step"] > 0 and row["maxrss_mb"] > 50
    assert "| drrn " in capsys.readouterr().out


# ---------------------------------------------------------------- (f) benchmarks/gpu_check.py
def test_gpu_check_runs_on_the_cpu_at_tiny_and_writes_one_json(tmp_path):
    import json

    gpu_check = _bench("gpu_check")
    out = tmp_path / "check.json"
    code = gpu_check.main(["--device", "cpu", "--profile", "tiny", "--methods", "drrn", "--steps", "2", "--out",
                           str(out), "--skip-pytest", "--work", str(tmp_path / "work")])
    result = json.loads(out.read_text())
    assert code == 0, result
    assert [(r["method"], r["amp"], r["status"]) for r in result["methods"]] == [("drrn", None, "done"),
                                                                                  ("drrn", "bf16", "done")]
    assert all(r["finite_loss"] and r["s_per_train_step"] > 0 and r["s_per_sampling_step"] > 0
               for r in result["methods"])
    assert result["torchrun"]["status"] == "done" and result["torchrun"]["backend"] == "gloo", result["torchrun"]
    assert result["torchrun"]["steps_done"] == 2 and result["environment"]["device"] == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_a_short_cuda_run_names_the_gpu_and_measures_its_memory(tmp_path, reg, monkeypatch):
    import torch

    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    rec = run(_drrn(tmp_path, device="cuda"), reg)
    assert rec["status"] == "done", rec["message"]
    assert rec["device"] == torch.cuda.get_device_name(0) and rec["cost"]["peak_mem_mb"] > 0
    with pytest.raises(CkmError, match="cannot be used here"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
