"""Scene description, independent of any propagation model.

A scene holds the geometry and radio settings a propagation backend needs (the built-in
dominant-path simulator, or a ray tracer): building footprints, cars, the transmitter,
carrier frequency and pixel size. Backends take a ``Scene`` and return path gain in dB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scene:
    """Geometry + radio settings of one transmitter position in one layout.

    ``buildings``/``cars`` are (H, W) boolean rasters (row 0 at the top). ``polygons`` are
    optional building footprints as (K, 2) arrays of (row, col) pixel coordinates (vertex
    order free); backends that need exact geometry use them, others use the raster.
    """

    buildings: np.ndarray
    tx: tuple[float, float, float]  # (row, col, height m)
    pixel_m: float = 1.0
    cars: np.ndarray | None = None
    polygons: list[np.ndarray] | None = None
    frequency_hz: float = 5.9e9
    tx_power_dbm: float = 23.0
    rx_height_m: float = 1.5
    building_height_m: float = 25.0
    car_height_m: float = 1.5
    scene_id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.buildings = np.asarray(self.buildings, bool)
        if self.cars is None:
            self.cars = np.zeros_like(self.buildings)
        self.cars = np.asarray(self.cars, bool)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.buildings.shape)

    def with_tx(self, tx: tuple[float, float, float]) -> "Scene":
        """The same layout with another transmitter."""
        return Scene(
            buildings=self.buildings, tx=tx, pixel_m=self.pixel_m, cars=self.cars, polygons=self.polygons,
            frequency_hz=self.frequency_hz, tx_power_dbm=self.tx_power_dbm, rx_height_m=self.rx_height_m,
            building_height_m=self.building_height_m, car_height_m=self.car_height_m,
            scene_id=self.scene_id, meta=dict(self.meta),
        )
