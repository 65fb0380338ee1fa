"""RadioUNet-c/-s and UVM-Net (and RME-GAN) at the tiny profile; paper sizes; the selective scan."""

from __future__ import annotations

import math

import pytest
import torch

from ckmbench.data.registry import load_dataset
from ckmbench.errors import CkmError
from ckmbench.method import RunContext, TaskData
from ckmbench_plugins.radiomap import RADIOUNET_PAPER, RADIOUNET_SMALL
from ckmbench_plugins.radiomap import gan_losses as L
from ckmbench_plugins.radiomap.radiounet import RadioUNet, from_training_scale, phase_config, to_training_scale
from ckmbench_plugins.radiomap.ssm import Mamba, UVMBlock, selective_scan, selective_scan_loop
from ckmbench_plugins.radiomap.wnet import RadioWNet
from train_helpers import cache_fitter, crash_then_resume, fixed_batch_losses, one_thread, reg  # noqa: F401 (fixtures: one thread, registry)


@pytest.fixture(scope="module")
def datasets():
    return {name: load_dataset(name, progress=False) for name in ("city-tiny", "city-tiny-cars")}


def setup(reg, datasets, name, task_name, **over):
    spec, ts = reg.method(name), reg.task(task_name)
    data = datasets["city-tiny-cars" if task_name == "envgen-dynamic" else "city-tiny"]
    task = ts.make(**ts.params)
    hp = {**spec.profiles["tiny"], **over}
    return spec, hp, task, data


def fit_tiny(reg, datasets, name, task_name, root, **over):
    spec, hp, task, data = setup(reg, datasets, name, task_name, **over)
    method = spec.factory("tiny", hp)
    ctx = RunContext(seed=0, profile="tiny", progress=False, fit_dir=root)
    method.fit(TaskData(data.split("train"), task, 0), TaskData(data.split("val"), task, 0), task, ctx)
    return method, task, data, ctx


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CASES = [("radiounet-c", "envgen-static"), ("radiounet-c", "envgen-dynamic"), ("radiounet-s", "sparse"),
         ("uvm-net", "envgen-static"), ("rme-gan", "envgen-static")]
PHASES = {"radiounet-c": ("u1", "u2"), "radiounet-s": ("u1", "u2"), "uvm-net": ("u1", "u2"),
          "rme-gan": ("global", "local")}


@pytest.mark.parametrize("name,task_name", CASES)
def test_fit_predict_shapes_inputs_and_seeded_determinism(reg, datasets, tmp_path, name, task_name):
    method, task, data, ctx = fit_tiny(reg, datasets, name, task_name, tmp_path / "a")
    first, second = PHASES[name]
    assert ctx.extras["fit"]["steps_done"] == method.hparams[f"steps_{first}"] + method.hparams[f"steps_{second}"]
    expected = {"envgen-static": ["buildings", "tx_map"], "envgen-dynamic": ["buildings", "tx_map", "cars"],
                "sparse": ["y", "mask"]}[task_name]
    assert ctx.extras["fit"]["inputs"] == expected and method.net.inputs == len(expected)
    obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(3))
    pred = method.predict(obs, ctx)
    assert pred.shape == target.shape and pred.dtype == torch.float32
    assert float(pred.min()) >= 0 and float(pred.max()) <= 1
    if obs.buildings is not None:
        assert torch.all(pred[obs.buildings > 0.5] == 0)  # building pixels are 0 by convention
    assert torch.equal(pred, method.predict(obs, ctx))
    again, *_ = fit_tiny(reg, datasets, name, task_name, tmp_path / "b")
    assert same_weights(method.state_dict()["net"], again.state_dict()["net"])
    other = reg.method(name).factory("tiny", dict(method.hparams))
    other.load_state_dict(method.state_dict())  # a stored fit restores the inputs and the weights
    assert torch.equal(other.predict(obs, ctx), pred)


