"""Calibrate the dominant-path model on real RadioMapSeer DPM maps of 21 city layouts.

The layouts are map 0 (its shipped building raster, five transmitters) and the twenty
gain-only samples ``s00``..``s19`` (buildings = the pixels at the -147 dB floor, Tx = the
brightest pixel), all shipped in the package. Obstacles are the building mask a user has,
never a raster derived from the truth. Generalisation is measured by k-fold
cross-validation *by layout*: the constants are fitted on the other folds and each layout
is scored only in the fold that left it out. The shipped defaults are then fitted on all
layouts (so their own scores are in-sample and are labelled so).

    python -m ckmbench.sim.calibrate [--folds K] [--in-sample] [--fit] [--figure PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import minimize

from ..errors import CkmError
from .dpm import DPMParams, PreparedLayout, params_from_vector, params_to_vector, reference_loss_db
from .scene import Scene

REAL_TX = (0, 1, 10, 11, 12)
G_MIN, G_MAX = -147.0, -47.0
TX_HEIGHT_M = 1.5
DEFAULT_FOLDS = 5
FOLD_SEED = 0
# the shipped datasets holding the calibration maps: the simulator is in-sample there
CALIBRATION_DATASETS = ("radiomapseer-map0", "radiomapseer-samples")
CV_RMS_DB = 2.97  # 5-fold CV outdoor RMSE of the shipped model, RMS over the 21 layouts (docs/simulator.md)
# Every fit starts here, not from the shipped defaults, so the CV does not move when they do:
# the constants of a first fit of this model (map-0 era knots, no wall transmission).
FIT_START = DPMParams(exponent=2.5218, exponent_nlos=2.8291, roof_building_db=0.5, ref_offset_db=-0.8081,
                      diffraction_db=(2.936, 6.236, 9.195, 12.371, 14.336, 14.797))
PIXEL_STRIDE = 3  # the fit scores every 3rd pixel each way (a ninth): much faster, same optimum


def asset_root() -> Path:
    """Folder of the shipped map-0 sample."""
    return Path(str(resources.files("ckmbench") / "data" / "assets" / "radiomapseer-map0"))


def samples_root() -> Path:
    """Folder of the 20 shipped gain-only samples (one map each of 20 other layouts)."""
    return Path(str(resources.files("ckmbench") / "data" / "assets" / "radiomapseer-samples"))


def _gray_db(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CkmError(f"calibration: missing {path}: reinstall ckmbench (the package data is missing)")
    gray = np.array(Image.open(path))
    if gray.shape != (256, 256) or gray.dtype != np.uint8:
        raise CkmError(f"calibration: {path} is {gray.dtype} {gray.shape}: expected a 256x256 8-bit gray PNG")
    return gray


def load_map0(root: Path | None = None) -> dict:
    """Buildings (the shipped raster), transmitters and real DPM gain (dB) of map 0."""
    root = Path(root) if root else asset_root()
    bpath = root / "png" / "buildings_complete" / "0.png"
    if not bpath.exists():
        raise CkmError(f"calibration: missing {bpath}: reinstall ckmbench or point root at the map-0 sample")
    buildings = np.array(Image.open(bpath)) > 0
    ants = json.loads((root / "antenna" / "0.json").read_text())
    txs, gains = [], []
    for t in REAL_TX:
        x, y = ants[t]
        txs.append((255 - int(y), int(x), TX_HEIGHT_M))
        gains.append(G_MIN + _gray_db(root / "gain" / "DPM" / f"0_{t}.png").astype(np.float32) / 255.0 * (G_MAX - G_MIN))
    gain = np.stack(gains)
    # pixels at the floor in every real map: WinProp's own footprint, derived from the
    # truth, so it is never an obstacle here (kept for the conventions test only)
    footprint = (gain <= G_MIN + 1e-3).all(0) & buildings
    return {"buildings": buildings, "footprint": footprint, "txs": txs, "gain_db": gain, "tx_ids": list(REAL_TX)}


@dataclass
class RealLayout:
    """One real layout: the user's building mask, its transmitters and the real maps (dB)."""

    name: str
    buildings: np.ndarray  # (H, W) bool
    txs: list  # [(row, col, height m)]
    gain_db: np.ndarray  # (T, H, W)


