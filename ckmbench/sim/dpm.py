"""Fast dominant-path propagation model (in the spirit of WinProp's DPM) on a 2-D raster.

Buildings (one height, taller than the antennas) make propagation mostly horizontal. For
every pixel the model keeps the strongest of

* the *direct* path: the straight line from the Tx with the log-distance LoS law, if no
  building is on it (the real DPM maps predict no transmission through buildings);
* the *rooftop* path in the vertical plane of that line when it is blocked: up to the
  roof edge of the first building, level over the roofs, down from the last building's
  edge, with the same angle-dependent interaction loss at the two edges (heights from the
  scene) and a small loss per further building passed over;
* *diffracted* paths around convex building corners with up to ``max_interactions``
  corners: the NLoS law of the total unfolded path length plus an angle-dependent loss per
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

import copy
import functools
import math
from dataclasses import dataclass, replace

import numpy as np
from skimage.measure import approximate_polygon, find_contours

from ..errors import CkmError
from .scene import Scene

C_LIGHT = 299_792_458.0
# Bumped whenever the same inputs give different maps (part of the dataset cache key).
# 2: stable sorts, so equally scored paths are picked alike on every numpy and CPU.
# 3: rooftop path instead of wall transmission, corners along curved walls, one-pixel
#    grazing tolerance, constants fitted on 21 real layouts.
MODEL_VERSION = "3"
FLOOR_DB = -147.0
# a line that cuts less than this much building (pixels) still counts as clear: the masks
# are accurate to about a pixel (map 0's raster is one pixel wider than WinProp's footprint)
GRAZE_PX = 1.0
MIN_TURN_DEG = 20.0  # a bend of at least this much is a corner (one vertex, or summed along a curve)
CEIL_DB = -47.0


@dataclass(frozen=True)
class DPMParams:
    """Model constants; the defaults are fitted on all 21 real RadioMapSeer layouts of
    ``ckmbench.sim.calibrate`` after 5-fold cross-validation by layout measured how they
    generalise (docs/simulator.md)."""

    exponent: float = 2.5270  # log-distance exponent of the direct path (free space = 2)
    exponent_nlos: float = 2.8617  # exponent of the total unfolded length of rooftop and diffracted paths
    roof_building_db: float = 0.7622  # per building the rooftop path crosses after the first
    ref_offset_db: float = -0.8429  # added to the free-space loss at 1 m (47.9 dB at 5.9 GHz)
    diffraction_deg: tuple[float, ...] = (10.0, 25.0, 45.0, 70.0, 90.0, 180.0)  # knots after 0 deg
    diffraction_db: tuple[float, ...] = (3.3274, 5.6495, 8.5635, 11.9752, 13.0476, 13.3177)  # loss at the knots (0 dB at 0 deg)
    car_loss_db: float = 4.0  # per car a path segment enters
    rooftop: bool = True  # also the vertical-plane path over the roofs
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

    blocked: np.ndarray  # bool: the line cuts more than GRAZE_PX of building
    cars: np.ndarray | None  # int: cars entered
    to_first_px: np.ndarray | None = None  # float: source -> first building wall on the line
    buildings: np.ndarray | None = None  # int: buildings the line crosses
    from_last_px: np.ndarray | None = None  # float: last building wall -> pixel


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


def _corner_vertices(pts: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) vertex indices of the polygon's convex corners.

    A vertex turning by ``MIN_TURN_DEG`` or more towards the building is a corner
    (first == last). Along a curved or many-faceted wall each vertex turns less, so the
    convex turning of such runs is summed (concave turns subtract, so a jagged straight wall
    sums to nothing) and the run from its first bending vertex to the one where the sum
    reaches ``MIN_TURN_DEG`` is one corner: a long arc gets a corner every ``MIN_TURN_DEG``
    of bend instead of none.
    """
    n = len(pts)
    ua = pts - np.roll(pts, 1, axis=0)
    ub = np.roll(pts, -1, axis=0) - pts
    # find_contours(positive_orientation="low") walks with free space on one fixed side,
    # so a convex bend of the building is a negative cross product in (row, col)
    turn = -np.arctan2(ua[:, 0] * ub[:, 1] - ua[:, 1] * ub[:, 0], (ua * ub).sum(axis=1))
    lim = math.radians(MIN_TURN_DEG)
    big = np.flatnonzero(np.abs(turn) >= lim)
    start = int(big[0]) if len(big) else 0
    out, acc, first = [], 0.0, -1
    for k in range(n):
        i = (start + k) % n
        if abs(turn[i]) >= lim:
            acc, first = 0.0, -1
            if turn[i] > 0:
                out.append((i, i))
            continue
        acc = max(acc + float(turn[i]), 0.0)
        if acc == 0.0:
            first = -1
        elif first < 0:
            first = i
        if acc >= lim:
            out.append((first, i))
            acc, first = 0.0, -1
    return out


