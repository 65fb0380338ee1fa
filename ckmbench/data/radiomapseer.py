"""Loader for the real RadioMapSeer dataset in its own on-disk layout.

Layout read (Yapar et al., arXiv 2212.11777; RadioUNet conventions)::

    gain/{DPM,IRT2,IRT4,carsDPM,carsIRT2,carsIRT4}/{map}_{tx}.png   8-bit path gain
    png/buildings_complete/{map}.png                                 gray > 0 = building
    png/cars/{map}.png                                               gray > 0 = car
    antenna/{map}.json                                               [[x, y], ...] per tx
    png/antennas/{map}_{tx}.png                                      255 at the Tx (fallback)

gray/255 = u on (-147, -47) dB, 1 m per pixel, Tx height 1.5 m; pixel row = H-1-y, col = x.
The standard split is the RadioUNet one (docs/protocol.md §2); maps outside 1..700 are test maps.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import CkmError
from .masks import as_gray, check_size, read_png
from .sample import MapDataset

SIMULATIONS = ("DPM", "IRT2", "IRT4")
GAIN_RANGE_DB = (-147.0, -47.0)
PIXEL_M = 1.0
TX_HEIGHT_M = 1.5
N_STANDARD_MAPS = 700
SPLIT_SIZES = {"train": 501, "val": 100, "test": 99}
SHIPPED_MAP0 = Path(__file__).resolve().parent / "assets" / "radiomapseer-map0"

_GAIN_NAME = re.compile(r"^(\d+)_(\d+)\.png$")
_DB_PER_GRAY = np.float32((GAIN_RANGE_DB[1] - GAIN_RANGE_DB[0]) / 255.0)


def _gray_to_db(gray: np.ndarray, out: np.ndarray) -> None:
    """gain_db = -147 + gray / 255 * 100, written in place (no temporaries: 56,000 maps)."""
    np.multiply(gray, _DB_PER_GRAY, out=out, dtype=np.float32)
    out += np.float32(GAIN_RANGE_DB[0])


@lru_cache(maxsize=1)
def _standard_order() -> tuple[int, ...]:
    # Same draws as RadioUNet's `np.random.seed(42); np.random.shuffle(ids)`, without
    # touching numpy's global random state.
    ids = np.arange(N_STANDARD_MAPS)
    np.random.RandomState(42).shuffle(ids)
    return tuple(int(i) + 1 for i in ids)


def standard_split() -> dict[str, list[int]]:
    """The RadioUNet split of map ids 1..700: train 501, val 100, test 99."""
    order = list(_standard_order())
    n_train, n_val = SPLIT_SIZES["train"], SPLIT_SIZES["val"]
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


@lru_cache(maxsize=1)
def _split_lookup() -> dict[int, str]:
    return {m: name for name, ids in standard_split().items() for m in ids}


def split_of(map_id: int) -> str:
    """The standard split of one map; maps outside 1..700 (e.g. the shipped map 0) are test."""
    return _split_lookup().get(int(map_id), "test")


@dataclass(frozen=True)
class _Layout:
    """Folders of one RadioMapSeer root for one simulation variant."""

    root: Path
    gain: Path
    buildings: Path
    cars: Path | None
    antenna_json: Path
    antenna_png: Path

    def gain_file(self, m: int, t: int) -> Path:
        return self.gain / f"{m}_{t}.png"


def _layout(root, simulation: str, cars: bool) -> tuple[_Layout, str]:
    sim = str(simulation).upper()
    if sim not in SIMULATIONS:
        raise CkmError(f"radiomapseer: unknown simulation '{simulation}': choose one of {', '.join(SIMULATIONS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CkmError(f"radiomapseer: missing folder {root}: point --data-root at the RadioMapSeer root")
    lay = _Layout(
        root=root,
        gain=root / "gain" / (f"cars{sim}" if cars else sim),
        buildings=root / "png" / "buildings_complete",
        cars=root / "png" / "cars" if cars else None,
        antenna_json=root / "antenna",
        antenna_png=root / "png" / "antennas",
    )
    for folder in (lay.gain, lay.buildings, lay.cars):
        if folder is not None and not folder.is_dir():
            raise CkmError(f"radiomapseer: missing folder {folder}: point --data-root at the RadioMapSeer root")
    return lay, sim


def _scan_gain(folder: Path) -> dict[int, list[int]]:
    """{map id: sorted tx ids} from the names in one gain folder (one directory listing)."""
    found: dict[int, list[int]] = {}
    with os.scandir(folder) as it:
        for entry in it:
            match = _GAIN_NAME.match(entry.name)
            if match:
                found.setdefault(int(match.group(1)), []).append(int(match.group(2)))
    return {m: sorted(t) for m, t in found.items()}


def _as_ids(values, what: str) -> list[int]:
    if isinstance(values, str):  # "1,2,3" from a command line
        values = [v for v in values.replace(" ", "").split(",") if v]
    elif isinstance(values, (int, np.integer)):
        values = [values]
    try:
        ids = [int(v) for v in values]
    except (TypeError, ValueError):
        raise CkmError(f"radiomapseer: {what} must be integers, got {values!r}: pass ids like 1,2,3") from None
    if any(i < 0 for i in ids):
        raise CkmError(f"radiomapseer: {what} must be >= 0, got {values!r}: pass non-negative ids")
    return sorted(set(ids))


def _select(lay: _Layout, maps, txs) -> list[tuple[int, list[int]]]:
    """[(map id, tx ids)] to read, in map then tx order."""
    found = _scan_gain(lay.gain)
    wanted_maps = _as_ids(maps, "maps") if maps is not None else sorted(found)
    wanted_txs = _as_ids(txs, "txs") if txs is not None else None
    plan = []
    for m in wanted_maps:
        if wanted_txs is not None:
            plan.append((m, wanted_txs))  # missing files are reported when read
        elif m in found:
            plan.append((m, found[m]))
        else:
            raise CkmError(f"radiomapseer: no gain files for map {m} in {lay.gain}: drop it from --maps or check the simulation")
    if not plan or not any(t for _, t in plan):
        raise CkmError(f"radiomapseer: no gain files named <map>_<tx>.png in {lay.gain}: point --data-root at the RadioMapSeer root")
    return plan


def _read_gray8(path: Path, what: str, size) -> np.ndarray:
    label = f"radiomapseer {what}"
    if not path.is_file():
        raise CkmError(f"{label}: missing file {path}: restore it from the dataset or leave its map/tx out (maps=, txs=)")
    arr = as_gray(read_png(path, label), path, label)
    if arr.dtype != np.uint8:
        raise CkmError(f"{label}: {path} is {arr.dtype} data: expected an 8-bit gray PNG as in RadioMapSeer")
    check_size(arr, size, path, label)
    return arr


def _tx_positions(lay: _Layout, m: int, txs: list[int], shape: tuple[int, int]) -> list[tuple[int, int, Path]]:
    """(row, col, source file) per tx: antenna/{map}.json when present, else the antennas PNG argmax."""
    h, w = shape
    json_path = lay.antenna_json / f"{m}.json"
    out = []
    if json_path.is_file():
        try:
            points = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            raise CkmError(f"radiomapseer: cannot read {json_path} ({' '.join(str(exc).split())}): replace it with a valid JSON list of [x, y]") from None
        if not isinstance(points, list):
            raise CkmError(f"radiomapseer: {json_path} is not a list of [x, y]: replace it with the dataset's antenna file")
        for t in txs:
            if t >= len(points):
                raise CkmError(f"radiomapseer: {json_path} has {len(points)} transmitters, no tx {t}: restore the dataset's antenna file")
            p = points[t]
            if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)):
                raise CkmError(f"radiomapseer: {json_path} entry {t} is {p!r}, expected [x, y]: restore the dataset's antenna file")
            x, y = p
            out.append((int(round(h - 1 - y)), int(round(x)), json_path))
        return out
    for t in txs:
        png = lay.antenna_png / f"{m}_{t}.png"
        if not png.is_file():
            raise CkmError(f"radiomapseer: no Tx position for map {m} tx {t}: add {json_path} or {png}")
        img = _read_gray8(png, "antenna image", shape)
        if img.max() == 0:
            raise CkmError(f"radiomapseer: {png} is all zero, no transmitter marked: restore the dataset's antenna image")
        r, c = np.unravel_index(int(np.argmax(img)), img.shape)
        out.append((int(r), int(c), png))
    return out


def _check_tx(r: int, c: int, source: Path, t: int, buildings: np.ndarray) -> None:
    h, w = buildings.shape
    if not (0 <= r < h and 0 <= c < w):
        raise CkmError(f"radiomapseer: tx {t} in {source} is at pixel ({r}, {c}), outside the {h}x{w} map: fix its [x, y]")
    # Inside = the Tx pixel and its whole 3x3 neighbourhood are building (tolerates one-pixel
    # rasterization differences at walls).
    window = buildings[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
    if window.all():
        raise CkmError(f"radiomapseer: tx {t} in {source} is at pixel ({r}, {c}), inside a building: fix its [x, y] or the building mask")


def _for_each_map(count: int, load_one, workers: int | None, bar, skip=frozenset(), on_done=None) -> None:
    """``load_one(k)`` for every plan entry k not in ``skip``, on ``workers`` threads; the bar
    advances by what each returns; the first failing entry (lowest k) is raised."""
    todo = [k for k in range(count) if k not in skip]
    n_workers = workers if workers is not None else min(16, 2 * (os.cpu_count() or 1))
    if n_workers <= 1:
        for k in todo:
            bar.update(load_one(k))
            if on_done is not None:
                on_done(k)
        return
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        index = {pool.submit(load_one, k): k for k in todo}
        pending = set(index)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                for f in pending:
                    f.cancel()
                # Maps start in order, so once the running ones finish, the failure
                # with the lowest index is the first bad map: the same error every run.
                wait(pending)
                failed = [f for f in index if not f.cancelled() and f.exception() is not None]
                raise min(failed, key=index.get).exception()
            for f in done:
                bar.update(f.result())
                if on_done is not None:
                    on_done(index[f])


def _read_map(lay: _Layout, m: int, tx_ids: list[int], shape):
    """One map's files: (gain gray (T,H,W) uint8, buildings, cars or None, tx (T,3)), every check applied."""
    bld = _read_gray8(lay.buildings / f"{m}.png", "buildings", shape) > 0
    car = _read_gray8(lay.cars / f"{m}.png", "cars", shape) > 0 if lay.cars is not None else None
    positions = _tx_positions(lay, m, tx_ids, shape)
    gray = np.empty((len(tx_ids), *shape), np.uint8)
    tx = np.empty((len(tx_ids), 3), np.float32)
    for j, (t, (r, c, source)) in enumerate(zip(tx_ids, positions)):
        _check_tx(r, c, source, t, bld)
        gray[j] = _read_gray8(lay.gain_file(m, t), "gain map", shape)
        tx[j] = (r, c, TX_HEIGHT_M)
    return gray, bld, car, tx


