"""RadioDiff at the tiny profile (shapes per task, seeded determinism, resume, a falling loss,
the AFT switch, a run through the CLI), its parts (cross-attention, AFT, preconditioning, the
code's sampler), the code's U-Net of revision 2 (two decoders, WS-conv blocks, linear attention,
Fourier time features), posterior-sampled latents, raw weights, and its paper-profile parameter count."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ckmbench.data.registry import load_dataset
from ckmbench.errors import CkmError
from ckmbench.latent import DecoupledDiffusion
from ckmbench.latent.attention import AdaptiveFourierFilter, CrossAttention, CrossAttnUNet, sine_positions
from ckmbench.latent.autoencoder import build_autoencoder, vae_hparams
from ckmbench.latent.radiodiff_blocks import Attention, FourierTimeEmbedding, LinearAttention, ResnetBlock, WSConv2d
from ckmbench.latent.radiodiff_unet import RadioDiffUNet
from ckmbench.method import RunContext, TaskData
from ckmbench.training import TrainConfig
from ckmbench_plugins.latent.radiodiff import RADIODIFF_PAPER, RADIODIFF_SMALL, RADIODIFF_TINY, RadioDiff, precondition
from train_helpers import check_sampled_predictions, fit_on, cache_fitter, crash_then_resume, fixed_batch_losses, one_thread, reg  # noqa: F401

DATASETS = {"envgen-static": "city-tiny", "envgen-dynamic": "city-tiny-cars"}


@pytest.fixture(scope="module")
def datasets():
    return {name: load_dataset(name, progress=False) for name in set(DATASETS.values())}


@pytest.fixture(scope="module", autouse=True)
def shared_fits(tmp_path_factory):
    """One fit cache for the module's fits: each dataset's autoencoder is trained once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CKMBENCH_FITS", str(tmp_path_factory.mktemp("radiodiff-fits")))
        yield


def task_of(reg, name):
    spec = reg.task(name)
    return spec.make(**spec.params)


def fit_radiodiff(reg, datasets, task_name, fit_dir, seed=0, **over):
    task, data = task_of(reg, task_name), datasets[DATASETS[task_name]]
    method = RadioDiff("tiny", {**RADIODIFF_TINY, **over})
    return method, task, fit_on(method, task, data, fit_dir, seed)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bare_method(hp: dict, size: int = 32) -> RadioDiff:
    """A tiny RadioDiff with an untrained autoencoder, built without a fit."""
    method = RadioDiff("tiny", hp)
    method.ae = build_autoencoder(vae_hparams(hp), 0).eval()
    method.arch = {**method.architecture("envgen-static", size, method.ae.downsample, 3), "latent_scale": 1.0,
                   "clip_x0": None}
    method.net = method.build_seeded(method.arch, 0)
    return method


# ------------------------------------------------------------------ the method
@pytest.mark.parametrize("task_name", ["envgen-static", "envgen-dynamic"])
def test_fit_predict_shapes_prompt_and_seeded_determinism(reg, datasets, tmp_path, task_name):
    method, task, ctx = fit_radiodiff(reg, datasets, task_name, tmp_path / "a")
    fit = ctx.extras["fit"]
    assert fit["steps_done"] == RADIODIFF_TINY["steps"] and fit["aft"] is True and fit["loss"] == "l2"
    assert fit["backbone"] == "radiodiff-code" and fit["latent_sample"] is True and fit["weights"] == "raw"
    assert fit["prompt"] == (["buildings", "tx_map", "buildings"] if task_name == "envgen-static"
                             else ["buildings", "cars", "tx_map"])
    assert fit["encoder"] == "conv [8, 16], from scratch" and fit["clip_x0"] > 0
    obs, target, _ = TaskData(datasets[DATASETS[task_name]].split("test"), task, 0).batch_at(range(3))
    prompt = method.condition(obs)
    assert prompt.shape == (3, 3, 32, 32)
    assert torch.equal(prompt[:, 0], obs.buildings[:, 0]) and torch.equal(prompt[:, 2 if task_name == "envgen-dynamic"
                                                                                  else 1], obs.tx_map[:, 0])
    assert target.shape == (3, 1, 32, 32) and method.sampling_steps() == RADIODIFF_TINY["sample_steps"] + 1
    again, _, _ = fit_radiodiff(reg, datasets, task_name, tmp_path / "b")
    a = check_sampled_predictions(method, again, RadioDiff("tiny", dict(RADIODIFF_TINY)), obs, target, ctx)
    assert torch.all(a[obs.buildings > 0.5] == 0)  # building pixels set from the prompt