def _corner_point(pts: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Apex and outward unit direction of the corner made by vertices first..last.

    One vertex: the vertex itself. A bent run: the meeting point of the facet entering the
    run and the facet leaving it (the vertex of the circumscribed coarse polygon), so the
    line between two successive corners of an arc runs along a facet outside the wall,
    and successive corners see each other.
    """
    n = len(pts)
    a, b = pts[first - 1], pts[(last + 1) % n]
    da = pts[first] - a
    db = b - pts[last]
    da_u, db_u = da / np.linalg.norm(da), db / np.linalg.norm(db)
    out_dir = da_u - db_u  # away from the building at a convex bend
    if np.linalg.norm(out_dir) < 1e-6:
        out_dir = np.array([da_u[1], -da_u[0]])
    out_dir = out_dir / np.linalg.norm(out_dir)
    if first == last:
        return pts[first], out_dir
    m = np.array([da, -db]).T
    if abs(np.linalg.det(m)) < 1e-9:
        return pts[(first + last) // 2 if last >= first else first], out_dir
    t = np.linalg.solve(m, pts[last] - pts[first])[0]
    return pts[first] + t * da, out_dir


def convex_corners(buildings: np.ndarray, tolerance: float = 0.8) -> np.ndarray:
    """(K, 2) integer pixels just outside the convex corners of the building raster.

    Corners come from the raster itself (contours simplified by Douglas-Peucker), so they
    agree with the obstacles used for visibility, for procedural and real layouts alike;
    curved and many-faceted walls get corners where their summed bend is large enough
    (:func:`_corner_vertices`). Corners of buildings cut by the map border are dropped.
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
        pts = pts[np.linalg.norm(pts - np.roll(pts, 1, axis=0), axis=1) > 1e-6]
        if len(pts) < 3:
            continue
        for first, last in _corner_vertices(pts):
            v, out_dir = _corner_point(pts, first, last)
            probe = np.rint(pts[last] - 0.75 * out_dir).astype(int)
            if not (0 <= probe[0] < h and 0 <= probe[1] < w) or not buildings[probe[0], probe[1]]:
                continue  # the bend's inside is not building here (concave on the raster)
            if v[0] < 0.0 or v[1] < 0.0 or v[0] > h - 1.0 or v[1] > w - 1.0:
                continue  # building cut by the map border
            steps = (0.75, 1.25, 1.75, 2.25) if first == last else (1.5, 2.0, 2.5, 3.0)
            for step in steps:
                p = np.rint(v + step * out_dir).astype(int)
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
        self.building_h_m = float(scene.building_height_m)
        self.buildings = b
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
        """Occlusion and cars entered (and the wall distances when ``full``) along rays from (r, c)."""
        t = self.t
        codes = self.codes[t.base(r, c) + t.gather]
        bld = (codes & 1).astype(bool)
        idx = t.window(t.back, r, c)
        valid = t.window(t.back_valid, r, c)
        cut = np.cumsum(bld, axis=1, dtype=np.float32).ravel()[idx] * np.float32(t.dr)  # building on the line
        blocked = (cut > np.float32(GRAZE_PX)) & valid
        cars = None
        if self.has_cars:
            car = (codes & 2).astype(bool)
            cars = np.cumsum(_entries(car), axis=1, dtype=np.int16).ravel()[idx] * valid
        prof = RayProfile(blocked, cars)
        if full:
            prof.to_first_px, prof.from_last_px = self._wall_distances(bld, idx, r, c)
            prof.buildings = np.cumsum(_entries(bld), axis=1, dtype=np.int16).ravel()[idx] * valid
        return prof

    def _wall_distances(self, bld: np.ndarray, idx: np.ndarray, r: int, c: int):
        """Along each line: distance to the first building sample, and from the last one
        before the pixel to the pixel (only meaningful where the line is blocked)."""
        t = self.t
        n_r = bld.shape[1]
        first = np.where(bld.any(axis=1), bld.argmax(axis=1), n_r).astype(np.float32)
        ridx = np.arange(n_r, dtype=np.int32)
        last = np.maximum.accumulate(np.where(bld, ridx[None, :], -1), axis=1).ravel()[idx]
        to_first = (first[idx // t.n_r] + np.float32(0.5)) * np.float32(t.dr)
        from_last = t.window(t.dist_px, r, c) - (last + 1).astype(np.float32) * np.float32(t.dr)
        return to_first, np.maximum(from_last, np.float32(0.5))

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

    def restricted(self, keep: np.ndarray) -> "PreparedLayout":
        """A view whose diffracted paths reach only the pixels in ``keep`` (H, W bool): the
        calibration scores a pixel subset and skips the pairs of the others."""
        view = copy.copy(self)
        if self.n_pairs:
            sel = keep.ravel()[self.pair_pix]
            for name in ("pair_pix", "pair_corner", "pair_d", "pair_ang"):
                setattr(view, name, getattr(self, name)[sel])
            view.pair_cars = self.pair_cars[sel] if self.pair_cars is not None else None
            view.n_pairs = int(sel.sum())
            if view.n_pairs:
                view.seg_starts = np.flatnonzero(np.r_[True, view.pair_pix[1:] != view.pair_pix[:-1]])
                view.seg_pix = view.pair_pix[view.seg_starts]
        return view

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
        geo.update(self._rooftop(prof, d, float(tx[2]) if len(tx) > 2 else self.dh_m))
        if len(self.corners):
            cr, cc = self.corners[:, 0], self.corners[:, 1]
            flat = r * self.w + c
            geo["tc_vis"] = self.corner_sees[:, flat]
            geo["tc_d"] = d[cr, cc]
            geo["tc_ang"] = t.window(t.angle, r, c)[cr, cc]
            geo["tc_cars"] = (self.corner_cars[:, flat] if self.corner_cars is not None
                              else np.zeros(len(cr), np.int16))
        return geo

    def _rooftop(self, prof: RayProfile, d: np.ndarray, tx_h: float) -> dict:
        """Geometry of the path over the roofs in the vertical plane of the direct line.

        All buildings share one height, so the path climbs from the Tx to the first wall's
        roof edge, runs level over every roof on the line, and drops from the last wall's
        edge to the Rx: two edge interactions deviating by the climb and drop elevation
        angles, on the 3-D unfolded length (plus ``roof_building_db`` per further building).
        """
        up = np.float32(max(self.building_h_m - tx_h, 0.0))
        down = np.float32(max(self.building_h_m - self.dh_m, 0.0))
        d1 = prof.to_first_px * np.float32(self.pixel_m)
        d2 = prof.from_last_px * np.float32(self.pixel_m)
        length = np.hypot(d1, up) + np.maximum(d - d1 - d2, np.float32(0.0)) + np.hypot(d2, down)
        return {"roof_len": length.astype(np.float32), "roof_up": np.arctan2(up, d1).astype(np.float32),
                "roof_down": np.arctan2(down, d2).astype(np.float32)}

    def gain(self, geo: dict, params: DPMParams) -> np.ndarray:
        """Path gain (dB, clipped) of one Tx from its geometry and the model constants."""
        prof = geo["prof"]
        loss_extra = prof.cars * np.float32(params.car_loss_db) if prof.cars is not None else np.float32(0.0)
        # the direct line is line of sight or nothing: the real DPM maps show no transmission
        # through buildings (interiors at the floor; the level behind a building does not
        # fall with the metres the line crosses), their shadows are lit over the roofs
        best = los_gain_db(geo["d"], self.frequency_hz, params) - loss_extra
        best = np.where(prof.blocked, np.float32(-np.inf), best)
        if params.rooftop:
            ref = np.float32(reference_loss_db(self.frequency_hz) + params.ref_offset_db)
            roof = -(ref + np.float32(10.0 * params.exponent_nlos) * np.log10(np.maximum(geo["roof_len"], np.float32(params.min_distance_m)))
                     + params.diffraction_loss(geo["roof_up"]) + params.diffraction_loss(geo["roof_down"])
                     + np.float32(params.roof_building_db) * np.maximum(prof.buildings - 1, 0))
            best = np.where(prof.blocked, roof, best)
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
    """DPMParams from the fitted vector: exponent, offset, exponent_nlos, the interaction-loss
    increments between knots (kept >= 0 so the loss grows with the angle), the rooftop loss
    per extra building (kept >= 0)."""
    base = base or DPMParams()
    n = len(base.diffraction_db)
    x = np.asarray(x, float)
    diff = tuple(float(v) for v in np.cumsum(np.maximum(x[3:3 + n], 0.0)))
    return replace(base, exponent=float(x[0]), ref_offset_db=float(x[1]), exponent_nlos=float(x[2]),
                   diffraction_db=diff, roof_building_db=float(max(x[3 + n], 0.0)))


def params_to_vector(p: DPMParams) -> np.ndarray:
    inc = np.diff(np.concatenate([[0.0], p.diffraction_db]))
    return np.array([p.exponent, p.ref_offset_db, p.exponent_nlos, *inc, p.roof_building_db], float)


__all__ = [
    "DPMParams", "PolarTables", "PreparedLayout", "convex_corners", "los_gain_db", "reference_loss_db",
    "simulate", "simulate_layout", "params_from_vector", "params_to_vector",
]