@dataclass(frozen=True)
class _Plan:
    """What a load reads: the layout, [(map, tx ids)], the map size and each map's first row."""

    lay: _Layout
    sim: str
    cars: bool
    maps: list
    shape: tuple
    starts: np.ndarray

    @property
    def n(self) -> int:
        return int(self.starts[-1])

    def scene(self) -> np.ndarray:
        return np.repeat([str(m) for m, _ in self.maps], [len(t) for _, t in self.maps]).astype(str)

    def tx_index(self) -> np.ndarray:
        return np.array([t for _, ts in self.maps for t in ts], np.int64)

    def splits(self) -> dict[str, list[str]]:
        present = [m for m, _ in self.maps]
        present_set = set(present)
        lookup = _split_lookup()
        splits = {name_: [str(m) for m in ids if m in present_set] for name_, ids in standard_split().items()}
        splits["test"] += [str(m) for m in present if m not in lookup]
        return splits

    def default_name(self) -> str:
        return f"radiomapseer-cars-{self.sim.lower()}" if self.cars else f"radiomapseer-{self.sim.lower()}"

    def meta(self) -> dict:
        return {"source": "radiomapseer", "root": str(self.lay.root), "simulation": self.sim, "cars": bool(self.cars),
                "tx_height_m": TX_HEIGHT_M, "gain_scale_db": list(GAIN_RANGE_DB)}

    def bar(self, progress: bool, what: str = "radiomapseer"):
        return tqdm(total=self.n, desc=f"{what} {('cars' if self.cars else '') + self.sim}", unit="map",
                    disable=not progress)


