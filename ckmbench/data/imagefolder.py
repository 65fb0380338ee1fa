"""Generic image-folder loader: CKMImageNet-style exports and users' own radio maps.

Layout::

    root/gain/<stem>.png | <stem>.npy     PNG: gray/255 (8-bit) or gray/65535 (16-bit) = u on
                                          gain_range; NPY: path gain in dB
    root/buildings/<stem>.png | .npy      optional masks, nonzero = building (or <scene>.png|.npy)
    root/tx.json                          optional {"<stem>": [row, col] or [row, col, h], ...}
    root/tx/<stem>.json                   optional [row, col] or [row, col, h]
    root/splits.json                      optional {"train": [stems or scene ids], ...}

Scene id = the stem's part before its last "_" when the rest is an integer (the tx index),
else the whole stem ("12_3" is scene 12, tx 3). Without a Tx file the Tx is the argmax of
the gain map. Splits are by scene; default ``scene_splits`` from ``sample.py``.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import CkmError
from .masks import IMAGE_SUFFIXES, as_gray, check_size, load_building_mask, read_npy, read_png
from .sample import SPLITS, MapDataset, scene_splits

CKMIMAGENET_GAIN_RANGE_DB = (-250.0, -50.0)
DEFAULT_TX_HEIGHT_M = 1.5


def scene_and_tx(stem: str) -> tuple[str, int]:
    """("12_3" -> ("12", 3)); a stem without an integer suffix is its own scene, tx 0."""
    head, sep, tail = stem.rpartition("_")
    if sep and head and tail.isdigit():
        return head, int(tail)
    return stem, 0


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _list_gain(folder: Path) -> dict[str, Path]:
    """{stem: file} for the .png/.npy maps in ``folder``; a stem present twice is an error."""
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if not entry.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise CkmError(f"image folder: {found[path.stem]} and {path} have the same stem: keep only one of them")
        found[path.stem] = path
    return found


def _read_gain(path: Path, gain_range: tuple[float, float]) -> np.ndarray:
    """One gain map in dB, float32 (H, W)."""
    what = "gain map"
    if path.suffix.lower() == ".npy":
        arr = read_npy(path, what)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise CkmError(f"{what}: {path} has shape {arr.shape} dtype {arr.dtype}: expected an (H, W) array of path gain in dB")
        gain = arr.astype(np.float32)
        if not np.all(np.isfinite(gain)):
            raise CkmError(f"{what}: {path} contains NaN or inf: replace them with the floor gain in dB")
        return gain
    arr = as_gray(read_png(path, what), path, what)
    if arr.dtype == np.uint8:
        u = arr.astype(np.float32) / 255.0
    elif arr.dtype in (np.uint16, np.int32) and arr.min() >= 0 and arr.max() <= 65535:
        u = arr.astype(np.float32) / 65535.0
    else:
        raise CkmError(f"{what}: {path} has {arr.dtype} pixels: save it as an 8- or 16-bit gray PNG")
    g_min, g_max = gain_range
    return (g_min + u * (g_max - g_min)).astype(np.float32)


def _read_tx_table(root: Path) -> dict | None:
    path = root / "tx.json"
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CkmError(f"image folder: cannot read {path} ({' '.join(str(exc).split())}): write it as {{\"<stem>\": [row, col], ...}}") from None
    if not isinstance(table, dict):
        raise CkmError(f"image folder: {path} is not a JSON object: write it as {{\"<stem>\": [row, col], ...}}")
    return table


def _parse_tx(value, source: str, shape, tx_height_m: float) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok:
        raise CkmError(f"image folder: Tx {value!r} in {source} is not [row, col] or [row, col, height_m]: fix it")
    row, col = float(value[0]), float(value[1])
    height = float(value[2]) if len(value) == 3 else tx_height_m
    h, w = shape
    if not (0 <= row <= h - 1 and 0 <= col <= w - 1):
        raise CkmError(f"image folder: Tx ({row:g}, {col:g}) in {source} is outside the {h}x{w} map: give [row, col] in pixels")
    return row, col, height


def _tx_for(root: Path, stem: str, gain: np.ndarray, table: dict | None, tx_height_m: float):
    shape = gain.shape
    per_file = root / "tx" / f"{stem}.json"
    if table is not None:
        if stem not in table:
            raise CkmError(f"image folder: {root / 'tx.json'} has no entry for '{stem}': add \"{stem}\": [row, col]")
        return _parse_tx(table[stem], str(root / "tx.json"), shape, tx_height_m)
    if per_file.is_file():
        try:
            value = json.loads(per_file.read_text())
        except (OSError, ValueError) as exc:
            raise CkmError(f"image folder: cannot read {per_file} ({' '.join(str(exc).split())}): write it as [row, col]") from None
        return _parse_tx(value, str(per_file), shape, tx_height_m)
    r, c = np.unravel_index(int(np.argmax(gain)), shape)
    return float(r), float(c), tx_height_m


def _building_file(root: Path, stem: str, scene: str) -> Path | None:
    folder = root / "buildings"
    for name in (stem, scene):
        for suffix in IMAGE_SUFFIXES:
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def _splits_from(spec, source: str, stems: dict[str, str]) -> dict[str, list[str]]:
    """{split: [scene ids]} from a splits.json-like mapping of stems or scene ids."""
    if not isinstance(spec, dict):
        raise CkmError(f"image folder: {source} is not a mapping of split -> list: write {{\"train\": [...], \"val\": [...], \"test\": [...]}}")
    scenes = set(stems.values())
    where: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for split, entries in spec.items():
        if split not in SPLITS:
            raise CkmError(f"image folder: {source} has split '{split}': use only {', '.join(SPLITS)}")
        if not isinstance(entries, list):
            raise CkmError(f"image folder: {source} split '{split}' is not a list: list stems or scene ids")
        out[split] = []
        for entry in entries:
            entry = str(entry)
            scene = stems.get(entry, entry if entry in scenes else None)
            if scene is None:
                raise CkmError(f"image folder: {source} lists '{entry}' ({split}), which is no stem or scene in gain/: fix or remove it")
            if where.get(scene, split) != split:
                raise CkmError(f"image folder: {source} puts scene '{scene}' in both {where[scene]} and {split}: splits are by scene, keep it in one")
            if scene not in where:
                where[scene] = split
                out[split].append(scene)
    return out


def load_image_folder(root, gain_range=(-147.0, -47.0), pixel_m: float = 1.0, name: str | None = None,
                      splits=None, tx_height_m: float = DEFAULT_TX_HEIGHT_M, workers: int | None = None) -> MapDataset:
    """Load ``root/gain/*.png|*.npy`` (+ optional buildings, Tx, splits) as a MapDataset.

    ``gain_range`` (g_min, g_max) dB is the scale of the PNG gray levels and the stored
    normalization range. ``splits`` (a dict like splits.json) overrides ``root/splits.json``;
    with neither, scenes are split by ``scene_splits``.
    """
    root = Path(root).expanduser()
    gain_dir = root / "gain"
    if not gain_dir.is_dir():
        raise CkmError(f"image folder: missing folder {gain_dir}: put the maps in <root>/gain/ and point --data-root at <root>")
    try:
        g_min, g_max = (float(v) for v in gain_range)
    except (TypeError, ValueError):
        raise CkmError(f"image folder: gain_range {gain_range!r} is not (g_min, g_max): give two numbers in dB") from None
    if not g_min < g_max:
        raise CkmError(f"image folder: gain_range ({g_min:g}, {g_max:g}) is empty: give g_min < g_max in dB")
    if not pixel_m > 0:
        raise CkmError(f"image folder: pixel_m {pixel_m!r} must be > 0: give metres per pixel")

    files = _list_gain(gain_dir)
    if not files:
        raise CkmError(f"image folder: no .png or .npy maps in {gain_dir}: add the gain maps there")
    stems = sorted(files, key=lambda s: (_natural_key(scene_and_tx(s)[0]), scene_and_tx(s)[1], _natural_key(s)))
    scene_of = {s: scene_and_tx(s)[0] for s in stems}
    keys = {}
    for s in stems:
        key = scene_and_tx(s)
        if key in keys:
            raise CkmError(f"image folder: {files[keys[key]]} and {files[s]} are both scene '{key[0]}' tx {key[1]}: rename one")
        keys[key] = s
    table = _read_tx_table(root)

    def load_one(stem: str):
        gain = _read_gain(files[stem], (g_min, g_max))
        scene, t = scene_and_tx(stem)
        mask_path = _building_file(root, stem, scene)
        bld = load_building_mask(mask_path, size=gain.shape) if mask_path is not None else np.zeros(gain.shape, bool)
        return gain, bld, _tx_for(root, stem, gain, table, float(tx_height_m)), scene, t

    n_workers = workers if workers is not None else min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        loaded = list(pool.map(load_one, stems))
    shape = loaded[0][0].shape
    for stem, item in zip(stems, loaded):
        check_size(item[0], shape, files[stem], "image folder gain map")

    if splits is None and (root / "splits.json").is_file():
        path = root / "splits.json"
        try:
            splits_spec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CkmError(f"image folder: cannot read {path} ({' '.join(str(exc).split())}): write it as {{\"train\": [...], ...}}") from None
        split_map = _splits_from(splits_spec, str(path), scene_of)
    elif splits is not None:
        split_map = _splits_from(splits, "the splits option", scene_of)
    else:
        split_map = scene_splits(list(scene_of.values()))

    n = len(loaded)
    return MapDataset(
        name=name or root.name or "image-folder",
        gain_db=np.stack([it[0] for it in loaded]),
        buildings=np.stack([it[1] for it in loaded]),
        cars=np.zeros((n, *shape), bool),
        tx=np.array([it[2] for it in loaded], np.float32),
        gain_range=np.tile(np.array([g_min, g_max], np.float32), (n, 1)),
        scene=np.array([it[3] for it in loaded], dtype=str),
        tx_index=np.array([it[4] for it in loaded], np.int64),
        pixel_m=float(pixel_m),
        splits=split_map,
        meta={"source": "image-folder", "root": str(root), "gain_range_db": [g_min, g_max]},
    )


def load_ckmimagenet(root, **kw) -> MapDataset:
    """CKMImageNet exports: the image-folder layout on the (-250, -50) dB scale (docs/protocol.md §1)."""
    kw.setdefault("gain_range", CKMIMAGENET_GAIN_RANGE_DB)
    kw.setdefault("name", "ckmimagenet")
    ds = load_image_folder(root, **kw)
    ds.meta["source"] = "ckmimagenet"
    return ds
