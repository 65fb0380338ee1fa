"""The physics-inspired LDM (physdiff) at the tiny profile: shapes, seeded determinism, resume,
a falling loss, the physics losses (zero where they should be, differentiable through DDIM and the
decoder), the ablation switches, RegionUNet labels, and the paper-profile parameter count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckmbench.data.registry import load_dataset
from ckmbench.errors import CkmError
from ckmbench.latent.autoencoder import build_autoencoder, vae_hparams
from ckmbench.latent.physics_losses import (edge_loss, edge_map, laplacian, laplacian_pyramid, pyramid_loss, region_loss,
                                           soft_edge_map)
from ckmbench.method import RunContext, TaskData
from ckmbench.tasks.base import Observation
from ckmbench_plugins.latent.physdiff import PHYSDIFF_PAPER, PHYSDIFF_TINY, PhysDiff
from ckmbench_plugins.latent.regionunet import RegionSegmenter, RegionUNet, region_hparams, region_labels
from test_ckmdiff import task_of
from train_helpers import check_sampled_predictions, fit_on, cache_fitter, crash_then_resume, fixed_batch_losses, one_thread, reg  # noqa: F401

DATASET = "city-tiny"
DATASETS = {"envgen-static": DATASET, "envgen-dynamic": "city-tiny-cars"}


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATASET, progress=False)


@pytest.fixture(scope="module")
def cars():
    return load_dataset(DATASETS["envgen-dynamic"], progress=False)


@pytest.fixture(autouse=True)
def fits_root(tmp_path_factory, monkeypatch):
    """One fit cache for the module: the autoencoder is trained by the first test that needs it."""
    root = tmp_path_factory.getbasetemp() / "physdiff-fits"
    monkeypatch.setenv("CKMBENCH_FITS", str(root))
    return root


def fit_physdiff(reg, data, task_name, fit_dir, seed=0, **over):
    task = task_of(reg, task_name)
    method = PhysDiff("tiny", {**PHYSDIFF_TINY, **over})
    return method, task, fit_on(method, task, data, fit_dir, seed)


def untrained(reg, cars, **over):
    """A tiny physdiff with untrained (seeded) autoencoder, RegionUNet and network, and a train batch."""
    method = PhysDiff("tiny", {**PHYSDIFF_TINY, **over})
    method.ae = build_autoencoder(vae_hparams(PHYSDIFF_TINY), 0).eval().requires_grad_(False)
    batch = TaskData(cars.split("train"), task_of(reg, "envgen-dynamic"), 0).batch_at(range(4))
    torch.manual_seed(0)
    seg = RegionSegmenter(region_hparams(PHYSDIFF_TINY))  # a few steps, so its probabilities are not uniform
    fixed_batch_losses(lambda: seg.loss(seg.net, batch, None), seg.net.parameters(), lr=1e-2, steps=20)
    method.regions = seg.net.eval().requires_grad_(False)
    method.arch = {**method.architecture(32, method.ae.downsample, 3), "latent_scale": 1.0}
    method.net = method.build_seeded(method.arch, 0)
    return method, batch


@pytest.mark.parametrize("task_name", ["envgen-static", "envgen-dynamic"])
def test_fit_predict_shapes_and_seeded_determinism(reg, data, cars, tmp_path, task_name):
    data = cars if task_name == "envgen-dynamic" else data
    method, task, ctx = fit_physdiff(reg, data, task_name, tmp_path / "a")
    fit = ctx.extras["fit"]
    assert fit["steps_done"] == PHYSDIFF_TINY["steps"]
    assert fit["physics_losses"] == ["edge_loss", "region_loss", "pyramid_loss"]
    assert set(fit["final_physics_terms"]) == set(fit["physics_losses"])  # unweighted, over the last log window
    assert all(v >= 0 for v in fit["final_physics_terms"].values())
    assert fit["regionunet"]["steps_done"] == PHYSDIFF_TINY["region_steps"] and 0 <= fit["regionunet"]["val_accuracy"] <= 1
    assert fit["encoder"] == "conv [8, 16], from scratch"
    obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(3))
    assert target.shape == (3, 1, 32, 32) and method.sampling_steps() == 5
    again, _, _ = fit_physdiff(reg, data, task_name, tmp_path / "b")
    check_sampled_predictions(method, again, PhysDiff("tiny", dict(PHYSDIFF_TINY)), obs, target, ctx)


@pytest.mark.parametrize("phase,crash_at", [("ldm", 4), ("regionunet", 3)])
def test_resume_after_a_kill_equals_an_uninterrupted_fit(reg, data, tmp_path, monkeypatch, phase, crash_at):
    spec = reg.method("physdiff")
    fit = cache_fitter(monkeypatch, reg, spec, PHYSDIFF_TINY, task_of(reg, "envgen-static"), data, DATASET)
    straight = fit(tmp_path / "a")
    resumed = crash_then_resume(monkeypatch, fit, tmp_path / "b", crash_at=crash_at, trainer_name=phase)
    assert resumed.info["source"] == "trained"
    for part in ("net", "vae"):
        assert all(torch.equal(x, y) for x, y in zip(straight.state_dict()[part].values(),
                                                     resumed.state_dict()[part].values()))


def test_ablations_have_their_own_fit_keys_and_share_the_regionunet(reg, data, tmp_path, monkeypatch):
    spec = reg.method("physdiff")
    task = task_of(reg, "envgen-static")
    keys, regions, sources = set(), set(), []
    combos = [dict(edge_loss=e, region_loss=r, pyramid_loss=p) for e in (True, False) for r in (True, False)
              for p in (True, False)]
    for flags in combos:
        fit = cache_fitter(monkeypatch, reg, spec, {**PHYSDIFF_TINY, **flags, "steps": 1}, task, data, DATASET)
        method = fit(tmp_path)
        keys.add(method.info["key"])
        if flags["region_loss"]:
            regions.add(method.info["regionunet"]["key"])
            sources.append(method.info["regionunet"]["source"])
        else:
            assert method.info["regionunet"] is None
    assert len(keys) == 8 and len(regions) == 1 and sources == ["trained", "cache", "cache", "cache"]


def test_switching_a_loss_off_changes_the_loss(reg, cars):
    values = {}
    for off in (None, "edge_loss", "region_loss", "pyramid_loss"):
        method, batch = untrained(reg, cars, **({off: False} if off else {}))
        values[off] = float(method.loss(method.net, batch, torch.Generator().manual_seed(0)).detach())
    plain, _ = untrained(reg, cars, edge_loss=False, region_loss=False, pyramid_loss=False)
    base = float(plain.loss(plain.net, batch, torch.Generator().manual_seed(0)).detach())
    assert len(set(values.values())) == 4
    assert all(v > base for v in values.values())  # every term is positive on an untrained model


def test_loss_falls_on_a_fixed_batch(reg, cars):
    method, batch = untrained(reg, cars)
    first, last = fixed_batch_losses(lambda: method.loss(method.net, batch, torch.Generator().manual_seed(0)),
                                     method.net.parameters(), lr=3e-3)
    assert last < 0.5 * first


def test_physics_gradient_reaches_the_unet_through_ddim_and_the_decoder(reg, cars):
    method, batch = untrained(reg, cars)
    obs, target, _ = batch
    env = method.condition(obs)
    z = method.ddm.sample(lambda z, t: method.net(z, t, env), (4, 3, 16, 16), 2, generator=torch.Generator().manual_seed(0),
                          grad=True)
    u_hat = method.decode_for_loss(z)
    assert u_hat.shape == target.shape
    for name, term in method.physics_terms(u_hat, target, env).items():
        method.net.zero_grad()
        term.backward(retain_graph=True)
        grads = [p.grad for p in method.net.unet.parameters() if p.grad is not None]
        assert float(term.detach()) > 0 and grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    assert all(p.grad is None for p in method.ae.parameters())  # the decoder stays frozen


def test_physics_losses_are_zero_for_identical_maps_and_differentiable():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 1, 32, 32, generator=g)
    u[:, :, 10:20, 10:20] = 0.0  # a building: sharp edges
    for loss in (lambda a, b: edge_loss(a, b, 50.0, 0.05), lambda a, b: pyramid_loss(a, b, 5)):
        assert float(loss(u, u)) == 0.0
        pred = (u + 0.2 * torch.rand(u.shape, generator=g)).requires_grad_(True)
        value = loss(pred, u)
        value.backward()
        assert float(value.detach()) > 0 and float(pred.grad.abs().sum()) > 0
    probs = torch.softmax(torch.randn(2, 4, 8, 8, generator=g), 1).requires_grad_(True)
    assert float(region_loss(probs, probs.detach()).detach()) == 0.0
    other = torch.softmax(torch.randn(2, 4, 8, 8, generator=g), 1)
    value = region_loss(probs, other)
    value.backward()
    assert float(value.detach()) > 0 and float(probs.grad.abs().sum()) > 0
    # the edge map is binary forward, straight-through backward; the pyramid adds back up to the map
    e = edge_map(u, 50.0, 0.05)
    assert set(torch.unique(e).tolist()) <= {0.0, 1.0} and float(e[0, 0, 10, 15]) == 1.0
    levels = laplacian_pyramid(u, 3)
    assert [tuple(x.shape[-2:]) for x in levels] == [(32, 32), (16, 16), (8, 8)]


SPIKE = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])[None, None]  # one bright pixel


def test_eq20_laplacian_by_hand():
    """5-point stencil, replicate padding: -4 at the spike, +1 beside it, 0 at the corners."""
    assert torch.equal(laplacian(SPIKE)[0, 0], torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]))


def test_eq21_soft_and_hard_edge_maps_by_hand():
    """|lap| / max = [[0, 1/4, 0], [1/4, 1, 1/4], [0, 1/4, 0]]; S = sigmoid(alpha (that - tau)); H = 1[S > 0.5];
    the hard map forward, the soft map's gradient backward; a flat map has no edges."""
    s = torch.sigmoid
    soft = soft_edge_map(SPIKE, 10.0, 0.5)[0, 0]
    corner, side, centre = float(s(torch.tensor(-5.0))), float(s(torch.tensor(-2.5))), float(s(torch.tensor(5.0)))
    assert torch.allclose(soft, torch.tensor([[corner, side, corner], [side, centre, side], [corner, side, corner]]))
    assert torch.equal(edge_map(SPIKE, 10.0, 0.5)[0, 0], torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]]))
    assert torch.equal(edge_map(SPIKE, 10.0, 0.2)[0, 0], torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]]))  # 1/4 > 0.2
    assert float(edge_map(torch.full((1, 1, 3, 3), 0.3), 10.0, 0.05).sum()) == 0.0
    weights = torch.arange(9.0).reshape(1, 1, 3, 3)
    u = (SPIKE + 0.1 * weights / 9).requires_grad_(True)
    (edge_map(u, 10.0, 0.5) * weights).sum().backward()
    v = u.detach().clone().requires_grad_(True)
    (soft_edge_map(v, 10.0, 0.5) * weights).sum().backward()
    assert torch.equal(u.grad, v.grad) and float(u.grad.abs().sum()) > 0  # straight through the soft map


