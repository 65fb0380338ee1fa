"""Procedural cities: rotated street grids, varied building footprints, cars, transmitters.

A city is laid out in a street frame (u along one street family, v along the other),
rotated by a random angle about the map centre, so streets are not only axis-aligned.
Blocks between streets are split into lots; each lot holds a rectangle, an L-shape, a
courtyard block, or stays empty (a yard or park). Buildings are then thinned until the
built-up fraction reaches a drawn target, so densities range over roughly 15-45 %.
Everything is drawn from the ``rng`` passed in, so a layout is reproducible from a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as fill_polygon

from ..errors import CkmError
from .scene import Scene

CAR_LENGTH_M = 4.5
CAR_WIDTH_M = 1.8

DEFAULT_OPTS = {
    "block_m": (22.0, 60.0),  # block side between streets
    "street_m": (7.0, 20.0),  # street width
    "rotate_prob": 0.6,  # share of cities whose grid is rotated
    "built_fraction": (0.18, 0.42),  # target built-up fraction, drawn per city
    "setback_m": (0.5, 3.0),  # building setback inside its lot
    "shape_probs": {"rect": 0.55, "L": 0.25, "courtyard": 0.1, "empty": 0.1},
}


@dataclass
class Street:
    """A straight street in the street frame: ``axis`` 'u' runs along u at v = center_m."""

    axis: str
    center_m: float
    width_m: float


@dataclass
class CityLayout:
    """A procedural city on an (H, W) raster; polygons are (K, 2) arrays of (row, col)."""

    buildings: np.ndarray
    polygons: list[np.ndarray]
    street_mask: np.ndarray
    pixel_m: float
    angle_deg: float = 0.0
    streets: list[Street] = field(default_factory=list)
    center_m: tuple[float, float] = (0.0, 0.0)  # (y, x) of the frame origin in metres

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.buildings.shape)

    @property
    def built_fraction(self) -> float:
        return float(self.buildings.mean())

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Street-frame metres -> (N, 2) pixel (row, col)."""
        a = math.radians(self.angle_deg)
        x = self.center_m[1] + np.asarray(u) * math.cos(a) - np.asarray(v) * math.sin(a)
        y = self.center_m[0] + np.asarray(u) * math.sin(a) + np.asarray(v) * math.cos(a)
        return np.stack([y / self.pixel_m, x / self.pixel_m], axis=-1)

    def scene(self, tx: tuple[float, float, float], cars: np.ndarray | None = None, scene_id: str = "") -> Scene:
        """The propagation scene of this layout for one transmitter."""
        return Scene(buildings=self.buildings, tx=tx, pixel_m=self.pixel_m, cars=cars,
                     polygons=self.polygons, scene_id=scene_id)


def _rect(u0, u1, v0, v1) -> np.ndarray:
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], float)


def _lot_building(lot, rng, opts, min_m) -> list[np.ndarray]:
    """Footprint polygons (street frame, metres) for one lot; [] for an empty lot."""
    u0, u1, v0, v1 = lot
    s = rng.uniform(*opts["setback_m"])
    u0, u1, v0, v1 = u0 + s, u1 - s, v0 + s, v1 - s
    du, dv = u1 - u0, v1 - v0
    if du < min_m or dv < min_m:
        return []
    probs = dict(opts["shape_probs"])
    if min(du, dv) < 4 * min_m:
        probs.pop("courtyard", None)
    if min(du, dv) < 2 * min_m:
        probs.pop("L", None)
    names = list(probs)
    p = np.array([probs[n] for n in names], float)
    kind = names[rng.choice(len(names), p=p / p.sum())]
    if kind == "empty":
        return []
    if kind == "rect":
        return [_rect(u0, u1, v0, v1)]
    if kind == "L":
        cu = rng.uniform(min_m, du - min_m)
        cv = rng.uniform(min_m, dv - min_m)
        # cut one corner rectangle away: vertices of the remaining L, walking around
        su, sv = rng.integers(2), rng.integers(2)
        pts = np.array([[0, 0], [du, 0], [du, dv - cv], [du - cu, dv - cv], [du - cu, dv], [0, dv]], float)
        if su:
            pts[:, 0] = du - pts[:, 0]
        if sv:
            pts[:, 1] = dv - pts[:, 1]
        return [pts + [u0, v0]]
    t = rng.uniform(min_m, min(du, dv) / 3.0)  # courtyard: four wings around a yard
    return [_rect(u0, u1, v0, v0 + t), _rect(u0, u1, v1 - t, v1),
            _rect(u0, u0 + t, v0 + t, v1 - t), _rect(u1 - t, u1, v0 + t, v1 - t)]