def test_resume_after_a_crash_equals_an_uninterrupted_fit(reg, datasets, tmp_path, monkeypatch):
    from ckmbench.plugins import registry

    spec = registry().method("radiodiff")
    task = task_of(reg, "envgen-static")
    fit = cache_fitter(monkeypatch, reg, spec, RADIODIFF_TINY, task, datasets["city-tiny"], "city-tiny")
    whole = fit(tmp_path / "whole")
    resumed = crash_then_resume(monkeypatch, fit, tmp_path / "crash", crash_at=5, trainer_name="ddm")
    assert resumed.info["resumed_from"] == 3
    for part in ("net", "vae"):
        assert same(whole.state_dict()[part], resumed.state_dict()[part])


def test_loss_falls_on_a_fixed_batch(reg, datasets):
    # the posterior mean: an untrained autoencoder's posterior has std ~1, which would make z0 mostly
    # noise (a trained one's is tiny); the posterior draw has its own test below
    method = bare_method(dict(RADIODIFF_TINY, latent_sample=False))
    batch = TaskData(datasets["city-tiny"].split("train"), task_of(reg, "envgen-static"), 0).batch_at(range(8))
    start, end = fixed_batch_losses(lambda: method.loss(method.net, batch, torch.Generator().manual_seed(0)),
                                    method.net.parameters(), lr=3e-3)
    assert end < 0.5 * start


def test_aft_switch_changes_parameters_and_output():
    on, off = bare_method(dict(RADIODIFF_TINY)), bare_method(dict(RADIODIFF_TINY, aft=False))
    afts = on.net.unet.afts
    assert len(afts) == 2 and all(isinstance(a, AdaptiveFourierFilter) for a in afts) and off.net.unet.afts is None
    assert on.num_parameters() - off.num_parameters() == sum(p.numel() for p in afts.parameters())
    z, t, prompt = torch.randn(2, 3, 16, 16), torch.full((2,), 0.5), torch.rand(2, 3, 32, 32)
    assert not torch.allclose(on.net(z, t, prompt)[0], off.net(z, t, prompt)[0])


