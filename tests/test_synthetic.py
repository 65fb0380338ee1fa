"""The synthetic city builder and the procedural city generator."""

import numpy as np
import pytest

from ckmbench.data.sample import MapDataset
from ckmbench.data.synthetic import build_city_dataset
from ckmbench.errors import CkmError
from ckmbench.sim.city import generate_city, place_cars, place_transmitters

CFG = dict(name="city-test", size=32, pixel_m=2.0, n_scenes=5, tx_per_scene=2, seed=7, workers=1, progress=False)


@pytest.fixture(scope="module")
def static():
    return build_city_dataset(cars=False, **CFG)


@pytest.fixture(scope="module")
def dynamic():
    return build_city_dataset(cars=True, **CFG)


def test_shape_ids_and_range(static):
    assert isinstance(static, MapDataset)
    assert len(static) == 10 and static.shape == (32, 32)
    assert static.gain_db.dtype == np.float32
    assert set(static.scene.tolist()) == {f"s{i:05d}" for i in range(5)}
    assert np.all(static.gain_range == np.array([-147.0, -47.0], np.float32))
    assert static.gain_db.min() >= -147.0 and static.gain_db.max() <= -47.0
    assert np.all(static.gain_db[static.buildings] == -147.0)
    assert np.all(static.tx[:, 2] == 1.5)
    assert not static.cars.any()


def test_deterministic(static):
    again = build_city_dataset(cars=False, **CFG)
    np.testing.assert_array_equal(again.gain_db, static.gain_db)
    np.testing.assert_array_equal(again.buildings, static.buildings)
    np.testing.assert_array_equal(again.tx, static.tx)
    assert again.content_hash == static.content_hash


def test_parallel_equals_serial(static):
    par = build_city_dataset(cars=False, **{**CFG, "workers": 2})
    np.testing.assert_array_equal(par.gain_db, static.gain_db)
    assert par.content_hash == static.content_hash


def test_shard_union_is_full(static):
    parts = [build_city_dataset(cars=False, shard=(i, 2), **CFG) for i in range(2)]
    by_key = {}
    for p in parts:
        for s in p:
            by_key[(s.scene, s.tx_index)] = s
    assert len(by_key) == len(static)
    for s in static:
        np.testing.assert_array_equal(by_key[(s.scene, s.tx_index)].gain_db, s.gain_db)
    for split in ("train", "val", "test"):
        assert sorted(parts[0].splits[split] + parts[1].splits[split]) == sorted(static.splits[split])


def test_splits_disjoint_by_scene(static):
    sp = static.splits
    all_ids = sp["train"] + sp["val"] + sp["test"]
    assert len(all_ids) == len(set(all_ids)) == 5
    for name in sp:
        sub = static.split(name)
        assert set(sub.scene.tolist()) == set(sp[name])


def test_tx_outdoors_and_off_cars(dynamic):
    for s in dynamic:
        r, c = int(s.tx[0]), int(s.tx[1])
        assert not s.buildings[r, c]
        assert not s.cars[r, c]


def test_cars_keep_layout_and_tx(static, dynamic):
    np.testing.assert_array_equal(static.buildings, dynamic.buildings)
    np.testing.assert_array_equal(static.tx, dynamic.tx)
    assert dynamic.cars.any()
    # cars only ever attenuate, and they do change some maps; the corner search keeps two
    # partial paths per corner, so a car that penalises one can let a path through that
    # ends better (measured: 1 pixel of 10,240, by 0.49 dB)
    up = dynamic.gain_db - static.gain_db
    assert np.mean(up > 1e-4) < 1e-3 and up.max() < 1.0
    assert np.any(dynamic.gain_db < static.gain_db - 1.0)


@pytest.mark.parametrize("size,pixel_m", [(32, 2.0), (64, 2.0), (128, 1.0), (256, 1.0)])
def test_built_up_fraction_in_range(size, pixel_m):
    fr = [generate_city(size, pixel_m, np.random.default_rng(s)).built_fraction for s in range(6)]
    assert all(0.15 <= f <= 0.45 for f in fr), fr
    assert max(fr) - min(fr) > 0.03  # density varies between cities


