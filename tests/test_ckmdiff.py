"""CKMDiff at the tiny profile (shapes per task, seeded determinism, resume, the shared
autoencoder, a falling loss) and its paper-profile parameter counts."""

from __future__ import annotations

import pytest
import torch

from ckmbench.data.registry import load_dataset
from ckmbench.errors import CkmError
from ckmbench.latent.autoencoder import build_autoencoder, vae_hparams
from ckmbench.method import RunContext, TaskData
from ckmbench.training import Trainer
from ckmbench_plugins.latent import CKMDIFF_PAPER, CKMDIFF_TINY
from ckmbench_plugins.latent.ckmdiff import CKMDiff
from ckmbench_plugins.latent.emphasis import feature_emphasis
from train_helpers import check_sampled_predictions, fit_on, crash_then_resume, one_thread, reg  # noqa: F401 (fixtures: one thread, registry)

DATASET = "city-tiny"


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATASET, progress=False)


@pytest.fixture(autouse=True)
def fits_root(tmp_path_factory, monkeypatch):
    """One fit cache for the module: the autoencoder is trained by the first test that needs it."""
    root = tmp_path_factory.getbasetemp() / "ckmdiff-fits"
    monkeypatch.setenv("CKMBENCH_FITS", str(root))
    return root


def task_of(reg, name):
    ts = reg.task(name)
    return ts.make(**ts.params)


def fit_ckmdiff(reg, data, task_name, fit_dir, seed=0, **over):
    task = task_of(reg, task_name)
    method = CKMDiff("tiny", {**CKMDIFF_TINY, **over})
    return method, task, fit_on(method, task, data, fit_dir, seed)


@pytest.mark.parametrize("task_name", ["inpaint", "sr4-noisy", "denoise", "generate"])
def test_fit_predict_shapes_and_seeded_determinism(reg, data, tmp_path, task_name):
    method, task, ctx = fit_ckmdiff(reg, data, task_name, tmp_path / "a")
    fit = ctx.extras["fit"]
    assert fit["steps_done"] == CKMDIFF_TINY["steps" if task_name != "sr4-noisy" else "sr_steps"]
    assert 0 < fit["autoencoder"]["psnr_val"] < 100
    assert fit["encoder"] == ("none (unconditional)" if task_name == "generate" else "conv [8, 16], from scratch")
    obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(3))
    assert target.shape == (3, 1, 32, 32)
    again, _, _ = fit_ckmdiff(reg, data, task_name, tmp_path / "b")
    check_sampled_predictions(method, again, CKMDiff("tiny", dict(CKMDIFF_TINY)), obs, target, ctx)


def test_the_autoencoder_is_trained_once_for_every_task(reg, data, tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    trained = []
    original = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: trained.append(self.name) or original(self, *a, **k))
    _, _, first = fit_ckmdiff(reg, data, "inpaint", tmp_path / "inpaint")
    _, _, second = fit_ckmdiff(reg, data, "denoise", tmp_path / "denoise")
    assert trained == ["vae", "ddm", "ddm"]
    a, b = first.extras["fit"]["autoencoder"], second.extras["fit"]["autoencoder"]
    assert (a["source"], b["source"]) == ("trained", "cache") and a["key"] == b["key"]
    assert a["psnr_val"] == b["psnr_val"]


@pytest.mark.parametrize("phase,crash_at", [("ddm", 5), ("vae", 5)])
def test_resume_after_a_crash_equals_an_uninterrupted_fit(reg, data, tmp_path, monkeypatch, phase, crash_at):
    # each fit has its own cache, so the autoencoder is trained (and crashes, for "vae") in both
    def fit(root):
        monkeypatch.setenv("CKMBENCH_FITS", str(root / "fits"))
        return fit_ckmdiff(reg, data, "inpaint", root / "fit")[0]

    straight = fit(tmp_path / "a")
    resumed = crash_then_resume(monkeypatch, fit, tmp_path / "b", crash_at=crash_at, trainer_name=phase)
    for part in ("net", "vae"):
        assert all(torch.equal(x, y) for x, y in zip(straight.state_dict()[part].values(),
                                                     resumed.state_dict()[part].values()))