def load_layouts(names=None, root0: Path | None = None, root_samples: Path | None = None) -> list[RealLayout]:
    """map 0 and the samples s00..s19 (or the ``names`` among them), in that order."""
    m0 = load_map0(root0)
    out = [RealLayout("map0", m0["buildings"], m0["txs"], m0["gain_db"])]
    folder = (Path(root_samples) if root_samples else samples_root()) / "gain" / "DPM"
    files = sorted(folder.glob("s[0-9][0-9].png"))
    if not files:
        raise CkmError(f"calibration: no sNN.png maps in {folder}: reinstall ckmbench (the package data is missing)")
    for f in files:
        gray = _gray_db(f)
        r, c = np.unravel_index(int(np.argmax(gray)), gray.shape)
        gain = (G_MIN + gray.astype(np.float32) / 255.0 * (G_MAX - G_MIN))[None]
        out.append(RealLayout(f.stem, gray == 0, [(int(r), int(c), TX_HEIGHT_M)], gain))
    if names:
        known = {l.name: l for l in out}
        bad = [n for n in names if n not in known]
        if bad:
            raise CkmError(f"calibration: unknown layout(s) {', '.join(bad)}: choose among {', '.join(known)}")
        out = [known[n] for n in names]
    return out


def layout_folds(names: list[str], k: int, seed: int = FOLD_SEED) -> dict[str, int]:
    """Layout -> fold in 0..k-1: a seeded shuffle dealt round-robin, so every layout is in
    exactly one test fold and folds differ in size by at most one."""
    if not 2 <= k <= len(names):
        raise CkmError(f"calibration: --folds must be 2..{len(names)} (one layout per fold at most), got {k}")
    order = np.random.default_rng(seed).permutation(sorted(names))
    return {str(n): i % k for i, n in enumerate(order)}


class Calibrator:
    """Parameter-free geometry of every layout, prepared once so parameters re-score fast."""

    def __init__(self, layouts: list[RealLayout] | None = None, progress: bool = False):
        self.layouts = layouts if layouts is not None else load_layouts()
        self.prepared, self.geo, self.outdoor = [], [], []
        for lay in self.layouts:
            t0 = time.perf_counter()
            prep = PreparedLayout(Scene(buildings=lay.buildings, tx=lay.txs[0], pixel_m=1.0, scene_id=lay.name))
            self.prepared.append(prep)
            self.geo.append([prep.tx_paths(tx) for tx in lay.txs])
            self.outdoor.append(~lay.buildings)
            if progress:
                print(f"  prepared {lay.name}: {len(prep.corners)} corners in {time.perf_counter() - t0:.1f} s", flush=True)
        self._fast = None

    @property
    def names(self) -> list[str]:
        return [lay.name for lay in self.layouts]

    def simulate(self, params: DPMParams, i: int) -> np.ndarray:
        """(T, H, W) simulated gain of layout i."""
        return np.stack([self.prepared[i].gain(g, params) for g in self.geo[i]])

    def layout_errors(self, params: DPMParams, which=None) -> list[dict]:
        """Per layout: outdoor pixels (all its maps), RMSE and mean error (sim - real, dB)."""
        rows = []
        for i in (range(len(self.layouts)) if which is None else which):
            e = (self.simulate(params, i) - self.layouts[i].gain_db)[:, self.outdoor[i]]
            rows.append({"layout": self.layouts[i].name, "n": int(e.size),
                         "rmse": float(np.sqrt(np.mean(e * e))), "mean": float(e.mean())})
        return rows

    def fast_layouts(self) -> list[PreparedLayout]:
        """Views of the layouts whose diffracted paths reach only the scored pixel subset."""
        if self._fast is None:
            self._fast = [p.restricted(self._score_mask(i)) for i, p in enumerate(self.prepared)]
        return self._fast

    def _score_mask(self, i: int) -> np.ndarray:
        m = np.zeros_like(self.outdoor[i])
        m[::PIXEL_STRIDE, ::PIXEL_STRIDE] = True
        return m & self.outdoor[i]

    def fit_mse(self, params: DPMParams, which) -> float:
        """Mean over layouts of the outdoor MSE on the pixel subset (the fit's objective):
        every layout weighs the same, as in the RMS over layouts that is reported."""
        fast = self.fast_layouts()
        total = 0.0
        for i in which:
            m = self._score_mask(i)
            e = np.stack([fast[i].gain(g, params) for g in self.geo[i]])[:, m] - self.layouts[i].gain_db[:, m]
            total += float(np.mean(e * e))
        return total / len(which)