@pytest.mark.parametrize("name", ["radiounet-c", "rme-gan"])  # uvm-net trains through radiounet-c's code
def test_a_crash_in_either_phase_resumes_to_the_same_weights(reg, datasets, tmp_path, monkeypatch, name):
    spec, hp, task, data = setup(reg, datasets, name, "envgen-static")
    fit = cache_fitter(monkeypatch, reg, spec, hp, task, data, "city-tiny")

    whole = fit(tmp_path / "whole")
    assert whole.info["resumed_from"] is None
    # the 5th step of the first U-Net (after its checkpoint at 3), then the 4th of the second
    for phase, crash_at, root in zip(PHASES[name], (5, 4), ("p1", "p2")):
        resumed = crash_then_resume(monkeypatch, fit, tmp_path / root, crash_at=crash_at, trainer_name=phase)
        assert same_weights(whole.state_dict()["net"], resumed.state_dict()["net"]), phase
        if name == "rme-gan":
            assert same_weights(whole.state_dict()["disc"], resumed.state_dict()["disc"]), phase
    assert resumed.info["resumed_from"] == 3  # phase 2 went on from its own checkpoint


def test_phase_two_leaves_the_first_unet_untouched(reg, datasets, tmp_path):
    only_first, *_ = fit_tiny(reg, datasets, "radiounet-c", "envgen-static", tmp_path / "a", steps_u2=0)
    both, *_ = fit_tiny(reg, datasets, "radiounet-c", "envgen-static", tmp_path / "b")
    assert same_weights(only_first.net.u1.state_dict(), both.net.u1.state_dict())
    moved = [not torch.equal(a, b) for a, b in zip(only_first.net.u2.state_dict().values(),
                                                   both.net.u2.state_dict().values())]
    assert any(moved)  # the second U-Net did train
    assert all(p.requires_grad for p in both.net.parameters())  # unfrozen again once fitted
    assert (only_first.output, both.output) == ("u1", "u2")  # an untrained second U-Net is not used


@pytest.mark.parametrize("name", ["radiounet-c", "uvm-net"])
def test_loss_falls_on_a_fixed_batch(reg, datasets, name):
    spec, hp, task, data = setup(reg, datasets, name, "envgen-static")
    method = spec.factory("tiny", hp)
    batch = TaskData(data.split("train"), task, 0).batch_at(range(8))
    loss = method.phase_loss("u1")
    start, end = fixed_batch_losses(lambda: loss(method.net.u1, batch, None), method.net.u1.parameters(), lr=3e-3)
    assert end < 0.5 * start


def test_thresh_maps_targets_and_predictions_back():
    u = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.9, 1.0])
    v = to_training_scale(u, 0.2)
    assert torch.allclose(v, torch.tensor([0.0, 0.0, 0.0, 0.375, 0.875, 1.0]))
    back = from_training_scale(v, 0.2)
    assert torch.allclose(back[2:], u[2:]) and torch.all(back[:2] == 0.2)  # below thresh: clipped
    buildings = torch.tensor([1.0, 0, 0, 0, 0, 0])
    assert from_training_scale(v, 0.2, buildings)[0] == 0 and torch.equal(from_training_scale(u, 0.0), u)
    with pytest.raises(CkmError, match="thresh"):
        RadioUNet("tiny", {"thresh": 1.0})


def test_paper_epochs_become_steps_and_mixed_units_are_refused():
    cfg = phase_config(RADIOUNET_PAPER, "u1", n_train=301)  # 301 maps / batch 15: 21 steps per epoch
    assert (cfg.steps, cfg.lr_step_every, cfg.val_every, cfg.select) == (50 * 21, 30 * 21, 21, "best")
    with pytest.raises(CkmError, match="steps_u1"):
        phase_config({**RADIOUNET_PAPER, "steps_u1": 100}, "u1", n_train=301)


def test_variants_refuse_tasks_without_their_inputs(reg, datasets, tmp_path):
    for name, task_name in (("radiounet-c", "sparse"), ("radiounet-s", "envgen-static"), ("uvm-net", "sr4")):
        with pytest.raises(CkmError, match=name):
            fit_tiny(reg, datasets, name, task_name, tmp_path / name)


