"""Paper protocols (docs/protocol.md §7): operators and metric conventions by hand on small
arrays, the shipped radiomapseer-samples dataset, and where reproduced rows land in the
leaderboards."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ckmbench.data.radiomapseer import SHIPPED_SAMPLES, load_samples
from ckmbench.data.sample import Sample
from ckmbench.errors import CkmError
from ckmbench.leaderboard import PROTOCOL_HEADING, REPORTED_HEADING, REPRODUCED_MARK, build_leaderboards
from ckmbench.plugins import load_registry
from ckmbench.tasks import operators as op
from ckmbench.tasks import protocols as pp
from ckmbench.tasks.base import tx_one_hot
from ckmbench_plugins.baselines import baseline_specs

from test_leaderboard import make_record

SAMPLES_HASH = "70b5f6c7d9bb7917ee52b98de007b6e9f6fd03d595d3f5481c4f85fe5be42e1a"


def ramp_sample(size=8, scene="a") -> Sample:
    """u = (r * size + c) / size^2 on (-147, -47) dB: every block mean is known in closed form."""
    r, c = np.indices((size, size))
    u = (r * size + c) / float(size * size)
    buildings = np.zeros((size, size), bool)
    buildings[0, 0] = True  # u is 0 there anyway
    return Sample(gain_db=(-147.0 + 100.0 * u).astype(np.float32), buildings=buildings,
                  cars=np.zeros((size, size), bool), tx=(5.0, 6.0, 1.5), pixel_m=1.0, gain_range=(-147.0, -47.0),
                  dataset="toy", scene=scene, tx_index=0)


def registry_task(name):
    spec = load_registry().task(name)
    return spec.make(**spec.params)


# ----------------------------------------------------------------------------- operators

def test_envcdiff_observes_block_means_of_u_and_the_envcf_ingredients():
    s = ramp_sample()
    task = registry_task("sr4-envcf@envcdiff")
    obs = task.observe_seeded(s, 0)
    # the mean of block (i, j) of the ramp is its centre value: rows 4i+1.5, cols 4j+1.5
    want = np.array([[(4 * i + 1.5) * 8 + 4 * j + 1.5 for j in range(2)] for i in range(2)]) / 64.0
    np.testing.assert_allclose(obs["y"], want, atol=1e-6)
    np.testing.assert_array_equal(obs["buildings"], s.buildings.astype(np.float32))
    assert obs["tx_map"][5, 6] == 1.0 and obs["tx_map"].sum() == 1.0
    np.testing.assert_allclose(task.target(s), s.u)  # scored on G = u, not on the EnvCF map
    assert not np.allclose(task.target(s), op.envcf(s.u, s.buildings, tx_one_hot(s)))
    obs_b, _, _ = task.batch([s], 0)  # batches carry lr_mode avg for the interpolators
    assert obs_b.extras["lr_mode"] == "avg" and obs_b.buildings is not None


def test_ckmdiff_sr_adds_the_noise_before_the_block_mean():
    s = ramp_sample()
    task = registry_task("sr4-noisy@ckmdiff")
    obs = task.observe_seeded(s, 3)
    noise = task.rng(s, 3).normal(0.0, 30 / 255, size=(8, 8))
    want = (s.u + noise).reshape(2, 4, 2, 4).mean(axis=(1, 3))  # not clipped
    np.testing.assert_allclose(obs["y"], want, atol=1e-5)
    batch, _, _ = task.batch([s], 3)
    assert batch.extras["noise_std"] == pytest.approx(30 / 255 / 4)  # the noise left in y
    clean = registry_task("sr4@ckmdiff").observe_seeded(s, 3)["y"]
    np.testing.assert_allclose(clean, s.u.reshape(2, 4, 2, 4).mean(axis=(1, 3)), atol=1e-6)


def test_ckmdiff_inpaint_keeps_the_noisy_measurements_in_the_interpolators():
    s = ramp_sample(size=16)
    task = registry_task("inpaint@ckmdiff")
    obs, target, regions = task.batch([s], 0)
    assert obs.extras["keep_observed"] is True
    hole = regions["hole"][0, 0].numpy()
    assert hole.sum() == 16  # a 4 x 4 hole = H/4 at H = 16
    knn = {spec.name: spec for spec in baseline_specs()}["knn"].factory("tiny", {})
    pred = knn.predict(obs, None)[0, 0].numpy()
    y = obs.y[0, 0].numpy()
    np.testing.assert_allclose(pred[~hole], np.clip(y[~hole], 0, 1), atol=1e-6)  # kept as measured
    plain, _, _ = registry_task("inpaint").batch([s], 0)
    smoothed = knn.predict(plain, None)[0, 0].numpy()
    assert not np.allclose(smoothed[~hole], np.clip(plain.y[0, 0].numpy()[~hole], 0, 1))  # today's knn smooths


# ----------------------------------------------------------------------------- metric conventions

def test_composite_psnr_counts_the_hole_error_over_the_whole_map():
    target = torch.zeros(1, 1, 4, 4)
    pred = torch.full((1, 1, 4, 4), 0.5)  # wrong everywhere ...
    hole = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    hole[..., :2, :2] = True  # ... but only the 4 hole pixels count
    pred[..., :2, :2] = torch.tensor([[0.1, 0.2], [0.0, 0.1]])
    value = float(pp.psnr_hole_composite(pred, target, {"hole": hole})[0])
    assert value == pytest.approx(10 * math.log10(16 / (0.01 + 0.04 + 0.0 + 0.01)), abs=1e-5)
    assert float(pp.psnr_hole_composite(target, target, {"hole": hole})[0]) == 100.0
    with pytest.raises(CkmError, match="hole"):
        pp.psnr_hole_composite(pred, target, {})


def test_uniform_window_ssim_by_hand():
    a = torch.full((1, 1, 9, 9), 0.2)
    b = torch.full((1, 1, 9, 9), 0.4)
    c1 = 0.01 ** 2
    # constant maps: no variance, so SSIM is the luminance term alone
    assert float(pp.ssim_uniform7(b, a)[0]) == pytest.approx((2 * 0.2 * 0.4 + c1) / (0.2 ** 2 + 0.4 ** 2 + c1), abs=1e-6)
    assert float(pp.ssim_uniform7(a, a)[0]) == pytest.approx(1.0)


def test_conventions_replace_the_whole_map_value_and_say_so():
    task = registry_task("inpaint@ckmdiff")
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.full((2, 1, 4, 4), 0.1)
    hole = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    hole[..., 0, 0] = True
    summary, notes = {"psnr": 20.0, "psnr@hole": 20.0}, {}
    pp.apply_conventions(task, summary, notes, pred, target, {"hole": hole})
    assert summary["psnr"] == pytest.approx(10 * math.log10(16 / 0.01))
    assert summary["psnr@hole"] == 20.0 and "CKMDiff" in notes["psnr_convention"]
    plain = {"psnr": 20.0}
    pp.apply_conventions(registry_task("inpaint"), plain, {}, pred, target, {"hole": hole})
    assert plain == {"psnr": 20.0}


def test_protocol_names_and_support():
    assert pp.split_name("sr4-envcf@envcdiff") == ("sr4-envcf", "envcdiff")
    assert pp.variant_name("inpaint", "ckmdiff") == "inpaint@ckmdiff"
    with pytest.raises(CkmError, match="unknown protocol"):
        pp.variant_name("sr4", "nope")
    with pytest.raises(CkmError, match="no variant"):
        pp.variant_name("denoise", "ckmdiff")
    assert pp.reported_home("radiomapseer-samples", "sr4@ckmdiff") == ("radiomapseer-dpm", "sr4-noisy",
                                                                       "CKMDiff (Fu et al.)")
    assert pp.reported_home("radiomapseer-irt2", "inpaint@ckmdiff")[0] == "radiomapseer-irt2"
    assert pp.reported_home("city", "sr4") is None
    reg = load_registry()
    assert reg.method("bilinear").supports("sr4-envcf@envcdiff") and not reg.method("bilinear").supports("denoise@x")


# ----------------------------------------------------------------------------- the dataset

def test_radiomapseer_samples_are_25_real_test_maps_with_a_stable_hash():
    ds = load_registry().dataset("radiomapseer-samples").load(None, progress=False)
    assert len(ds) == 25 and set(ds.splits) == {"test"} and len(ds.split("test")) == 25
    assert ds.shape == (256, 256) and ds.meta["sample_of"] == "radiomapseer-dpm"
    assert ds.content_hash == SAMPLES_HASH == load_samples().content_hash
    # gain-only maps: buildings are the floor pixels, the Tx the brightest one
    i = int(np.flatnonzero(ds.scene == "s00")[0])
    u = ds[i].u
    assert ds.buildings[i].sum() == (ds.gain_db[i] <= -147.0 + 1e-4).sum()
    r, c = int(ds.tx[i, 0]), int(ds.tx[i, 1])
    assert u[r, c] == u.max()
    assert sorted(p.name for p in (SHIPPED_SAMPLES / "gain" / "DPM").glob("*.png"))[0] == "s00.png"


# ----------------------------------------------------------------------------- leaderboard placement

def test_reproduced_rows_sit_below_the_papers_rows(tmp_path):
    csv = tmp_path / "reported.csv"
    csv.write_text(
        "paper,dataset_id,task_id,method,metric,value,dataset,task,note\n"
        "EnvCDiff (Jin et al.),radiomapseer-dpm,sr4-envcf,bilinear,psnr,27.24,rms 256,sr4-envcf,\n"
        "EnvCDiff (Jin et al.),radiomapseer-dpm,sr4-envcf,nearest,psnr,26.25,rms 256,sr4-envcf,\n"
        "Other (Roe et al.),radiomapseer-dpm,sr4-envcf,bilinear,psnr,20.00,rms 256,sr4-envcf,\n")
    records = [make_record("bilinear", dataset="radiomapseer-samples", task="sr4-envcf@envcdiff", n_test=25,
                           metrics={"psnr": 26.0181, "ssim": 0.8192}, notes={"ssim_convention": "7x7 window"}),
               make_record("idw", dataset="radiomapseer-samples", task="sr4-envcf@envcdiff", n_test=25,
                           metrics={"psnr": 25.5}),
               make_record("bilinear", dataset="city", task="sr4", metrics={"psnr": 30.0})]
    out = tmp_path / "lb"
    build_leaderboards(records, out, tmp_path, reported_csv=csv)
    home = (out / "radiomapseer-dpm" / "sr4-envcf.md").read_text("utf-8")
    assert PROTOCOL_HEADING in home and REPORTED_HEADING not in home
    lines = [line for line in home.splitlines() if line.startswith("| ")]
    names = [line.split("|")[1].strip() + "/" + line.split("|")[2].strip() for line in lines]
    mark = f"{REPRODUCED_MARK}: `sr4-envcf@envcdiff` on radiomapseer-samples, N=25 [tiny]"
    assert names[1:] == ["EnvCDiff (Jin et al.)/bilinear", f"{mark}/bilinear", "EnvCDiff (Jin et al.)/nearest",
                         f"{mark}/idw", "Other (Roe et al.)/bilinear"]
    assert "26.02" in lines[2] and "27.24" in lines[1]
    note = "- `ssim` of the paper-protocol rows is scored the paper's way: 7x7 window"
    assert note in home
    own = (out / "radiomapseer-samples" / "sr4-envcf@envcdiff.md").read_text("utf-8")
    assert "27.24" in own and "Other (Roe et al.)" not in own and PROTOCOL_HEADING in own
    plain = (out / "city" / "sr4.md").read_text("utf-8")
    assert PROTOCOL_HEADING not in plain and REPRODUCED_MARK not in plain and "paper's way" not in plain
    assert note in own


def test_a_protocol_run_end_to_end(tmp_path):
    from ckmbench.runner import RunConfig, run

    rec = run(RunConfig(method="bilinear", task="inpaint@ckmdiff", dataset="radiomapseer-samples", max_test=2,
                        store=str(tmp_path / "r.jsonl"), progress=False, examples=0, fid=False))
    assert rec["status"] == "done", rec["message"]
    assert "CKMDiff" in rec["metric_notes"]["psnr_convention"]
    # error only in the hole, spread over 16 x its area: 10 log10(16) dB above psnr@hole, per map
    assert rec["metrics"]["psnr"] > rec["metrics"]["psnr@hole"] + 10
    stored = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert stored["task"] == "inpaint@ckmdiff"


def test_cli_protocol_option(tmp_path):
    import subprocess
    import sys

    def ckm(*args):
        return subprocess.run([sys.executable, "-m", "ckmbench.cli", *args], capture_output=True, text=True)

    out = ckm("run", "-m", "bilinear", "-t", "sr4", "--protocol", "envcdiff", "--store", str(tmp_path / "r.jsonl"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "protocol 'envcdiff' has no variant of task 'sr4'" in out.stderr
    out = ckm("run", "-m", "bilinear", "-t", "sr4-envcf", "--protocol", "nope", "--store", str(tmp_path / "r.jsonl"))
    assert out.returncode == 2 and "unknown protocol 'nope'" in out.stderr
    out = ckm("run", "-m", "bilinear", "-t", "sr4-envcf", "--protocol", "envcdiff", "-d", "radiomapseer-samples",
              "--max-test", "1", "--no-progress", "--store", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert record["task"] == "sr4-envcf@envcdiff" and "ssim_convention" in record["metric_notes"]
