"""Fast dominant-path propagation model (in the spirit of WinProp's DPM) on a 2-D raster.

Buildings are taller than the antennas, so propagation happens in the horizontal plane.
For every pixel the model keeps the strongest of

* the *direct* path: the straight line from the Tx, with the log-distance LoS law plus a
  loss per wall crossed and per metre inside buildings (zero of both = line of sight);
* *diffracted* paths around convex building corners with up to ``max_interactions``
  corners: the LoS law of the total unfolded path length plus an angle-dependent loss per
  corner (piecewise linear in the deviation angle, 0 dB when the path goes straight on,
  which gives the soft shadow edges of the real DPM maps).

Cars (``Scene.cars``) add ``car_loss_db`` per car a path segment enters. The model reads
the building raster only (``Scene.polygons`` is ignored), so corners and obstacles agree.

Speed comes from two ideas: all visibility questions from one integer source point are
answered by warping the obstacle raster to polar coordinates around it with a fixed table
of offsets (one gather), taking a cumulative OR/sum along the radius, and reading every
pixel back through a fixed (angle, radius) table; and everything that depends only on the
layout (corners, corner-corner and corner-pixel visibility) is computed once by
:class:`PreparedLayout` and reused for every transmitter of that layout.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import map_coordinates
from skimage.measure import approximate_polygon, find_contours

from ..errors import CkmError
from .scene import Scene

C_LIGHT = 299_792_458.0
# Bumped whenever the same inputs give different maps (part of the dataset cache key).
# 2: stable sorts, so equally scored paths are picked alike on every numpy and CPU.
MODEL_VERSION = "2"
FLOOR_DB = -147.0
CEIL_DB = -47.0


@dataclass(frozen=True)
class DPMParams:
    """Model constants; the defaults are calibrated on the real RadioMapSeer map 0."""

    exponent: float = 2.5402  # log-distance exponent of the direct path (free space = 2)
    exponent_nlos: float = 2.8814  # exponent of the total unfolded length of diffracted paths
    ref_offset_db: float = -1.1148  # added to the free-space loss at 1 m (47.9 dB at 5.9 GHz)
    diffraction_deg: tuple[float, ...] = (10.0, 25.0, 45.0, 70.0, 90.0, 180.0)  # knots after 0 deg
    diffraction_db: tuple[float, ...] = (3.078, 5.071, 8.226, 13.001, 15.510, 15.711)  # loss at the knots (0 dB at 0 deg)
    wall_loss_db: float = 0.217  # per wall crossed by the direct path
    penetration_db_per_m: float = 2.308  # per metre inside buildings on the direct path
    car_loss_db: float = 4.0  # per car a path segment enters
    max_interactions: int = 4  # corners per diffracted path
    arrivals_per_corner: int = 2  # best partial paths kept at each corner (tree-search width)
    min_distance_m: float = 1.0  # distances are clamped below to this
    floor_db: float = FLOOR_DB
    ceil_db: float = CEIL_DB

    def diffraction_loss(self, dev_rad: np.ndarray) -> np.ndarray:
        """Interaction loss (dB) for deviation angles in radians in [0, pi] (0 = straight on).

        Piecewise linear through the knots, read from a 4096-entry table (0.04 deg steps)
        because np.interp on millions of pairs is the model's hottest line.
        """
        table = _loss_table(tuple(map(float, self.diffraction_deg)), tuple(map(float, self.diffraction_db)))
        idx = (np.asarray(dev_rad, np.float32) * np.float32((len(table) - 1) / math.pi) + np.float32(0.5))
        return table[np.clip(idx.astype(np.int32), 0, len(table) - 1)]


@functools.lru_cache(maxsize=64)
def _loss_table(deg: tuple, db: tuple, n: int = 4096) -> np.ndarray:
    xp = np.concatenate([[0.0], np.radians(deg)])
    fp = np.concatenate([[0.0], np.asarray(db, float)])
    return np.interp(np.linspace(0.0, math.pi, n), xp, fp).astype(np.float32)


def reference_loss_db(frequency_hz: float) -> float:
    """Free-space path loss at 1 m, 20 log10(4 pi / lambda) (47.9 dB at 5.9 GHz)."""
    return 20.0 * math.log10(4.0 * math.pi * frequency_hz / C_LIGHT)


def los_gain_db(distance_m: np.ndarray, frequency_hz: float, params: DPMParams) -> np.ndarray:
    """The calibrated LoS law: -(FSPL(1 m) + offset + 10 n log10(d))."""
    d = np.maximum(np.asarray(distance_m, np.float64), params.min_distance_m)
    ref = reference_loss_db(frequency_hz) + params.ref_offset_db
    return (-(ref + 10.0 * params.exponent * np.log10(d))).astype(np.float32)


# ----------------------------------------------------------------------------------------
# polar visibility from integer source points
# ----------------------------------------------------------------------------------------

class PolarTables:
    """Offsets that warp an (H, W) raster to polar coordinates around any integer pixel.

    ``gather`` holds flat offsets into the raster padded by ``pad`` on each side, for
    ``n_theta`` angles x ``n_r`` radii (step ``dr`` pixels). ``back`` maps a relative
    pixel offset (di, dj) to the flat polar cell just before that pixel on its ray.
    """

    def __init__(self, h: int, w: int, dr: float = 0.7, arc: float = 1.0):
        self.h, self.w, self.dr = h, w, dr
        r_max = math.hypot(h, w) + 1.0
        self.n_r = int(math.ceil(r_max / dr))
        self.n_theta = int(math.ceil(2.0 * math.pi * r_max / arc))
        self.pad = int(math.ceil(r_max)) + 1
        self.wp = w + 2 * self.pad
        theta = 2.0 * math.pi * np.arange(self.n_theta) / self.n_theta
        r = dr * (np.arange(self.n_r) + 0.5)
        di = np.rint(np.sin(theta)[:, None] * r[None, :]).astype(np.int64)
        dj = np.rint(np.cos(theta)[:, None] * r[None, :]).astype(np.int64)
        self.gather = (di * self.wp + dj).astype(np.int64)
        self.fdi = (np.sin(theta)[:, None] * r[None, :]).astype(np.float32)  # exact ray points
        self.fdj = (np.cos(theta)[:, None] * r[None, :]).astype(np.float32)
        oi, oj = np.meshgrid(np.arange(-(h - 1), h), np.arange(-(w - 1), w), indexing="ij")
        rr = np.hypot(oi, oj)
        k = np.rint(np.arctan2(oi, oj) / (2.0 * math.pi) * self.n_theta).astype(np.int64) % self.n_theta
        # last radial sample at least half a pixel before the target pixel
        m = np.floor((rr - 0.5) / dr - 0.5).astype(np.int64)
        self.back_valid = m >= 0
        self.back = (k * self.n_r + np.clip(m, 0, self.n_r - 1)).astype(np.int64)
        self.dist_px = rr.astype(np.float32)
        self.angle = np.arctan2(oi, oj).astype(np.float32)  # direction source -> pixel

    def padded(self, raster: np.ndarray) -> np.ndarray:
        """The raster padded with zeros (free space), flattened."""
        return np.pad(raster, self.pad).ravel()

    def base(self, r: int, c: int) -> int:
        return (r + self.pad) * self.wp + (c + self.pad)

    def window(self, table: np.ndarray, r: int, c: int) -> np.ndarray:
        """The (H, W) slice of a relative-offset table for a source at pixel (r, c)."""
        return table[self.h - 1 - r: 2 * self.h - 1 - r, self.w - 1 - c: 2 * self.w - 1 - c]


@functools.lru_cache(maxsize=4)
def polar_tables(h: int, w: int) -> PolarTables:
    """Shared tables per map size (they depend on nothing else)."""
    return PolarTables(h, w)


def _entries(x: np.ndarray) -> np.ndarray:
    """Along axis 1: True where a run of True starts (object entered)."""
    out = x.copy()
    out[:, 1:] &= ~x[:, :-1]
    return out


@dataclass
class RayProfile:
    """What lies on the straight line from one source to every pixel (H, W arrays)."""

    blocked: np.ndarray  # bool: a building is crossed
    walls: np.ndarray | None  # int: building entries (walls crossed / 2)
    inside_px: np.ndarray | None  # float: pixels of path inside buildings
    cars: np.ndarray | None  # int: cars entered


# ----------------------------------------------------------------------------------------
# corners
# ----------------------------------------------------------------------------------------

def _merge_short_edges(pts: np.ndarray, min_len: float = 1.0) -> np.ndarray:
    """One pass merging the ends of each very short edge into its midpoint.

    Marching squares cuts every raster corner with a 0.7-pixel chamfer; merging restores
    one vertex per corner. Points on a straight line stay on it.
    """
    n = len(pts)
    short = np.linalg.norm(np.roll(pts, -1, axis=0) - pts, axis=1) < min_len
    new, keep, used = pts.copy(), np.ones(n, bool), np.zeros(n, bool)
    for i in np.flatnonzero(short):
        j = (i + 1) % n
        if used[i] or used[j]:
            continue
        new[i] = (pts[i] + pts[j]) / 2.0
        keep[j] = False
        used[i] = used[j] = True
    return new[keep]


def convex_corners(buildings: np.ndarray, tolerance: float = 0.8) -> np.ndarray:
    """(K, 2) integer pixels just outside the convex corners of the building raster.

    Corners come from the raster itself (contours simplified by Douglas-Peucker), so they
    agree with the obstacles used for visibility, for procedural and real layouts alike.
    Corners of buildings cut by the map border are dropped.
    """
    h, w = buildings.shape
    padded = np.pad(buildings.astype(np.float32), 1)
    out: set[tuple[int, int]] = set()
    for contour in find_contours(padded, 0.5):
        pts = contour[:-1] - 1.0 if np.allclose(contour[0], contour[-1]) else contour - 1.0
        pts = _merge_short_edges(pts)
        if len(pts) < 3:
            continue
        pts = approximate_polygon(np.vstack([pts, pts[:1]]), tolerance)[:-1]
        n = len(pts)
        if n < 3:
            continue
        for i in range(n):
            v, a, b = pts[i], pts[i - 1], pts[(i + 1) % n]
            ua, ub = a - v, b - v
            na, nb = np.linalg.norm(ua), np.linalg.norm(ub)
            if na < 1e-6 or nb < 1e-6:
                continue
            if np.dot(ua / na, ub / nb) < -0.94:
                continue  # (nearly) straight continuation, not a corner
            bis = ua / na + ub / nb
            bis /= np.linalg.norm(bis)
            probe = np.rint(v + 0.75 * bis).astype(int)
            if not (0 <= probe[0] < h and 0 <= probe[1] < w) or not buildings[probe[0], probe[1]]:
                continue  # concave corner (the angle between the edges is free space)
            if v[0] < 0.0 or v[1] < 0.0 or v[0] > h - 1.0 or v[1] > w - 1.0:
                continue  # building cut by the map border
            for step in (0.75, 1.25, 1.75, 2.25):
                p = np.rint(v - step * bis).astype(int)
                if 0 <= p[0] < h and 0 <= p[1] < w and not buildings[p[0], p[1]]:
                    out.add((int(p[0]), int(p[1])))
                    break
    if not out:
        return np.zeros((0, 2), np.int64)
    return np.array(sorted(out), np.int64)


# ----------------------------------------------------------------------------------------
# per-layout precomputation
# ----------------------------------------------------------------------------------------

class PreparedLayout:
    """Everything about a layout that does not depend on the transmitter."""

    def __init__(self, scene: Scene, tables: PolarTables | None = None):
        b = np.asarray(scene.buildings, bool)
        if b.ndim != 2:
            raise CkmError(f"scene buildings must be a 2-D raster, got shape {b.shape}")
        if min(b.shape) < 2:
            raise CkmError(f"scene buildings {b.shape[0]}x{b.shape[1]} is too small: the simulator needs at least 2x2 pixels")
        self.h, self.w = b.shape
        self.pixel_m = float(scene.pixel_m)
        if not self.pixel_m > 0:
            raise CkmError(f"scene pixel_m must be > 0, got {scene.pixel_m}")
        self.frequency_hz = float(scene.frequency_hz)
        self.dh_m = float(scene.rx_height_m)
        self.buildings = b
        self.buildings_f = b.astype(np.float32)
        self.cars = np.asarray(scene.cars, bool) & ~b
        self.has_cars = bool(self.cars.any())
        if tables is None or (tables.h, tables.w) != b.shape:
            tables = polar_tables(self.h, self.w)
        self.t = tables
        codes = b.astype(np.uint8) | (self.cars.astype(np.uint8) << 1)
        self.codes = tables.padded(codes)
        self.corners = convex_corners(b)
        self._corner_visibility()

    # -- rays ----------------------------------------------------------------------------
    def ray_profile(self, r: int, c: int, full: bool) -> RayProfile:
        """Occlusion (and walls/inside length/cars when ``full``) along rays from (r, c)."""
        t = self.t
        codes = self.codes[t.base(r, c) + t.gather]
        bld = (codes & 1).astype(bool)
        idx = t.window(t.back, r, c)
        valid = t.window(t.back_valid, r, c)
        blocked = np.logical_or.accumulate(bld, axis=1).ravel()[idx] & valid
        walls = inside = cars = None
        if full:
            walls = np.cumsum(_entries(bld), axis=1, dtype=np.int16).ravel()[idx] * valid
            # length inside buildings from bilinear occupancy at the exact ray points: it
            # varies smoothly with the ray, so Tx->Rx and Rx->Tx agree (reciprocity)
            occ = map_coordinates(self.buildings_f, [t.fdi + np.float32(r), t.fdj + np.float32(c)],
                                  order=1, mode="constant", cval=0.0, prefilter=False)
            inside = np.cumsum(occ, axis=1, dtype=np.float32).ravel()[idx] * valid * np.float32(t.dr)
        if self.has_cars:
            car = (codes & 2).astype(bool)
            cars = np.cumsum(_entries(car), axis=1, dtype=np.int16).ravel()[idx] * valid
        return RayProfile(blocked, walls, inside, cars)

    def _corner_visibility(self) -> None:
        """Corner-corner graph and the sparse corner -> pixel visibility pairs."""
        k = len(self.corners)
        t = self.t
        self.cc_vis = np.zeros((k, k), bool)
        self.cc_cars = np.zeros((k, k), np.int16)
        pair_pix, pair_corner, pair_d, pair_ang, pair_cars = [], [], [], [], []
        outdoor = ~self.buildings
        # dense copies answer "does corner i see the Tx pixel" with the corner's own rays,
        # the same rays that decide what the corner sees when the Tx is a receiver
        self.corner_sees = np.zeros((k, self.h * self.w), bool)
        self.corner_cars = np.zeros((k, self.h * self.w), np.int8) if self.has_cars else None
        for i, (r, c) in enumerate(self.corners):
            prof = self.ray_profile(int(r), int(c), full=False)
            vis = ~prof.blocked & outdoor
            vis[r, c] = False
            self.cc_vis[i] = vis[self.corners[:, 0], self.corners[:, 1]]
            self.corner_sees[i] = vis.ravel()
            if prof.cars is not None:
                self.cc_cars[i] = prof.cars[self.corners[:, 0], self.corners[:, 1]]
                self.corner_cars[i] = np.minimum(prof.cars.ravel(), 127)
            pix = np.flatnonzero(vis)
            pair_pix.append(pix)
            pair_corner.append(np.full(len(pix), i, np.int32))
            pair_d.append(t.window(t.dist_px, r, c).ravel()[pix])
            pair_ang.append(t.window(t.angle, r, c).ravel()[pix])
            if prof.cars is not None:
                pair_cars.append(prof.cars.ravel()[pix])
        self.cc_vis &= self.cc_vis.T
        self.cc_cars = np.maximum(self.cc_cars, self.cc_cars.T)
        diff = self.corners[None, :, :] - self.corners[:, None, :]
        self.cc_d = np.hypot(diff[..., 0], diff[..., 1]).astype(np.float32) * self.pixel_m
        self.cc_ang = np.arctan2(diff[..., 0], diff[..., 1]).astype(np.float32)  # i -> j
        if k == 0:
            self.n_pairs = 0
            return
        pix = np.concatenate(pair_pix)
        order = np.argsort(pix, kind="stable")
        self.pair_pix = pix[order]
        self.pair_corner = np.concatenate(pair_corner)[order]
        self.pair_d = (np.concatenate(pair_d)[order] * self.pixel_m).astype(np.float32)
        self.pair_ang = np.concatenate(pair_ang)[order]
        self.pair_cars = np.concatenate(pair_cars)[order] if pair_cars else None
        self.n_pairs = len(pix)
        starts = np.flatnonzero(np.r_[True, self.pair_pix[1:] != self.pair_pix[:-1]])
        self.seg_starts = starts
        self.seg_pix = self.pair_pix[starts]

    # -- per transmitter -------------------------------------------------------------------
    def check_tx(self, tx) -> tuple[int, int]:
        r, c = int(round(float(tx[0]))), int(round(float(tx[1])))
        if not (0 <= r < self.h and 0 <= c < self.w):
            raise CkmError(f"transmitter {tuple(tx)} is outside the {self.h}x{self.w} map: give a pixel inside it")
        if self.buildings[r, c]:
            raise CkmError(f"transmitter {tuple(tx)} is inside a building: place it outdoors")
        return r, c

    def tx_paths(self, tx) -> dict:
        """Parameter-free geometry for one Tx (kept so calibration can re-evaluate fast)."""
        r, c = self.check_tx(tx)
        t = self.t
        prof = self.ray_profile(r, c, full=True)
        d = t.window(t.dist_px, r, c) * np.float32(self.pixel_m)
        dh = float(tx[2]) - self.dh_m if len(tx) > 2 else 0.0
        geo = {"rc": (r, c), "d": np.sqrt(d * d + dh * dh).astype(np.float32), "prof": prof}
        if len(self.corners):
            cr, cc = self.corners[:, 0], self.corners[:, 1]
            flat = r * self.w + c
            geo["tc_vis"] = self.corner_sees[:, flat]
            geo["tc_d"] = d[cr, cc]
            geo["tc_ang"] = t.window(t.angle, r, c)[cr, cc]
            geo["tc_cars"] = (self.corner_cars[:, flat] if self.corner_cars is not None
                              else np.zeros(len(cr), np.int16))
        return geo

    def gain(self, geo: dict, params: DPMParams) -> np.ndarray:
        """Path gain (dB, clipped) of one Tx from its geometry and the model constants."""
        prof = geo["prof"]
        loss_extra = prof.walls * np.float32(params.wall_loss_db) + prof.inside_px * np.float32(
            params.penetration_db_per_m * self.pixel_m)
        if prof.cars is not None:
            loss_extra = loss_extra + prof.cars * np.float32(params.car_loss_db)
        best = los_gain_db(geo["d"], self.frequency_hz, params) - loss_extra
        if len(self.corners) and self.n_pairs and params.max_interactions > 0:
            diff = self._diffracted(geo, params)
            flat = best.ravel()
            flat[self.seg_pix] = np.maximum(flat[self.seg_pix], diff)
            best = flat.reshape(self.h, self.w)
        best = np.clip(best, params.floor_db, params.ceil_db)
        best[self.buildings] = params.floor_db
        return best.astype(np.float32)

    def _arrivals(self, geo: dict, params: DPMParams):
        """Best partial paths Tx -> ... -> corner: (K, M) length, loss, incoming angle."""
        k, m = len(self.corners), max(1, int(params.arrivals_per_corner))
        inf = np.float32(np.inf)
        vis = geo["tc_vis"]
        car_db = np.float32(params.car_loss_db)
        length = np.where(vis, geo["tc_d"], inf).astype(np.float32)[:, None]
        loss = np.where(vis, geo["tc_cars"] * car_db, inf).astype(np.float32)[:, None]
        ang = geo["tc_ang"].astype(np.float32)[:, None]
        frontier = (length, loss, ang)
        all_l, all_a, all_t = [length], [loss], [ang]
        n_exp = np.float32(10.0 * params.exponent_nlos)
        for _ in range(params.max_interactions - 1):
            fl, fa, ft = frontier  # (K, m_f)
            # candidates from every (corner i, slot s) to every corner j
            dev = np.abs(np.angle(np.exp(1j * (self.cc_ang[:, None, :] - ft[:, :, None]))))
            cl = fl[:, :, None] + self.cc_d[:, None, :]
            ca = fa[:, :, None] + params.diffraction_loss(dev) + self.cc_cars[:, None, :] * car_db
            ok = self.cc_vis[:, None, :] & np.isfinite(fl)[:, :, None]
            cl = np.where(ok, cl, inf).reshape(-1, k)
            ca = np.where(ok, ca, inf).reshape(-1, k)
            ct = np.broadcast_to(self.cc_ang[:, None, :], ok.shape).reshape(-1, k)
            score = n_exp * np.log10(np.maximum(cl, 1e-3)) + ca
            sel = np.argsort(score, axis=0, kind="stable")[:m]  # (m, K); stable: ties break by index on every CPU and numpy
            cols = np.arange(k)[None, :]
            frontier = (cl[sel, cols].T, ca[sel, cols].T, ct[sel, cols].T)
            all_l.append(frontier[0]); all_a.append(frontier[1]); all_t.append(frontier[2])
        length = np.concatenate(all_l, 1)
        loss = np.concatenate(all_a, 1)
        ang = np.concatenate(all_t, 1)
        score = n_exp * np.log10(np.maximum(length, 1e-3)) + loss
        sel = np.argsort(score, axis=1, kind="stable")[:, :m]
        rows = np.arange(k)[:, None]
        return length[rows, sel], loss[rows, sel], ang[rows, sel]

    def _diffracted(self, geo: dict, params: DPMParams) -> np.ndarray:
        """Best diffracted-path gain at every pixel that sees at least one corner."""
        length, loss, ang = self._arrivals(geo, params)
        ref = reference_loss_db(self.frequency_hz) + params.ref_offset_db
        n_exp = np.float32(10.0 * params.exponent_nlos)
        pc = self.pair_corner
        extra = self.pair_cars * np.float32(params.car_loss_db) if self.pair_cars is not None else 0.0
        best = None
        for s in range(length.shape[1]):
            ls, as_, ts = length[pc, s], loss[pc, s], ang[pc, s]
            dev = np.abs(self.pair_ang - ts)
            dev = np.minimum(dev, np.float32(2.0 * math.pi) - dev)
            total = np.maximum(ls + self.pair_d, np.float32(params.min_distance_m))
            g = -(np.float32(ref) + n_exp * np.log10(total) + as_ + params.diffraction_loss(dev) + extra)
            g = np.where(np.isfinite(ls), g, np.float32(-np.inf))
            best = g if best is None else np.maximum(best, g)
        return np.maximum.reduceat(best, self.seg_starts)


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------

def _check_params(params: DPMParams | None) -> DPMParams:
    params = DPMParams() if params is None else params
    if len(params.diffraction_deg) != len(params.diffraction_db):
        raise CkmError("DPMParams: diffraction_deg and diffraction_db need the same length")
    deg = np.asarray(params.diffraction_deg, float)
    if len(deg) == 0 or deg[0] <= 0 or np.any(np.diff(deg) <= 0) or deg[-1] > 180:
        raise CkmError(f"DPMParams: diffraction_deg must increase within (0, 180], got {params.diffraction_deg}")
    if params.max_interactions < 0 or params.max_interactions > 4:
        raise CkmError(f"DPMParams: max_interactions must be 0..4, got {params.max_interactions}")
    return params


def simulate(scene: Scene, params: DPMParams | None = None) -> np.ndarray:
    """Path gain (H, W) float32 dB of ``scene.tx``, clipped to [-147, -47], buildings at -147."""
    return simulate_layout(scene, [scene.tx], params)[0]


def simulate_layout(scene: Scene, txs: list[tuple], params: DPMParams | None = None,
                    prepared: PreparedLayout | None = None) -> np.ndarray:
    """(T, H, W) path gain for several transmitters of one layout, sharing the precomputation."""
    params = _check_params(params)
    layout = prepared if prepared is not None else PreparedLayout(scene)
    out = np.empty((len(txs), layout.h, layout.w), np.float32)
    for i, tx in enumerate(txs):
        out[i] = layout.gain(layout.tx_paths(tx), params)
    return out


def params_from_vector(x, base: DPMParams | None = None) -> DPMParams:
    """DPMParams from the fitted vector: exponent, offset, exponent_nlos, diffraction
    increments (kept >= 0 so the loss grows with the angle), wall loss, loss per metre."""
    base = base or DPMParams()
    n = len(base.diffraction_db)
    x = np.asarray(x, float)
    diff = tuple(float(v) for v in np.cumsum(np.maximum(x[3:3 + n], 0.0)))
    return replace(base, exponent=float(x[0]), ref_offset_db=float(x[1]), exponent_nlos=float(x[2]),
                   diffraction_db=diff, wall_loss_db=float(max(x[3 + n], 0.0)),
                   penetration_db_per_m=float(max(x[4 + n], 0.0)))


def params_to_vector(p: DPMParams) -> np.ndarray:
    inc = np.diff(np.concatenate([[0.0], p.diffraction_db]))
    return np.array([p.exponent, p.ref_offset_db, p.exponent_nlos, *inc, p.wall_loss_db,
                     p.penetration_db_per_m], float)


__all__ = [
    "DPMParams", "PolarTables", "PreparedLayout", "convex_corners", "los_gain_db", "reference_loss_db",
    "simulate", "simulate_layout", "params_from_vector", "params_to_vector",
]