def test_paper_profiles_match_the_official_parameter_counts(reg):
    with torch.device("meta"):
        wnet = RadioWNet(2, RADIOUNET_PAPER["width"])
        uvm = reg.method("uvm-net").factory("paper", reg.method("uvm-net").profiles["paper"]).net
    count = sum(p.numel() for p in wnet.parameters())
    assert abs(count - 13.27e6) / 13.27e6 < 0.15
    assert abs(count - 13.27e6) / 13.27e6 < 0.001  # the official layer list lands on 13.27 M
    assert sum(p.numel() for p in uvm.parameters()) > count  # RadioWNet plus the two Mamba blocks
    with torch.device("meta"):
        gan = reg.method("rme-gan").factory("paper", reg.method("rme-gan").profiles["paper"])
    assert abs(gan.num_parameters() - 16.0e6) / 16.0e6 < 0.15
    assert abs(sum(p.numel() for p in gan.disc.parameters()) - 2.77e6) / 2.77e6 < 0.01  # the code's DCGAN D
    g = reg.method("rme-gan").profiles["paper"]
    # batch 15: the code's GANTrain default (its train.py's batch_size = 30 reaches no loader GANTrain reads)
    assert (g["batch_size"], g["lr"], g["lr_step_epochs"], g["epochs_global"], g["epochs_local"]) == (15, 1e-3, 25, 50, 50)
    p = RADIOUNET_PAPER
    assert (p["batch_size"], p["lr"], p["lr_step_epochs"], p["lr_gamma"], p["thresh"]) == (15, 1e-4, 30, 0.1, 0.2)
    assert (p["epochs_u1"], p["epochs_u2"], p["select"], p["lr_schedule"]) == (50, 50, "best", "step")
    # the small profile departs from the paper only by the devices its docs list
    s = RADIOUNET_SMALL
    assert {k for k in p if s[k] != p[k]} == {"width", "epochs_u1", "epochs_u2", "steps_u1", "steps_u2", "lr",
                                              "lr_step_epochs", "lr_step_every", "val_every_epochs", "val_every",
                                              "val_max", "checkpoint_every", "log_every"}
    assert s["lr"] == 1e-3 and s["batch_size"] == 15 and s["thresh"] == 0.2


def test_uvm_block_tokens_are_pixels_and_its_gate_ignores_the_batch():
    """Two documented departures from UVMB: the gate's softmax over channels (UVMB's is over
    the batch), so a map's output does not depend on the other maps of its batch; a residual
    around the block."""
    torch.manual_seed(0)
    block = UVMBlock(4, d_state=4).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        both, alone = block(x), block(x[:1])
        assert torch.allclose(both[:1], alone, atol=1e-5)
        block.smooth.weight.zero_()
        block.smooth.bias.zero_()
        assert torch.equal(block(x), x)  # a residual around the block (UVMB has none)


def test_vectorised_selective_scan_matches_the_timestep_loop():
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 3, 4, 37  # L not a power of two
    u, delta, z = (torch.randn(b, d, L, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) * 3
    B, C = torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    for kw in ({}, {"D": D, "z": z, "delta_bias": bias, "delta_softplus": True}):
        fast = selective_scan(u, delta.abs() if not kw else delta, A, B, C, **kw)
        slow = selective_scan_loop(u, delta.abs() if not kw else delta, A, B, C, **kw)
        assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)
    seq = torch.randn(2, 19, 8, generator=g)
    torch.manual_seed(0)
    block = Mamba(8, d_state=4)
    out = block(seq)
    assert out.shape == seq.shape
    assert torch.allclose(block(seq[:, :10]), out[:, :10], atol=1e-5)  # causal: the past ignores the future


def test_gan_losses_stay_finite_over_200_steps(reg, datasets, tmp_path):
    """The trainer's NaN guard stops a fit at the first non-finite G or D loss, so finishing all
    200 steps means every loss was finite; the last logged ones are checked too."""
    method, task, data, ctx = fit_tiny(reg, datasets, "rme-gan", "envgen-static", tmp_path, steps_global=100,
                                       steps_local=100, batch_size=2, width=0.05, val_every=0, val_max=2,
                                       checkpoint_every=1000)
    fit = ctx.extras["fit"]
    assert fit["steps_done"] == 200
    losses = [fit["final_loss"], fit["final_d_loss"], fit["global_phase"]["final_loss"],
              fit["global_phase"]["final_d_loss"]]
    assert all(v is not None and math.isfinite(v) for v in losses), losses
    obs, _, _ = TaskData(data.split("test"), task, 0).batch_at(range(2))
    assert torch.isfinite(method.predict(obs, ctx)).all()


