"""Calibrate the dominant-path model against the real RadioMapSeer DPM samples of map 0.

``calibration_report`` simulates the real layout for its five real transmitters and
reports the outdoor RMSE (dB) per transmitter and overall; ``fit_params`` refits the
DPMParams constants with scipy.optimize on some transmitters and checks the others.

    python -m ckmbench.sim.calibrate [--fit] [--figure PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import minimize

from ..errors import CkmError
from .dpm import DPMParams, PreparedLayout, params_from_vector, params_to_vector, reference_loss_db
from .scene import Scene

REAL_TX = (0, 1, 10, 11, 12)
FIT_TX = (0, 10, 12)  # fitted on these ...
HELDOUT_TX = (1, 11)  # ... and checked on these
G_MIN, G_MAX = -147.0, -47.0


def asset_root() -> Path:
    """Folder of the shipped map-0 sample."""
    return Path(str(resources.files("ckmbench") / "data" / "assets" / "radiomapseer-map0"))


def load_map0(root: Path | None = None) -> dict:
    """Buildings, transmitters and real DPM gain (dB) of RadioMapSeer map 0."""
    root = Path(root) if root else asset_root()
    bpath = root / "png" / "buildings_complete" / "0.png"
    if not bpath.exists():
        raise CkmError(f"calibration: missing {bpath}: reinstall ckmbench or point root at the map-0 sample")
    buildings = np.array(Image.open(bpath)) > 0
    ants = json.loads((root / "antenna" / "0.json").read_text())
    txs, gains = [], []
    for t in REAL_TX:
        x, y = ants[t]
        txs.append((255 - int(y), int(x), 1.5))
        gray = np.array(Image.open(root / "gain" / "DPM" / f"0_{t}.png")).astype(np.float32)
        gains.append(G_MIN + gray / 255.0 * (G_MAX - G_MIN))
    gain = np.stack(gains)
    # The footprint WinProp actually used: pixels at the floor in every real map. It lies
    # inside the shipped raster, which is one pixel wider along the edges and closes some
    # narrow passages, so it is the obstacle raster; scores use the shipped raster.
    footprint = (gain <= G_MIN + 1e-3).all(0) & buildings
    return {"buildings": buildings, "footprint": footprint, "txs": txs, "gain_db": gain, "tx_ids": list(REAL_TX)}


def map0_scene(data: dict | None = None) -> Scene:
    data = data or load_map0()
    return Scene(buildings=data["footprint"], tx=data["txs"][0], pixel_m=1.0, scene_id="radiomapseer-0")


class Calibrator:
    """Holds the parameter-free geometry of map 0 so parameters can be re-scored fast."""

    def __init__(self, data: dict | None = None):
        self.data = data or load_map0()
        self.layout = PreparedLayout(map0_scene(self.data))
        self.geo = [self.layout.tx_paths(tx) for tx in self.data["txs"]]
        self.outdoor = ~self.data["buildings"]

    def simulate(self, params: DPMParams) -> np.ndarray:
        return np.stack([self.layout.gain(g, params) for g in self.geo])

    def errors(self, params: DPMParams, sim: np.ndarray | None = None) -> dict[int, float]:
        sim = self.simulate(params) if sim is None else sim
        out = {}
        for i, t in enumerate(self.data["tx_ids"]):
            e = (sim[i] - self.data["gain_db"][i])[self.outdoor]
            out[t] = float(np.sqrt(np.mean(e * e)))
        return out


def _rmse(per_tx: dict[int, float], ids) -> float:
    return float(np.sqrt(np.mean([per_tx[t] ** 2 for t in ids])))


def calibration_report(params: DPMParams | None = None, calibrator: Calibrator | None = None) -> dict:
    """Outdoor RMSE (dB) per real transmitter, on the fit and held-out sets, and overall."""
    params = params or DPMParams()
    cal = calibrator or Calibrator()
    sim = cal.simulate(params)
    per_tx = cal.errors(params, sim)
    return {
        "per_tx": per_tx,
        "fit_tx": list(FIT_TX),
        "heldout_tx": list(HELDOUT_TX),
        "rmse_fit": _rmse(per_tx, FIT_TX),
        "rmse_heldout": _rmse(per_tx, HELDOUT_TX),
        "rmse_overall": _rmse(per_tx, REAL_TX),
        "params": asdict(params),
        "simulated": sim,
        "real": cal.data["gain_db"],
        "buildings": cal.data["buildings"],
        "txs": cal.data["txs"],
    }


def fit_los_law(calibrator: Calibrator, fit_tx=FIT_TX, min_m: float = 3.0) -> tuple[float, float]:
    """(exponent, ref_offset_db) by least squares of gain on log10(d) over line-of-sight pixels."""
    cal = calibrator
    xs, ys = [], []
    for t in fit_tx:
        i = cal.data["tx_ids"].index(t)
        geo = cal.geo[i]
        los = ~geo["prof"].blocked & cal.outdoor & (geo["d"] >= min_m)
        xs.append(np.log10(geo["d"][los]))
        ys.append(cal.data["gain_db"][i][los])
    x, y = np.concatenate(xs), np.concatenate(ys)
    slope, icpt = np.polyfit(x, y, 1)
    return float(-slope / 10.0), float(-icpt - reference_loss_db(cal.layout.frequency_hz))


def fit_params(start: DPMParams | None = None, calibrator: Calibrator | None = None,
               fit_tx=FIT_TX, maxiter: int = 300) -> DPMParams:
    """Refit DPMParams on ``fit_tx``: the LoS law in closed form on the line-of-sight pixels,
    then the NLoS constants (exponent_nlos, diffraction knots, wall and per-metre losses) by
    Nelder-Mead on the outdoor MSE. Search-shape settings (interactions) stay as given."""
    start = start or DPMParams()
    cal = calibrator or Calibrator()
    n_exp, offset = fit_los_law(cal, fit_tx)
    start = replace(start, exponent=n_exp, ref_offset_db=offset)
    idx = [cal.data["tx_ids"].index(t) for t in fit_tx]
    x0 = params_to_vector(start)

    def full(z):
        return np.concatenate([x0[:2], z])

    def objective(z):
        p = params_from_vector(full(z), start)
        se = 0.0
        for i in idx:
            e = (cal.layout.gain(cal.geo[i], p) - cal.data["gain_db"][i])[cal.outdoor]
            se += float(np.mean(e * e))
        return se / len(idx)

    z0 = x0[2:]
    simplex = [z0] + [z0 + np.eye(len(z0))[k] * max(0.05 * abs(z0[k]), 0.05) for k in range(len(z0))]
    res = minimize(objective, z0, method="Nelder-Mead",
                   options={"maxiter": maxiter, "xatol": 1e-3, "fatol": 1e-3, "initial_simplex": np.array(simplex)})
    return params_from_vector(full(res.x), start)


def save_figure(report: dict, path: str | os.PathLike) -> None:
    """real | simulated | error for each transmitter, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(report["per_tx"])
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n))
    outdoor = ~report["buildings"]
    for i, t in enumerate(report["per_tx"]):
        real, sim = report["real"][i], report["simulated"][i]
        err = np.where(outdoor, sim - real, np.nan)
        for ax, img, title, kw in (
            (axes[i, 0], real, f"real DPM tx {t}", dict(vmin=G_MIN, vmax=G_MAX, cmap="viridis")),
            (axes[i, 1], sim, "simulated", dict(vmin=G_MIN, vmax=G_MAX, cmap="viridis")),
            (axes[i, 2], err, f"error, RMSE {report['per_tx'][t]:.2f} dB", dict(vmin=-15, vmax=15, cmap="RdBu_r")),
        ):
            im = ax.imshow(img, **kw)
            ax.plot(report["txs"][i][1], report["txs"][i][0], "r+", ms=8)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([]); ax.set_yticks([])
        if i == 0:
            fig.colorbar(im, ax=axes[i, 2], fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=64)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ckmbench.sim.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help=f"refit DPMParams on tx {FIT_TX}, check on {HELDOUT_TX}")
    ap.add_argument("--figure", help="write real | simulated | error figure to this PNG")
    args = ap.parse_args(argv)
    cal = Calibrator()
    params = DPMParams()
    if args.fit:
        params = fit_params(params, cal)
        print("fitted:", params)
    rep = calibration_report(params, cal)
    for t, v in rep["per_tx"].items():
        tag = "fit" if t in FIT_TX else "held-out"
        print(f"tx {t:3d} ({tag:8s}) outdoor RMSE {v:6.2f} dB")
    print(f"fit {rep['rmse_fit']:.2f} dB  held-out {rep['rmse_heldout']:.2f} dB  overall {rep['rmse_overall']:.2f} dB")
    if args.figure:
        save_figure(rep, args.figure)
        print("figure:", args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
