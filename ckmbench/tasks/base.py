"""Task machinery shared by every task: seeded degradations, observations, batching.

A task turns a sample into (observation, target). Every random choice is drawn from a
generator seeded by a hash of (dataset, scene, tx, task, seed), so every method sees the
identical observation (docs/protocol.md §3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..data.sample import Sample

# What an observation can carry; a task declares which of these it provides.
OBSERVATION_FIELDS = ("y", "mask", "buildings", "cars", "tx_map", "tx")


def degradation_seed(dataset: str, scene: str, tx_index: int, task: str, seed: int, draw: int | None = None) -> int:
    """A 64-bit seed from (dataset, scene, tx, task, seed); stable across runs and machines.

    ``draw`` = k selects the k-th fresh degradation of the sample for training (methods that
    draw a new degradation every step, e.g. CKMDiff Alg. 1); ``None`` is the fixed
    observation every method is scored on, so the test observations never change.
    """
    text = f"{dataset}|{scene}|{int(tx_index)}|{task}|{int(seed)}"
    if draw is not None:
        text += f"|draw{int(draw)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def tx_one_hot(sample: Sample) -> np.ndarray:
    """(H, W) float32 map with 1 at the transmitter pixel."""
    out = np.zeros(sample.shape, np.float32)
    r = int(np.clip(round(sample.tx[0]), 0, sample.shape[0] - 1))
    c = int(np.clip(round(sample.tx[1]), 0, sample.shape[1] - 1))
    out[r, c] = 1.0
    return out


@dataclass
class Observation:
    """A batch of what a method sees for a task; fields a task does not provide are None.

    Image fields are float32 tensors (B, 1, h, w); ``y`` may be low-resolution (sr tasks),
    every other image field is at the target size ``out_shape``. ``mask`` is 1 where a
    pixel was observed. ``tx`` is (B, 3): row, col, height in metres.
    """

    task: str
    out_shape: tuple[int, int]
    gain_range: torch.Tensor  # (B, 2) dB
    pixel_m: torch.Tensor  # (B,)
    keys: list[str]
    y: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    buildings: torch.Tensor | None = None
    cars: torch.Tensor | None = None
    tx_map: torch.Tensor | None = None
    tx: torch.Tensor | None = None
    factor: int | None = None
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device) -> "Observation":
        """A copy with every tensor moved to ``device``."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return Observation(**kw)


class Task:
    """Base class of a task. Subclasses set ``kind``/``provides`` and implement ``observe``.

    ``observe(sample, rng)`` returns a dict with the provided fields as numpy arrays:
    images (h, w) float32, ``tx`` (3,) float32. ``target(sample)`` is the map to recover,
    normally ``sample.u``. ``fit_task`` names the task a method is trained on (zero-shot
    tasks train on ``sr4``); ``scored_regions(sample, obs)`` returns extra boolean masks
    (e.g. ``{"hole": ...}``) for suffixed metric variants.
    """

    name: str = ""
    kind: str = ""
    provides: tuple[str, ...] = ()
    factor: int | None = None
    fit_task: str | None = None
    description: str = ""
    # the metrics that score this task (None: every metric scored by default)
    metrics: tuple[str, ...] | None = None

    def observe(self, sample: Sample, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def target(self, sample: Sample) -> np.ndarray:
        return sample.u

    def scored_regions(self, sample: Sample, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Boolean masks for suffixed metrics; every task scores ``@outdoor`` (outside buildings)."""
        return {"outdoor": ~sample.buildings}

    @property
    def train_task(self) -> str:
        return self.fit_task or self.name

    def rng(self, sample: Sample, seed: int, draw: int | None = None) -> np.random.Generator:
        return np.random.default_rng(degradation_seed(sample.dataset, sample.scene, sample.tx_index, self.name, seed, draw))

    def observe_seeded(self, sample: Sample, seed: int, draw: int | None = None) -> dict[str, np.ndarray]:
        """The observation of ``sample``: the fixed one (``draw=None``) or fresh draw number ``draw``."""
        return self.observe(sample, self.rng(sample, seed, draw))

    def batch(self, samples: list[Sample], seed: int,
              draw: int | None = None) -> tuple[Observation, torch.Tensor, dict[str, torch.Tensor]]:
        """(observation, targets (B,1,H,W), regions {name: bool (B,1,H,W)}) for a list of samples.

        ``draw`` = k gives every sample its k-th fresh degradation (training only)."""
        per = [self.observe_seeded(s, seed, draw) for s in samples]
        targets = torch.from_numpy(np.stack([self.target(s) for s in samples]).astype(np.float32))[:, None]
        kw = {}
        for name in OBSERVATION_FIELDS:
            vals = [p.get(name) for p in per]
            if any(v is None for v in vals):
                continue
            arr = torch.from_numpy(np.stack(vals).astype(np.float32))
            kw[name] = arr if name == "tx" else arr[:, None]
        regions_np = [self.scored_regions(s, p) for s, p in zip(samples, per)]
        regions = {
            k: torch.from_numpy(np.stack([r[k] for r in regions_np]).astype(bool))[:, None]
            for k in (regions_np[0] if regions_np else {})
        }
        obs = Observation(
            task=self.name,
            out_shape=samples[0].shape,
            gain_range=torch.tensor([s.gain_range for s in samples], dtype=torch.float32),
            pixel_m=torch.tensor([s.pixel_m for s in samples], dtype=torch.float32),
            keys=[s.key for s in samples],
            factor=self.factor,
            **kw,
        )
        return obs, targets, regions