def test_preconditioning_is_the_code_formula():
    z, f1, f2 = (torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    t = torch.tensor([0.0, 0.36, 1.0])
    c, e = precondition(z, t, f1, f2)
    for i, ti in enumerate(t.tolist()):
        r = math.sqrt(ti * ti + 1)
        assert torch.allclose(c[i], (1 - ti) * z[i] + ti / r * f1[i])
        assert torch.allclose(e[i], math.sqrt(ti) * z[i] + math.sqrt(1 - ti) / r * f2[i])


def test_refuses_bad_tasks_losses_and_checkpoints(reg, datasets):
    with pytest.raises(CkmError, match="radiodiff trains on envgen-static, envgen-dynamic"):
        RadioDiff("tiny", dict(RADIODIFF_TINY)).fit(None, None, task_of(reg, "inpaint"), RunContext())
    with pytest.raises(CkmError, match="loss=code"):
        RadioDiff("tiny", dict(RADIODIFF_TINY, loss="l1"))
    assert RadioDiff("tiny", dict(RADIODIFF_TINY, loss="code")).ddm.loss_kind == "radiodiff"
    with pytest.raises(CkmError, match="clip_x0"):
        RadioDiff("tiny", dict(RADIODIFF_TINY, clip_x0="big"))
    with pytest.raises(CkmError, match="no weights"):
        obs, _, _ = TaskData(datasets["city-tiny"].split("test"), task_of(reg, "envgen-static"), 0).batch_at([0])
        RadioDiff("tiny", dict(RADIODIFF_TINY)).predict(obs, RunContext(progress=False))
    with pytest.raises(CkmError, match="not a radiodiff checkpoint"):
        RadioDiff("tiny", dict(RADIODIFF_TINY)).load_state_dict({"arch": {}, "net": {}, "vae": {}})


def test_a_tiny_run_through_the_cli(tmp_path, monkeypatch):
    from ckmbench import cli

    store = tmp_path / "records.jsonl"
    cli.main(["run", "-m", "radiodiff", "-t", "envgen-static", "-d", "city-tiny", "-p", "tiny", "--no-progress",
              "--max-test", "2", "--no-fid", "--store", str(store)])
    record = json.loads(store.read_text().splitlines()[-1])
    assert record["status"] == "done" and record["method"] == "radiodiff", record.get("message")
    assert 0 < record["metrics"]["mse"] < 1 and record["cost"]["sampling_steps"] == 3
    assert record["cost"]["params_inference"] > record["cost"]["params"] > 0  # + the VAE decoder


# ------------------------------------------------------------------ the sampler and the parts
@pytest.mark.parametrize("steps,split", [(1, True), (5, True), (5, False)])
def test_code_sampler_with_oracle_returns_z0_and_calls_the_net_s_plus_one_times(steps, split):
    ddm = DecoupledDiffusion(t_min=1e-4)
    z0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    times = []

    def oracle(z, t):
        times.append(float(t[0]))
        tb = t.reshape(-1, 1, 1, 1)
        return -z0 + 0.3, (z - (1 - tb) * z0) / tb.sqrt()  # a wrong c: the sampler re-derives it from x0

    out = ddm.sample_corrected(oracle, z0.shape, steps, generator=torch.Generator().manual_seed(1), split_last=split)
    assert len(times) == steps + split and times[0] == 1.0
    if split:
        assert math.isclose(times[-1], 1e-4, rel_tol=1e-6)
    # with the true eps the x0 estimate is z0 - 0.3 t, and the last step (to 0 from t) returns
    # t x0_hat + (1 - t) z0 = z0 - 0.3 t^2: the split last step leaves almost no error
    assert torch.allclose(out, z0 - 0.3 * times[-1] ** 2, atol=1e-5)
    clipped = ddm.sample_corrected(oracle, z0.shape, steps, generator=torch.Generator().manual_seed(1),
                                   split_last=split, clip=0.5)
    assert not torch.equal(clipped, out)  # the x0 estimates (|z0| up to 3.9) were clipped on the way


@pytest.mark.parametrize("queries", ["x", "context"])
def test_cross_attention_shapes_windows_and_errors(queries):
    layer = CrossAttention(16, 24, heads=4, window=4, queries=queries)
    x, ctx = torch.randn(2, 16, 16, 16), torch.randn(2, 24, 8, 8)
    y = layer(x, ctx)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, layer(x, torch.randn(2, 24, 8, 8)))  # the context matters
    with pytest.raises(CkmError, match="windows"):
        layer(torch.randn(1, 16, 10, 10), ctx)
    with pytest.raises(CkmError, match="heads"):
        CrossAttention(10, 8, heads=4)
    assert sine_positions(3, 5, 7).shape == (15, 7)


