"""Hardening, round 2 (issue 20): each test fails on the code before its fix."""

from __future__ import annotations

import pytest
import torch

from ckmbench.errors import CkmError


# --- 1. FID: an unknown TorchScript file is refused before torch.jit.load runs its code ---


class _Scripted(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :2048]


def test_unknown_torchscript_fid_weights_are_refused_before_loading(monkeypatch, tmp_path):
    from ckmbench.metrics import fid as fid_module

    evil = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(_Scripted()), str(evil))
    assert fid_module.is_torchscript(evil)
    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or _Scripted())
    monkeypatch.setenv(fid_module.ENV_VAR, str(evil))
    sha = fid_module.file_hashes(evil)[0]
    for attempt in (fid_module.find_weights, fid_module.FidScorer, lambda: fid_module._load_torchscript(str(evil))):
        with pytest.raises(CkmError) as info:
            attempt()
        msg = str(info.value)
        assert "\n" not in msg and sha in msg and fid_module.FID_HELPER_SHA256 in msg and "state dict" in msg
    assert loads == []


# --- 2. Store: a checksum per line, `results stamp`, stale writer copies removed ---


def _record(i=0, **over):
    from ckmbench.results import RECORD_KEYS

    rec = {k: None for k in RECORD_KEYS}
    rec.update(record_id=f"r{i}", status="done", message="", method="bilinear", task="sr4", dataset="city",
               metrics={"mse": 0.0123 + i}, metric_notes={}, cost={}, hparams={}, seed=0)
    rec.update(over)
    return rec


def test_store_line_with_a_flipped_metric_digit_is_reported(tmp_path):
    from ckmbench.results import append_record, read_records

    store = tmp_path / "s.jsonl"
    append_record(_record(0), store)
    append_record(_record(1), store)
    assert [r["metrics"]["mse"] for r in read_records(store)] == [0.0123, 1.0123]
    assert all("_sum" not in r for r in read_records(store))
    store.write_text(store.read_text().replace("1.0123", "1.0128"))
    with pytest.raises(CkmError) as info:
        read_records(store)
    msg = str(info.value)
    assert "\n" not in msg and "line 2" in msg and "fix or remove that line" in msg


