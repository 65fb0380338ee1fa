"""SRResNet, SRGAN-MSE, SRGAN, DRRN, C-VAE and the cGAN at the tiny profile; paper-profile sizes."""

from __future__ import annotations

import math

import pytest
import torch

from ckmbench.data.registry import load_dataset
from ckmbench.errors import CkmError
from ckmbench.method import RunContext, TaskData
from ckmbench.metrics.cost import count_parameters
from ckmbench.runner import RunConfig, run
from ckmbench_plugins.srbaselines import (CGAN_PAPER, DRRN_PAPER, SRGAN_PAPER, SRRESNET_PAPER, SRRESNET_SMALL)
from ckmbench_plugins.srbaselines.cgan import PatchGAN, UnetGenerator
from ckmbench_plugins.srbaselines.common import upsampled
from ckmbench_plugins.srbaselines.drrn import DRRN, euclidean_loss
from ckmbench_plugins.srbaselines.srresnet import SRResNet

from train_helpers import cache_fitter, crash_then_resume, fixed_batch_losses, one_thread, reg  # noqa: F401 (fixtures: one thread, registry)

DATASET, CARS = "city-tiny", "city-tiny-cars"

# every kind of task each baseline supports (the SR family shares one code path per factor)
CASES = [("srresnet", "sr4"), ("srresnet", "sr2-noisy"), ("srresnet", "sr8-envcf"), ("srgan-mse", "sr4"),
         ("drrn", "sr4"), ("drrn", "sr16-envcf"), ("cvae", "sr4-noisy"), ("cvae", "sr8"),
         ("cgan", "inpaint"), ("cgan", "sr4-noisy"), ("cgan", "denoise"), ("cgan", "envgen-static"),
         ("cgan", "envgen-dynamic")]


@pytest.fixture(scope="module")
def datasets():
    return {name: load_dataset(name, progress=False) for name in (DATASET, CARS)}


def make(reg, name, task_name, **over):
    spec, ts = reg.method(name), reg.task(task_name)
    return spec.factory("tiny", {**spec.profiles["tiny"], **over}), ts.make(**ts.params)


def fit_tiny(reg, datasets, name, task_name, root, seed=0, **over):
    method, task = make(reg, name, task_name, **over)
    data = datasets[CARS if task_name == "envgen-dynamic" else DATASET]
    ctx = RunContext(seed=seed, profile="tiny", progress=False, fit_dir=root)
    method.fit(TaskData(data.split("train"), task, 0), TaskData(data.split("val"), task, 0), task, ctx)
    return method, task, data, ctx


def test_baselines_are_registered_for_their_tasks(reg):
    for name in ("srresnet", "srgan-mse", "srgan", "drrn", "cvae"):
        assert {"sr2", "sr16", "sr4-noisy", "sr8-envcf", "zeroshot-sr16"} <= set(reg.method(name).tasks)
    assert set(reg.method("cgan").tasks) == {"inpaint", "sr4-noisy", "denoise", "envgen-static", "envgen-dynamic"}


@pytest.mark.parametrize("name,task_name", CASES)
def test_fit_predict_shapes_and_seeded_determinism(reg, datasets, tmp_path, name, task_name):
    method, task, data, ctx = fit_tiny(reg, datasets, name, task_name, tmp_path / "a")
    assert ctx.extras["fit"]["steps_done"] == method.hparams["steps"]
    obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(3))
    pred = method.predict(obs, ctx)
    assert pred.shape == target.shape and pred.dtype == torch.float32
    assert 0.0 <= float(pred.min()) and float(pred.max()) <= 1.0 and float(pred.std()) > 0
    again, _, _, _ = fit_tiny(reg, datasets, name, task_name, tmp_path / "b")
    assert torch.equal(pred, again.predict(obs, ctx))  # same seed: same weights, same prediction
    if task_name == next(t for n, t in CASES if n == name):  # once per method: another seed, other weights
        other, _, _, _ = fit_tiny(reg, datasets, name, task_name, tmp_path / "c", seed=1)
        assert not torch.equal(pred, other.predict(obs, ctx))


