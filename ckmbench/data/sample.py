"""The radio-map sample model (docs/protocol.md §1) and an in-memory dataset of samples.

A sample is one transmitter in one scene. Methods and metrics work on the normalized map
``u = clip((g - g_min) / (g_max - g_min), 0, 1)`` with building pixels at 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..errors import CkmError
from .ondisk import DiskRows, materialize

SPLITS = ("train", "val", "test")


def normalize(gain_db: np.ndarray, gain_range, buildings: np.ndarray | None = None) -> np.ndarray:
    """Path gain in dB -> u in [0, 1]; building pixels are 0."""
    g_min, g_max = float(gain_range[0]), float(gain_range[1])
    u = np.clip((np.asarray(gain_db, np.float32) - g_min) / (g_max - g_min), 0.0, 1.0).astype(np.float32)
    if buildings is not None:
        u = np.where(buildings, np.float32(0.0), u)
    return u


def denormalize(u, gain_range):
    """u in [0, 1] -> path gain in dB (works on numpy arrays and torch tensors)."""
    g_min, g_max = float(gain_range[0]), float(gain_range[1])
    return g_min + u * (g_max - g_min)


@dataclass
class Sample:
    """One transmitter in one scene."""

    gain_db: np.ndarray  # (H, W) float32, path gain in dB (negative)
    buildings: np.ndarray  # (H, W) bool
    cars: np.ndarray  # (H, W) bool, may be all False
    tx: tuple[float, float, float]  # (row, col, height m)
    pixel_m: float
    gain_range: tuple[float, float]  # (g_min, g_max) dB
    dataset: str
    scene: str
    tx_index: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.gain_db.shape)

    @property
    def u(self) -> np.ndarray:
        return normalize(self.gain_db, self.gain_range, self.buildings)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.scene}/{self.tx_index}"


@dataclass
class MapDataset(Sequence[Sample]):
    """Samples stored as stacked arrays, with scene-level splits.

    The three image arrays may be :class:`~ckmbench.data.ondisk.DiskRows` (an on-disk
    cache, docs/scale.md): indexing one sample reads it, ``take``/``split`` stay lazy.

    ``splits`` maps a split name to the scene ids in it; a scene is in exactly one split,
    so no test scene is ever seen in training.
    """

    name: str
    gain_db: np.ndarray  # (N, H, W) float32
    buildings: np.ndarray  # (N, H, W) bool
    cars: np.ndarray  # (N, H, W) bool
    tx: np.ndarray  # (N, 3) float32: row, col, height m
    gain_range: np.ndarray  # (N, 2) float32
    scene: np.ndarray  # (N,) str
    tx_index: np.ndarray  # (N,) int
    pixel_m: float
    splits: dict[str, list[str]] = field(default_factory=dict)
    content_hash: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.gain_db)
        for attr in ("buildings", "cars", "tx", "gain_range", "scene", "tx_index"):
            if len(getattr(self, attr)) != n:
                raise CkmError(f"dataset '{self.name}': field '{attr}' has {len(getattr(self, attr))} rows, expected {n}")
        if not self.content_hash:
            self.content_hash = self.compute_hash()

    def __len__(self) -> int:
        return len(self.gain_db)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        return Sample(
            gain_db=self.gain_db[i],
            buildings=self.buildings[i],
            cars=self.cars[i],
            tx=tuple(float(v) for v in self.tx[i]),
            pixel_m=float(self.pixel_m),
            gain_range=(float(self.gain_range[i, 0]), float(self.gain_range[i, 1])),
            dataset=self.name,
            scene=str(self.scene[i]),
            tx_index=int(self.tx_index[i]),
        )

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.gain_db.shape[1:])

    def u(self) -> np.ndarray:
        """All normalized maps, (N, H, W) float32, building pixels 0."""
        g_min = self.gain_range[:, 0, None, None]
        g_max = self.gain_range[:, 1, None, None]
        u = np.clip((materialize(self.gain_db) - g_min) / (g_max - g_min), 0.0, 1.0).astype(np.float32)
        u[materialize(self.buildings)] = 0.0
        return u

    def take(self, idx) -> "MapDataset":
        """A subset by sample index (keeps splits restricted to the scenes present)."""
        idx = np.asarray(idx, dtype=np.int64)
        scenes = set(self.scene[idx].tolist())
        splits = {k: [s for s in v if s in scenes] for k, v in self.splits.items()}
        return MapDataset(
            name=self.name,
            gain_db=self.gain_db[idx],
            buildings=self.buildings[idx],
            cars=self.cars[idx],
            tx=self.tx[idx],
            gain_range=self.gain_range[idx],
            scene=self.scene[idx],
            tx_index=self.tx_index[idx],
            pixel_m=self.pixel_m,
            splits=splits,
            content_hash=self.content_hash if len(idx) == len(self) else self._subset_hash(idx),
            meta=dict(self.meta),
        )

    def _subset_hash(self, idx: np.ndarray) -> str:
        """"" (computed from the arrays) in memory; on disk, derived from this dataset's hash and
        the indices -- it pins the content just as well, without reading the whole subset."""
        if not isinstance(self.gain_db, DiskRows):
            return ""
        return hashlib.sha256(f"{self.content_hash}|subset|".encode() + idx.tobytes()).hexdigest()

    def split(self, name: str) -> "MapDataset":
        """The samples of the scenes in split ``name`` (train/val/test)."""
        if name not in self.splits:
            raise CkmError(f"dataset '{self.name}' has no split '{name}': it has {', '.join(self.splits) or 'none'}")
        wanted = set(self.splits[name])
        idx = np.flatnonzero(np.isin(self.scene, list(wanted)))
        sub = self.take(idx)
        sub.splits = {name: [s for s in self.splits[name]]}
        return sub

    def compute_hash(self) -> str:
        """sha256 over the arrays and ids: changes whenever any map or id changes."""
        h = hashlib.sha256()
        for arr in (self.gain_db, self.buildings, self.cars, self.tx, self.gain_range, self.tx_index):
            if isinstance(arr, DiskRows):  # the same bytes, streamed: an on-disk dataset is never all in RAM
                h.update(str(arr.dtype).encode() + str(arr.shape).encode())
                for block in arr.chunks():
                    h.update(np.ascontiguousarray(block).reshape(-1).view(np.uint8))
                continue
            a = np.ascontiguousarray(arr)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.reshape(-1).view(np.uint8))
        h.update("\n".join(map(str, self.scene)).encode())
        h.update(repr(float(self.pixel_m)).encode())
        return h.hexdigest()

    @classmethod
    def from_samples(cls, name: str, samples: list[Sample], splits: dict[str, list[str]], meta=None) -> "MapDataset":
        if not samples:
            raise CkmError(f"dataset '{name}' is empty: check the data folder or generator options")
        shapes = {s.shape for s in samples}
        if len(shapes) != 1:
            raise CkmError(f"dataset '{name}': maps have different sizes {sorted(shapes)}; resize them to one size")
        return cls(
            name=name,
            gain_db=np.stack([s.gain_db for s in samples]).astype(np.float32),
            buildings=np.stack([s.buildings for s in samples]).astype(bool),
            cars=np.stack([s.cars for s in samples]).astype(bool),
            tx=np.array([s.tx for s in samples], np.float32),
            gain_range=np.array([s.gain_range for s in samples], np.float32),
            scene=np.array([s.scene for s in samples]),
            tx_index=np.array([s.tx_index for s in samples], np.int64),
            pixel_m=float(samples[0].pixel_m),
            splits=splits,
            meta=dict(meta or {}),
        )


def scene_splits(scene_ids: list[str], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[str]]:
    """Deterministic scene-level train/val/test split by a seeded shuffle."""
    ids = sorted(set(scene_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    if len(ids) >= 3:
        n_train = min(max(n_train, 1), len(ids) - 2)
        n_val = max(n_val, 1)
    shuffled = [ids[i] for i in order]
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train:n_train + n_val],
        "test": shuffled[n_train + n_val:],
    }