def _streets(axis: str, half: float, rng, opts) -> tuple[list[Street], list[tuple[float, float]]]:
    """Parallel streets covering [-half, half] and the free intervals (blocks) between them."""
    streets, blocks = [], []
    pos = -half - rng.uniform(0.0, opts["block_m"][1])
    while pos < half:
        w = rng.uniform(*opts["street_m"])
        streets.append(Street(axis, pos + w / 2.0, w))
        start = pos + w
        length = rng.uniform(*opts["block_m"])
        blocks.append((start, start + length))
        pos = start + length
    return streets, blocks


def _raster(polys_px: list[np.ndarray], shape) -> np.ndarray:
    out = np.zeros(shape, bool)
    for p in polys_px:
        rr, cc = fill_polygon(p[:, 0], p[:, 1], shape)
        out[rr, cc] = True
    return out


def generate_city(size: int, pixel_m: float, rng: np.random.Generator, **opts) -> CityLayout:
    """A random city of ``size`` x ``size`` pixels at ``pixel_m`` metres per pixel.

    Options (see ``DEFAULT_OPTS``): block_m, street_m, rotate_prob, built_fraction,
    setback_m, shape_probs.
    """
    if not (isinstance(size, (int, np.integer)) and 16 <= size <= 1024):
        raise CkmError(f"city size must be an integer in 16..1024 pixels, got {size!r}")
    if not pixel_m > 0:
        raise CkmError(f"city pixel_m must be > 0 metres, got {pixel_m!r}")
    unknown = set(opts) - set(DEFAULT_OPTS)
    if unknown:
        raise CkmError(f"generate_city: unknown option(s) {sorted(unknown)}: valid are {sorted(DEFAULT_OPTS)}")
    o = {**DEFAULT_OPTS, **opts}
    extent = size * pixel_m
    min_m = max(4.0, 2.0 * pixel_m)
    lo, hi = o["built_fraction"]
    target = rng.uniform(lo, hi)
    best = None
    for attempt in range(8):
        angle = float(rng.uniform(0.0, 90.0)) if rng.random() < o["rotate_prob"] else 0.0
        center = (extent / 2.0, extent / 2.0)
        layout = CityLayout(np.zeros((size, size), bool), [], np.zeros((size, size), bool), float(pixel_m),
                            angle, [], center)
        half = extent / math.sqrt(2.0) + 1.0
        su, ublocks = _streets("v", half, rng, o)  # streets along v sit at fixed u
        sv, vblocks = _streets("u", half, rng, o)
        layout.streets = su + sv
        buildings: list[list[np.ndarray]] = []  # polygons (pixels) per building
        masks: list[np.ndarray] = []
        for (ua, ub) in ublocks:
            for (va, vb) in vblocks:
                nu = int(rng.integers(1, 1 + max(1, int((ub - ua) // 13))))
                nv = int(rng.integers(1, 1 + max(1, int((vb - va) // 13))))
                cuts_u = np.linspace(ua, ub, nu + 1)
                cuts_v = np.linspace(va, vb, nv + 1)
                for i in range(nu):
                    for j in range(nv):
                        polys = _lot_building((cuts_u[i], cuts_u[i + 1], cuts_v[j], cuts_v[j + 1]), rng, o, min_m)
                        if polys:
                            px = [layout.to_pixels(p[:, 0], p[:, 1]) for p in polys]
                            mask = _raster(px, layout.shape)
                            if mask.any():  # skip buildings wholly outside the map
                                buildings.append(px)
                                masks.append(mask)
        total = np.zeros(layout.shape, np.int32)
        for m in masks:
            total += m
        keep = np.ones(len(masks), bool)
        frac = float((total > 0).mean())
        for k in rng.permutation(len(masks)):
            if frac <= target:
                break
            total -= masks[k]
            keep[k] = False
            frac = float((total > 0).mean())
        layout.buildings = total > 0
        layout.polygons = [p for k, b in enumerate(buildings) if keep[k] for p in b]
        best = layout
        if frac >= 0.15:
            break
        o = {**o, "street_m": (o["street_m"][0] * 0.8, o["street_m"][1] * 0.8),
             "shape_probs": {**o["shape_probs"], "empty": 0.0}}
    best.street_mask = _street_mask(best) & ~best.buildings
    return best


def _frame_coords(layout: CityLayout) -> tuple[np.ndarray, np.ndarray]:
    """Street-frame (u, v) metres of every pixel centre."""
    h, w = layout.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) * layout.pixel_m
    a = math.radians(layout.angle_deg)
    dx, dy = x - layout.center_m[1], y - layout.center_m[0]
    return dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)


def _street_mask(layout: CityLayout) -> np.ndarray:
    u, v = _frame_coords(layout)
    mask = np.zeros(layout.shape, bool)
    for s in layout.streets:
        coord = u if s.axis == "v" else v
        mask |= np.abs(coord - s.center_m) <= s.width_m / 2.0
    return mask


def place_cars(layout: CityLayout, rng: np.random.Generator, density: float = 0.3) -> np.ndarray:
    """(H, W) bool car mask: parked cars along both kerbs and driving cars in the lanes.

    ``density`` is the chance that a car-length slot of a kerb or lane holds a car.
    """
    if not 0.0 <= density <= 1.0:
        raise CkmError(f"place_cars: density must be in [0, 1], got {density}")
    cars = np.zeros(layout.shape, bool)
    h, w = layout.shape
    extent = max(h, w) * layout.pixel_m
    half = extent / math.sqrt(2.0) + CAR_LENGTH_M
    slot = CAR_LENGTH_M + 1.5
    along = np.arange(-half, half, slot)
    for s in layout.streets:
        lanes = [s.center_m - s.width_m / 2 + 1.2 + CAR_WIDTH_M / 2, s.center_m + s.width_m / 2 - 1.2 - CAR_WIDTH_M / 2]
        if s.width_m >= 9.0:  # room for driving lanes beside the parked rows
            lanes += [s.center_m - 1.8, s.center_m + 1.8]
        for lane in lanes:
            hit = rng.random(len(along)) < density
            jitter = rng.uniform(-0.5, 0.5, len(along))
            for a0 in (along + jitter)[hit]:
                lo, hi = a0, a0 + CAR_LENGTH_M
                if s.axis == "u":
                    poly = _rect(lo, hi, lane - CAR_WIDTH_M / 2, lane + CAR_WIDTH_M / 2)
                else:
                    poly = _rect(lane - CAR_WIDTH_M / 2, lane + CAR_WIDTH_M / 2, lo, hi)
                px = layout.to_pixels(poly[:, 0], poly[:, 1])
                ctr = px.mean(0)
                if not (0 <= ctr[0] < h and 0 <= ctr[1] < w):
                    continue
                rr, cc = fill_polygon(px[:, 0], px[:, 1], layout.shape)
                if len(rr) == 0:  # car smaller than a pixel: mark the pixel under its centre
                    rr, cc = np.array([int(ctr[0])]), np.array([int(ctr[1])])
                cars[rr, cc] = True
    return cars & ~layout.buildings & layout.street_mask


def place_transmitters(layout: CityLayout, n: int, rng: np.random.Generator, height_m: float = 1.5,
                       cars: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """``n`` outdoor transmitters (row, col, height), off cars and walls, spread out.

    Best-candidate sampling: each new Tx is the farthest from those already placed among
    a few random free pixels, so positions are random yet cover the map.
    """
    if n < 1:
        raise CkmError(f"place_transmitters: n must be >= 1, got {n}")
    h, w = layout.shape
    blocked = layout.buildings.copy()
    if cars is not None:
        blocked |= np.asarray(cars, bool)
    free = ~ndi.binary_dilation(blocked, iterations=1)
    free[[0, -1], :] = False
    free[:, [0, -1]] = False
    cand = np.argwhere(free)
    if len(cand) == 0:
        cand = np.argwhere(~blocked)
    if len(cand) < n:
        raise CkmError(f"place_transmitters: only {len(cand)} free outdoor pixels for {n} transmitters; use a sparser city")
    chosen = [cand[rng.integers(len(cand))]]
    while len(chosen) < n:
        trial = cand[rng.choice(len(cand), size=min(8, len(cand)), replace=False)]
        dist = np.min(np.linalg.norm(trial[:, None, :] - np.array(chosen)[None], axis=-1), axis=1)
        chosen.append(trial[int(np.argmax(dist))])
    return [(int(r), int(c), float(height_m)) for r, c in chosen]