def test_cross_attention_unet_levels_input_and_single_head():
    ctx = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    net = CrossAttnUNet(3, context_channels=[8, 16], xattn_levels=[1], xattn_heads=4, input_context=True, aft=True,
                        base=8, mults=(1, 2), num_res_blocks=1, norm_groups=4, image_size=16)
    assert [lvl for lvl, _ in net.slots] == [1, 1]  # encoder and decoder of level 1 only
    c, e = net(torch.randn(2, 3, 16, 16), torch.rand(2), ctx)
    assert c.shape == e.shape == (2, 3, 16, 16)
    one = CrossAttnUNet(3, context_channels=[8, 16], out_heads=1, base=8, mults=(1, 2), num_res_blocks=1,
                        norm_groups=4, image_size=16)
    assert one(torch.randn(2, 3, 16, 16), torch.rand(2), ctx).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="context maps"):
        one(torch.randn(2, 3, 16, 16), torch.rand(2), ctx[:1])
    aft = AdaptiveFourierFilter(8, 4, 4, norm_groups=4)
    with pytest.raises(CkmError, match="built for"):
        aft(torch.randn(1, 8, 2, 2))


def test_aft_on_larger_maps_is_the_same_circular_kernel():
    """Scored on larger maps than it was trained on (transfer), the AFT must apply the spatial
    kernel its filter equals on the training size: check against a direct circular convolution."""
    torch.manual_seed(0)
    aft = AdaptiveFourierFilter(4, 4, 4, norm_groups=2)
    w = torch.view_as_complex(aft.weight.float())
    x = torch.randn(1, 4, 4, 4)
    h = aft.conv(aft.norm(x))
    direct = torch.fft.irfft2(torch.fft.rfft2(h, norm="ortho") * w, s=(4, 4), norm="ortho")
    assert torch.allclose(aft.filtered(x), direct, atol=1e-6)  # the paper's filter on its own size
    kernel = torch.fft.irfft2(w, s=(4, 4), norm="backward")  # k with FFT(k) = W
    big = torch.randn(1, 4, 12, 12)
    hb = aft.conv(aft.norm(big))
    want = torch.zeros_like(hb)
    for i in range(4):
        for j in range(4):
            di, dj = (i if i < 2 else i - 4), (j if j < 2 else j - 4)
            want += kernel[None, :, i, j, None, None] * torch.roll(hb, shifts=(di, dj), dims=(-2, -1))
    assert torch.allclose(aft.filtered(big), want, atol=1e-5)
    assert torch.allclose(aft(big), big + want, atol=1e-5)


def test_paper_profile_parameter_count_matches_s3():
    """S3 Table III counts RadioDiff as 257.8 M: the U-Net with its Swin-B encoder 224.9 M (Swin-B
    87.8 M with its classifier) + the VAE decoder 33.0 M. Within 5 % each, the AFTs at 8 x 8."""
    method = RadioDiff("paper", dict(RADIODIFF_PAPER))
    with torch.device("meta"):
        method.ae = build_autoencoder(vae_hparams(RADIODIFF_PAPER), 0)
        method.arch = method.architecture("envgen-static", 256, method.ae.downsample, 3)
        method.net = method.build(method.arch)
    unet = method.net.unet
    assert method.arch["unet"]["windows"] == [8, 4, 2, 1] and [a.size for a in unet.afts] == [(8, 8), (8, 8)]
    head = 1024 * 1000 + 1000  # Swin-B's ImageNet classifier, which S3 counts
    swin = sum(p.numel() for p in method.net.encoder.parameters()) + head
    unet_and_swin, total = method.num_parameters() + head, method.inference_parameters() + head
    assert abs(swin - 87.8e6) / 87.8e6 < 0.02
    assert abs(sum(p.numel() for p in unet.parameters()) - 137.1e6) / 137.1e6 < 0.05
    assert abs(unet_and_swin - 224.9e6) / 224.9e6 < 0.05
    assert abs(total - 257.8e6) / 257.8e6 < 0.05
    assert method.sampling_steps() == 6


# ------------------------------------------------------------------ the code's U-Net (revision 2)
def paper_unet_on_meta() -> RadioDiffUNet:
    arch = RadioDiff("paper", dict(RADIODIFF_PAPER)).architecture("envgen-static", 256, 4, 3)["unet"]
    with torch.device("meta"):
        return RadioDiffUNet(context_channels=(128, 256, 512, 1024), **arch)