def fit_los_law(cal: Calibrator, which=None, min_m: float = 3.0) -> tuple[float, float]:
    """(exponent, ref_offset_db) by least squares of gain on log10(d) over line-of-sight pixels."""
    xs, ys = [], []
    for i in (range(len(cal.layouts)) if which is None else which):
        for t, geo in enumerate(cal.geo[i]):
            los = ~geo["prof"].blocked & cal.outdoor[i] & (geo["d"] >= min_m)
            xs.append(np.log10(geo["d"][los]))
            ys.append(cal.layouts[i].gain_db[t][los])
    slope, icpt = np.polyfit(np.concatenate(xs), np.concatenate(ys), 1)
    return float(-slope / 10.0), float(-icpt - reference_loss_db(cal.prepared[0].frequency_hz))


def fit_params(start: DPMParams | None = None, cal: Calibrator | None = None, which=None,
               maxiter: int = 100) -> DPMParams:
    """Fit DPMParams on the layouts ``which``: the LoS law in closed form on their
    line-of-sight pixels, then exponent_nlos, the interaction-loss knots (kept monotone)
    and the rooftop loss per extra building by Nelder-Mead on the mean outdoor MSE. Search
    settings (interactions) stay as given."""
    start = start or FIT_START
    cal = cal or Calibrator()
    which = list(range(len(cal.layouts))) if which is None else list(which)
    n_exp, offset = fit_los_law(cal, which)
    start = replace(start, exponent=n_exp, ref_offset_db=offset)
    x0 = params_to_vector(start)
    z0 = x0[2:]

    def objective(z):
        return cal.fit_mse(params_from_vector(np.concatenate([x0[:2], z]), start), which)

    simplex = [z0] + [z0 + np.eye(len(z0))[k] * max(0.1 * abs(z0[k]), 0.3) for k in range(len(z0))]
    res = minimize(objective, z0, method="Nelder-Mead",
                   options={"maxfev": maxiter, "xatol": 1e-2, "fatol": 1e-3, "initial_simplex": np.array(simplex)})
    return params_from_vector(np.concatenate([x0[:2], res.x]), start)


def summarize(rows: list[dict]) -> dict:
    """RMS over layouts (each layout one number), median, 90th percentile and max."""
    r = np.array([row["rmse"] for row in rows])
    return {"rms": float(np.sqrt(np.mean(r * r))), "median": float(np.median(r)),
            "p90": float(np.percentile(r, 90)), "max": float(r.max()), "n_layouts": len(r)}


def cross_validate(cal: Calibrator, k: int = DEFAULT_FOLDS, start: DPMParams | None = None,
                   maxiter: int = 100, log=print) -> dict:
    """k-fold CV by layout: each fold's layouts scored (all pixels) with the constants fitted
    on the other folds. Returns the per-layout rows (with their fold) and the summary."""
    folds = layout_folds(cal.names, k)
    rows, fitted = [], []
    for f in range(k):
        test = [i for i, n in enumerate(cal.names) if folds[n] == f]
        train = [i for i, n in enumerate(cal.names) if folds[n] != f]
        t0 = time.perf_counter()
        p = fit_params(start, cal, train, maxiter)
        fitted.append(p)
        for row in cal.layout_errors(p, test):
            rows.append({**row, "fold": f})
        log(f"  fold {f}: fitted on {len(train)} layouts in {time.perf_counter() - t0:.0f} s, "
            f"held out {', '.join(cal.names[i] for i in test)}")
    order = {n: i for i, n in enumerate(cal.names)}
    rows.sort(key=lambda r: order[r["layout"]])
    return {"rows": rows, "summary": summarize(rows), "folds": k, "fold_params": [asdict(p) for p in fitted]}


