"""bf16 autocast: every learned method trains at the tiny profile under ``amp=bf16`` on the CPU
without an infinite or NaN loss, and the losses that cancel in bf16 run in float32
(ckmbench.precision.fp32_loss). Before the fix RME-GAN's generator loss became -inf at step 3."""

from __future__ import annotations

import math

import pytest
import torch

from ckmbench.latent.autoencoder import standard_normal_kl
from ckmbench.latent.physics_losses import edge_loss, pyramid_loss
from ckmbench.plugins import registry
from ckmbench.precision import fp32_loss
from ckmbench.runner import RunConfig, run
from ckmbench_plugins.radiomap.gan_losses import gradient_cosine_loss, ms_ssim_l1_loss, power_loss
from train_helpers import one_thread  # noqa: F401 (fixture: one thread)

LEARNED = [name for name in registry().names("methods") if registry().method(name).kind != "baseline"]
TASKS = ("envgen-static", "sr4", "inpaint", "sparse")  # the first of these that the method runs


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def smooth_map(size: int = 32) -> torch.Tensor:
    """A radio-map-like field in [0.3, 0.7]: a smooth decay plus a dark block (a building)."""
    r, c = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    u = 0.7 - 0.4 * torch.hypot(r - size / 2, c - size / 2) / size
    u[..., 4:10, 20:28] = 0.3
    return u[None, None]


def test_the_learned_methods_are_all_listed():
    assert {"rme-gan", "physdiff", "radiodiff", "cgdm", "uvm-net", "srgan"} <= set(LEARNED)
    assert not {"bicubic", "kriging", "distance"} & set(LEARNED)


@pytest.mark.parametrize("name", LEARNED)
def test_every_learned_method_trains_under_bf16_without_inf_or_nan(name, tmp_path, monkeypatch):
    """A few tiny-profile steps under bf16 autocast (dependency fits too: the run's amp carries over);
    the trainer stops at the first non-finite loss, so a finished record means every step was finite."""
    spec = registry().method(name)
    if name == "srgan":  # a stand-in for the ImageNet VGG19 file: the same layout, random values
        from torchvision.models.vgg import cfgs, make_layers

        torch.manual_seed(0)
        path = tmp_path / "vgg19.pth"
        torch.save({f"features.{k}": v for k, v in make_layers(cfgs["E"])[:36].state_dict().items()}, path)
        monkeypatch.setenv("CKMBENCH_VGG19", str(path))
    task = next(t for t in TASKS if t in spec.tasks)
    rec = run(RunConfig(method=name, task=task, dataset="city-tiny", profile="tiny", max_test=2, progress=False,
                        examples=0, store=str(tmp_path / "store" / "records.jsonl"), hparams={"amp": "bf16"}))
    assert rec["status"] == "done", rec["message"]
    assert rec["hparams"]["amp"] == "bf16"
    assert math.isfinite(rec["fit"]["final_loss"])
    assert all(math.isfinite(v) for k, v in rec["metrics"].items() if isinstance(v, float)), rec["metrics"]


def test_fp32_loss_turns_autocast_off_and_keeps_the_gradient():
    seen = {}

    @fp32_loss
    def loss(a, b):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["dtypes"] = (a.dtype, b["w"].dtype, (a @ b["w"]).dtype)
        return (a @ b["w"]).sum()

    x = torch.randn(3, 3, dtype=torch.bfloat16, requires_grad=True)
    with bf16():
        value = loss(x, {"w": torch.eye(3, dtype=torch.bfloat16)})
        assert torch.is_autocast_enabled("cpu")  # back on after the loss
    assert seen == {"autocast": False, "dtypes": (torch.float32,) * 3} and value.dtype == torch.float32
    value.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, torch.ones(3, 3, dtype=torch.bfloat16))


def test_losses_that_cancel_in_bf16_give_their_float32_values_under_autocast():
    """MS-SSIM-L1 of a map and a slightly noisy copy: 0.00115 in float32; its E[x^2] - mu^2 blurred by bf16
    matrix products made it negative (-0.14, impossible: the SSIM denominator went below 0). Under autocast
    the wrapped losses now give their float32 values."""
    u = smooth_map()
    v = u + 1e-3 * torch.randn(u.shape, generator=torch.Generator().manual_seed(0))
    losses = {"ms-ssim-l1": ms_ssim_l1_loss, "gradient cosine": gradient_cosine_loss, "power": power_loss,
              "edge": lambda a, b: edge_loss(a, b, 50.0, 0.05), "pyramid": lambda a, b: pyramid_loss(a, b, 3)}
    reference = {k: float(f(v, u)) for k, f in losses.items()}
    itself = {k: float(f(u, u)) for k, f in losses.items()}  # 0, but the cosine's at flat pixels (no gradient)
    assert reference["ms-ssim-l1"] == pytest.approx(1.15e-3, rel=0.01)
    with bf16():
        assert float(ms_ssim_l1_loss.__wrapped__(v, u)) < 0  # what autocast made of it before
        for k, f in losses.items():
            value = f(v, u)
            assert value.dtype == torch.float32 and float(value) == pytest.approx(reference[k], rel=1e-5, abs=1e-7), k
            assert float(f(u, u)) == pytest.approx(itself[k], abs=1e-7), k
    assert all(abs(v) < 1e-6 for k, v in itself.items() if k != "gradient cosine")


def test_the_autoencoder_kl_is_float32_under_autocast():
    """KL(N(0, e^s) || N(0, 1)) = (e^s - 1 - s) / 2 per element: in bf16, 1 + s rounds to steps of 1/128."""
    with bf16():
        mean, logvar = torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16), torch.full((2, 3, 4, 4), 0.05, dtype=torch.bfloat16)
        kl = standard_normal_kl(mean, logvar)
        before = standard_normal_kl.__wrapped__(mean, logvar)
    s = float(logvar[0, 0, 0, 0])  # 0.05 as bf16 holds it
    exact = 0.5 * 48 * (math.exp(s) - 1.0 - s)  # per-image sum over 3 x 4 x 4, mean over the batch
    assert kl.dtype == torch.float32 and float(kl) == pytest.approx(exact, rel=1e-4)
    assert float(before) != pytest.approx(exact, rel=0.1)  # e^s - 1 - s in bf16: 1 + s rounds to 1/128 steps