def test_srresnet_scores_other_factors_from_its_x4_fit(reg, datasets, tmp_path):
    method, _, data, ctx = fit_tiny(reg, datasets, "srresnet", "sr4", tmp_path)
    for task_name, reduce in (("zeroshot-sr2", 2), ("zeroshot-sr8", 1), ("zeroshot-sr16", 1)):
        ts = reg.task(task_name)
        task = ts.make(**ts.params)
        obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(2))
        assert method.predict(obs, ctx).shape == target.shape
        lr, r = method.native_input(obs)
        assert r == reduce and lr.shape[-1] == (16 if reduce == 2 else 8)  # x2: its 16^2 samples; else 32/4
        if reduce == 1:  # x8/x16 -> x4 input: bicubic then the task's subsampling keeps the measured pixels
            step = task.factor // 4
            assert torch.allclose(lr[..., ::step, ::step], obs.y, atol=1e-5)
    # residual over bicubic (small/tiny): a network that adds nothing predicts the bicubic map
    assert method.residual
    torch.nn.init.zeros_(method.net.tail.weight)
    torch.nn.init.zeros_(method.net.tail.bias)
    for task_name in ("sr4", "zeroshot-sr8", "zeroshot-sr2"):
        ts = reg.task(task_name)
        obs, _, _ = TaskData(data.split("test"), ts.make(**ts.params), 0).batch_at(range(2))
        assert torch.equal(method.predict(obs, ctx), upsampled("srresnet", obs).clamp(0, 1))
    ts = reg.task("sr4")
    sr4 = ts.make(**ts.params)
    obs4, _, _ = TaskData(data.split("test"), sr4, 0).batch_at(range(2))
    lr, reduce = method.native_input(obs4)
    assert reduce == 1 and torch.equal(lr, obs4.y)


def test_zero_shot_runs_reuse_the_sr4_fit(tmp_path, reg):
    common = dict(method="drrn", dataset=DATASET, profile="tiny", runs_dir=str(tmp_path / "runs"),
                  store=str(tmp_path / "store.jsonl"), progress=False, max_test=4, examples=0)
    first = run(RunConfig(task="sr4", **common), reg)
    assert first["status"] == "done", first["message"]
    shot = run(RunConfig(task="zeroshot-sr8", **common), reg)
    assert shot["status"] == "done", shot["message"]
    assert shot["fit"]["source"] == "cache" and shot["fit"]["key"] == first["fit"]["key"]


def test_srgan_mse_starts_from_the_srresnet_fit(tmp_path, reg):
    common = dict(dataset=DATASET, profile="tiny", runs_dir=str(tmp_path / "runs"), task="sr4",
                  store=str(tmp_path / "store.jsonl"), progress=False, max_test=2, examples=0)
    gan = run(RunConfig(method="srgan-mse", hparams={"init_from": "srresnet"}, **common), reg)
    assert gan["status"] == "done", gan["message"]
    assert "from the srresnet fit" in gan["fit"]["variant"] and math.isfinite(gan["fit"]["final_d_loss"])
    res = run(RunConfig(method="srresnet", **common), reg)
    assert res["fit"]["source"] == "cache"  # trained first as the dependency
    bad = run(RunConfig(method="srgan-mse", hparams={"init_from": "srresnet", "width": 4}, **common), reg)
    assert bad["status"] == "error" and "width" in bad["message"] and "\n" not in bad["message"]


@pytest.mark.parametrize("name,task_name", [("srresnet", "sr4"), ("srgan-mse", "sr4"), ("drrn", "sr4"),
                                            ("cvae", "sr4"), ("cgan", "inpaint")])
