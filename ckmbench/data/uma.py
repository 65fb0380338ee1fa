"""The ``city-uma`` datasets: channel-power maps without buildings from the 3GPP TR 38.901
UMa model in ``ckmbench.sim.uma`` (the CGDM paper's setting).

Each map is min-max normalized on its own (CGDM eq. 53), so its ``gain_range`` is (min, max)
of that map.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from tqdm.auto import tqdm

from ..errors import CkmError
from ..sim.uma import UmaParams, simulate_uma_map
from .sample import MapDataset, scene_splits


def build_uma_dataset(name: str = "city-uma", size: int = 128, pixel_m: float = 1.0, n_maps: int = 1000,
                      seed: int = 0, progress: bool = True, params: UmaParams | None = None) -> MapDataset:
    """The channel-power dataset without buildings: one scene per map, scene-level splits.

    Map i is drawn from ``SeedSequence([seed, i])``, so a map does not depend on ``n_maps``.
    ``gain_range`` per sample is that map's (min, max) gain (CGDM eq. 53).
    """
    if int(size) < 2 or int(n_maps) < 1 or not pixel_m > 0:
        raise CkmError(f"uma: size {size}, n_maps {n_maps}, pixel_m {pixel_m}: need size >= 2, n_maps >= 1, pixel_m > 0")
    p = params or UmaParams()
    n = int(n_maps)
    gain = np.empty((n, size, size), np.float32)
    tx = np.empty((n, 3), np.float32)
    gain_range = np.empty((n, 2), np.float32)
    los_fraction = np.empty(n, np.float64)
    scenes = [f"m{i:05d}" for i in range(n)]
    for i in tqdm(range(n), desc=f"{name}", unit="map", disable=not progress):
        m = simulate_uma_map(size, pixel_m, np.random.default_rng(np.random.SeedSequence([int(seed), i])), p)
        gain[i] = m.gain_db
        tx[i] = m.tx
        gain_range[i] = (m.gain_db.min(), m.gain_db.max())
        los_fraction[i] = m.los.mean()
    return MapDataset(
        name=name,
        gain_db=gain,
        buildings=np.zeros((n, size, size), bool),
        cars=np.zeros((n, size, size), bool),
        tx=tx,
        gain_range=gain_range,
        scene=np.array(scenes, dtype=str),
        tx_index=np.zeros(n, np.int64),
        pixel_m=float(pixel_m),
        splits=scene_splits(scenes, seed=int(seed)),
        meta={
            "source": "3gpp-38901-uma",
            "seed": int(seed),
            "size": int(size),
            "normalization": "per-map min-max (CGDM eq. 53)",
            "los_fraction_mean": float(los_fraction.mean()),
            **asdict(p),
        },
    )