def _plan(root, simulation: str, cars: bool, maps, txs) -> _Plan:
    lay, sim = _layout(root, simulation, cars)
    plan = _select(lay, maps, txs)
    shape = _read_gray8(lay.buildings / f"{plan[0][0]}.png", "buildings", None).shape
    return _Plan(lay, sim, bool(cars), plan, shape, np.cumsum([0] + [len(t) for _, t in plan]))


def load_radiomapseer(root, simulation: str = "DPM", cars: bool = False, maps=None, txs=None,
                      name: str | None = None, progress: bool = True, workers: int | None = None) -> MapDataset:
    """Load RadioMapSeer from ``root`` as a MapDataset (one sample per map and transmitter).

    ``simulation`` is DPM, IRT2 or IRT4; ``cars=True`` reads ``gain/cars<sim>/`` and
    ``png/cars/``. ``maps``/``txs`` restrict what is read (default: every map in the gain
    folder and every tx whose gain file exists). PNGs are decoded on ``workers`` threads
    (default 2 x CPUs, at most 16) straight into preallocated arrays. Everything is held in
    RAM; :func:`convert_radiomapseer` makes the on-disk cache instead (docs/scale.md).
    """
    p = _plan(root, simulation, cars, maps, txs)
    n, shape = p.n, p.shape
    gain_db = np.empty((n, *shape), np.float32)
    buildings = np.empty((n, *shape), bool)
    cars_arr = np.zeros((n, *shape), bool)
    tx = np.empty((n, 3), np.float32)

    def load_one(k: int) -> int:
        m, tx_ids = p.maps[k]
        lo, hi = int(p.starts[k]), int(p.starts[k + 1])
        gray, bld, car, tx[lo:hi] = _read_map(p.lay, m, tx_ids, shape)
        for j in range(len(tx_ids)):
            _gray_to_db(gray[j], gain_db[lo + j])
        buildings[lo:hi] = bld
        if car is not None:
            cars_arr[lo:hi] = car
        return len(tx_ids)

    bar = p.bar(progress)
    try:
        _for_each_map(len(p.maps), load_one, workers, bar)
    finally:
        bar.close()
    return MapDataset(
        name=name or p.default_name(), gain_db=gain_db, buildings=buildings, cars=cars_arr, tx=tx,
        gain_range=np.tile(np.array(GAIN_RANGE_DB, np.float32), (n, 1)), scene=p.scene(), tx_index=p.tx_index(),
        pixel_m=PIXEL_M, splits=p.splits(), meta=p.meta())