def test_a_crashed_fit_resumes_to_the_same_weights(tmp_path, reg, datasets, monkeypatch, name, task_name):
    spec, ts = reg.method(name), reg.task(task_name)
    fit = cache_fitter(monkeypatch, reg, spec, spec.profiles["tiny"], ts.make(**ts.params), datasets[DATASET], DATASET)
    whole = fit(tmp_path / "a")
    resumed = crash_then_resume(monkeypatch, fit, tmp_path / "b", crash_at=7)  # checkpoints at 4 and 8
    assert whole.info["resumed_from"] is None and resumed.info["resumed_from"] == 4
    a, b = whole.state_dict()["net"], resumed.state_dict()["net"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["srresnet", "drrn", "cvae"])
def test_loss_falls_on_a_fixed_batch(reg, datasets, name):
    method, task = make(reg, name, "sr4")
    method.meta = method.configure(task)
    torch.manual_seed(0)
    method.net = method.build_net()
    batch = TaskData(datasets[DATASET].split("train"), task, 0).batch_at(range(8))
    loss_fn = method.step(None)

    def fixed_loss():
        return loss_fn(method.net, batch, torch.Generator().manual_seed(0))

    method.net.train()  # BN on the batch's statistics (no dropout in these networks): comparable losses
    start, end = fixed_batch_losses(fixed_loss, method.net.parameters(), lr=2e-3)
    assert end < 0.5 * start


@pytest.mark.parametrize("name,task_name", [("srgan-mse", "sr4"), ("cgan", "inpaint")])
def test_gan_losses_stay_finite_over_200_steps_and_the_fit_improves(reg, datasets, tmp_path, name, task_name):
    over = {"batch_size": 2, "lr": 1e-3, "steps": 200, "log_every": 20, "checkpoint_every": 100}
    over.update({"d_width": 4, "lr_step_every": 100, "d_lr_step_every": 100} if name == "srgan-mse" else {})
    method, task, data, ctx = fit_tiny(reg, datasets, name, task_name, tmp_path, **over)
    fit = ctx.extras["fit"]
    assert fit["steps_done"] == 200 and math.isfinite(fit["final_d_loss"]) and math.isfinite(fit["final_loss"])
    untrained, _, _, _ = fit_tiny(reg, datasets, name, task_name, tmp_path / "zero", **{**over, "steps": 0})
    obs, target, _ = TaskData(data.split("train"), task, 0).batch_at(range(8))  # maps it was trained on
    err = float(((method.predict(obs, ctx) - target) ** 2).mean())
    assert err < 0.9 * float(((untrained.predict(obs, ctx) - target) ** 2).mean())


def test_srgan_refuses_without_vgg_weights_and_trains_with_a_local_file(reg, datasets, tmp_path, monkeypatch):
    monkeypatch.delenv("CKMBENCH_VGG19", raising=False)
    with pytest.raises(CkmError, match=r"vgg19-dcbb9e9d\.pth.*nothing is downloaded") as exc:
        fit_tiny(reg, datasets, "srgan", "sr4", tmp_path / "none")
    assert "\n" not in str(exc.value)
    with pytest.raises(CkmError, match="is not a file"):
        fit_tiny(reg, datasets, "srgan", "sr4", tmp_path / "typo", vgg_weights=str(tmp_path / "missing.pth"))
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)  # a stand-in for the ImageNet file: same layout (features only), random values
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["E"])[:36].state_dict().items()}, path)
    monkeypatch.setenv("CKMBENCH_VGG19", str(path))
    method, _, _, ctx = fit_tiny(reg, datasets, "srgan", "sr4", tmp_path / "vgg", steps=2)
    assert "vgg54" in ctx.extras["fit"]["variant"] and math.isfinite(ctx.extras["fit"]["final_loss"])
    assert count_parameters(method) == count_parameters(method.net)  # frozen VGG is not counted