def test_loss_falls_on_a_fixed_batch(reg, data):
    task = task_of(reg, "inpaint")
    method = CKMDiff("tiny", dict(CKMDIFF_TINY))
    method.ae = build_autoencoder(vae_hparams(CKMDIFF_TINY), 0).eval()
    method.arch = {**method.architecture("inpaint", 32, method.ae.downsample, 3), "latent_scale": 1.0}
    method.net = method.build_seeded(method.arch, 0)
    batch = TaskData(data.split("train"), task, 0).batch_at(range(8))
    opt = torch.optim.Adam(method.net.parameters(), lr=3e-3)

    def fixed_loss():
        return method.loss(method.net, batch, torch.Generator().manual_seed(0))

    losses = []
    for _ in range(41):
        loss = fixed_loss()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_cached_latents_equal_encoding_the_batch(reg, data):
    method = CKMDiff("tiny", dict(CKMDIFF_TINY))
    method.ae = build_autoencoder(vae_hparams(CKMDIFF_TINY), 0).eval()
    method.arch = {"latent_scale": 0.7}
    obs, target, _ = TaskData(data.split("train"), task_of(reg, "denoise"), 0).batch_at(range(6))
    direct = method.latent(target)
    cached = method.latent(target, obs.keys)
    assert len(method._latents) == 6 and torch.allclose(cached, direct, atol=1e-5)
    method.ae = None  # a second call must come from the cache alone
    assert torch.equal(method.latent(target, obs.keys), cached)


def test_feature_emphasis_marks_buildings_and_their_edges(reg, data):
    task = task_of(reg, "denoise")
    obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(2))
    cond = feature_emphasis(obs, 0.08, 1.0)
    assert cond.shape == (2, 3, 32, 32) and torch.equal(cond[:, :1], obs.y)
    truth = torch.stack([torch.from_numpy(data.split("test")[i].buildings) for i in range(2)])[:, None].float()
    agree = float((cond[:, 1:2] == truth).float().mean())
    assert agree > 0.85
    assert set(torch.unique(cond[:, 2]).tolist()) <= {0.0, 1.0} and float(cond[:, 2].sum()) > 0
    inpaint = task_of(reg, "inpaint")
    obs, _, _ = TaskData(data.split("test"), inpaint, 0).batch_at(range(2))
    b = feature_emphasis(obs, 0.08, 1.0)[:, 1:2]
    assert float((b * (1 - obs.mask)).sum()) == 0  # the hole is not a building


def test_refuses_tasks_it_does_not_do(reg, data, tmp_path):
    for name in ("sr4", "envgen-static"):
        with pytest.raises(CkmError, match="ckmdiff trains on"):
            fit_ckmdiff(reg, data, name, tmp_path / name)
    with pytest.raises(CkmError, match="no weights"):
        obs, _, _ = TaskData(data.split("test"), task_of(reg, "denoise"), 0).batch_at([0])
        CKMDiff("tiny", dict(CKMDIFF_TINY)).predict(obs, RunContext(progress=False))


def test_paper_profile_parameter_counts():
    """S1 states no count; the parts that S3 counts for RadioDiff are checked against its
    numbers (Swin-B 87.8 M with its classifier, VAE decoder 33.0 M), the totals pinned."""
    method = CKMDiff("paper", dict(CKMDIFF_PAPER))
    with torch.device("meta"):
        method.ae = build_autoencoder(vae_hparams(CKMDIFF_PAPER), 0)
        counts = {}
        for kind in ("inpaint", "sr"):
            method.arch = method.architecture(kind, 256, method.ae.downsample, 3)
            method.net = method.build(method.arch)
            counts[kind] = (method.num_parameters(), method.inference_parameters())
    swin = sum(p.numel() for p in method.net.encoder.parameters())
    assert abs(swin + 1024 * 1000 + 1000 - 87.8e6) / 87.8e6 < 0.15
    decoder = counts["sr"][1] - counts["sr"][0]
    assert abs(decoder - 33.0e6) / 33.0e6 < 0.15
    assert counts["inpaint"] == (221_983_038, 221_983_038 + decoder)
    assert counts["sr"][0] == 188_299_198