def test_eq22_edge_loss_by_hand():
    """||H(pred) - H(target)||^2 / N: a flat target has no edges, the spike has 1 (tau 0.5) or 5 (tau 0.2) of 9
    pixels; the gradient is 2 (H(pred) - H(target)) / N times the soft map's Jacobian (the square's factor 2)."""
    flat = torch.zeros(1, 1, 3, 3)
    assert float(edge_loss(SPIKE, flat, 10.0, 0.5)) == pytest.approx(1 / 9)
    assert float(edge_loss(SPIKE, flat, 10.0, 0.2)) == pytest.approx(5 / 9)
    assert float(edge_loss(SPIKE, SPIKE, 10.0, 0.2)) == 0.0
    pred = (SPIKE + 0.01 * torch.arange(9.0).reshape(1, 1, 3, 3)).requires_grad_(True)
    edge_loss(pred, flat, 10.0, 0.5).backward()
    v = pred.detach().clone().requires_grad_(True)
    hard = edge_map(v, 10.0, 0.5).detach()
    (2.0 * hard / 9 * soft_edge_map(v, 10.0, 0.5)).sum().backward()
    assert torch.allclose(pred.grad, v.grad) and float(pred.grad.abs().sum()) > 0


def test_eq23_region_loss_by_hand():
    """Pixel 0: (0.5 - 1)^2 + (0.5 - 0)^2 = 0.5, pixel 1: 0; mean 0.25."""
    p = torch.tensor([[[[0.5, 1.0]], [[0.5, 0.0]]]])
    q = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])
    assert float(region_loss(p, q)) == pytest.approx(0.25)


