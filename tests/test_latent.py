"""Shared latent parts: decoupled diffusion, the cached KL autoencoder, two-head U-Net, encoders."""

from __future__ import annotations

import math

import pytest
import torch

from ckmbench.data.registry import load_dataset
from ckmbench.errors import CkmError
from ckmbench.latent import DecoupledDiffusion, TwoHeadUNet, build_condition_encoder, fitted_autoencoder
from ckmbench.latent.autoencoder import AE_TINY
from ckmbench.method import RunContext, TaskData
from ckmbench.plugins import registry
from ckmbench.training import Trainer


@pytest.fixture(scope="module")
def data():
    """The tiny city maps, on one thread (the machine is shared)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_dataset("city-tiny", progress=False)
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def generate_task():
    ts = registry().task("generate")
    return ts.make(**ts.params)


# ------------------------------------------------------------------ decoupled diffusion
@pytest.mark.parametrize("steps", [1, 5, 50])
def test_ddm_sampler_with_oracle_c_and_eps_returns_z0(steps):
    ddm = DecoupledDiffusion(t_min=1e-4)
    z0 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def oracle(z, t):  # the true attenuation and the noise consistent with z_t
        tb = t.reshape(-1, 1, 1, 1)
        return -z0, (z - (1 - tb) * z0) / tb.sqrt()

    out = ddm.sample(oracle, z0.shape, steps, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, z0, atol=1e-5)
    # a wrong c must not come out right
    bad = ddm.sample(lambda z, t: (torch.zeros_like(z), oracle(z, t)[1]), z0.shape, steps,
                     generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(bad, z0, atol=1e-2)


@pytest.mark.parametrize("t", [0.05, 0.3, 0.9])
def test_ddm_forward_marginals(t):
    """z_t | z0 ~ N((1 - t) z0, t I), by Monte Carlo over 200,000 draws."""
    ddm = DecoupledDiffusion()
    g = torch.Generator().manual_seed(2)
    z0 = torch.tensor([1.5, -0.7, 0.0]).repeat(200_000, 1)
    eps = torch.randn(z0.shape, generator=g)
    zt = ddm.q_sample(z0, torch.full((len(z0),), t), eps)
    assert torch.allclose(zt.mean(0), (1 - t) * z0[0], atol=0.01)
    assert torch.allclose(zt.var(0), torch.full((3,), t), rtol=0.02)
    ts = ddm.sample_t(200_000, torch.Generator().manual_seed(3), "cpu")
    assert float(ts.min()) >= 1e-4 and float(ts.max()) <= 1.0
    assert abs(float(ts.mean()) - (1 + 1e-4) / 2) < 0.005


def test_ddm_sampler_step_matches_the_bridge_posterior():
    """One step from t with the oracle at z0 = 0: the spread is sqrt(dt (t - dt) / t) (not S1's printed dt(1 - dt)/t)."""
    ddm = DecoupledDiffusion()
    n, z1 = 100_000, torch.zeros(100_000, 1)
    # two steps of 0.5: from t = 1 to 0.5, variance 0.5 * 0.5 / 1 = 0.25
    seen = []

    def model(z, t):
        seen.append(z.clone())
        return torch.zeros_like(z), z / t.reshape(-1, 1).sqrt()

    ddm.sample(model, z1.shape, 2, generator=torch.Generator().manual_seed(4), z1=z1)
    assert abs(float(seen[1].var()) - 0.25) < 0.01 and n == len(seen[1])


def test_ddm_losses_and_bad_settings():
    z0 = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    perfect = lambda z, t: (-z0, (z - (1 - t.reshape(-1, 1, 1, 1)) * z0) / t.reshape(-1, 1, 1, 1).sqrt())
    for kind in ("l2", "radiodiff"):
        ddm = DecoupledDiffusion(loss=kind)
        assert float(ddm.training_loss(perfect, z0, torch.Generator().manual_seed(0))) < 1e-5
        zero = lambda z, t: (torch.zeros_like(z), torch.zeros_like(z))
        assert float(ddm.training_loss(zero, z0, torch.Generator().manual_seed(0))) > 0.5
    t = torch.tensor([0.25] * 4)
    l2 = DecoupledDiffusion().loss_terms(-z0, z0, torch.zeros_like(z0), torch.zeros_like(z0), t)
    assert torch.isclose(l2, 2 * (z0 ** 2).mean())
    rd = DecoupledDiffusion(loss="radiodiff").loss_terms(-z0, z0, torch.zeros_like(z0), torch.zeros_like(z0), t)
    want = ((2 * math.exp(0.75) + math.exp(0.5)) * ((z0 ** 2).mean() + z0.abs().mean())) / 2
    assert torch.isclose(rd, want.to(rd.dtype), rtol=1e-5)
    with pytest.raises(CkmError, match="t_min"):
        DecoupledDiffusion(t_min=0)
    with pytest.raises(CkmError, match="loss"):
        DecoupledDiffusion(loss="l3")
    with pytest.raises(CkmError, match="sample_steps"):
        DecoupledDiffusion().sample(perfect, z0.shape, 0)


# ------------------------------------------------------------------ networks
def test_two_head_unet_shapes_and_condition_levels():
    enc = build_condition_encoder("conv", image_size=32, downsample=2, levels=2, channels=[8, 16], norm_groups=4)
    net = TwoHeadUNet(3, (8, 16), base=8, mults=(1, 2), num_res_blocks=1, norm_groups=4, image_size=16)
    feats = enc(torch.zeros(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 16, 8, 8)]
    c, e = net(torch.randn(2, 3, 16, 16), torch.rand(2), feats)
    assert c.shape == e.shape == (2, 3, 16, 16) and not torch.equal(c, e)
    with pytest.raises(ValueError, match="condition feature maps"):
        net(torch.randn(2, 3, 16, 16), torch.rand(2), feats[:1])
    plain = TwoHeadUNet(3, (), base=8, mults=(1, 2), num_res_blocks=1, norm_groups=4, image_size=16)
    assert plain(torch.randn(1, 3, 16, 16), torch.rand(1))[0].shape == (1, 3, 16, 16)


def test_swin_encoder_levels_and_local_weights(tmp_path):
    enc = build_condition_encoder("swin-t", image_size=64, downsample=4, levels=3)
    assert enc.weights == "scratch"
    feats = enc(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(96, 16, 16), (192, 8, 8), (384, 4, 4)]
    path = tmp_path / "swin_t.pth"
    torch.save({"model": enc.model.state_dict()}, path)
    loaded = build_condition_encoder("swin-t", image_size=64, downsample=4, levels=3, weights=str(path))
    assert loaded.weights.startswith("imagenet") and "imagenet" in loaded.describe().lower()
    assert all(torch.equal(a, b) for a, b in zip(enc.model.state_dict().values(), loaded.model.state_dict().values()))
    with pytest.raises(CkmError, match="not a file"):
        build_condition_encoder("swin-t", image_size=64, downsample=4, levels=3, weights=str(tmp_path / "none"))
    with pytest.raises(CkmError, match="1/2"):
        build_condition_encoder("swin-b", image_size=64, downsample=2, levels=3)


@pytest.mark.parametrize("levels", [2, 4])
def test_every_trainable_swin_parameter_gets_a_gradient(levels):
    """DDP refuses trainable parameters that receive no gradient (the final norm, unused stages)."""
    enc = build_condition_encoder("swin-t", image_size=64, downsample=4, levels=levels)
    sum(f.square().mean() for f in enc(torch.randn(2, 3, 64, 64))).backward()
    idle = [n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None]
    assert not idle, idle[:3]
    frozen = sum(p.numel() for p in enc.parameters() if not p.requires_grad)
    assert frozen > 0 and sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in enc.model.parameters())


