"""The `ckmbench` command: errors are one line, the main commands work on tiny data."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ckmbench.errors import CkmError


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


def test_evaluate_reads_equal_channel_rgb_and_opaque_rgba_as_gray_and_refuses_colour(tmp_path):
    from ckmbench.external import _read_prediction

    u8 = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    opaque = np.full_like(u8, 255)
    variants = {"L": Image.fromarray(u8), "RGB": Image.fromarray(np.stack([u8] * 3, -1)),
                "RGBA": Image.fromarray(np.stack([u8] * 3 + [opaque], -1)),
                "LA": Image.fromarray(np.stack([u8, opaque], -1), mode="LA"), "P": Image.fromarray(u8).convert("P")}
    read = {}
    for mode, img in variants.items():
        assert img.mode == mode
        img.save(tmp_path / f"{mode}.png")
        read[mode] = _read_prediction(tmp_path / f"{mode}.png", (16, 16), None, "u")
    for mode in variants:
        assert np.array_equal(read[mode], u8.astype(np.float32) / 255.0), mode
    colour = np.stack([u8] * 3, -1)
    colour[3, 4, 1] ^= 1  # one pixel's green differs
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(CkmError, match=r"colour image \(1 pixels with unequal R, G, B\): write gray PNG") as bad:
        _read_prediction(tmp_path / "colour.png", (16, 16), None, "u")
    assert "\n" not in str(bad.value)
    see_through = np.stack([u8] * 3 + [opaque], -1)
    see_through[0, 0, 3] = 128
    Image.fromarray(see_through).save(tmp_path / "alpha.png")
    with pytest.raises(CkmError, match="transparent pixels"):
        _read_prediction(tmp_path / "alpha.png", (16, 16), None, "u")


def test_generate_shards_merge_to_the_full_dataset(tmp_path):
    import os

    env = {**os.environ, "CKMBENCH_DATA": str(tmp_path / "data")}
    ckm("data", "generate", "-d", "city-tiny", "--shard", "0/2", "--workers", "1", env=env)
    ckm("data", "generate", "-d", "city-tiny", "--shard", "1/2", "--workers", "1", env=env)
    merged = ckm("data", "generate", "-d", "city-tiny", "--workers", "1", env=env).stdout
    full = ckm("data", "generate", "-d", "city-tiny", "--force", "--workers", "1", env=env).stdout
    hash_of = lambda text: text.split("content hash ")[1].split(";")[0]
    assert hash_of(merged) == hash_of(full)


# ---------------------------------------------------------------- bad input: one line, non-zero, store unchanged

def _bad_inputs(tmp_path):
    """(argv) pairs that must each end in one error line, before any work."""
    ok = tmp_path / "ok.npy"
    np.save(ok, np.zeros((16, 16), bool))
    huge = tmp_path / "huge.npy"
    np.save(huge, np.zeros((4000, 4000), bool))
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.zeros((1, 1), bool))
    sim = ["data", "simulate", "--tx", "3,3", "--out", str(tmp_path / "m.npy")]
    bad_stores = {
        "list": b"[1,2,3]\n",
        "abc": json.dumps({"record_id": "x", "metrics": {"mse": "abc"}}).encode() + b"\n",
        "utf8": b'{"record_id": "\xff\xfe"}\n',
        "json": b"{not json\n",
    }
    for name, data in bad_stores.items():
        (tmp_path / f"{name}.jsonl").write_bytes(data)
    colour = tmp_path / "colour"
    colour.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(colour / "s00000_0.png")
    inf = tmp_path / "inf"
    inf.mkdir()
    np.save(inf / "s00000_0.npy", np.full((32, 32), np.inf, np.float32))
    run = ["run", "-m", "bilinear", "-t", "sr4", "-d", "city-tiny", "-p", "tiny", "--no-progress"]
    lb = ["leaderboard", "--out", str(tmp_path / "lb")]
    return [
        run + ["--seed", "99999999999999999999"],
        run + ["--seed", "-1"],
        run + ["--seed", "abc"],
        run + ["--max-test", "-3"],
        run + ["--max-test", "0"],
        run + ["--time-budget", "0"],
        run + ["--time-budget", "-1"],
        run + ["--time-budget", "nan"],
        run + ["--time-budget", "inf"],
        ["run", "-m", "", "-t", "sr4"],
        ["run", "-m", "bilinear", "-t", " , "],
        ["run", "-m", "knn", "-t", "sr4", "--set", "k=abc"],
        ["run", "-m", "knn", "-t", "sr4", "--set", "k=0"],
        ["run", "-m", "knn", "-t", "sr4", "--set", "k=2.5"],
        ["run", "-m", "idw", "-t", "sr4", "--set", "power=NaN"],
        ["run", "-m", "bilinear", "-t", "sr4", "--set", "nosuch=1"],
        ["run", "-m", "bilinear", "-t", "sr4", "--set", "=3"],
        ["run", "-m", "bilinear", "-t", "sr4", "--set", "noequals"],
        ["run", "-m", "nosuchmethod", "-t", "sr4"],
        ["run", "-m", "bilinear", "-t", "nosuchtask"],
        ["run", "-m", "bilinear", "-t", "sr4", "-d", "nosuchdataset"],
        run + ["--device", "tpu"],
        run + ["--checkpoint", str(tmp_path / "none.pt")],
        run + ["--profile", "huge"],
        run + ["--store", str(tmp_path / "ok.npy" / "records.jsonl")],
        ["data", "show", "-d", "city-tiny", "-n", "0"],
        ["data", "show", "-d", "city-tiny", "-n", "-2"],
        ["data", "generate", "-d", "city-tiny", "--workers", "-1"],
        ["data", "generate", "-d", "city-tiny", "--shard", "5/4"],
        sim + ["--buildings", str(ok), "--frequency-ghz", "0"],
        sim + ["--buildings", str(ok), "--tx-height", "-100"],
        sim + ["--buildings", str(ok), "--tx-height", "nan"],
        sim + ["--buildings", str(ok), "--pixel-m", "0"],
        sim + ["--buildings", str(huge)],
        sim + ["--buildings", str(tiny)],
        lb + ["--store", str(tmp_path / "recrods.jsonl")],
        lb + ["--store", str(tmp_path / "list.jsonl")],
        lb + ["--store", str(tmp_path / "abc.jsonl")],
        lb + ["--store", str(tmp_path / "utf8.jsonl")],
        lb + ["--store", str(tmp_path / "json.jsonl")],
        ["evaluate", "-t", "sr4", "-d", "city-tiny", "--predictions", str(colour), "--no-record"],
        ["evaluate", "-t", "sr4", "-d", "city-tiny", "--predictions", str(inf), "--no-record"],
    ]


def test_bad_inputs_are_one_line_errors_that_change_nothing(tmp_path, monkeypatch, capsys):
    from ckmbench import cli

    store = tmp_path / "store" / "records.jsonl"
    store.parent.mkdir()
    store.write_text('{"record_id": "kept"}\n')
    before = store.read_bytes()
    monkeypatch.setenv("CKMBENCH_STORE", str(store))
    from ckmbench.data.registry import load_dataset

    load_dataset("city-tiny", progress=False)  # evaluate reads the dataset (cached) before the predictions
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 30
    for argv in cases:
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code not in (0, None), argv
        assert len(err) == 1 and err[0].startswith("ckmbench: error:"), (argv, err)
        assert store.read_bytes() == before, argv
        assert not list(store.parent.glob("runs/*")), argv  # no run started
    assert not (tmp_path / "m.npy").exists()


def test_bad_values_are_named_with_the_fix(tmp_path, capsys):
    from ckmbench import cli

    def error(*argv):
        with pytest.raises(SystemExit):
            cli.main(list(argv))
        return capsys.readouterr().err

    assert "99999999999999999999" in error("run", "-m", "bilinear", "-t", "sr4", "--seed", "99999999999999999999")
    msg = error("run", "-m", "knn", "-t", "sr4", "--set", "nosuch=1")
    assert "valid ones are k" in msg
    assert "whole number" in error("run", "-m", "knn", "-t", "sr4", "--set", "k=abc")
    assert ">= 1" in error("run", "-m", "knn", "-t", "sr4", "--set", "k=0")
    ok = tmp_path / "ok.npy"
    np.save(ok, np.zeros((4000, 4000), bool))
    msg = error("data", "simulate", "--buildings", str(ok), "--tx", "3,3", "--out", str(tmp_path / "m.npy"))
    assert "4000x4000" in msg and "at most 1024x1024" in msg
    np.save(ok, np.zeros((1, 1), bool))
    msg = error("data", "simulate", "--buildings", str(ok), "--tx", "0,0", "--out", str(tmp_path / "m.npy"))
    assert "1x1" in msg and "2-D" not in msg
    msg = error("leaderboard", "--store", str(tmp_path / "results" / "recrods.jsonl"), "--out", str(tmp_path / "lb"))
    assert "recrods.jsonl does not exist" in msg


def test_default_run_writes_the_user_store_not_the_project(tmp_path, monkeypatch):
    """The quick start wrote into the committed results/records.jsonl and ./runs."""
    from ckmbench import cli
    from pathlib import Path

    monkeypatch.delenv("CKMBENCH_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    project = tmp_path / "project"
    (project / "results").mkdir(parents=True)
    (project / "results" / "records.jsonl").write_text("")
    monkeypatch.chdir(project)
    cli.main(["run", "-m", "identity", "-t", "sr4", "-d", "city-tiny", "-p", "tiny", "--no-progress",
              "--max-test", "2", "--no-fid"])
    user = tmp_path / "xdg" / "ckmbench" / "results"
    assert len((user / "records.jsonl").read_text().splitlines()) == 1
    assert list((user / "runs").iterdir())
    assert (project / "results" / "records.jsonl").read_text() == ""
    assert sorted(p.name for p in project.iterdir()) == ["results"]
    cli.main(["leaderboard"])
    assert (tmp_path / "xdg" / "ckmbench" / "leaderboards" / "city-tiny" / "sr4.md").is_file()
    assert sorted(p.name for p in project.iterdir()) == ["results"]


def test_printed_record_says_fitted_on_only_for_learned_methods(capsys):
    from ckmbench.report import print_record

    rec = {"method": "bilinear", "task": "sr4", "dataset": "radiomapseer-map0", "train_dataset": "city",
           "method_kind": "baseline", "profile": "small", "seed": 0, "n_test": 5, "status": "done",
           "metrics": {"mse": 0.01}, "metric_notes": {}, "cost": {"train_s": None, "params": 0},
           "record_id": "0" * 32, "run_dir": "r"}
    print_record(rec)
    out = capsys.readouterr().out
    assert "fitted on" not in out and "trained on" not in out and "—" in out
    print_record({**rec, "method": "cdiff", "method_kind": "diffusion"})
    assert "cdiff on sr4 / radiomapseer-map0, fitted on city" in capsys.readouterr().out