def source_fingerprint(root, simulation: str = "DPM", cars: bool = False) -> str:
    """sha256 over the names, sizes and mtimes of the files a load reads: a changed folder is
    a new on-disk cache entry, never a stale one."""
    lay, _ = _layout(root, simulation, cars)
    h = hashlib.sha256()
    for folder in (lay.gain, lay.buildings, lay.cars, lay.antenna_json, lay.antenna_png):
        if folder is None or not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            rows = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
        h.update(f"{folder.relative_to(lay.root)}\n".encode() + json.dumps(rows).encode())
    return h.hexdigest()


def convert_radiomapseer(work: Path, root, simulation: str = "DPM", cars: bool = False, maps=None, txs=None,
                         name: str | None = None, progress: bool = True, workers: int | None = None) -> MapDataset:
    """Write RadioMapSeer from ``root`` into the folder ``work`` as on-disk rows, map by map,
    and return the dataset reading them (equal to :func:`load_radiomapseer`'s, content hash
    included). Gain is kept as the 8-bit gray it is published in (decoded to dB on read),
    building and car masks once per map. Resumable: ``work/progress.json`` lists the maps
    written (after an fsync), so a killed conversion goes on from there.
    """
    from .cache import OnDiskWriter

    p = _plan(root, simulation, cars, maps, txs)
    n, shape, n_maps = p.n, p.shape, len(p.maps)
    plan_id = hashlib.sha256(json.dumps([str(p.lay.root), p.sim, p.cars, p.maps, list(shape)]).encode()).hexdigest()
    writer = OnDiskWriter(Path(work), plan_id, {
        "gain_gray": (np.uint8, (n, *shape)), "buildings": (bool, (n_maps, *shape)),
        "cars": (bool, (n_maps if cars else 1, *shape)), "tx": (np.float32, (n, 3)),
    })
    bar = p.bar(progress, "convert")
    bar.update(sum(len(p.maps[k][1]) for k in writer.done))

    def write_one(k: int) -> int:
        m, tx_ids = p.maps[k]
        lo = int(p.starts[k])
        gray, bld, car, tx = _read_map(p.lay, m, tx_ids, shape)
        for j in range(len(tx_ids)):
            writer.write("gain_gray", lo + j, gray[j])
            writer.write("tx", lo + j, tx[j])
        writer.write("buildings", k, bld)
        if car is not None:
            writer.write("cars", k, car)
        return len(tx_ids)

    try:
        _for_each_map(n_maps, write_one, workers, bar, skip=writer.done, on_done=writer.mark_done)
    finally:
        bar.close()
        writer.checkpoint()
    scene_rows = np.repeat(np.arange(n_maps), [len(t) for _, t in p.maps])
    return writer.dataset(
        name=name or p.default_name(), decode={"gain_gray": ("gain_db", float(_DB_PER_GRAY), GAIN_RANGE_DB[0])},
        rows={"buildings": scene_rows, "cars": scene_rows if cars else np.zeros(n, np.int64)},
        small={"gain_range": np.tile(np.array(GAIN_RANGE_DB, np.float32), (n, 1)), "scene": p.scene(),
               "tx_index": p.tx_index()},
        pixel_m=PIXEL_M, splits=p.splits(), meta=p.meta())


