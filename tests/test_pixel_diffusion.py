"""CGDM, CDiff and LiCGDM at the tiny profile, their paper-profile sizes, and LiCGDM's knapsack."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from ckmbench.data.registry import load_dataset
from ckmbench.errors import CkmError
from ckmbench.method import RunContext, TaskData
from ckmbench.metrics.cost import count_parameters
from ckmbench.plugins import registry
from ckmbench.runner import RunConfig, run
from ckmbench.upsample import upsample_grid
from ckmbench_plugins.diffusion import CGDM_PAPER, CGDM_SMALL, CDIFF_PAPER, LICGDM_TINY
from ckmbench_plugins.diffusion.licgdm import knapsack_min_value
from ckmbench_plugins.diffusion.srdiff import upsample_on_device
from train_helpers import cache_fitter, crash_then_resume, fixed_batch_losses, one_thread, reg  # noqa: F401 (fixtures: one thread, registry)

DATASET = "city-tiny"


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATASET, progress=False)


def method_and_task(reg, name, task_name, **over):
    spec = reg.method(name)
    ts = reg.task(task_name)
    return spec.factory("tiny", {**spec.profiles["tiny"], **over}), ts.make(**ts.params)


def fit_tiny(reg, data, name, task_name, tmp_path, **over):
    method, task = method_and_task(reg, name, task_name, **over)
    ctx = RunContext(seed=0, profile="tiny", progress=False, fit_dir=tmp_path / name)
    train = TaskData(data.split("train"), task, 0)
    val = TaskData(data.split("val"), task, 0)
    method.fit(train, val, task, ctx)
    return method, task, ctx


@pytest.mark.parametrize("name,task_name", [("cgdm", "sr4"), ("cdiff", "sr4-envcf"), ("cgdm", "sr4-noisy")])
def test_fit_then_predict_shapes_range_and_seeded_determinism(reg, data, tmp_path, name, task_name):
    method, task, ctx = fit_tiny(reg, data, name, task_name, tmp_path)
    assert ctx.extras["fit"]["steps_done"] == method.hparams["steps"]
    obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(3))
    a = method.predict(obs, ctx)
    assert a.shape == target.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, method.predict(obs, ctx))
    other = method.predict(obs, RunContext(seed=1, progress=False))
    assert not torch.equal(a, other)  # the sampling noise comes from the run seed
    again, _, _ = fit_tiny(reg, data, name, task_name, tmp_path / "again")
    assert all(torch.equal(x, y) for x, y in zip(method.state_dict()["net"].values(),
                                                 again.state_dict()["net"].values()))


def test_loss_falls_on_a_fixed_batch(reg, data):
    method, task = method_and_task(reg, "cgdm", "sr4")
    batch = TaskData(data.split("train"), task, 0).batch_at(range(8))

    def fixed_loss():
        g = torch.Generator().manual_seed(0)
        return method.loss(method.net, batch, g)

    method.net.eval()  # no dropout: the loss of the fixed (t, noise) draw is comparable
    start, end = fixed_batch_losses(fixed_loss, method.net.parameters(), lr=2e-3)
    assert end < 0.5 * start


def test_upsampling_on_the_device_matches_the_bicubic_baseline():
    y = torch.rand(2, 1, 8, 8, dtype=torch.float32)
    for f, mode, offset in [(4, "subsample", 0.0), (2, "avg", 0.5), (8, "subsample", 0.0)]:
        ref = upsample_grid(y, (32, 32), f, offset, mode="bicubic", edge="edge").float()
        got = upsample_on_device(y, (32, 32), f, mode)
        assert torch.allclose(got, ref, atol=1e-5)


def test_predict_pads_maps_the_unet_cannot_divide(reg, data, tmp_path):
    method, task, ctx = fit_tiny(reg, data, "cgdm", "sr4", tmp_path)
    obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(2))
    obs.y, obs.out_shape = obs.y[..., :7, :7], (27, 27)  # 27 is odd: padded to 28, cropped back
    assert method.predict(obs, ctx).shape == (2, 1, 27, 27)


def test_zero_shot_and_repeat_runs_reuse_the_sr4_fit(tmp_path, reg):
    common = dict(method="cgdm", dataset=DATASET, profile="tiny", runs_dir=str(tmp_path / "runs"),
                  store=str(tmp_path / "store.jsonl"), progress=False, max_test=4, examples=0)
    first = run(RunConfig(task="sr4", **common), reg)
    assert first["status"] == "done", first["message"]
    assert first["fit"]["source"] == "trained" and first["fit"]["steps_done"] == 12
    assert first["cost"]["train_steps"] == 12
    shot = run(RunConfig(task="zeroshot-sr8", **common), reg)
    assert shot["status"] == "done", shot["message"]
    assert shot["fit"]["source"] == "cache" and shot["fit"]["key"] == first["fit"]["key"]
    # a new sampler setting is a prediction-only change: same fit
    resampled = run(RunConfig(task="sr4", hparams={"sample_steps": 2}, **common), reg)
    assert resampled["fit"]["source"] == "cache" and resampled["cost"]["sampling_steps"] == 2
    refit = run(RunConfig(task="sr4", refit=True, **common), reg)
    assert refit["fit"]["source"] == "trained"
    assert refit["metrics"] == first["metrics"]  # same seed, same fit, same sampling noise
    other_steps = run(RunConfig(task="sr4", hparams={"steps": 6}, **common), reg)
    assert other_steps["fit"]["key"] != first["fit"]["key"] and other_steps["fit"]["steps_done"] == 6


def test_time_budget_scores_what_was_trained(tmp_path, reg):
    rec = run(RunConfig(method="cgdm", task="sr4", dataset=DATASET, profile="tiny", runs_dir=str(tmp_path / "r"),
                        store=str(tmp_path / "s.jsonl"), progress=False, max_test=2, examples=0,
                        time_budget_s=1e-3, hparams={"steps": 10_000}), reg)
    assert rec["status"] == "done", rec["message"]
    assert rec["fit"]["budget_reached"] is True and rec["fit"]["steps_done"] < 10_000
    assert rec["metrics"]["psnr"] is not None


def test_licgdm_prunes_at_least_35_percent_and_records_both_counts(tmp_path, reg):
    common = dict(dataset=DATASET, profile="tiny", runs_dir=str(tmp_path / "runs"), store=str(tmp_path / "s.jsonl"),
                  progress=False, max_test=2, examples=0)
    rec = run(RunConfig(method="licgdm", task="sr4", **common), reg)
    assert rec["status"] == "done", rec["message"]
    fit = rec["fit"]
    assert fit["params_after"] <= 0.65 * fit["params_before"]
    assert rec["cost"]["params"] == fit["params_after"]
    assert fit["pruned"] and set(fit["layer_values"]) >= set(fit["pruned"])
    # the teacher came from (and is now in) the fit cache: cgdm scores from it without training
    cgdm = run(RunConfig(method="cgdm", task="sr4", **common), reg)
    assert cgdm["fit"]["source"] == "cache" and cgdm["cost"]["params"] == fit["params_before"]
    # the pruned weights reload from the cache into a pruned network
    again = run(RunConfig(method="licgdm", task="sr4", **common), reg)
    assert again["fit"]["source"] == "cache" and again["metrics"] == rec["metrics"]


def test_licgdm_resumes_its_finetuning_after_a_crash(tmp_path, reg, data, monkeypatch):
    """A crash mid fine-tuning, then the same fit again: same weights as one uninterrupted fit."""
    from ckmbench.fitting import fit_method

    spec = reg.method("licgdm")
    ts = reg.task("sr4")
    task = ts.make(**ts.params)
    train = TaskData(data.split("train"), task, 0)
    val = TaskData(data.split("val"), task, 0)

    def fit(root, crash_at=None):
        monkeypatch.setenv("CKMBENCH_FITS", str(root))
        method = spec.factory("tiny", dict(LICGDM_TINY))
        ctx = RunContext(seed=0, profile="tiny", progress=False)
        fit_method(method, spec, version="t", train_task=task, train_name=DATASET, train_hash="h", profile="tiny",
                   hparams=dict(LICGDM_TINY), seed=0, train=train, val=val, ctx=ctx, registry=reg)
        return method

    whole = fit(tmp_path / "a")
    resumed = crash_then_resume(monkeypatch, fit, tmp_path / "b", crash_at=5, trainer_name="student")
    assert resumed.pruned == whole.pruned
    assert all(torch.equal(x, y) for x, y in zip(whole.state_dict()["net"].values(),
                                                 resumed.state_dict()["net"].values()))


def test_knapsack_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = 2 + trial % 8
        values = torch.rand(n, generator=g).tolist()
        weights = torch.randint(1, 1000, (n,), generator=g).tolist()
        need = int(0.35 * sum(weights))
        items, value, freed = knapsack_min_value(values, weights, need)
        best = min((sum(values[i] for i in c), c) for r in range(n + 1)
                   for c in itertools.combinations(range(n), r) if sum(weights[i] for i in c) >= need)
        assert value == pytest.approx(best[0]) and freed >= need
        assert sum(values[i] for i in items) == pytest.approx(value)
    with pytest.raises(CkmError, match="prune_fraction"):
        knapsack_min_value([1.0], [10], 11)


def test_paper_profiles_match_the_papers_parameter_counts(reg):
    from ckmbench.diffusion import SR3UNet

    def count(hp):
        with torch.device("meta"):
            net = SR3UNet(2 * hp["image_channels"], hp["image_channels"], base=hp["base"], mults=hp["mults"],
                          num_res_blocks=hp["num_res_blocks"], attn_resolutions=hp["attn_resolutions"],
                          image_size=hp["image_size"])
        return count_parameters(net)

    cgdm = count(CGDM_PAPER)
    assert abs(cgdm - 221.21e6) / 221.21e6 < 0.15
    assert abs(cgdm - 221.21e6) / 221.21e6 < 0.005  # the structure of S2 Fig. 3 lands within 0.5 %
    assert count(CDIFF_PAPER) == cgdm  # same architecture (S0 gives none), at 256^2
    assert CGDM_PAPER["T"] == 1000 and CGDM_PAPER["beta_start"] == 1e-6 and CGDM_PAPER["beta_end"] == 1e-2
    assert CGDM_PAPER["lr"] == 5e-5 and CGDM_PAPER["batch_size"] == 16 and CGDM_PAPER["steps"] == 500_000
    assert CGDM_PAPER["ema_decay"] == 0.9999 and CGDM_PAPER["ema_start"] == 5000 and CGDM_PAPER["select"] == "last"
    assert not CGDM_PAPER["residual"] and CGDM_PAPER["crop"] is None and CGDM_PAPER["sampler"] == "ancestral"
    small = count(CGDM_SMALL)
    assert 0.5e6 < small < 3e6


def test_licgdm_refuses_an_architecture_other_than_its_teacher(tmp_path, reg, data):
    method, task = method_and_task(reg, "licgdm", "sr4", base=4)
    teacher, _ = method_and_task(reg, "cgdm", "sr4")
    ctx = RunContext(seed=0, progress=False, fit_dir=tmp_path, fit_dependency=lambda name: teacher)
    with pytest.raises(CkmError, match="architecture"):
        method.fit(TaskData(data.split("train"), task, 0), TaskData(data.split("val"), task, 0), task, ctx)


def test_diffusion_methods_refuse_tasks_without_measurements(reg, data, tmp_path):
    method, _ = method_and_task(reg, "cgdm", "sr4")
    ts = reg.task("inpaint")
    task = ts.make(**ts.params)
    with pytest.raises(CkmError, match="super-resolution"):
        method.fit(TaskData(data.split("train"), task, 0), TaskData(data.split("val"), task, 0), task,
                   RunContext(progress=False, fit_dir=Path(tmp_path)))


def test_a_fit_shipped_with_the_plugin_is_scored_without_training(tmp_path, reg, data, monkeypatch):
    import dataclasses
    import shutil

    from ckmbench.fitting import fit_method

    ts = reg.task("sr4")
    task = ts.make(**ts.params)
    train, val = TaskData(data.split("train"), task, 0), TaskData(data.split("val"), task, 0)

    def fit(spec, **kw):
        method = spec.factory("tiny", dict(spec.profiles["tiny"]))
        ctx = RunContext(seed=0, profile="tiny", progress=False)
        info = fit_method(method, spec, version="t", train_task=task, train_name=DATASET, train_hash="h",
                          profile="tiny", hparams=dict(spec.profiles["tiny"]), seed=0, train=train, val=val, ctx=ctx,
                          registry=reg, **kw)
        return method, info

    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "maker"))
    made, info = fit(reg.method("cgdm"))
    shipped_root = tmp_path / "shipped"
    folder = shipped_root / Path(info["dir"]).name
    folder.mkdir(parents=True)
    for name in ("fit.pt", "fit.json"):  # what a plugin ships: weights and their description
        shutil.copy(Path(info["dir"]) / name, folder / name)
    spec = dataclasses.replace(reg.method("cgdm"), fits_dir=str(shipped_root))
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "user"))
    used, info2 = fit(spec)
    assert info2["source"] == "shipped" and info2["steps_done"] == 12
    assert all(torch.equal(a, b) for a, b in zip(made.state_dict()["net"].values(), used.state_dict()["net"].values()))
    _, info3 = fit(spec, refit=True)
    assert info3["source"] == "trained"


def test_a_stored_fit_that_no_longer_matches_the_code_is_one_clear_line(tmp_path, reg):
    from ckmbench.fitcache import stamp_fit

    common = dict(method="cgdm", task="sr4", dataset=DATASET, profile="tiny", runs_dir=str(tmp_path / "runs"),
                  store=str(tmp_path / "s.jsonl"), progress=False, max_test=2, examples=0)
    first = run(RunConfig(**common), reg)
    fit_pt = Path(first["fit"]["dir"]) / "fit.pt"
    state = torch.load(fit_pt, weights_only=True)
    state["net"] = {k + ".renamed": v for k, v in state["net"].items()}  # as if the code had changed
    torch.save(state, fit_pt)
    stamp_fit(fit_pt.parent)  # an intact file of other code, not a damaged one
    again = run(RunConfig(**common), reg)
    assert again["status"] == "error" and "--refit" in again["message"] and "\n" not in again["message"]
    assert run(RunConfig(refit=True, **common), reg)["status"] == "done"


def test_the_shipped_fits_belong_to_the_current_small_profiles_and_load(reg):
    """Each fit in plugins/diffusion/fits/ was made with today's small profile and loads into it."""
    import json

    from ckmbench.fitcache import fit_hparams
    from ckmbench_plugins.diffusion import SHIPPED_FITS

    folders = sorted(p for p in Path(SHIPPED_FITS).glob("*") if (p / "fit.json").exists())
    if not folders:
        pytest.skip("no fits shipped")
    for folder in folders:
        meta = json.loads((folder / "fit.json").read_text())
        spec = reg.method(meta["method"])
        method = spec.factory("small", dict(spec.profiles["small"]))
        assert meta["profile"] == "small" and meta["complete"] and not meta["budget_reached"]
        assert json.loads(json.dumps(fit_hparams(method, spec.profiles["small"]))) == meta["hparams"], folder.name
        assert folder.name.startswith(meta["method"] + "-")
        method.load_state_dict(torch.load(folder / "fit.pt", weights_only=True))
        assert not list(folder.glob("*/train_state.pt"))  # weights only: no optimizer state shipped