def test_cvae_samples_vary_and_the_score_uses_the_prior_mean(reg, datasets, tmp_path):
    method, task, data, ctx = fit_tiny(reg, datasets, "cvae", "sr4", tmp_path)
    obs, target, _ = TaskData(data.split("test"), task, 0).batch_at(range(2))
    draws = method.sample(obs, 3, torch.Generator().manual_seed(0))
    assert draws.shape == (3, *target.shape) and not torch.equal(draws[0], draws[1])
    assert 0.0 <= float(draws.min()) and float(draws.max()) <= 1.0
    net = method.net
    with torch.no_grad():
        c, _ = method.condition(obs)
        feats = net.cond(c)
        at_mean = net.decode(c, feats, net.prior(feats)[0]).clamp(0, 1)
    assert torch.equal(method.predict(obs, ctx), at_mean.mean(1, keepdim=True)[..., :32, :32])


def test_methods_refuse_tasks_they_do_not_support(reg, datasets, tmp_path):
    with pytest.raises(CkmError, match="inpaint, sr\\*-noisy"):
        fit_tiny(reg, datasets, "cgan", "sr4", tmp_path / "a")
    with pytest.raises(CkmError, match="super-resolution"):
        fit_tiny(reg, datasets, "drrn", "inpaint", tmp_path / "b")
    method, _ = make(reg, "srresnet", "sr4")
    with pytest.raises(CkmError, match="fit it first"):
        method.predict(None, RunContext(progress=False))


