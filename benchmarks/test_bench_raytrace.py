"""Ray tracing (Sionna RT) vs the dominant-path simulator on the same scenes: maps per second,
one run each, and how far apart the maps are outdoors. Skipped without sionna-rt.

    pytest benchmarks/test_bench_raytrace.py --benchmark-only

The scenes are those of `city-rt` (64x64 at 2 m/px, city's layouts); drjit uses
``CKMBENCH_RT_THREADS`` threads (default 1, so the figures are per core).
"""

import os

import numpy as np
import pytest

from ckmbench.data.synthetic import build_scene
from ckmbench.errors import CkmError
from ckmbench.sim import raytrace

try:  # a missing sionna-rt, or a drjit that cannot start, skips the module
    raytrace.require_sionna()
except CkmError as exc:
    pytest.skip(str(exc), allow_module_level=True)

SIZE, PIXEL_M, TX_PER_SCENE, SCENES = 64, 2.0, 2, (0, 1)
THREADS = int(os.environ.get("CKMBENCH_RT_THREADS", "1"))


@pytest.fixture(scope="module", autouse=True)
def _threads():
    import drjit as dr

    dr.set_thread_count(THREADS)


def _build(params):
    return [build_scene(k, SIZE, PIXEL_M, TX_PER_SCENE, False, 0, params) for k in SCENES]


_DPM: dict = {}


def test_bench_dpm_maps_per_second(benchmark):
    build_scene(0, SIZE, PIXEL_M, 1, False, 0)  # warm the polar tables
    res = benchmark.pedantic(_build, args=(None,), rounds=1, iterations=1)
    _DPM["gain"] = np.stack([r["gain_db"] for r in res])
    benchmark.extra_info["maps_per_s"] = len(SCENES) * TX_PER_SCENE / benchmark.stats.stats.mean


@pytest.mark.parametrize("depth", [2, 4], ids=["irt2", "irt4"])
def test_bench_raytrace_maps_per_second(benchmark, depth):
    res = benchmark.pedantic(_build, args=(raytrace.RTParams(max_depth=depth),), rounds=1, iterations=1)
    gain = np.stack([r["gain_db"] for r in res])
    assert gain.shape == (len(SCENES), TX_PER_SCENE, SIZE, SIZE)
    assert gain.min() >= -147.0 and gain.max() <= -47.0
    benchmark.extra_info["maps_per_s"] = len(SCENES) * TX_PER_SCENE / benchmark.stats.stats.mean
    if "gain" in _DPM:
        outdoor = ~np.stack([r["buildings"] for r in res])[:, None].repeat(TX_PER_SCENE, 1)
        diff = (gain - _DPM["gain"])[outdoor]
        benchmark.extra_info["rt_minus_dpm_mean_db"] = float(diff.mean())
        benchmark.extra_info["rt_minus_dpm_rms_db"] = float(np.sqrt((diff ** 2).mean()))
        benchmark.extra_info["rt_floor_fraction"] = float((gain[outdoor] <= -147.0).mean())
