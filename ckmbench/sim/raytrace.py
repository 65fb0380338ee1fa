"""Optional ray-tracing backend on Sionna RT: the same :class:`~ckmbench.sim.scene.Scene` as
the dominant-path model, path gain in dB on the same pixel grid.

The scene is turned into triangle meshes with numpy alone (:func:`scene_meshes`): every
building footprint polygon (or, without polygons, the building raster's boundary) is
extruded to ``Scene.building_height_m``, cars become boxes of ``Scene.car_height_m``, and
a ground plane covers the map. Those meshes are written as PLY files with a Mitsuba XML
scene (:func:`write_mitsuba_scene`), loaded by ``sionna.rt.load_scene`` and solved by
``PathSolver`` with one receiver per outdoor pixel centre at the Rx height.

Conventions (docs/simulator.md, "Ray-traced data"): ITU concrete walls and roofs, ITU
medium-dry ground, metal cars, isotropic vertically polarised antennas, the scene's
frequency; ``max_depth`` counts interactions (specular reflections; a first-order
diffraction is one more), the way RadioMapSeer's IRT2 / IRT4 count reflections and
diffractions; no refraction (no transmission through buildings), no diffuse scattering.
Gain is clipped to [-147, -47] dB with building pixels at the floor, as the DPM maps.

Needs ``pip install ckmbench[raytrace]`` and, on a CPU, Debian's ``libllvm19`` (drjit's
LLVM backend; LLVM 15 crashes it). Everything up to the XML runs without them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CkmError
from .dpm import C_LIGHT, CEIL_DB, FLOOR_DB
from .scene import Scene

# Bumped whenever the same inputs give different maps (part of the dataset cache key).
RT_VERSION = "1"
INSTALL_HINT = ("pip install 'ckmbench[raytrace]' (and on a CPU: apt-get install libllvm19; "
                "LLVM 15 crashes drjit)")
_LLVM_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libLLVM-19.so.1", "/usr/lib/x86_64-linux-gnu/libLLVM-19.so",
                    "/usr/lib/aarch64-linux-gnu/libLLVM-19.so.1", "/usr/lib/llvm-19/lib/libLLVM-19.so")


@dataclass(frozen=True)
class RTParams:
    """Ray-tracer settings (all part of a ray-traced dataset's cache key)."""

    max_depth: int = 2  # interactions per path: 2 ~ RadioMapSeer IRT2, 4 ~ IRT4
    samples_per_tx: int = 20_000  # candidate rays shot per transmitter (paths then found exactly)
    specular_reflection: bool = True
    diffraction: bool = True  # first-order wedge diffraction (all sionna-rt 2.x computes)
    diffuse_reflection: bool = False
    refraction: bool = False  # transmission through walls; RadioMapSeer's maps have none
    ground: bool = True  # a ground plane at z = 0 (its reflection is one interaction)
    building_material: str = "concrete"
    ground_material: str = "medium_dry_ground"
    car_material: str = "metal"
    seed: int = 0
    floor_db: float = FLOOR_DB
    ceil_db: float = CEIL_DB
    backend: str = "sionna-rt"

    def __post_init__(self):
        if not (isinstance(self.max_depth, (int, np.integer)) and 0 <= self.max_depth <= 10):
            raise CkmError(f"ray tracer: max_depth must be an integer in 0..10, got {self.max_depth!r}")
        if not (isinstance(self.samples_per_tx, (int, np.integer)) and self.samples_per_tx >= 1000):
            raise CkmError(f"ray tracer: samples_per_tx must be an integer >= 1000, got {self.samples_per_tx!r}")


# ----------------------------------------------------------------------------- sionna-rt import
def _point_drjit_at_llvm() -> None:
    """drjit's CPU backend loads libLLVM at import; prefer LLVM 19 when the user set nothing."""
    if os.environ.get("DRJIT_LIBLLVM_PATH"):
        return
    for path in _LLVM_CANDIDATES:
        if os.path.exists(path):
            os.environ["DRJIT_LIBLLVM_PATH"] = path
            return


def require_sionna():
    """``sionna.rt`` (with mitsuba on the CPU LLVM variant), or a one-line CkmError saying how to install it."""
    _point_drjit_at_llvm()
    try:
        import sionna.rt as rt  # noqa: PLC0415
    except ImportError as exc:
        raise CkmError(f"ray-traced data needs Sionna RT ({exc}): {INSTALL_HINT}") from None
    except Exception as exc:  # drjit without a usable libLLVM raises at import
        raise CkmError(f"Sionna RT failed to start ({type(exc).__name__}: {exc}): {INSTALL_HINT}") from None
    return rt


def sionna_version() -> str:
    """Versions of sionna-rt, mitsuba and drjit (part of the cache key), or '' when missing."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("sionna-rt", "mitsuba", "drjit"):
        try:
            out.append(f"{pkg}={version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg}=missing")
    return ",".join(out)


# ----------------------------------------------------------------------------- geometry (numpy only)
def _world(scene: Scene, rc: np.ndarray) -> np.ndarray:
    """(row, col) pixel coordinates -> (x, y) metres: x east along columns, y north (row 0 on top).

    Pixel (r, c) has its centre at (c * pixel_m, (H - 1 - r) * pixel_m).
    """
    h = scene.shape[0]
    rc = np.asarray(rc, float)
    return np.stack([rc[:, 1] * scene.pixel_m, (h - 1 - rc[:, 0]) * scene.pixel_m], axis=1)


def _signed_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def triangulate(poly: np.ndarray) -> list[tuple[int, int, int]]:
    """Ear-clipping triangulation of a simple polygon given counter-clockwise (indices into ``poly``)."""
    idx = list(range(len(poly)))
    tris: list[tuple[int, int, int]] = []

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    guard = 0
    while len(idx) > 3 and guard < 10_000:
        guard += 1
        for k in range(len(idx)):
            i0, i1, i2 = idx[k - 1], idx[k], idx[(k + 1) % len(idx)]
            a, b, c = poly[i0], poly[i1], poly[i2]
            if cross(a, b, c) <= 1e-12:  # reflex or degenerate vertex: not an ear
                continue
            if any(cross(a, b, poly[j]) > 0 and cross(b, c, poly[j]) > 0 and cross(c, a, poly[j]) > 0
                   for j in idx if j not in (i0, i1, i2)):
                continue
            tris.append((i0, i1, i2))
            idx.pop(k)
            break
        else:  # no ear found (self-touching input): fan the rest
            break
    for k in range(1, len(idx) - 1):
        tris.append((idx[0], idx[k], idx[k + 1]))
    return tris


def _clean(p: np.ndarray) -> np.ndarray:
    """Drop repeated vertices (and a closing copy of the first); counter-clockwise order."""
    keep = [0] + [k for k in range(1, len(p)) if np.linalg.norm(p[k] - p[k - 1]) > 1e-9]
    p = p[keep]
    if len(p) > 1 and np.linalg.norm(p[0] - p[-1]) <= 1e-9:
        p = p[:-1]
    return p[::-1] if _signed_area(p) < 0 else p


def extrude(poly_xy: np.ndarray, height: float) -> tuple[np.ndarray, np.ndarray]:
    """A closed prism (walls + roof, no floor) over a footprint: (vertices (N, 3), faces (M, 3)).

    Faces are wound so their normals point out of the building.
    """
    p = _clean(np.asarray(poly_xy, float))
    n = len(p)
    if n < 3 or abs(_signed_area(p)) < 1e-9:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    bottom = np.c_[p, np.zeros(n)]
    top = np.c_[p, np.full(n, float(height))]
    verts = np.concatenate([bottom, top])
    faces = []
    for i in range(n):
        j = (i + 1) % n
        faces += [(i, j, n + j), (i, n + j, n + i)]  # outward for a counter-clockwise footprint
    faces += [(n + a, n + b, n + c) for a, b, c in triangulate(p)]
    return verts, np.asarray(faces, np.int64)


def _boxes_from_raster(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Axis-aligned rectangles (r0, r1, c0, c1), end-exclusive, covering ``mask`` (row runs merged down)."""
    boxes = []
    open_runs: dict[tuple[int, int], int] = {}
    for r in range(mask.shape[0] + 1):
        runs = set()
        if r < mask.shape[0]:
            row = np.r_[False, mask[r], False].astype(np.int8)
            d = np.diff(row)
            runs = set(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
        for run in list(open_runs):
            if run not in runs:
                boxes.append((open_runs.pop(run), r, run[0], run[1]))
        for run in runs:
            open_runs.setdefault(run, r)
    return boxes


def _raster_footprints(mask: np.ndarray) -> list[np.ndarray]:
    """Footprints (row, col) of a raster's pixels as rectangles whose edges lie between pixel centres."""
    return [np.array([[r0 - 0.5, c0 - 0.5], [r0 - 0.5, c1 - 0.5], [r1 - 0.5, c1 - 0.5], [r1 - 0.5, c0 - 0.5]])
            for r0, r1, c0, c1 in _boxes_from_raster(np.asarray(mask, bool))]


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    verts, faces, off = [], [], 0
    for v, f in parts:
        if len(f):
            verts.append(v)
            faces.append(f + off)
            off += len(v)
    if not verts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    return np.concatenate(verts), np.concatenate(faces)


def scene_meshes(scene: Scene, ground: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Triangle meshes of a scene, in metres: {"buildings", "cars", "ground"} -> (vertices, faces).

    Buildings come from ``scene.polygons`` when given (exact footprints, also the parts
    outside the map), else from the building raster; cars always from the car raster.
    """
    polys = scene.polygons if scene.polygons else _raster_footprints(scene.buildings)
    meshes = {"buildings": _merge([extrude(_world(scene, p), scene.building_height_m) for p in polys])}
    if scene.cars is not None and scene.cars.any():
        meshes["cars"] = _merge([extrude(_world(scene, p), scene.car_height_m)
                                 for p in _raster_footprints(scene.cars)])
    if ground:
        h, w = scene.shape
        pad = 0.5 * max(h, w) * scene.pixel_m
        x0, x1 = -0.5 * scene.pixel_m - pad, (w - 0.5) * scene.pixel_m + pad
        y0, y1 = -0.5 * scene.pixel_m - pad, (h - 0.5) * scene.pixel_m + pad
        v = np.array([[x0, y0, 0.0], [x1, y0, 0.0], [x1, y1, 0.0], [x0, y1, 0.0]])
        meshes["ground"] = (v, np.array([[0, 1, 2], [0, 2, 3]], np.int64))
    return {k: m for k, m in meshes.items() if len(m[1])}


def write_ply(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    """A binary little-endian PLY triangle mesh."""
    verts = np.ascontiguousarray(verts, "<f4")
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(verts)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    rec = np.zeros(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    rec["n"] = 3
    rec["v"] = faces
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(verts.tobytes())
        f.write(rec.tobytes())


def write_mitsuba_scene(scene: Scene, folder: Path, params: RTParams | None = None) -> Path:
    """The scene's meshes as PLY files plus a Mitsuba XML scene (ITU radio materials) in ``folder``."""
    params = params or RTParams()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    material = {"buildings": params.building_material, "cars": params.car_material, "ground": params.ground_material}
    lines = ['<scene version="2.1.0">']
    for mat in sorted(set(material.values())):
        lines.append(f'  <bsdf type="itu-radio-material" id="mat-{mat}">'
                     f'<string name="type" value="{mat}"/><float name="thickness" value="0.2"/></bsdf>')
    for name, (v, f) in scene_meshes(scene, ground=params.ground).items():
        write_ply(folder / f"{name}.ply", v, f)
        lines.append(f'  <shape type="ply" id="{name}"><string name="filename" value="{name}.ply"/>'
                     f'<boolean name="face_normals" value="true"/><ref id="mat-{material[name]}" name="bsdf"/></shape>')
    lines.append("</scene>\n")
    path = folder / "scene.xml"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- solving
def _to_db(pg: np.ndarray, buildings: np.ndarray, params: RTParams) -> np.ndarray:
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(np.maximum(pg, 0.0))
    db = np.nan_to_num(db, nan=params.floor_db, neginf=params.floor_db, posinf=params.ceil_db)
    db = np.clip(db, params.floor_db, params.ceil_db)
    db[..., buildings] = params.floor_db
    return db.astype(np.float32)


def simulate_layout_rt(scene: Scene, txs: list[tuple], params: RTParams | None = None,
                       threads: int | None = None) -> np.ndarray:
    """Ray-traced path gain (len(txs), H, W) float32 dB of every transmitter of one layout, in one solve.

    One receiver per outdoor pixel centre at the Rx height; the path gain of a pixel is the
    power sum of its paths (sum of |a|^2, no phase: as RadioMapSeer's maps and sionna's own
    radio maps). ``PathSolver`` is used rather than ``RadioMapSolver`` because the Tx and the
    Rx are at the same height (1.5 m, as RadioMapSeer): a measurement plane through the Tx
    is never crossed by its direct or wall-reflected rays, so a radio map there has no LoS.
    ``threads``: drjit worker threads (None: drjit's default, one per core).
    """
    params = params or RTParams()
    rt = require_sionna()
    import drjit as dr  # noqa: PLC0415
    import mitsuba as mi  # noqa: PLC0415

    if threads is not None:
        dr.set_thread_count(max(1, int(threads)))
    h, w = scene.shape
    with tempfile.TemporaryDirectory(prefix="ckmbench-rt-") as tmp:
        rts = rt.load_scene(str(write_mitsuba_scene(scene, Path(tmp), params)), merge_shapes=True)
    rts.frequency = float(scene.frequency_hz)
    rts.tx_array = rt.PlanarArray(num_rows=1, num_cols=1, pattern="iso", polarization="V")
    rts.rx_array = rt.PlanarArray(num_rows=1, num_cols=1, pattern="iso", polarization="V")
    for k, (r, c, z) in enumerate(txs):
        x, y = _world(scene, np.array([[r, c]]))[0]
        rts.add(rt.Transmitter(name=f"tx{k}", position=mi.Point3f(float(x), float(y), float(z)),
                               power_dbm=float(scene.tx_power_dbm)))
    outdoor = np.flatnonzero(~scene.buildings.ravel())
    rr, cc = np.divmod(outdoor, w)
    z_rx = float(scene.rx_height_m)
    for k, (x, y) in enumerate(_world(scene, np.c_[rr, cc])):
        rts.add(rt.Receiver(name=f"rx{k}", position=mi.Point3f(float(x), float(y), z_rx)))
    paths = rt.PathSolver()(rts, max_depth=int(params.max_depth), samples_per_src=int(params.samples_per_tx),
                            synthetic_array=True, los=True, specular_reflection=params.specular_reflection,
                            diffuse_reflection=params.diffuse_reflection, refraction=params.refraction,
                            diffraction=params.diffraction, seed=int(params.seed))
    a_re, a_im = paths.a
    power = np.asarray(a_re.numpy(), np.float64) ** 2 + np.asarray(a_im.numpy(), np.float64) ** 2
    # (rx, rx antenna, tx, tx antenna, path) -> (tx, rx)
    pg_rx = power.reshape(power.shape[0], power.shape[1], power.shape[2], -1).sum(axis=(1, 3)).T
    pg = np.zeros((len(txs), h * w))
    pg[:, outdoor] = pg_rx
    pg = pg.reshape(len(txs), h, w)
    # the receiver on the Tx itself has no path: free space at 1 m there, as the DPM's distance clamp
    at_1m = (C_LIGHT / (4.0 * np.pi * float(scene.frequency_hz))) ** 2
    for k, (r, c, _) in enumerate(txs):
        pg[k, int(round(r)), int(round(c))] = max(pg[k, int(round(r)), int(round(c))], at_1m)
    return _to_db(pg, scene.buildings, params)


def simulate_rt(scene: Scene, params: RTParams | None = None, threads: int | None = None) -> np.ndarray:
    """Ray-traced path gain (H, W) float32 dB of ``scene.tx``."""
    return simulate_layout_rt(scene, [scene.tx], params, threads=threads)[0]
