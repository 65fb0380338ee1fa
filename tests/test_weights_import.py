"""`ckmbench run --weights`: the authors' checkpoints load strictly through each key map and
predict as the authors' network would; `--save-predictions` writes dB maps that `evaluate` reads.

The official state_dicts are built here from the layer lists of the official module
definitions (names and shapes written as data below) with random tensors, and the official
networks' forward passes are written functionally from the same definitions, so the checks
do not go through our modules' code.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckmbench.data.registry import load_dataset
from ckmbench.errors import CkmError
from ckmbench.external import evaluate_predictions
from ckmbench.method import TaskData
from ckmbench.weights_import import import_weights
from ckmbench_plugins.radiomap.radiounet import from_training_scale
from train_helpers import one_thread, reg  # noqa: F401 (fixtures: one thread, registry)

# RonLevie/RadioUNet lib/modules.py, RadioWNet(inputs=2): (name, conv or transposed conv,
# in channels, out channels, kernel, padding, pool) in forward order.
RADIOWNET_2 = [
    ("layer00", "c", 2, 6, 3, 1, 1), ("layer0", "c", 6, 40, 5, 2, 2), ("layer1", "c", 40, 50, 5, 2, 2),
    ("layer10", "c", 50, 60, 5, 2, 1), ("layer2", "c", 60, 100, 5, 2, 2), ("layer20", "c", 100, 100, 3, 1, 1),
    ("layer3", "c", 100, 150, 5, 2, 2), ("layer4", "c", 150, 300, 5, 2, 2), ("layer5", "c", 300, 500, 5, 2, 2),
    ("conv_up5", "t", 500, 300, 4, 1, 1), ("conv_up4", "t", 600, 150, 4, 1, 1), ("conv_up3", "t", 300, 100, 4, 1, 1),
    ("conv_up20", "c", 200, 100, 3, 1, 1), ("conv_up2", "t", 200, 60, 6, 2, 1), ("conv_up10", "c", 120, 50, 5, 2, 1),
    ("conv_up1", "t", 100, 40, 6, 2, 1), ("conv_up0", "t", 80, 20, 6, 2, 1), ("conv_up00", "c", 28, 20, 5, 2, 1),
    ("conv_up000", "c", 22, 1, 5, 2, 1),
    ("Wlayer00", "c", 3, 20, 3, 1, 1), ("Wlayer0", "c", 20, 30, 5, 2, 2), ("Wlayer1", "c", 30, 40, 5, 2, 2),
    ("Wlayer10", "c", 40, 50, 5, 2, 1), ("Wlayer2", "c", 50, 60, 5, 2, 2), ("Wlayer20", "c", 60, 70, 3, 1, 1),
    ("Wlayer3", "c", 70, 90, 5, 2, 2), ("Wlayer4", "c", 90, 110, 5, 2, 2), ("Wlayer5", "c", 110, 150, 5, 2, 2),
    ("Wconv_up5", "t", 150, 110, 4, 1, 1), ("Wconv_up4", "t", 220, 90, 4, 1, 1), ("Wconv_up3", "t", 180, 70, 4, 1, 1),
    ("Wconv_up20", "c", 140, 60, 3, 1, 1), ("Wconv_up2", "t", 120, 50, 6, 2, 1), ("Wconv_up10", "c", 100, 40, 5, 2, 1),
    ("Wconv_up1", "t", 80, 30, 6, 2, 1), ("Wconv_up0", "t", 60, 20, 6, 2, 1), ("Wconv_up00", "c", 43, 20, 5, 2, 1),
    ("Wconv_up000", "c", 23, 1, 5, 2, 1),
]
LAYERS = {row[0]: row for row in RADIOWNET_2}
ENCODER = ("layer00", "layer0", "layer1", "layer10", "layer2", "layer20", "layer3", "layer4", "layer5")
DECODER = ("conv_up5", "conv_up4", "conv_up3", "conv_up20", "conv_up2", "conv_up10", "conv_up1", "conv_up0")

# achinthaw/RME-GAN lib/EncoderModels.py Discriminator(nc=3, ndf=64): main.<i> (conv or BatchNorm).
RMEGAN_DISC_3 = [("main.0", "conv", (64, 3, 4, 4)), ("main.2", "conv", (128, 64, 4, 4)), ("main.3", "bn", 128),
                 ("main.5", "conv", (256, 128, 4, 4)), ("main.6", "bn", 256), ("main.8", "conv", (512, 256, 4, 4)),
                 ("main.9", "bn", 512), ("main.11", "conv", (1, 512, 4, 4))]


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """An official-format RadioWNet(inputs=2) state_dict: ``<name>.0.weight`` / ``.0.bias``."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, kind, cin, cout, k, _, _ in RADIOWNET_2:
        shape = (cout, cin, k, k) if kind == "c" else (cin, cout, k, k)
        fan_in = cin * k * k
        state[f"{name}.0.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        state[f"{name}.0.bias"] = torch.rand(cout, generator=g) * 0.05
    return state


def official_forward(state: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RadioWNet.forward of the official code, written with the functional ops."""

    def layer(name, h):
        _, kind, _, _, _, pad, pool = LAYERS[name]
        w, b = state[f"{name}.0.weight"], state[f"{name}.0.bias"]
        h = F.relu(F.conv2d(h, w, b, padding=pad) if kind == "c" else F.conv_transpose2d(h, w, b, stride=2, padding=pad))
        return F.max_pool2d(h, pool) if pool > 1 else h

    def unet(prefix, inp):
        skips, h = [], inp
        for name in ENCODER:
            h = layer(prefix + name, h)
            skips.append(h)
        h = skips.pop()
        for name in DECODER:
            h = torch.cat([layer(prefix + name, h), skips.pop()], 1)
        h = layer(prefix + "conv_up00", torch.cat([h, inp], 1))
        return layer(prefix + "conv_up000", torch.cat([h, inp], 1))

    out1 = unet("", x)
    return out1, unet("W", torch.cat([out1, x], 1))


def disc_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, kind, shape in RMEGAN_DISC_3:
        if kind == "conv":
            state[f"{name}.weight"] = torch.randn(shape, generator=g) * 0.02
        else:
            state.update({f"{name}.weight": 1 + 0.1 * torch.randn(shape, generator=g),
                          f"{name}.bias": 0.1 * torch.randn(shape, generator=g),
                          f"{name}.running_mean": 0.1 * torch.randn(shape, generator=g),
                          f"{name}.running_var": 1 + torch.rand(shape, generator=g),
                          f"{name}.num_batches_tracked": torch.tensor(7)})
    return state


def disc_forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The Discriminator's main Sequential in eval mode, functionally."""
    h = x
    for name, kind, _ in RMEGAN_DISC_3:
        if kind == "bn":
            h = F.batch_norm(h, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                             state[f"{name}.weight"], state[f"{name}.bias"], training=False)
        else:
            last = name == "main.11"
            h = F.conv2d(h, state[f"{name}.weight"], stride=1 if last else 2, padding=0 if last else 1)
        if kind == "bn" or name == "main.0":
            h = F.leaky_relu(h, 0.2)
    return torch.sigmoid(h)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("city-tiny", progress=False)


def paper_method(reg, name, task_name="envgen-static"):
    spec, ts = reg.method(name), reg.task(task_name)
    return spec.factory("paper", dict(spec.profiles["paper"])), ts.make(**ts.params)


def save(tmp_path, state, name="official.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def first_obs(task, data):
    obs, _, _ = TaskData(data.split("test"), task, 0).batch_at([0, 1])
    return obs


@pytest.mark.parametrize("name", ["radiounet-c", "rme-gan"])
def test_official_radiownet_predicts_as_the_official_network(reg, tiny, tmp_path, name):
    state = random_state()
    method, task = paper_method(reg, name)
    fit = import_weights(method, save(tmp_path, state), task, torch.device("cpu"))
    obs = first_obs(task, tiny)
    x = method.network_input(obs)
    out1, out2 = official_forward(state, x)
    # RadioUNet predicts with the second U-Net (after both phases), RME-GAN with the first (netG's [fake, _])
    want = from_training_scale((out2 if name == "radiounet-c" else out1)[..., :32, :32], method.thresh, obs.buildings)
    got = method.predict(obs, None)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    assert float(want.std()) > 0  # the comparison is not between two constant maps
    assert fit["source"] == "imported" and fit["modules"] == ["net"] and len(fit["weights_sha256"]) == 64


def test_rmegan_discriminator_loads_when_present_and_in_full(reg, tmp_path):
    method, task = paper_method(reg, "rme-gan")
    disc = disc_state()
    fit = import_weights(method, save(tmp_path, {**random_state(), **disc}), task, torch.device("cpu"))
    assert fit["modules"] == ["net", "disc"]
    x = torch.rand(2, 3, 64, 64)
    method.disc.eval()
    with torch.no_grad():
        assert torch.allclose(method.disc(x), disc_forward(disc, x), atol=1e-6)
    partial = {k: v for k, v in disc.items() if k != "main.11.weight"}
    with pytest.raises(CkmError, match=r"1 missing, first 'main\.11\.weight'; 0 unexpected"):
        import_weights(method, save(tmp_path, {**random_state(), **partial}), task, torch.device("cpu"))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("Wconv_up10.0.bias"), r"1 missing, first 'Wconv_up10\.0\.bias'; 0 unexpected"),
    (lambda s: s.update({"layer6.0.weight": torch.zeros(1)}), r"0 missing, first '-'; 1 unexpected, first 'layer6\.0\.weight'"),
    (lambda s: s.update({"conv_up00.0.weight": torch.zeros(20, 29, 5, 5)}),
     r"'conv_up00\.0\.weight' has shape \(20, 29, 5, 5\), the paper profile's network needs \(20, 28, 5, 5\)"),
])
def test_loading_is_strict_with_one_line(reg, tmp_path, edit, message):
    state = random_state()
    edit(state)
    method, task = paper_method(reg, "radiounet-c")
    with pytest.raises(CkmError, match=message) as info:
        import_weights(method, save(tmp_path, state), task, torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_dataparallel_prefix_and_a_file_that_is_not_a_state_dict(reg, tmp_path):
    method, task = paper_method(reg, "radiounet-c")
    state = random_state()
    import_weights(method, save(tmp_path, {f"module.{k}": v for k, v in state.items()}), task, torch.device("cpu"))
    assert torch.equal(method.net.u2.head2[0].weight, state["Wconv_up000.0.weight"])
    with pytest.raises(CkmError, match="not a state_dict"):
        import_weights(method, save(tmp_path, {"model": state, "epoch": 3}), task, torch.device("cpu"))


def pix2pix_unet(input_nc: int, output_nc: int, num_downs: int, ngf: int) -> list[tuple]:
    """junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py UnetGenerator (--norm batch):
    (key prefix, kind, shape) of every layer, outermost block first; each block's Sequential is
    [LeakyReLU,] downconv, [BatchNorm,] submodule, ReLU, upconv, [BatchNorm | Tanh] (, Dropout)."""
    chans = [(output_nc, ngf, input_nc), (ngf, ngf * 2, ngf), (ngf * 2, ngf * 4, ngf * 2), (ngf * 4, ngf * 8, ngf * 4)]
    chans += [(ngf * 8, ngf * 8, ngf * 8)] * (num_downs - 4)
    rows, prefix = [], "model.model."
    for depth, (outer, inner, cin) in enumerate(chans):
        if depth == 0:  # outermost: downconv, submodule, ReLU, upconv (bias), Tanh
            rows += [(prefix + "0", "conv", (inner, cin, 4, 4)), (prefix + "3", "convT+b", (2 * inner, outer, 4, 4))]
            prefix += "1.model."
        elif depth == num_downs - 1:  # innermost: LeakyReLU, downconv, ReLU, upconv, BatchNorm
            rows += [(prefix + "1", "conv", (inner, cin, 4, 4)), (prefix + "3", "convT", (inner, outer, 4, 4)),
                     (prefix + "4", "bn", outer)]
        else:  # LeakyReLU, downconv, BatchNorm, submodule, ReLU, upconv, BatchNorm
            rows += [(prefix + "1", "conv", (inner, cin, 4, 4)), (prefix + "2", "bn", inner),
                     (prefix + "5", "convT", (2 * inner, outer, 4, 4)), (prefix + "6", "bn", outer)]
            prefix += "3.model."
    return rows


def pix2pix_state(rows, seed=2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, kind, shape in rows:
        if kind == "bn":
            state.update({f"{name}.weight": 1 + 0.1 * torch.randn(shape, generator=g),
                          f"{name}.bias": 0.1 * torch.randn(shape, generator=g),
                          f"{name}.running_mean": 0.1 * torch.randn(shape, generator=g),
                          f"{name}.running_var": 1 + torch.rand(shape, generator=g)})  # no counters (old torch)
        else:
            state[f"{name}.weight"] = torch.randn(shape, generator=g) * 0.05
            if kind == "convT+b":
                state[f"{name}.bias"] = 0.1 * torch.randn(shape[1], generator=g)
    return state


def pix2pix_forward(state: dict, x: torch.Tensor, num_downs: int) -> torch.Tensor:
    """UnetGenerator.forward in eval mode (dropout off, BatchNorm on running statistics)."""

    def bn(name, h):
        return F.batch_norm(h, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], training=False)

    def block(depth, prefix, h):
        if depth == 0:
            inner = block(1, prefix + "1.model.", F.conv2d(h, state[prefix + "0.weight"], stride=2, padding=1))
            up = F.conv_transpose2d(F.relu(inner), state[prefix + "3.weight"], state[prefix + "3.bias"], 2, 1)
            return torch.tanh(up)
        d = F.conv2d(F.leaky_relu(h, 0.2), state[prefix + "1.weight"], stride=2, padding=1)
        if depth == num_downs - 1:
            return torch.cat([h, bn(prefix + "4", F.conv_transpose2d(F.relu(d), state[prefix + "3.weight"], None, 2, 1))], 1)
        inner = block(depth + 1, prefix + "3.model.", bn(prefix + "2", d))
        return torch.cat([h, bn(prefix + "6", F.conv_transpose2d(F.relu(inner), state[prefix + "5.weight"], None, 2, 1))], 1)

    return block(0, "model.model.", x)


def test_pix2pix_generator_predicts_as_pix2pix(reg, tiny, tmp_path):
    method, task = paper_method(reg, "cgan")
    hp = method.hparams
    state = pix2pix_state(pix2pix_unet(2, 1, int(hp["num_downs"]), int(hp["ngf"])))
    fit = import_weights(method, save(tmp_path, state), task, torch.device("cpu"))
    assert fit["modules"] == ["net"]
    obs = first_obs(task, tiny)
    x = F.pad(method.condition(obs), (0, 256 - 32, 0, 256 - 32), mode="replicate")  # as cgan pads
    with torch.no_grad():
        want = ((pix2pix_forward(state, x, int(hp["num_downs"]))[..., :32, :32] + 1) / 2).clamp(0, 1)
        got = method.predict(obs, None)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    assert float(want.std()) > 0


def ckm(capsys, *args) -> tuple[int, str]:
    """``ckmbench ARGS`` in this process: (exit status, stderr)."""
    from ckmbench.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_cli_weights_record_and_saved_predictions_in_db(tmp_path, capsys):
    weights, preds, store = save(tmp_path, random_state()), tmp_path / "preds", tmp_path / "r.jsonl"
    code, err = ckm(capsys, "run", "-m", "radiounet-c", "-t", "envgen-static", "-d", "city-tiny", "-p", "paper",
                    "--weights", str(weights), "--save-predictions", str(preds), "--store", str(store), "--no-progress")
    assert code == 0, err
    rec = json.loads(store.read_text().splitlines()[-1])
    assert rec["fit"]["source"] == "imported" and rec["fit"]["steps_done"] == 0
    assert rec["fit"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert rec["cost"]["train_s"] is None
    test = load_dataset("city-tiny", progress=False).split("test")
    assert sorted(p.name for p in preds.iterdir()) == sorted(f"{s}_{t}.npy" for s, t in zip(test.scene, test.tx_index))
    first = np.load(preds / f"{test.scene[0]}_{test.tx_index[0]}.npy")
    assert first.shape == test.shape and first.min() >= test.gain_range[0, 0] and first.max() <= test.gain_range[0, 1]
    ext = evaluate_predictions("envgen-static", "city-tiny", preds, npy_unit="db", record=False)
    for metric in ("mse", "psnr"):
        assert ext["metrics"][metric] == pytest.approx(rec["metrics"][metric], rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["-m", "radiounet-c", "-p", "small"], "not 'small': pass -p paper"),
    (["-m", "uvm-net", "-p", "paper"], "method 'uvm-net' has no key map"),
    (["-m", "radiounet-c,rme-gan", "-p", "paper"], "2 methods were given"),
])
def test_weights_refused_up_front_in_one_line(tmp_path, capsys, args, message):
    weights = save(tmp_path, random_state())
    code, err = ckm(capsys, "run", "-t", "envgen-static", "-d", "city-tiny", "--weights", str(weights), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_mismatched_file_is_one_line_before_any_work(tmp_path, capsys):
    state = random_state()
    state.pop("layer5.0.weight")
    store = tmp_path / "r.jsonl"
    code, err = ckm(capsys, "run", "-m", "radiounet-c", "-t", "envgen-static", "-d", "city-tiny", "-p", "paper",
                    "--weights", str(save(tmp_path, state)), "--store", str(store), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "first 'layer5.0.weight'" in err and not store.exists()