def format_table(rows: list[dict], title: str) -> str:
    lines = [title, f"{'layout':8s} {'n pixels':>9s} {'RMSE dB':>8s} {'mean dB':>8s} {'fold':>5s}"]
    for r in rows:
        fold = str(r["fold"]) if "fold" in r else "-"
        lines.append(f"{r['layout']:8s} {r['n']:9d} {r['rmse']:8.2f} {r['mean']:8.2f} {fold:>5s}")
    s = summarize(rows)
    lines.append(f"RMS over {s['n_layouts']} layouts {s['rms']:.2f} dB  median {s['median']:.2f}  "
                 f"p90 {s['p90']:.2f}  max {s['max']:.2f}")
    return "\n".join(lines)


def worst_rows(rows: list[dict], n: int = 3) -> list[dict]:
    return sorted(rows, key=lambda r: -r["rmse"])[:n]


def save_figure(cal: Calibrator, parts: list[tuple[dict, DPMParams, str]], path: str | os.PathLike) -> None:
    """real | simulated | error, one row per (table row, constants, label), written
    atomically; for map 0 the row shows its worst transmitter."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(parts), 3, figsize=(9, 3 * len(parts)), squeeze=False)
    for k, (row, params, label) in enumerate(parts):
        i = cal.names.index(row["layout"])
        lay = cal.layouts[i]
        sims = cal.simulate(params, i)
        t = int(np.argmax([np.sqrt(np.mean((s - g)[~lay.buildings] ** 2)) for s, g in zip(sims, lay.gain_db)]))
        real, sim = lay.gain_db[t], sims[t]
        err = np.where(lay.buildings, np.nan, sim - real)
        for ax, img, title, kw in (
            (axes[k, 0], real, f"real DPM {lay.name}" + (f" tx {REAL_TX[t]}" if lay.name == "map0" else ""),
             dict(vmin=G_MIN, vmax=G_MAX, cmap="viridis")),
            (axes[k, 1], sim, f"simulated ({label})", dict(vmin=G_MIN, vmax=G_MAX, cmap="viridis")),
            (axes[k, 2], err, f"error: RMSE {row['rmse']:.2f} dB, mean {row['mean']:+.2f}",
             dict(vmin=-15, vmax=15, cmap="RdBu_r")),
        ):
            im = ax.imshow(img, **kw)
            ax.plot(lay.txs[t][1], lay.txs[t][0], "r+", ms=8)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([]); ax.set_yticks([])
        if k == 0:
            fig.colorbar(im, ax=axes[k, 2], fraction=0.046)
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


def _params(d: dict) -> DPMParams:
    return DPMParams(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ckmbench.sim.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="k of the k-fold cross-validation by layout")
    ap.add_argument("--maxiter", type=int, default=100, help="objective evaluations per fit")
    ap.add_argument("--layouts", help="comma-separated subset of map0,s00..s19 (default: all 21)")
    ap.add_argument("--in-sample", action="store_true",
                    help="only score the shipped defaults (fitted on all layouts: not a generalisation figure)")
    ap.add_argument("--fit", action="store_true", help="after the CV, fit on all layouts and print the constants")
    ap.add_argument("--figure", help="write real | simulated | error of the three worst layouts to this PNG")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.layouts.split(",") if n.strip()] if args.layouts else None
    cal = Calibrator(load_layouts(names))
    params = DPMParams()
    if args.in_sample:
        rows = cal.layout_errors(params)
        print(format_table(rows, "shipped defaults, IN-SAMPLE (fitted on these layouts; not a generalisation figure)"))
        parts = [(r, params, "shipped defaults, in-sample") for r in worst_rows(rows)]
    else:
        cv = cross_validate(cal, args.folds, FIT_START, args.maxiter)
        rows = cv["rows"]
        print(format_table(rows, f"{args.folds}-fold cross-validation by layout: each layout scored by the fit "
                                 "that did not see it"))
        s = cv["summary"]
        print(f"CV outdoor RMSE: RMS over layouts {s['rms']:.2f} dB, max {s['max']:.2f} dB")
        parts = [(r, _params(cv["fold_params"][r["fold"]]), f"fold {r['fold']} fit, held out")
                 for r in worst_rows(rows)]
        if args.fit:
            params = fit_params(FIT_START, cal, None, args.maxiter)
            print("fitted on all layouts (write these into DPMParams):", params)
    if args.figure:
        save_figure(cal, parts, args.figure)
        print("figure:", args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
