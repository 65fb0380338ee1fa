"""The classical baselines as ``ckmbench.method.Method`` classes (no training, no state).

Interpolators reconstruct each map from its measurements (see ``problem.py``): exact
measurements are always kept; smoothers (knn, idw, rbf, kriging) re-estimate noisy ones.
Model-based baselines (``pathloss``, ``distance``, ``simulator``) predict from a
propagation law or the built-in physics simulator.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

try:  # BLAS thread pools busy-wait on a loaded small machine and slow tiny solves 10-100x
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - declared dependency; without it BLAS keeps its threads
    threadpool_limits = None

from ckmbench.data.sample import normalize
from ckmbench.errors import CkmError
from ckmbench.method import Method
from ckmbench.tasks.operators import NOISE_STD, lr_offset
from ckmbench.upsample import upsample_grid

from . import scattered
from .kriging import MODELS, fit_variogram, krige
from .logdistance import distance_m, fit_log_distance, free_space_intercept_db, log_distance_gain
from .problem import Problem, kept_pixels, local_support, lr_mode_of, problems


def _to_output(maps: list[np.ndarray], obs) -> torch.Tensor:
    out = torch.from_numpy(np.stack(maps).astype(np.float32))[:, None]
    return out.clamp_(0.0, 1.0).to(obs.gain_range.device)


def _all_pixels(shape) -> np.ndarray:
    return np.argwhere(np.ones(shape, bool)).astype(np.float64)


def _one_blas_thread():
    return threadpool_limits(limits=1, user_api="blas") if threadpool_limits else nullcontext()


class ClassicalBaseline(Method):
    """Hyper-parameters are ``defaults`` overridden by the profile / user; unknown keys are errors.

    ``predict`` runs ``predict_maps`` with one BLAS thread: the work is many tiny solves,
    which BLAS threading only slows down (badly so when other jobs share the cores).
    """

    defaults: dict = {}

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        unknown = sorted(set(self.hparams) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise CkmError(f"method {self.name}: unknown hyper-parameter '{unknown[0]}': valid ones are {valid}")
        self.hp = {**self.defaults, **self.hparams}

    def predict(self, obs, ctx=None) -> torch.Tensor:
        with _one_blas_thread():
            return self.predict_maps(obs)

    def predict_maps(self, obs) -> torch.Tensor:
        raise NotImplementedError


class ScatteredBaseline(ClassicalBaseline):
    """Fills the pixels it does not keep with ``estimate`` from the map's measurements.

    ``smooths``: re-estimates noisy measurements; ``local``: only measurements near the
    pixels to fill are used (bounds the cost of filling a small hole).
    """

    smooths = False
    local = False

    def estimate(self, problem: Problem, points, values, queries) -> np.ndarray:
        raise NotImplementedError

    def reconstruct(self, problem: Problem) -> np.ndarray:
        keep = kept_pixels(problem, self.smooths)
        pred = np.where(keep, problem.known_values, 0.0).astype(np.float64)
        todo = ~keep
        if todo.any():
            queries = np.argwhere(todo).astype(np.float64)
            points, values = problem.points, problem.values
            if self.local and todo.sum() < todo.size:
                points, values = local_support(points, values, queries, problem.spacing)
            estimate = self.estimate(problem, points, values, queries)
            bad = ~np.isfinite(estimate)
            if bad.any():  # a numerically broken local system must not poison the map
                estimate[bad] = scattered.nearest(points, values, queries[bad])
            pred[todo] = estimate
        return pred

    def predict_maps(self, obs) -> torch.Tensor:
        return _to_output([self.reconstruct(p) for p in problems(obs)], obs)


class GridInterpolator(ScatteredBaseline):
    """nearest / bilinear / bicubic: grid interpolation for sr, triangulation-based otherwise."""

    mode = "bilinear"
    defaults = {"edge": "edge"}
    scattered_fn = staticmethod(scattered.linear)

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        if self.hp["edge"] not in ("linear", "edge"):
            raise CkmError(f"method {self.name}: edge must be 'linear' or 'edge', got {self.hp['edge']!r}")

    @property
    def local(self):
        return self.mode != "nearest"

    def estimate(self, problem, points, values, queries):
        return self.scattered_fn(points, values, queries)

    def predict_maps(self, obs) -> torch.Tensor:
        if obs.factor is None or obs.y is None or tuple(obs.y.shape[-2:]) == tuple(obs.out_shape):
            return super().predict_maps(obs)
        f = int(obs.factor)
        up = upsample_grid(obs.y.detach().cpu(), tuple(obs.out_shape), f, lr_offset(f, lr_mode_of(obs)),
                           mode=self.mode, edge=self.hp["edge"])
        return up.float().clamp_(0.0, 1.0).to(obs.gain_range.device)


class Nearest(GridInterpolator):
    name = "nearest"
    mode = "nearest"
    scattered_fn = staticmethod(scattered.nearest)


class Bilinear(GridInterpolator):
    name = "bilinear"
    mode = "bilinear"
    scattered_fn = staticmethod(scattered.linear)


class Bicubic(GridInterpolator):
    name = "bicubic"
    mode = "bicubic"
    scattered_fn = staticmethod(scattered.cubic)


class Identity(ClassicalBaseline):
    """The observation as given: the reference row every method must beat.

    Low-resolution grids are upsampled by nearest (replication); for inpaint the observed map
    with the hole at 0, for sparse the sparse map (unmeasured pixels 0), for denoise the noisy
    map. On noisy inpainting an exact interpolator's whole-map error sits at this row's.
    """

    name = "identity"
    defaults: dict = {}

    def predict_maps(self, obs) -> torch.Tensor:
        if obs.y is None:
            raise CkmError(f"method identity: task {obs.task} gives no observed map; it supports the tasks with one")
        y = obs.y.detach().float().cpu()
        if tuple(y.shape[-2:]) != tuple(obs.out_shape):
            f = int(obs.factor or round(obs.out_shape[0] / y.shape[-2]))
            y = upsample_grid(y, tuple(obs.out_shape), f, lr_offset(f, lr_mode_of(obs)), mode="nearest", edge="edge")
        if obs.mask is not None and tuple(obs.mask.shape) == tuple(y.shape):
            y = y * (obs.mask.detach().float().cpu() > 0.5)
        return y.clamp(0.0, 1.0).to(obs.gain_range.device)


class KNN(ScatteredBaseline):
    """Mean of the k nearest measurements."""

    name = "knn"
    smooths = True
    defaults = {"k": 8}

    def estimate(self, problem, points, values, queries):
        return scattered.knn_mean(points, values, queries, self.hp["k"])


class IDW(ScatteredBaseline):
    """Inverse distance weighting (power 2) over the k nearest; smoothed by the sampling step when noisy."""

    name = "idw"
    smooths = True
    defaults = {"k": 12, "power": 2.0}

    def estimate(self, problem, points, values, queries):
        smoothing = problem.spacing if problem.noise_std > 0 else 0.0
        return scattered.idw(points, values, queries, self.hp["k"], self.hp["power"], smoothing)


class RBF(ScatteredBaseline):
    """Thin-plate-spline RBF (scipy); ``smoothing`` is the ridge at the built-in noise level 30/255."""

    name = "rbf"
    smooths = True
    local = True
    defaults = {"neighbors": 24, "global_max": 512, "smoothing": 5.0}

    def estimate(self, problem, points, values, queries):
        lam = self.hp["smoothing"] * (problem.noise_std / NOISE_STD) ** 2 if problem.noise_std > 0 else 0.0
        return scattered.rbf(points, values, queries, spacing=problem.spacing, neighbors=self.hp["neighbors"],
                             global_max=self.hp["global_max"], smoothing=lam)


class Kriging(ScatteredBaseline):
    """Ordinary kriging: PyKrige variogram fit per map, local k-nearest kriging systems."""

    name = "kriging"
    smooths = True
    local = True
    defaults = {"model": "exponential", "k": 16, "global_max": 64, "fit_points": 256, "nlags": 12}

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        if self.hp["model"] not in MODELS:
            raise CkmError(f"method kriging: model must be one of {', '.join(MODELS)}, got {self.hp['model']!r}")

    def estimate(self, problem, points, values, queries):
        vario = fit_variogram(points, values, self.hp["model"], self.hp["fit_points"], self.hp["nlags"],
                              rng=np.random.default_rng(0), min_nugget=problem.noise_std ** 2)
        if vario is None:  # constant field or too few measurements to fit a variogram
            return scattered.idw(points, values, queries, self.hp["k"])
        return krige(points, values, queries, vario, k=self.hp["k"], global_max=self.hp["global_max"])


class PathLoss(ClassicalBaseline):
    """Least-squares log-distance fit ``g = a - 10 n log10(d)`` to each map's measurements.

    d is measured from the given Tx, else from the strongest measurement. Measurements at
    the floor (buildings, clipped gain) carry no distance information and are left out.
    """

    name = "pathloss"
    defaults = {"min_distance_m": 1.0, "rx_height_m": 1.5}

    def _transmitter(self, p: Problem) -> tuple[np.ndarray, float | None]:
        if p.tx is not None:
            return p.tx[:2], float(p.tx[2])
        values = p.values
        if p.noise_std > 0 and len(values) > 1:  # find the peak on locally averaged values
            values = scattered.knn_mean(p.points, p.values, p.points, min(5, len(values)))
        return p.points[int(np.argmax(values))], None

    def reconstruct(self, p: Problem) -> np.ndarray:
        g_min, g_max = p.gain_range
        tx, height = self._transmitter(p)
        floor = 2.0 * p.noise_std if p.noise_std > 0 else 1e-6
        valid = p.values > floor
        if not valid.any():
            valid = np.ones_like(valid)
        d = distance_m(p.points[valid], tx, p.pixel_m, height, self.hp["rx_height_m"], self.hp["min_distance_m"])
        a, n = fit_log_distance(d, g_min + p.values[valid] * (g_max - g_min))
        d_all = distance_m(_all_pixels(p.shape), tx, p.pixel_m, height, self.hp["rx_height_m"],
                           self.hp["min_distance_m"])
        pred = ((log_distance_gain(d_all, a, n) - g_min) / (g_max - g_min)).reshape(p.shape)
        keep = kept_pixels(p, smooths=False)
        return np.where(keep, p.known_values, pred)

    def predict_maps(self, obs) -> torch.Tensor:
        return _to_output([self.reconstruct(p) for p in problems(obs)], obs)


def _environment(obs, i: int, name: str):
    """(buildings bool, tx (3,), pixel_m, cars or None) of map i; CkmError when missing."""
    if obs.buildings is None or obs.tx is None:
        raise CkmError(f"method {name}: task {obs.task} gives no buildings/tx; use envgen-static or envgen-dynamic")
    buildings = obs.buildings[i, 0].detach().cpu().numpy() > 0.5
    cars = obs.cars[i, 0].detach().cpu().numpy() > 0.5 if obs.cars is not None else None
    return buildings, obs.tx[i].detach().cpu().numpy().astype(np.float64), float(obs.pixel_m[i]), cars


class Distance(ClassicalBaseline):
    """Free-space intercept at the carrier plus a fixed exponent; no fitting, buildings at 0."""

    name = "distance"
    defaults = {"exponent": 2.0, "frequency_hz": 5.9e9, "rx_height_m": 1.5, "min_distance_m": 1.0}

    def predict_maps(self, obs) -> torch.Tensor:
        intercept = free_space_intercept_db(self.hp["frequency_hz"])
        maps = []
        for i in range(len(obs)):
            buildings, tx, pixel_m, _ = _environment(obs, i, self.name)
            d = distance_m(_all_pixels(buildings.shape), tx[:2], pixel_m, tx[2], self.hp["rx_height_m"],
                           self.hp["min_distance_m"])
            g = log_distance_gain(d, intercept, self.hp["exponent"]).reshape(buildings.shape)
            maps.append(normalize(g, obs.gain_range[i].tolist(), buildings))
        return _to_output(maps, obs)


def _calibration_note() -> str:
    from ckmbench.sim.calibrate import CV_RMS_DB

    return ("in-sample: the simulator's shipped parameters were fitted on these real maps (map 0 and the 20 "
            f"sample layouts); its generalisation is the cross-validated {CV_RMS_DB:.2f} dB outdoor RMSE over layouts")


class Simulator(ClassicalBaseline):
    """The built-in dominant-path simulator run on the observed layout (no learning)."""

    name = "simulator"
    defaults = {"frequency_hz": 5.9e9}

    @property
    def in_sample(self) -> dict[str, str]:
        """Datasets it was calibrated on -> why its score there is in-sample (recorded, shown in tables)."""
        from ckmbench.sim.calibrate import CALIBRATION_DATASETS

        return {name: _calibration_note() for name in CALIBRATION_DATASETS}

    def predict_maps(self, obs) -> torch.Tensor:
        from ckmbench.sim import dpm
        from ckmbench.sim.scene import Scene

        maps = []
        for i in range(len(obs)):
            buildings, tx, pixel_m, cars = _environment(obs, i, self.name)
            scene = Scene(buildings=buildings, tx=tuple(float(v) for v in tx), pixel_m=pixel_m, cars=cars,
                          frequency_hz=float(self.hp["frequency_hz"]), scene_id=obs.keys[i])
            g = np.asarray(dpm.simulate(scene), np.float32)
            maps.append(normalize(g, obs.gain_range[i].tolist(), buildings))
        return _to_output(maps, obs)