def test_streets_rotated_and_shapes_varied():
    angles = [generate_city(64, 2.0, np.random.default_rng(s)).angle_deg for s in range(12)]
    assert any(a == 0.0 for a in angles) and any(5.0 < a < 85.0 for a in angles)
    n_vertices = set()
    for s in range(12):
        lay = generate_city(128, 1.0, np.random.default_rng(s))
        n_vertices |= {len(p) for p in lay.polygons}
        assert not (lay.street_mask & lay.buildings).any()
    assert {4, 6} <= n_vertices  # rectangles / courtyard wings and L-shapes


def test_transmitters_spread_and_outdoor():
    rng = np.random.default_rng(3)
    lay = generate_city(64, 2.0, rng)
    cars = place_cars(lay, rng, density=0.4)
    assert cars.any() and not (cars & lay.buildings).any()
    txs = place_transmitters(lay, 16, rng, cars=cars)
    pts = np.array([(r, c) for r, c, _ in txs])
    assert len({tuple(p) for p in pts}) == 16
    assert not lay.buildings[pts[:, 0], pts[:, 1]].any() and not cars[pts[:, 0], pts[:, 1]].any()
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(16) * 1e9
    assert d.min() >= 3.0  # spread out


def test_bad_config_raises():
    with pytest.raises(CkmError, match="shard"):
        build_city_dataset(cars=False, shard=(2, 2), **CFG)
    with pytest.raises(CkmError, match="size"):
        generate_city(8, 1.0, np.random.default_rng(0))
    with pytest.raises(CkmError, match="unknown option"):
        generate_city(32, 1.0, np.random.default_rng(0), blocks=3)


class _TieFlippingNumpy:
    """numpy, except that an unstable argsort breaks ties by descending index (as another
    sort implementation, numpy version or CPU may): what a fresh install on other hardware does."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, axis=-1, kind=None, **kw):
        if kind == "stable":
            return np.argsort(a, axis=axis, kind="stable", **kw)
        a = np.asarray(a)
        n = a.shape[axis]
        flipped = np.argsort(np.flip(a, axis=axis), axis=axis, kind="stable")
        return (n - 1) - flipped


def test_simulated_maps_do_not_depend_on_the_sort_tie_order(monkeypatch):
    """Equal path scores must not pick different paths on another numpy/CPU (the cause of
    `city` hashing differently across installs): the data is bit-identical whatever the sort."""
    from ckmbench.sim import dpm
    from ckmbench.data.synthetic import build_scene

    # scene 7 of `city` (64x64, 2 m/px, seed 0) has equally scored diffracted paths
    scenes = [build_scene(7, 64, 2.0, 16, False, 0)]
    monkeypatch.setattr(dpm, "np", _TieFlippingNumpy())
    flipped = [build_scene(7, 64, 2.0, 16, False, 0)]
    for a, b in zip(scenes, flipped):
        np.testing.assert_array_equal(a["gain_db"], b["gain_db"])


def test_pool_workers_die_with_a_killed_parent(tmp_path):
    """kill -9 of `data generate` used to leave its pool workers asleep forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from ckmbench.data.synthetic import worker_pool\n"
        "pool = worker_pool(2)\n"
        "futs = [pool.submit(time.sleep, 60) for _ in range(2)]\n"
        "time.sleep(1.0)\n"
        "print(' '.join(str(p) for p in pool._processes), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in alive if _alive(p)]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_maps_are_those_of_a_numpy_without_avx512(static):
    """numpy's AVX-512 kernels round transcendental functions differently from its AVX2 ones
    (`city` hashed 9181c1de1c67 on an AVX2 machine, 49e2a3dbaf0d on an AVX-512 one). The build
    must equal one made in a process whose numpy has AVX-512 switched off by hand, as on an
    AVX2 machine; without AVX-512 here both sides use the same kernels."""
    import json
    import subprocess
    import sys

    from ckmbench.data import synthetic

    features, dispatch = synthetic._numpy_cpu_tables()
    off = " ".join(f for f in dispatch if f.startswith("AVX512") or f == "X86_V4")
    cfg = {k: v for k, v in CFG.items() if k != "workers"}
    script = ("import json, sys\nfrom ckmbench.data.synthetic import build_city_dataset\n"
              f"cfg = json.loads({json.dumps(json.dumps(cfg))})\n"
              "print(build_city_dataset(cars=False, workers=1, **cfg).content_hash)\n")
    env = {**__import__("os").environ, "NPY_DISABLE_CPU_FEATURES": off}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == static.content_hash