def test_store_without_sums_stays_readable_and_stamp_adds_them(tmp_path):
    import json

    from click.testing import CliRunner

    from ckmbench.cli import cli
    from ckmbench.results import read_records

    store = tmp_path / "old.jsonl"
    old = [_record(0), _record(1, metrics={"mse": None})]
    store.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in old))
    assert read_records(store) == old
    out = CliRunner().invoke(cli, ["results", "stamp", "--store", str(store)])
    assert out.exit_code == 0, out.output
    assert "2 line(s) stamped" in out.output
    assert read_records(store) == old
    assert all("_sum" in json.loads(line) for line in store.read_text().splitlines())
    again = CliRunner().invoke(cli, ["results", "stamp", "--store", str(store)])
    assert "0 line(s) stamped, 2 already" in again.output
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_stale_store_copies_of_dead_writers_are_removed_at_the_next_write(tmp_path):
    import subprocess
    import sys

    from ckmbench.results import _writer_tag, append_record

    store = tmp_path / "s.jsonl"
    append_record(_record(0), store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _writer_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".s.jsonl.{host}-{dead.pid}.abc123xy.tmp"
    live = tmp_path / f".s.jsonl.{_writer_tag()}.zzz999qq.tmp"  # this process: alive
    other_host = tmp_path / f".s.jsonl.elsewhere-{dead.pid}.abc123xy.tmp"
    unnamed = tmp_path / ".s.jsonl.abc123xy.tmp"  # older name without a pid: not provably stale
    for path in (stale, live, other_host, unnamed):
        path.write_bytes(store.read_bytes())
    append_record(_record(1), store)
    assert not stale.exists()
    assert live.exists() and other_host.exists() and unnamed.exists()


# --- 3. Names and labels that would inject markdown rows are refused when recorded ---


@pytest.mark.parametrize("bad", ["x\n| zzz | 0 |", "a|b", "tab\there", "", "x" * 101, "bell\x07"])
def test_check_label_refuses_text_that_breaks_a_markdown_table(bad):
    from ckmbench.textsafe import check_label

    with pytest.raises(CkmError) as info:
        check_label("--name", bad)
    assert "\n" not in str(info.value) and "--name" in str(info.value)


def test_check_label_accepts_ordinary_names():
    from ckmbench.textsafe import check_label

    for ok in ("oracle", "my method v2 (ddim, 50 steps)", "méthode-β", "x" * 100):
        assert check_label("--name", ok) == ok


def test_evaluate_refuses_a_name_that_injects_a_table_row(tmp_path):
    from ckmbench.external import evaluate_predictions

    store = tmp_path / "s.jsonl"
    with pytest.raises(CkmError) as info:
        evaluate_predictions(task="sr4", dataset="city-tiny", predictions=tmp_path, name="x\n| zzz | 0 |", store=store)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("--name") and "'|'" in msg
    assert not store.exists()


def test_string_override_that_breaks_a_row_label_is_refused():
    from ckmbench.plugins import registry
    from ckmbench.runner import check_hparams

    with pytest.raises(CkmError, match=r"--set edge .*cannot be recorded"):
        check_hparams(registry().method("bilinear"), "tiny", {"edge": "edge\n| x |"})
    check_hparams(registry().method("bilinear"), "tiny", {"edge": "reflect"})


# --- 4. Hyper-parameters with their own bounds are refused before any work ---


@pytest.mark.parametrize("key,value", [("grad_clip", -1), ("grad_clip", 0), ("grad_clip", True), ("T", 1), ("T", 0)])
def test_bad_grad_clip_and_T_are_refused_up_front(key, value):
    from ckmbench.plugins import registry
    from ckmbench.runner import check_hparams

    with pytest.raises(CkmError) as info:
        check_hparams(registry().method("cgdm"), "tiny", {key: value})
    assert "\n" not in str(info.value) and f"--set {key}=" in str(info.value)


def test_sensible_grad_clip_and_T_pass():
    from ckmbench.plugins import registry
    from ckmbench.runner import check_hparams

    check_hparams(registry().method("cgdm"), "tiny", {"grad_clip": 0.5, "T": 2})
    check_hparams(registry().method("cgdm"), "tiny", {"grad_clip": None})


def test_train_config_refuses_a_clip_that_flips_gradients():
    from ckmbench.training import TrainConfig

    with pytest.raises(CkmError, match=r"grad_clip=-1"):
        TrainConfig.from_hparams({"grad_clip": -1})
    assert TrainConfig.from_hparams({"grad_clip": None}).grad_clip is None


# --- 5. Predictions: inf refused like NaN, values far outside [0, 1] noted ---


def _constant_registry(value):
    import types

    from ckmbench.hookspecs import hookimpl
    from ckmbench.method import Method
    from ckmbench.plugins import load_registry
    from ckmbench.specs import MethodSpec

    class Constant(Method):
        name = "constant"

        def predict(self, obs, ctx):
            out = torch.full((len(obs), 1, *obs.out_shape), 0.5)
            out[:, :, 0, :4] = value  # 4 pixels of each map
            return out

    mod = types.ModuleType("constant_method")
    mod.ckmbench_register_methods = hookimpl(
        lambda register: register(MethodSpec(name="constant", factory=lambda p, h: Constant(p, h), tasks=("sr4",))))
    return load_registry(extra_plugins=(mod,))


def _run_constant(tmp_path, value):
    from ckmbench.runner import RunConfig, run

    cfg = RunConfig(method="constant", task="sr4", dataset="city-tiny", profile="tiny", store=str(tmp_path / "r.jsonl"),
                    runs_dir=str(tmp_path / "runs"), progress=False, max_test=2, examples=0, fid=False)
    return run(cfg, _constant_registry(value))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_predictions_are_refused_alike(tmp_path, value):
    rec = _run_constant(tmp_path, value)
    assert rec["status"] == "error" and "non-finite" in rec["message"], rec["message"]


def test_predictions_far_outside_unit_range_are_noted(tmp_path):
    rec = _run_constant(tmp_path, 1e6)
    assert rec["status"] == "done", rec["message"]
    note = rec["metric_notes"]["out_of_range"]
    assert note.startswith(f"{4 / (32 * 32):.4g} of pixels (8)") and "max 1e+06" in note
    slight = _run_constant(tmp_path, 1.0005)  # within the tolerance: rounding noise, no note
    assert slight["status"] == "done" and "out_of_range" not in slight["metric_notes"]


def test_evaluate_notes_out_of_range_predictions():
    from ckmbench.metrics.evaluate import evaluate

    target = torch.full((2, 1, 16, 16), 0.5)
    pred = target.clone()
    pred[0, 0, 0, 0] = -0.5
    res = evaluate(pred, target, torch.tensor([[-147.0, -47.0]] * 2), {}, metrics=["mse"])
    assert res.notes["out_of_range"].startswith(f"{1 / 512:.4g} of pixels (1)")
    assert res.summary["mse"] == pytest.approx(0.25 / 512)  # scored clamped to 0


# --- 6. One-line errors instead of tracebacks; writability checked before the work ---


def _prediction_folder(tmp_path):
    import numpy as np
    from PIL import Image

    from ckmbench.data.registry import load_dataset

    test = load_dataset("city-tiny").split("test")
    preds = tmp_path / "preds"
    preds.mkdir()
    for i in range(len(test)):
        s = test[i]
        Image.fromarray(np.round(s.u * 255).astype(np.uint8)).save(preds / f"{s.scene}_{s.tx_index}.png")
    return preds


def test_evaluate_on_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    from ckmbench.external import evaluate_predictions

    preds = _prediction_folder(tmp_path)
    bomb = sorted(preds.iterdir())[0]
    Image.new("L", (64, 64)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)  # 32x32 maps read, the 64x64 one is a "bomb"
    with pytest.raises(CkmError) as info:
        evaluate_predictions(task="sr4", dataset="city-tiny", predictions=preds, store=tmp_path / "s.jsonl", fid=False)
    msg = str(info.value)
    assert "\n" not in msg and bomb.name in msg and "too large" in msg and "32x32" in msg


def test_evaluate_checks_the_store_before_scoring(tmp_path, monkeypatch):
    from ckmbench import external

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(external, "load_dataset", lambda *a, **k: pytest.fail("scored before checking the store"))
    with pytest.raises(CkmError, match=r"folder of results store .*a-file.* is a file"):
        external.evaluate_predictions(task="sr4", dataset="city-tiny", predictions=tmp_path,
                                      store=blocker / "s.jsonl", fid=False)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("")
    return path


def _cli(*args, env=None):
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ckmbench.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def _one_line_error(out, *needles):
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-1500:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckmbench: error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_simulate_into_an_unwritable_folder_and_a_bad_car_mask(tmp_path, a_file):
    import numpy as np

    buildings = tmp_path / "b.npy"
    np.save(buildings, np.zeros((16, 16), bool))
    _one_line_error(_cli("data", "simulate", "--buildings", str(buildings), "--tx", "2,2",
                         "--out", str(a_file / "m.npy")), "--out folder", str(a_file))
    _one_line_error(_cli("data", "simulate", "--buildings", str(buildings), "--tx", "2,2",
                         "--out", "/proc/ckmbench-m.npy"), "--out folder /proc", "not writable")
    cars = tmp_path / "cars.npy"
    np.save(cars, np.zeros((3, 4, 5)))
    out = _cli("data", "simulate", "--buildings", str(buildings), "--tx", "2,2", "--cars", str(cars),
               "--out", str(tmp_path / "m.npy"))
    _one_line_error(out, "car mask", "nonzero = car")
    assert "building" not in out.stderr


def test_unwritable_leaderboard_data_and_runs_folders_are_one_line(tmp_path, a_file):
    from ckmbench.results import append_record

    store = tmp_path / "s.jsonl"
    append_record(_record(0, map_size=[32, 32], n_test=1, profile="tiny"), store)
    _one_line_error(_cli("leaderboard", "--store", str(store), "--out", str(a_file / "lb")), "leaderboard folder")
    _one_line_error(_cli("leaderboard", "--store", str(store), "--out", "/proc/ckmbench-lb"), "not writable")
    for data in (a_file, "/proc/ckmbench-data"):
        _one_line_error(_cli("run", "-m", "bilinear", "-t", "sr4", "-d", "city-tiny", "-p", "tiny", "--store", str(store),
                             "--no-progress", env={"CKMBENCH_DATA": str(data)}), "$CKMBENCH_DATA", str(data))
    _one_line_error(_cli("run", "-m", "bilinear", "-t", "sr4", "-d", "city-tiny", "-p", "tiny", "--store", str(store),
                         "--runs-dir", str(a_file), "--no-progress"), "--runs-dir", "is a file")


# --- 7. swin_weights: a pickle is refused in the project's own words ---


class _Payload:
    """Unpickling this would write a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("content", ["pickle", "list", "garbage-safetensors"])
def test_swin_weights_that_are_not_a_state_dict_are_refused_in_one_line(tmp_path, content):
    import types

    from ckmbench.latent.encoders import SwinEncoder

    marker = tmp_path / "pwned"
    path = tmp_path / ("w.safetensors" if content == "garbage-safetensors" else "w.pth")
    if content == "pickle":
        torch.save({"patch_embed.proj.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(b"not a safetensors file")
    with pytest.raises(CkmError) as info:
        SwinEncoder._load(types.SimpleNamespace(variant="swin-t"), path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("swin_weights:") and str(path) in msg
    assert "weights_only" not in msg and "swin_tiny_patch4_window7_224" in msg
    assert not marker.exists()
