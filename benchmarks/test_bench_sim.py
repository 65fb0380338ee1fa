"""Simulator speed: maps per second for a 16-transmitter city, layout precomputation included.

    pytest benchmarks/test_bench_sim.py --benchmark-only
"""

import numpy as np
import pytest

from ckmbench.data.synthetic import build_scene

CASES = [(64, 2.0), (128, 1.0), (256, 1.0)]
TX_PER_SCENE = 16


@pytest.mark.parametrize("size,pixel_m", CASES, ids=[f"{s}px" for s, _ in CASES])
def test_bench_city_maps_per_second(benchmark, size, pixel_m):
    build_scene(0, size, pixel_m, 1, False, 0)  # warm the per-size polar tables
    res = benchmark.pedantic(build_scene, args=(1, size, pixel_m, TX_PER_SCENE, True, 0),
                             rounds=2 if size < 256 else 1, iterations=1)
    assert res["gain_db"].shape == (TX_PER_SCENE, size, size)
    assert np.isfinite(res["gain_db"]).all()
    benchmark.extra_info["maps_per_s"] = TX_PER_SCENE / benchmark.stats.stats.mean