def test_paper_unet_has_the_codes_structure():
    """Two full decoders after their own AFT; WS-conv + GroupNorm(8) ResNet blocks with
    scale-shift time conditioning; linear attention at every level, full attention in the middle;
    relation layers with BatchNorm projections and MLP dropout 0.1; Fourier time features."""
    unet = paper_unet_on_meta()
    assert len(unet.decoders) == 2 and unet.decoders[0] is not unet.decoders[1] and len(unet.afts) == 2
    assert [len(d.levels) for d in unet.decoders] == [4, 4] and len(unet.encoder) == 4
    blocks = [m for m in unet.modules() if isinstance(m, ResnetBlock)]
    assert len(blocks) == 4 * 2 + 2 + 2 * (4 * 2 + 1)  # encoder, middle, both decoders and their final blocks
    for b in blocks:
        assert isinstance(b.block1.proj, WSConv2d) and isinstance(b.block2.proj, WSConv2d)
        assert b.block1.norm.num_groups == 8 and b.mlp[1].out_features == 2 * b.block1.proj.out_channels
    levels = list(unet.encoder) + [lv for d in unet.decoders for lv in d.levels]
    assert all(isinstance(lv.attn.fn, LinearAttention) for lv in levels) and len(levels) == 12
    assert isinstance(unet.mid_attn.fn, Attention)
    for lv in levels:
        rel = lv.relation
        assert rel.queries == "context" and rel.scale == 1.0 and rel.heads == 8
        for proj in (rel.in_x, rel.in_context):
            assert isinstance(proj[1], torch.nn.BatchNorm2d) and proj[1].momentum == 0.03 and proj[1].eps == 1e-3
        assert [m.p for m in rel.mlp if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1]
    assert [lv.relation.window for lv in unet.encoder] == [8, 4, 2, 1]
    assert [lv.relation.window for lv in unet.decoders[1].levels] == [1, 2, 4, 8]
    assert isinstance(unet.time, FourierTimeEmbedding) and unet.time.freqs.shape == (64,)
    assert unet.time.mlp[0].in_features == 128 and unet.time.mlp[-1].out_features == 512


def test_each_decoder_and_its_aft_give_one_output_only():
    """F1 (-> c) comes from the first AFT and decoder, F2 (-> eps) from the second."""
    method = bare_method(dict(RADIODIFF_TINY))
    unet = method.net.unet.eval()
    z, t, prompt = torch.randn(2, 3, 16, 16), torch.full((2,), 0.3), torch.rand(2, 3, 32, 32)
    ctx = method.net.encoder(prompt)
    with torch.no_grad():
        f1, f2 = unet(z, t, ctx)
        for p in list(unet.decoders[1].parameters()) + list(unet.afts[1].parameters()):
            p.add_(0.5)
        g1, g2 = unet(z, t, ctx)
    assert torch.equal(f1, g1) and not torch.allclose(f2, g2)


def test_ws_conv_is_invariant_to_the_kernels_scale_and_offset():
    torch.manual_seed(0)
    conv = WSConv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.normal_()  # unit variance: eps (1e-5) is negligible against it
    x = torch.randn(2, 4, 8, 8)
    y = conv(x)
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(torch.randn(6, 1, 1, 1))  # per output channel: a scale and an offset
    assert torch.allclose(conv(x), y, atol=1e-4)
    w = torch.randn(6, 4, 3, 3)
    ref = torch.nn.functional.conv2d(x, (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), unbiased=False,
                                                                                   keepdim=True) + 1e-5).sqrt(),
                                     padding=1)
    with torch.no_grad():
        conv.weight.copy_(w)
    assert torch.allclose(conv(x), ref, atol=1e-5)