@pytest.mark.parametrize("name,task_name", [("cgdm", "sr4"), ("cdiff", "sr4-envcf")])
def test_a_crashed_fit_resumes_to_the_same_weights(tmp_path, reg, data, monkeypatch, name, task_name):
    spec, ts = reg.method(name), reg.task(task_name)
    fit = cache_fitter(monkeypatch, reg, spec, spec.profiles["tiny"], ts.make(**ts.params), data, DATASET)

    whole = fit(tmp_path / "a")
    # the 7th step crashes: after the checkpoint at step 4, before the one at 8
    resumed = crash_then_resume(monkeypatch, fit, tmp_path / "b", crash_at=7)
    assert whole.info["resumed_from"] is None and resumed.info["resumed_from"] == 4
    assert all(torch.equal(x, y) for x, y in zip(whole.state_dict()["net"].values(),
                                                 resumed.state_dict()["net"].values()))


def test_the_diagnosis_script_reports_every_estimate(capsys, monkeypatch):
    """benchmarks/diagnose_pixel_diffusion.py (quoted in the docs) runs on a tiny fit and
    prints one PSNR per estimate: conditioning, each sample and running mean, each t."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnose_pixel_diffusion.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as `python benchmarks/...` runs it: its helper beside it
    spec = importlib.util.spec_from_file_location("diagnose_pixel_diffusion", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["diagnose", "--method", "cgdm", "--task", "sr4", "--dataset", DATASET,
                                      "--profile", "tiny", "--max-test", "3", "--samples", "2", "--t", "5,49"])
    script.main()
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "PSNR" not in line and not line.startswith("| ---")]
    names = [r.split(" | ")[0].strip("| ") for r in rows]
    assert names == ["conditioning (upsampled measurements)", "sample 1", "mean of samples 1-1", "sample 2",
                     "mean of samples 1-2", "one-call x0 estimate at t = 5", "one-call x0 estimate at t = 49"]
    values = [float(r.split(" | ")[1].strip(" |")) for r in rows]
    assert all(v == v and 0 < v < 100 for v in values)  # finite PSNRs in dB
    assert values[1] == values[2]  # the mean of one sample is that sample


@pytest.mark.parametrize("profile", ["tiny", "small", "paper"])
def test_cgdm_res_blocks_drop_out_inside_both_halves(reg, profile):
    """S2 eq. 40: g(.) = conv(dropout(swish(GN(.)))) twice per Res+ block, at every profile."""
    from ckmbench.diffusion.unet import ResBlock

    spec = reg.method("cgdm")
    hp = dict(spec.profiles[profile])
    net = spec.factory(profile, hp).net if profile != "paper" else None
    if net is None:  # the paper network is large: one Res+ block built from the paper's keys
        from ckmbench.diffusion.unet import CGDM_PAPER_CONFIG

        assert hp["dropout_placement"] == CGDM_PAPER_CONFIG["dropout_placement"] == "both"
        net = ResBlock(64, 128, 64, hp["dropout"], hp["norm_groups"], hp["dropout_placement"])
    blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert blocks and all(isinstance(b.dropout1, torch.nn.Dropout) and isinstance(b.dropout, torch.nn.Dropout)
                          for b in blocks)
    block = blocks[0].train()
    torch.manual_seed(0)
    x, temb = torch.randn(2, block.c_in, 8, 8), torch.randn(2, block.temb_proj.in_features)
    # with the second dropout disabled, the first one alone still makes training passes differ
    block.dropout = torch.nn.Identity()
    assert not torch.equal(block(x, temb), block(x, temb))


def test_a_method_revision_joins_its_version_and_fit_key(reg):
    """Bumping MethodSpec.version keeps fits of the older code from being reused."""
    import dataclasses

    from ckmbench.fitcache import fit_key

    dist_version = reg.distribution_of("methods", "cgdm")[1]
    assert reg.method_version("cgdm") == ("ckmbench", f"{dist_version}+2")
    assert reg.method_version("bilinear") == ("ckmbench", dist_version)
    old = dataclasses.replace(reg.method("cgdm"), version="")
    reg.items["methods"]["cgdm"] = old
    try:
        assert reg.method_version("cgdm")[1] == dist_version
    finally:
        reg.items["methods"]["cgdm"] = dataclasses.replace(old, version="2")
    keys = {fit_key("cgdm", v, "sr4", "h", "small", {}, 0) for v in (dist_version, f"{dist_version}+2")}
    assert len(keys) == 2


def test_cdiff_on_plain_sr4_uses_cgdms_fit_and_predicts_identically(tmp_path, reg, data, monkeypatch):
    from ckmbench.fitting import fit_method
    from ckmbench.training import Trainer

    ts = reg.task("sr4")
    task = ts.make(**ts.params)
    train, val = TaskData(data.split("train"), task, 0), TaskData(data.split("val"), task, 0)
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))

    def fit(name):
        spec = reg.method(name)
        method = spec.factory("tiny", dict(spec.profiles["tiny"]))
        info = fit_method(method, spec, version=reg.method_version(name)[1], train_task=task, train_name=DATASET,
                          train_hash="h", profile="tiny", hparams=dict(spec.profiles["tiny"]), seed=0, train=train,
                          val=val, ctx=RunContext(seed=0, profile="tiny", progress=False), registry=reg)
        return method, info

    cgdm, first = fit("cgdm")
    assert first["source"] == "trained"
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("cdiff trained a second copy of cgdm's fit"))
    cdiff, second = fit("cdiff")
    assert second["source"] == "cache" and second["key"] == first["key"] and second["dir"] == first["dir"]
    assert sorted(p.name for p in (tmp_path / "fits").iterdir()) == [Path(first["dir"]).name]  # one fit stored
    obs, _, _ = TaskData(data.split("test"), task, 0).batch_at(range(3))
    ctx = RunContext(seed=0, progress=False)
    assert torch.equal(cgdm.predict(obs, ctx), cdiff.predict(obs, ctx))
    # on sr4-envcf CDiff is its own model (the EnvCF map): no sharing there
    envcf = reg.task("sr4-envcf")
    assert cdiff.shares_fit_with(envcf.make(**envcf.params)) is None