def load_map0(**kw) -> MapDataset:
    """The real RadioMapSeer map-0 sample shipped in the package (5 DPM transmitters).

    All its samples are in split "test" and it has no other split: tasks that need training
    data use ``--train-dataset``.
    """
    kw.setdefault("name", "radiomapseer-map0")
    ds = load_radiomapseer(SHIPPED_MAP0, **kw)
    ds.splits = {"test": sorted(set(ds.scene.tolist()), key=int)}
    return ds


SHIPPED_SAMPLES = Path(__file__).resolve().parent / "assets" / "radiomapseer-samples"
_SAMPLE_NAME = re.compile(r"^s(\d+)\.png$")


def _gain_only_samples(folder: Path, name: str) -> MapDataset:
    """Maps published as gain PNGs only (``gain/DPM/sNN.png``): the layout is recovered from
    the map itself, as RadioMapSeer draws it -- buildings are the pixels at gray 0 (the
    -147 dB floor), the transmitter is the brightest pixel -- because nothing else is given."""
    gain_dir = folder / "gain" / "DPM"
    files = sorted(p for p in gain_dir.glob("s*.png") if _SAMPLE_NAME.match(p.name)) if gain_dir.is_dir() else []
    if not files:
        raise CkmError(f"radiomapseer samples: no gain/DPM/sNN.png files in {folder}: reinstall ckmbench "
                       "(the package data is missing)")
    grays = [_read_gray8(p, "gain map", (256, 256)) for p in files]
    n = len(files)
    gain_db = np.empty((n, 256, 256), np.float32)
    tx = np.empty((n, 3), np.float32)
    for i, gray in enumerate(grays):
        _gray_to_db(gray, gain_db[i])
        r, c = np.unravel_index(int(np.argmax(gray)), gray.shape)
        tx[i] = (r, c, TX_HEIGHT_M)
    scene = np.array([p.stem for p in files])
    return MapDataset(
        name=name, gain_db=gain_db, buildings=np.stack(grays) == 0, cars=np.zeros((n, 256, 256), bool), tx=tx,
        gain_range=np.tile(np.array(GAIN_RANGE_DB, np.float32), (n, 1)), scene=scene,
        tx_index=np.zeros(n, np.int64), pixel_m=PIXEL_M, splits={"test": scene.tolist()}, meta={})


def load_samples(name: str = "radiomapseer-samples", progress: bool = False, **_) -> MapDataset:
    """The 25 real RadioMapSeer DPM maps shipped in the package: map 0 with its 5
    transmitters (full layout) and 20 gain-only maps of 20 other layouts (``sNN``, from the
    test maps of the standard split). Test split only; there is nothing here to train on.

    The paper-protocol rows (docs/protocol.md §7) are scored on it; users with the full
    dataset score the same protocols on ``radiomapseer-dpm``.
    """
    map0 = load_map0(progress=progress)
    rest = _gain_only_samples(SHIPPED_SAMPLES, name)
    cat = {k: np.concatenate([getattr(map0, k), getattr(rest, k)])
           for k in ("gain_db", "buildings", "cars", "tx", "gain_range", "tx_index")}
    scene = np.concatenate([map0.scene.astype(str), rest.scene.astype(str)])
    return MapDataset(
        name=name, scene=scene, pixel_m=PIXEL_M, splits={"test": list(dict.fromkeys(scene.tolist()))},
        meta={"source": "radiomapseer", "simulation": "DPM", "cars": False, "tx_height_m": TX_HEIGHT_M,
              "gain_scale_db": list(GAIN_RANGE_DB), "sample_of": "radiomapseer-dpm",
              "layout_from_gain": [str(s) for s in rest.scene]},
        **cat)
