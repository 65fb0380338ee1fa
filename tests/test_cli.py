"""The `ckmbench` command: errors are one line, the main commands work on tiny data."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def ckm(*args, env=None, check=True):
    out = subprocess.run([sys.executable, "-m", "ckmbench.cli", *args], capture_output=True, text=True, env=env)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_unknown_method_is_one_clear_line():
    out = ckm("run", "--method", "bicubc", "--task", "sr4", check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown method 'bicubc'" in lines[0] and "bicubic" in lines[0]


def test_unsupported_task_is_refused_with_the_supported_list():
    out = ckm("run", "--method", "bilinear", "--task", "generate", check=False)
    assert out.returncode == 2 and "it supports" in out.stderr and "sr4" in out.stderr


def test_missing_data_root_names_the_fix(tmp_path):
    out = ckm("run", "-m", "bilinear", "-t", "sr4", "-d", "radiomapseer-dpm", "--data-root", str(tmp_path / "nope"),
              check=False)
    assert out.returncode == 2 and "--data-root" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_list_shows_everything():
    out = ckm("list").stdout
    for word in ("bilinear", "kriging", "sr4", "inpaint", "envgen-static", "city", "radiomapseer-map0", "ssim", "fid"):
        assert word in out, word


def test_run_sweep_then_leaderboard(tmp_path):
    store = tmp_path / "store" / "records.jsonl"
    out = ckm("run", "-m", "nearest,bilinear", "-t", "sr4,sparse", "-d", "city-tiny", "--profile", "tiny",
              "--store", str(store), "--runs-dir", str(tmp_path / "runs"), "--no-progress")
    assert out.stdout.count("record ") == 4
    assert "psnr" in out.stdout
    lb = tmp_path / "lb"
    ckm("leaderboard", "--store", str(store), "--out", str(lb))
    table = (lb / "city-tiny" / "sr4.md").read_text()
    assert "bilinear" in table and "nearest" in table
    first = {p.name: p.read_bytes() for p in lb.rglob("*") if p.is_file()}
    ckm("leaderboard", "--store", str(store), "--out", str(lb))
    assert {p.name: p.read_bytes() for p in lb.rglob("*") if p.is_file()} == first


def test_data_show_writes_a_figure(tmp_path):
    png = tmp_path / "s.png"
    out = ckm("data", "show", "-d", "city-tiny", "-n", "4", "--out", str(png))
    assert png.exists() and Image.open(png).size[0] > 100
    assert "outdoor gain" in out.stdout


def test_data_simulate_user_layout(tmp_path):
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 25:35] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out_npy = tmp_path / "map.npy"
    ckm("data", "simulate", "--buildings", str(tmp_path / "mask.png"), "--tx", "30,10", "--out", str(out_npy))
    gain = np.load(out_npy)
    assert gain.shape == (48, 48) and gain.max() <= -47 and gain.min() >= -147
    assert np.all(gain[12:18, 27:33] == -147)
    assert out_npy.with_suffix(".png").exists()
    bad = ckm("data", "simulate", "--buildings", str(tmp_path / "mask.png"), "--tx", "15,30", "--out",
              str(tmp_path / "x.npy"), check=False)
    assert bad.returncode == 2 and "inside a building" in bad.stderr
    outside = ckm("data", "simulate", "--buildings", str(tmp_path / "mask.png"), "--tx", "99,1", "--out",
                  str(tmp_path / "x.npy"), check=False)
    assert outside.returncode == 2 and "outside" in outside.stderr


def test_evaluate_external_predictions(tmp_path):
    from ckmbench.data.registry import load_dataset

    test = load_dataset("city-tiny").split("test")
    preds = tmp_path / "preds"
    preds.mkdir()
    for i in range(len(test)):
        s = test[i]
        Image.fromarray(np.round(s.u * 255).astype(np.uint8)).save(preds / f"{s.scene}_{s.tx_index}.png")
    store = tmp_path / "r.jsonl"
    out = ckm("evaluate", "--task", "sr4", "--dataset", "city-tiny", "--predictions", str(preds), "--name", "oracle",
              "--store", str(store))
    rec = json.loads(store.read_text().splitlines()[-1])
    assert rec["method"] == "oracle" and rec["method_distribution"] == "external"
    assert rec["metrics"]["mse"] < 1e-5 and rec["metrics"]["psnr"] > 50
    assert "oracle" in out.stdout
    next(preds.iterdir()).unlink()
    missing = ckm("evaluate", "--task", "sr4", "--dataset", "city-tiny", "--predictions", str(preds), check=False)
    assert missing.returncode == 2 and "missing" in missing.stderr


def test_generate_shards_merge_to_the_full_dataset(tmp_path):
    import os

    env = {**os.environ, "CKMBENCH_DATA": str(tmp_path / "data")}
    ckm("data", "generate", "-d", "city-tiny", "--shard", "0/2", "--workers", "1", env=env)
    ckm("data", "generate", "-d", "city-tiny", "--shard", "1/2", "--workers", "1", env=env)
    merged = ckm("data", "generate", "-d", "city-tiny", "--workers", "1", env=env).stdout
    full = ckm("data", "generate", "-d", "city-tiny", "--force", "--workers", "1", env=env).stdout
    hash_of = lambda text: text.split("content hash ")[1].split(";")[0]
    assert hash_of(merged) == hash_of(full)
