"""The alternatives tried when the paper protocols were chosen (docs/protocol.md §7).

Run: ``python benchmarks/probe_paper_protocols.py`` (about a minute on 2 cores). On the 25
real maps of ``radiomapseer-samples`` it prints, for each candidate low-res operator, noise
placement, upsampler and metric convention, the numbers the "What was tried" list of
docs/protocol.md §7 quotes. The chosen protocols themselves are scored by ``ckmbench run``
(``--protocol envcdiff`` / ``ckmdiff``), not here. Upsampling here is torch's
(``align_corners=False``), which places block means where ckmbench's grid interpolation does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial import cKDTree
from skimage.metrics import structural_similarity
from skimage.transform import resize

from ckmbench.data.radiomapseer import load_samples
from ckmbench.tasks import operators as op
from ckmbench.tasks.base import tx_one_hot

SIGMA = op.NOISE_STD


def down(x: np.ndarray, how: str) -> np.ndarray:
    """256 -> 64 by one of the candidate low-res operators."""
    if how == "subsample":
        return x[::4, ::4]
    if how == "block-mean":
        return op.lowres(x, 4, "avg")
    if how == "pil-bicubic":
        return np.asarray(Image.fromarray(x.astype(np.float32), mode="F").resize((64, 64), Image.BICUBIC))
    if how == "skimage-aa":
        return resize(x, (64, 64), order=3, anti_aliasing=True)
    if how == "power-mean":  # block means of the linear power, back to u
        lin = 10.0 ** ((-147.0 + 100.0 * x.astype(np.float64)) / 10.0)
        return np.clip((10 * np.log10(op.lowres(lin, 4, "avg").astype(np.float64)) + 147.0) / 100.0, 0, 1)
    raise ValueError(how)


def up(y: np.ndarray, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None, None]
    corners = mode.endswith("-corners")  # "bilinear-corners": align_corners=True
    mode = mode.removesuffix("-corners")
    kw = {} if mode == "nearest" else {"align_corners": corners}
    return F.interpolate(t, size=(256, 256), mode=mode, **kw)[0, 0].numpy()


def global_ssim(p: np.ndarray, t: np.ndarray) -> float:
    """CKMDiff eq. 30: SSIM from the whole-map means, variances and covariance."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = t.mean(), p.mean()
    cov = ((t - mx) * (p - my)).mean()
    return float((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (t.var() + p.var() + c2)))


def scores(pred: np.ndarray, target: np.ndarray) -> str:
    p = np.clip(pred, 0, 1).astype(np.float64)
    t = target.astype(np.float64)
    mse = ((p - t) ** 2).mean(axis=(1, 2))
    nmse = (((p - t) ** 2).sum(axis=(1, 2)) / (t ** 2).sum(axis=(1, 2))).mean()
    gauss = np.mean([structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False) for b, a in zip(p, t)])
    uniform = np.mean([structural_similarity(a, b, data_range=1) for b, a in zip(p, t)])
    uniform2 = np.mean([structural_similarity(a, b, data_range=2) for b, a in zip(p, t)])
    glob = np.mean([global_ssim(b, a) for b, a in zip(p, t)])
    return (f"mse {mse.mean():.4f}  nmse {nmse:.4f}  psnr {np.mean(10 * np.log10(1 / mse)):6.2f}  "
            f"pooled {10 * np.log10(1 / mse.mean()):6.2f}  ssim gauss {gauss:.3f} 7x7 {uniform:.3f} "
            f"7x7/dr2 {uniform2:.3f} global {glob:.3f}")


def knn_fill(y: np.ndarray, hole: np.ndarray, k: int = 8) -> np.ndarray:
    """Mean of the k nearest observed pixels in the hole; observed pixels kept as measured."""
    _, idx = cKDTree(np.argwhere(~hole)).query(np.argwhere(hole), k=k)
    out = y.copy()
    out[hole] = y[~hole][idx].mean(axis=1)
    return out


def main() -> None:
    ds = load_samples()
    u, bld = ds.u(), ds.buildings
    env = np.maximum(np.maximum(u, bld.astype(np.float32)), np.stack([tx_one_hot(s) for s in ds]))
    print(f"{len(ds)} maps; mean(u^2) = {(u ** 2).mean():.3f}")

    print("\n# EnvCDiff: LR operator x upsampler, interpolating and scoring G = u")
    for how in ("subsample", "block-mean", "pil-bicubic", "skimage-aa", "power-mean"):
        for mode in ("bilinear", "nearest", "bilinear-corners"):
            print(f"{how:12s} {mode:8s}", scores(np.stack([up(down(x, how), mode) for x in u]), u))
    print("\n# EnvCDiff: what is interpolated / scored (block means, bilinear)")
    f_up = np.stack([up(down(x, "block-mean"), "bilinear") for x in env])
    g_up = np.stack([up(down(x, "block-mean"), "bilinear") for x in u])
    print("F -> F          ", scores(f_up, env))
    print("F -> G, bld 0   ", scores(np.where(bld, 0, f_up), u))
    print("G -> G, bld 0   ", scores(np.where(bld, 0, g_up), u))

    print("\n# CKMDiff sr: noise level x placement x LR operator (bilinear, bicubic)")
    for sigma in (SIGMA, SIGMA / 2):
        for where in ("lr", "hr"):
            for how in ("subsample", "block-mean"):
                rng = np.random.default_rng(1)
                lows = [down(x + rng.normal(0, sigma, x.shape), how) if where == "hr"
                        else down(x, how) + rng.normal(0, sigma, (64, 64)) for x in u]
                for mode in ("bilinear", "bicubic"):
                    print(f"sigma {sigma * 255:2.0f}/255 on {where} {how:10s} {mode:8s}",
                          scores(np.stack([up(y, mode) for y in lows]), u))

    print("\n# CKMDiff inpaint: knn (k = 8), 64 x 64 hole, sigma 30/255")
    rng = np.random.default_rng(3)
    raw, composite = [], []
    for x in u:
        r0, c0 = rng.integers(0, 193, 2)
        hole = np.zeros(x.shape, bool)
        hole[r0:r0 + 64, c0:c0 + 64] = True
        y = x + rng.normal(0, SIGMA, x.shape)
        y[hole] = 0
        p = np.clip(knn_fill(y, hole), 0, 1)
        raw.append(p)
        composite.append(np.where(hole, p, x))
    print("raw prediction  ", scores(np.stack(raw), u))
    print("composite       ", scores(np.stack(composite), u))


if __name__ == "__main__":
    main()