def test_paper_profiles_match_the_papers_parameter_counts():
    def count(build):
        with torch.device("meta"):
            return count_parameters(build())

    hp = SRRESNET_PAPER
    srresnet = count(lambda: SRResNet(4, hp["image_channels"], hp["width"], hp["blocks"]))
    assert abs(srresnet - 1.5e6) / 1.5e6 < 0.05  # Ledig et al.: ~1.5 M (x4, RGB); measured 1.549 M
    assert SRGAN_PAPER["blocks"] == 16 and SRGAN_PAPER["adv_weight"] == 1e-3 and SRGAN_PAPER["lr"] == 1e-4
    assert SRRESNET_SMALL["blocks"] == 16 and SRRESNET_SMALL["width"] == 64  # small keeps the paper's network
    drrn = DRRN(1, DRRN_PAPER["width"], DRRN_PAPER["units"])
    conv_weights = sum(m.weight.numel() for m in drrn.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv_weights == 297_216 and drrn.conv_layers() == 52  # Tai et al.'s 297 K: the conv weights
    assert count_parameters(drrn) == 310_659  # + conv biases and the 52 BatchNorm scales and shifts
    unet = count(lambda: UnetGenerator(3, 3, CGAN_PAPER["num_downs"], CGAN_PAPER["ngf"]))
    patch = count(lambda: PatchGAN(6, CGAN_PAPER["ndf"], CGAN_PAPER["n_layers"]))
    assert abs(unet - 54.41e6) / 54.41e6 < 0.01 and abs(patch - 2.77e6) / 2.77e6 < 0.01  # pix2pix's unet_256, 70x70


def test_drrn_shares_only_its_convolutions_across_the_recursions():
    """The official B1U25: conv_a/conv_b are shared (RB1_wa/RB1_wb); each unit has its own two
    BatchNorm + Scale; BN-ReLU on the input before the first conv; BN-ReLU before the last."""
    units, width = 3, 8
    net = DRRN(1, width, units)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 2 * units + 2 and len({id(m) for m in norms}) == len(norms)
    assert isinstance(net.head[0][0], torch.nn.BatchNorm2d) and net.head[0][0].num_features == 1
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and net.conv_layers() == 1 + 2 * units + 1  # shared convs: 4 modules, 2U+2 on the path
    # eval: unit u normalises with its own running statistics, so changing one unit's changes the output
    net.eval()
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    before = net(x)
    with torch.no_grad():
        net.norms[1][0][0].running_mean.fill_(0.5)
    assert not torch.allclose(before, net(x))


def test_drrn_starts_from_msra_weights_and_zero_biases():
    torch.manual_seed(0)
    net = DRRN(1, 128, 1)
    for conv in (net.conv_a, net.conv_b):
        fan_in = conv.weight[0].numel()
        assert abs(float(conv.weight.detach().std()) - math.sqrt(2 / fan_in)) < 0.03 * math.sqrt(2 / fan_in)
        assert float(conv.bias.detach().abs().max()) == 0.0


def test_drrn_trains_as_its_official_solver(reg):
    """lr 0.1 halved every 65,360 iterations; clip_gradients 0.01 through the authors' Caffe patch
    (global L2 norm <= theta / lr); Caffe's EuclideanLoss (sum / (2 batch))."""
    from ckmbench.training import TrainConfig, clip_gradients, lr_lambda, make_optimizer

    assert reg.method("drrn").version == "2"
    assert (DRRN_PAPER["lr"], DRRN_PAPER["lr_gamma"], DRRN_PAPER["lr_step_every"]) == (0.1, 0.5, 65_360)
    cfg = TrainConfig.from_hparams(DRRN_PAPER)
    param = torch.nn.Parameter(torch.zeros(4))
    opt, _ = make_optimizer([param], cfg)
    assert lr_lambda(cfg)(65_359) == 1.0 and lr_lambda(cfg)(65_360) == 0.5 and lr_lambda(cfg)(130_720) == 0.25
    opt.param_groups[0]["lr"] = 0.1 * lr_lambda(cfg)(65_360)
    param.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5; per entry up to 4
    clip_gradients([param], cfg, opt)
    assert math.isclose(float(param.grad.norm()), 0.01 / 0.05, rel_tol=1e-5)  # norm theta / lr = 0.2
    assert math.isclose(float(param.grad[0] / param.grad[1]), 0.75, rel_tol=1e-5)  # the direction is kept
    pred, target = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert float(euclidean_loss(pred, target)) == 18 / 4


def test_cgan_networks_start_from_pix2pix_normal_init(reg):
    """pix2pix's init_weights("normal", 0.02) on G and D: conv weights N(0, 0.02), BatchNorm
    weights N(1, 0.02), biases 0."""
    assert reg.method("cgan").version == "2"
    torch.manual_seed(0)
    for net in (UnetGenerator(2, 1, 6, 16), PatchGAN(3, 16, 3)):
        convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        weights = torch.cat([m.weight.detach().flatten() for m in convs])
        gammas = torch.cat([m.weight.detach() for m in norms])
        biases = [m.bias for m in convs + norms if m.bias is not None]
        assert abs(float(weights.mean())) < 1e-3 and abs(float(weights.std()) - 0.02) < 1e-3
        assert abs(float(gammas.mean()) - 1.0) < 0.01 and abs(float(gammas.std()) - 0.02) < 0.005
        assert biases and all(float(b.detach().abs().max()) == 0.0 for b in biases)


def test_the_fit_key_holds_the_vgg_file_content_not_its_path(reg, tmp_path, monkeypatch):
    """Moving the VGG19 file reuses the fit; another file, or one given only by $CKMBENCH_VGG19, does not."""
    from ckmbench.fitcache import fit_hparams

    monkeypatch.delenv("CKMBENCH_VGG19", raising=False)
    spec = reg.method("srgan")
    hp = spec.profiles["tiny"]
    method = spec.factory("tiny", hp)
    first, moved, other = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    first.write_bytes(b"weights one")
    moved.write_bytes(b"weights one")
    other.write_bytes(b"weights two")
    key = fit_hparams(method, {**hp, "vgg_weights": str(first)})
    assert key == fit_hparams(method, {**hp, "vgg_weights": str(moved)})
    assert key != fit_hparams(method, {**hp, "vgg_weights": str(other)})
    assert fit_hparams(method, hp)["vgg_weights"] is None
    monkeypatch.setenv("CKMBENCH_VGG19", str(other))
    assert fit_hparams(method, hp) == fit_hparams(method, {**hp, "vgg_weights": str(other)})
    with pytest.raises(CkmError, match="vgg_weights: .*missing.pth is not a readable file") as exc:
        fit_hparams(method, {**hp, "vgg_weights": str(tmp_path / "missing.pth")})
    assert "\n" not in str(exc.value)