# ------------------------------------------------------------------ the autoencoder
def test_autoencoder_is_fitted_once_then_reused_from_the_cache(data, generate_task, tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    train = TaskData(data.split("train"), generate_task, 0)
    val = TaskData(data.split("val"), generate_task, 0)
    trained = []
    original = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: trained.append(self.name) or original(self, *a, **k))
    ctx = RunContext(seed=0, profile="tiny", progress=False)
    ae, info = fitted_autoencoder(train, val, ctx, dict(AE_TINY))
    assert info["source"] == "trained" and trained == ["vae"] and info["steps_done"] == AE_TINY["steps"]
    assert 0 < info["psnr_val"] < 100 and "L1 + adversarial" in info["perceptual"]
    again, info2 = fitted_autoencoder(train, val, RunContext(seed=0, profile="tiny", progress=False), dict(AE_TINY))
    assert info2["source"] == "cache" and trained == ["vae"] and info2["key"] == info["key"]
    assert all(torch.equal(a, b) for a, b in zip(ae.state_dict().values(), again.state_dict().values()))
    assert not any(p.requires_grad for p in again.parameters())
    z = again.encode(train.batch_at([0, 1])[1])
    assert z.shape == (2, 3, 16, 16) and again.decode(z).shape == (2, 1, 32, 32)
    # another seed is another fit
    _, info3 = fitted_autoencoder(train, val, RunContext(seed=1, profile="tiny", progress=False), dict(AE_TINY))
    assert info3["source"] == "trained" and info3["key"] != info["key"]


def test_autoencoder_discriminator_phase_runs_on_the_shared_trainer(data, generate_task, tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    train = TaskData(data.split("train"), generate_task, 0)
    hp = dict(AE_TINY, steps=4, disc_start=2, disc_channels=8, disc_layers=2)
    _, info = fitted_autoencoder(train, None, RunContext(seed=0, profile="tiny", progress=False), hp)
    assert info["discriminator"] == "patch, from step 2" and math.isfinite(info["final_d_loss"])
    assert info["psnr_val"] is None
    with pytest.raises(CkmError, match="lpips"):
        fitted_autoencoder(train, None, RunContext(seed=0, profile="tiny", progress=False),
                           dict(hp, lpips_weights="vgg.pth"))


def test_random_crop_is_drawn_from_the_step_seed():
    from ckmbench.latent.autoencoder import random_crop

    x = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64)
    a = random_crop(x, 32, torch.Generator().manual_seed(7))
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, random_crop(x, 32, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, random_crop(x, 32, torch.Generator().manual_seed(8)))
    assert random_crop(x, None, torch.Generator()) is x and random_crop(x, 32, None) is x