def test_rme_gan_loss_terms_vanish_on_the_target_and_carry_gradients():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 32, 32, generator=g)
    pred = (target + 0.2 * torch.randn(2, 1, 32, 32, generator=g)).requires_grad_(True)
    terms = {"tv": lambda p, t: L.tv_loss(p), "cos": L.gradient_cosine_loss, "msssim_l1": L.ms_ssim_l1_loss,
             "power": L.power_loss, "slic": lambda p, t: L.slic_loss(p, t, 8, 1.0)}
    for name, term in terms.items():
        value = term(pred, target)
        value.backward()
        assert torch.isfinite(pred.grad).all() and float(pred.grad.abs().sum()) > 0, name
        pred.grad = None
        if name != "tv":
            assert float(term(target, target)) < 1e-5 < float(value.detach()), name
    peaks = L.slic_peaks(target[:, 0].numpy(), 8, 1.0)
    assert all(len(p) >= 2 for p in peaks)  # one strongest pixel per superpixel
    assert float(L.tv_loss(torch.ones(1, 1, 8, 8))) == 0
    gauss = L._gauss_1d(8.0, 33, "cpu", torch.float32)  # the blur as matrices equals the zero-padded conv
    conv = torch.nn.functional.conv2d(torch.nn.functional.conv2d(target, gauss.view(1, 1, 1, -1), padding=(0, 16)),
                                      gauss.view(1, 1, -1, 1), padding=(16, 0))
    assert torch.allclose(L._blur(target, gauss), conv, atol=1e-6)


def test_rme_gan_slic_term_is_the_codes_l1_over_100_segments(reg):
    """GANTrain: n_segments = 100, sigma 5, nn.L1Loss over a (batch, 100) table of peak values."""
    assert reg.method("rme-gan").version == "2"
    p = reg.method("rme-gan").profiles["paper"]
    assert (p["slic_segments"], p["slic_sigma"], p["local_slic"]) == (100, 5.0, 1.0)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, :8, 8:], target[:, :, 8:, :8], target[:, :, 8:, 8:] = 0.3, 0.6, 0.9  # four flat quadrants
    pred = target + 0.1
    peaks = L.slic_peaks(target[:, 0].numpy(), 4, 1.0)
    assert [len(q) for q in peaks] == [4, 4]
    assert math.isclose(float(L.slic_loss(pred, target, 4, 1.0)), 0.1, rel_tol=1e-5)  # L1, not MSE (0.01)
    found = len(L.slic_peaks(target[:1, 0].numpy(), 100, 1.0)[0])  # both maps alike: 64 of the table's 100
    assert found < 100 and math.isclose(float(L.slic_loss(pred, target, 100, 1.0)), 0.1 * found / 100, rel_tol=1e-5)


def test_rme_gan_generator_trains_on_its_global_loss_and_keeps_buildings_at_zero(reg, datasets):
    """The global phase's loss (10·adv + MSE + 10·TV + 10·(1 − cos)) through the code's
    Sigmoid discriminator, on a fixed batch: the generator's MSE falls and its map stays alive
    (outdoor pixels above 0). With mask_buildings=false this fails (MSE 0.099 against the
    bound 0.074): the gradient-cosine term drives the map towards a flat zero, where the final
    ReLU is dead, as the small-profile fits did (a validation MSE that never moved)."""
    spec, hp, task, data = setup(reg, datasets, "rme-gan", "envgen-static", width=0.25)
    method = spec.factory("tiny", hp)
    method.inputs = method.inputs_for(task)
    torch.manual_seed(0)
    G, D = method.build_net(len(method.inputs)).u1, method.build_disc(len(method.inputs))
    assert isinstance(D[-1], torch.nn.Sigmoid)
    batch = TaskData(data.split("train"), task, 0).batch_at(range(8))
    g_loss = method.g_loss("global")
    fixed_batch_losses(lambda: g_loss(D, method.generate(G, batch, None), batch, None), G.parameters(),
                       lr=float(hp["lr"]), steps=60)
    with torch.no_grad():
        out = method.generate(G, batch, None)
    fake, real, buildings = out["fake"], out["real"], batch[0].buildings > 0.5
    assert torch.all(fake[buildings] == 0)
    assert float((fake[~buildings] > 0).float().mean()) > 0.5
    all_zero = torch.nn.functional.mse_loss(torch.zeros_like(real), real)
    assert torch.nn.functional.mse_loss(fake, real) < 0.5 * all_zero
