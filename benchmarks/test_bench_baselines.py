"""Wall time of the classical baselines on 64 x 64 maps (pytest-benchmark).

Run: ``pytest benchmarks/test_bench_baselines.py --benchmark-only``. The maps are 32
simulated city maps (rectangular buildings, a few cars, the built-in dominant-path
simulator), the size of the default ``city`` dataset. Each result carries
``extra_info["s_per_240_maps"]``, the time extrapolated to the ~240 test maps of ``city``.
The suite test runs every baseline on every task it supports once and checks the goal:
all of them on the whole test split in under 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ckmbench.data.sample import Sample
from ckmbench.tasks.builtin import builtin_task_specs
from ckmbench_plugins.baselines import baseline_specs

N_MAPS, SIZE, TEST_MAPS = 32, 64, 240
SUITE_GOAL_S = 600.0
TASKS = {spec.name: spec.make(**spec.params) for spec in builtin_task_specs()}
SPECS = {spec.name: spec for spec in baseline_specs()}


@pytest.fixture(scope="module")
def maps() -> list[Sample]:
    dpm = pytest.importorskip("ckmbench.sim.dpm")
    from ckmbench.sim.scene import Scene

    rng = np.random.default_rng(0)
    samples = []
    for s in range(N_MAPS // 4):
        buildings = np.zeros((SIZE, SIZE), bool)
        for _ in range(rng.integers(6, 14)):
            r, c = rng.integers(0, SIZE, 2)
            h, w = rng.integers(4, 14, 2)
            buildings[r:r + h, c:c + w] = True
        cars = np.zeros_like(buildings)
        for _ in range(8):
            r, c = rng.integers(0, SIZE - 2, 2)
            if not buildings[r:r + 2, c:c + 3].any():
                cars[r:r + 2, c:c + 3] = True
        free = np.argwhere(~buildings & ~cars)
        txs = [(float(r), float(c), 1.5) for r, c in free[rng.choice(len(free), 4, replace=False)]]
        scene = Scene(buildings=buildings, tx=txs[0], pixel_m=2.0, cars=cars)
        gains = dpm.simulate_layout(scene, txs)
        samples += [Sample(gain_db=g, buildings=buildings, cars=cars, tx=tx, pixel_m=2.0, gain_range=(-147.0, -47.0),
                           dataset="bench", scene=f"s{s}", tx_index=t) for t, (g, tx) in enumerate(zip(gains, txs))]
    return samples


@pytest.mark.parametrize("task", ["sr4", "inpaint"])
@pytest.mark.parametrize("method", [name for name in SPECS if name not in ("distance", "simulator")])
def test_baseline_time(benchmark, maps, method, task):
    spec = SPECS[method]
    if not spec.supports(task):
        pytest.skip(f"{method} does not support {task}")
    obs, target, _ = TASKS[task].batch(maps, 0)
    model = spec.factory("small", {})
    pred = benchmark.pedantic(model.predict, args=(obs, None), rounds=3, iterations=1, warmup_rounds=1)
    per_map = benchmark.stats.stats.mean / len(maps)
    benchmark.extra_info.update(s_per_map=per_map, s_per_240_maps=per_map * TEST_MAPS)
    assert pred.shape == target.shape


def test_all_baselines_on_all_tasks_within_the_goal(benchmark, maps):
    """Every (baseline, task) pair once on the maps, extrapolated to the test split."""
    per_method: dict[str, float] = {}

    def suite():
        per_method.clear()
        for name, spec in SPECS.items():
            model = spec.factory("small", {})
            for task in spec.tasks:
                obs, _, _ = TASKS[task].batch(maps, 0)
                start = time.perf_counter()
                model.predict(obs, None)
                per_method[name] = per_method.get(name, 0.0) + time.perf_counter() - start

    benchmark.pedantic(suite, rounds=1, iterations=1)
    scale = TEST_MAPS / len(maps)
    total = sum(per_method.values()) * scale
    benchmark.extra_info.update({f"{k}_s_per_240_maps": round(v * scale, 1) for k, v in per_method.items()})
    benchmark.extra_info["total_s_per_240_maps"] = round(total, 1)
    assert total < SUITE_GOAL_S, f"all baselines on all tasks: {total:.0f} s extrapolated to {TEST_MAPS} maps"