def test_time_embedding_is_fourier_features_of_log_t_over_4():
    torch.manual_seed(0)
    emb = FourierTimeEmbedding(16, 64, scale=16.0)
    t = torch.tensor([1e-4, 0.3, 1.0])
    arg = (torch.log(t) / 4)[:, None] * emb.freqs[None, :] * (2 * math.pi)
    assert torch.allclose(emb.features(t), torch.cat([arg.sin(), arg.cos()], dim=1), atol=1e-5)
    assert torch.allclose(emb(t), emb.mlp(emb.features(t)))
    assert 10 < float(emb.freqs.std()) < 25  # N(0, 16^2), fixed
    assert "freqs" in emb.state_dict() and not any(p is emb.freqs for p in emb.parameters())


def test_linear_attention_matches_its_formula():
    torch.manual_seed(0)
    att = LinearAttention(6, heads=2, dim_head=3)
    x = torch.randn(1, 6, 4, 5)
    q, k, v = (a.reshape(1, 2, 3, 20) for a in att.to_qkv(x).chunk(3, dim=1))
    q, k = q.softmax(-2) * 3 ** -0.5, k.softmax(-1)
    # per head: context = k v^T / n (d x e), out = context^T q (e x n)
    out = torch.stack([(k[0, h] @ (v[0, h] / 20).T).T @ q[0, h] for h in range(2)])
    assert torch.allclose(att(x), att.to_out(out.reshape(1, 6, 4, 5)), atol=1e-6)


def test_training_draws_the_latent_from_the_posterior():
    """z0 = scale (mean + std n) with n from the step's generator (the code's encode().sample()),
    the posterior cached per map; latent_sample=false gives the mean (revision 1)."""
    method = bare_method(dict(RADIODIFF_TINY))
    method.arch["latent_scale"] = 0.5
    u = torch.rand(2, 1, 32, 32)
    post = method.ae.posterior(u)
    z = method.training_latent(u, ["a", "b"], torch.Generator().manual_seed(3))
    n = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z, 0.5 * (post.mean + post.std * n), atol=1e-5)
    assert set(method._latents) == {"a", "b"}  # cached: the same draw again from the cache
    assert torch.allclose(method.training_latent(u, ["a", "b"], torch.Generator().manual_seed(3)), z, atol=1e-6)
    assert not torch.allclose(method.training_latent(u, ["a", "b"], torch.Generator().manual_seed(4)), z)
    mean = RadioDiff("tiny", dict(RADIODIFF_TINY, latent_sample=False))
    mean.ae, mean.arch = method.ae, dict(method.arch)
    assert torch.allclose(mean.training_latent(u, None, torch.Generator().manual_seed(3)), 0.5 * post.mean,
                          atol=1e-6)


@pytest.mark.parametrize("profile", [RADIODIFF_TINY, RADIODIFF_SMALL, RADIODIFF_PAPER])
def test_sampling_uses_the_raw_weights_and_the_vae_trains_as_train_vae(profile):
    """The code's sampling config has use_ema: False; its train_vae.py uses AdamW with torch's
    defaults (betas 0.9, 0.999, weight decay 0.01) for the autoencoder and the discriminator."""
    assert TrainConfig.from_hparams(profile).ema_decay is None
    if profile is RADIODIFF_PAPER:
        vae = vae_hparams(profile)
        for cfg in (TrainConfig.from_hparams(vae), TrainConfig.from_hparams(vae, prefix="d_")):
            assert cfg.optimizer == "adamw" and cfg.adam_betas == (0.9, 0.999) and cfg.weight_decay == 0.01
            assert cfg.lr == 5e-6
        assert TrainConfig.from_hparams(vae).batch_size == 2


def test_revision_2_is_recorded_and_revision_1_checkpoints_are_refused(reg):
    assert reg.method("radiodiff").version == "2"
    old = {"arch": {"prompt": ["buildings", "tx_map", "buildings"], "unet": {}}, "net": {}, "vae": {}}
    with pytest.raises(CkmError, match="revision 1"):
        RadioDiff("tiny", dict(RADIODIFF_TINY)).load_state_dict(old)