def test_eq24_pyramid_loss_by_hand():
    """A map off by a constant c differs only in the coarsest level G^(n-1) (band-pass levels of a constant
    are 0): sum_j 2^(-2j) ||.||^2 / N_j = 4^-(n-1) c^2; one pixel off by c at one level: c^2 / N."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(1, 1, 16, 16, generator=g)
    c = 0.5
    for n in (1, 2, 3):
        assert float(pyramid_loss(u + c, u, n)) == pytest.approx(4.0 ** -(n - 1) * c * c, rel=1e-5)
    bumped = u.clone()
    bumped[0, 0, 3, 5] += c
    assert float(pyramid_loss(bumped, u, 1)) == pytest.approx(c * c / 256, rel=1e-5)


def test_physdiff_is_revision_2(reg):
    """Revision 2 (S3 eqs. 21, 22, 24 as stated) enters records and fit keys, so revision-1 fits are not reused."""
    assert reg.method("physdiff").version == "2"


def test_region_labels_on_a_constructed_map():
    """A map that is a log-distance law except a dimmed patch (-6 dB), a dark patch (-20 dB) and a
    building: LoS / slight / heavy / building there (LoS threshold -2.5 dB here: the patches tilt the
    least-squares trend by about a dB, so pixels on the law sit within +-1.5 dB of the fit)."""
    H = 32
    tx = torch.tensor([[16.0, 16.0, 1.5]])
    rows, cols = np.indices((H, H))
    d = np.maximum(np.hypot(np.hypot(rows - 16, cols - 16) * 2.0, 0.0), 1.0)
    g = -60.0 - 30.0 * np.log10(d)
    g[2:8, 2:8] -= 6.0
    g[24:30, 24:30] -= 20.0
    b = np.zeros((H, H), bool)
    b[2:8, 24:30] = True
    g[b] = -147.0
    u = torch.from_numpy(((g + 147.0) / 100.0).clip(0, 1)).float()[None, None]
    obs = Observation(task="envgen-static", out_shape=(H, H), gain_range=torch.tensor([[-147.0, -47.0]]),
                      pixel_m=torch.tensor([2.0]), keys=["x"], buildings=torch.from_numpy(b).float()[None, None],
                      tx=tx)
    lab = region_labels(u, obs, [-2.5, -10.0])[0]
    assert lab.shape == (H, H)
    assert int(lab[4, 4]) == 1 and int(lab[26, 26]) == 2 and int(lab[4, 26]) == 3
    assert float((lab == 0).float().mean()) > 0.85  # the unperturbed law
    with pytest.raises(CkmError, match="region_thresholds_db"):
        region_labels(u, obs, [-10.0, 0.0])


def test_regionunet_segments_into_four_classes():
    net = RegionUNet(base=4, mults=[1, 2])
    out = net(torch.rand(2, 4, 16, 16))
    assert out.shape == (2, 4, 16, 16)
    p = net.probabilities(torch.rand(2, 1, 16, 16), torch.rand(2, 3, 16, 16))
    assert torch.allclose(p.sum(1), torch.ones(2, 16, 16))


def test_refuses_other_tasks_and_bad_switches(reg, data, tmp_path):
    with pytest.raises(CkmError, match="physdiff trains on envgen"):
        fit_physdiff(reg, data, "inpaint", tmp_path / "x")
    with pytest.raises(CkmError, match="edge_loss must be true or false"):
        PhysDiff("tiny", {**PHYSDIFF_TINY, "edge_loss": "no"})
    with pytest.raises(CkmError, match="no weights"):
        obs, _, _ = TaskData(data.split("test"), task_of(reg, "envgen-static"), 0).batch_at([0])
        PhysDiff("tiny", dict(PHYSDIFF_TINY)).predict(obs, RunContext(progress=False))


def test_paper_profile_parameter_count():
    """Counted as S3 counts (RadioDiff's row): U-Net + Swin-T + VAE decoder, 253.0 M within 15 %."""
    method = PhysDiff("paper", dict(PHYSDIFF_PAPER))
    with torch.device("meta"):
        method.ae = build_autoencoder(vae_hparams(PHYSDIFF_PAPER), 0)
        method.arch = method.architecture(256, method.ae.downsample, 3)
        method.net = method.build(method.arch)
    assert method.arch["unet"]["image_size"] == 64 and method.net.encoder.describe() == "swin-t, from scratch"
    total = method.inference_parameters()
    assert abs(total - 253.0e6) / 253.0e6 < 0.15
    assert sum(p.numel() for p in method.net.encoder.parameters()) == 27_519_354  # Swin-T without its classifier
    assert (method.num_parameters(), total) == (213_137_117, 246_095_594)  # trainable; + VAE decoder 32.96 M


def test_the_physics_loss_diagnosis_reports_each_map(capsys, monkeypatch):
    """benchmarks/diagnose_physics_losses.py (quoted in the docs) runs on a tiny fit and prints
    PSNR and the three terms for the autoencoder floor, the two-call x̂0 and the prediction."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnose_physics_losses.py"
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location("diagnose_physics_losses", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["diagnose", "--dataset", DATASET, "--profile", "tiny", "--max-test", "3",
                                      "--set", "pyramid_loss=false"])
    script.main()
    out = capsys.readouterr().out
    assert "with pyramid_loss=false" in out  # the override reached the fit
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| map", "| ---"))]
    names = [r.split(" | ")[0].strip("| ") for r in rows]
    assert names == ["autoencoder reconstruction (the floor)", "two-call DDIM x̂0 (what the losses see, I = 1)",
                     "prediction as scored"]
    for r in rows:
        psnr_db, *terms = (float(v) for v in r.strip("| ").split(" | ")[1:])
        assert 0 < psnr_db < 100 and len(terms) == 3 and all(0 <= t < 10 for t in terms)
