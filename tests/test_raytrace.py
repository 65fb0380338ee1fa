"""The optional Sionna RT backend: scene -> meshes (always), and the ray tracer itself (skipped
without sionna-rt)."""

import sys

import numpy as np
import pytest

from ckmbench.data import builtin
from ckmbench.data.synthetic import build_city_dataset
from ckmbench.errors import CkmError
from ckmbench.sim import raytrace as rtmod
from ckmbench.sim.city import generate_city
from ckmbench.sim.raytrace import (RTParams, _boxes_from_raster, _world, extrude, scene_meshes, triangulate,
                                   write_mitsuba_scene)
from ckmbench.sim.scene import Scene


def _area(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def _face_normals(v, f):
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n, 0.5 * np.linalg.norm(n, axis=1)


# ----------------------------------------------------------------------------- no sionna needed
def test_triangulate_l_shape_covers_its_area():
    l_shape = np.array([[0, 0], [4, 0], [4, 1], [1, 1], [1, 3], [0, 3]], float)  # counter-clockwise
    tris = triangulate(l_shape)
    assert len(tris) == 4
    assert sum(_area(l_shape[list(t)]) for t in tris) == pytest.approx(_area(l_shape))


@pytest.mark.parametrize("clockwise", [False, True])
def test_extrude_is_a_prism_with_outward_normals(clockwise):
    poly = np.array([[0, 0], [4, 0], [4, 1], [1, 1], [1, 3], [0, 3]], float)
    if clockwise:
        poly = poly[::-1]
    v, f = extrude(poly, 25.0)
    assert v[:, 2].min() == 0.0 and v[:, 2].max() == 25.0
    n, area = _face_normals(v, f)
    roof = np.all(v[f][:, :, 2] == 25.0, axis=1)
    assert np.all(n[roof, 2] > 0)  # roof faces up
    assert area[roof].sum() == pytest.approx(_area(poly))
    walls = ~roof
    assert np.allclose(n[walls, 2], 0)
    assert area[walls].sum() == pytest.approx(25.0 * 14.0)  # height x perimeter
    # a wall's normal points away from the footprint: a step along it leaves the polygon
    from matplotlib.path import Path as MplPath

    inside = MplPath(poly)
    centre = v[f[walls]].mean(axis=1)
    step = centre[:, :2] + 0.01 * n[walls, :2] / np.linalg.norm(n[walls, :2], axis=1, keepdims=True)
    assert not inside.contains_points(step).any()


def test_raster_boxes_cover_the_raster_exactly():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 17)) < 0.4
    got = np.zeros_like(mask)
    for r0, r1, c0, c1 in _boxes_from_raster(mask):
        assert not got[r0:r1, c0:c1].any()  # disjoint
        got[r0:r1, c0:c1] = True
    np.testing.assert_array_equal(got, mask)


def test_world_frame_row_zero_on_top():
    scene = Scene(buildings=np.zeros((10, 8), bool), tx=(0, 0, 1.5), pixel_m=2.0)
    xy = _world(scene, np.array([[0, 0], [9, 7]]))
    np.testing.assert_allclose(xy, [[0.0, 18.0], [14.0, 0.0]])


def test_scene_meshes_of_a_city_and_of_a_raster(tmp_path):
    layout = generate_city(32, 2.0, np.random.default_rng(3))
    cars = np.zeros(layout.shape, bool)
    cars[1:3, 1:5] = True
    scene = layout.scene((16, 16, 1.5), cars=cars)
    meshes = scene_meshes(scene)
    assert set(meshes) == {"buildings", "cars", "ground"}
    vb, _ = meshes["buildings"]
    assert set(np.unique(vb[:, 2])) == {0.0, scene.building_height_m}
    assert meshes["cars"][0][:, 2].max() == scene.car_height_m
    # the raster fallback: roof area = building pixels x pixel area
    raster_only = Scene(buildings=layout.buildings, tx=(16, 16, 1.5), pixel_m=2.0)
    v, f = scene_meshes(raster_only, ground=False)["buildings"]
    n, area = _face_normals(v, f)
    assert area[n[:, 2] > 0].sum() == pytest.approx(layout.buildings.sum() * 4.0)
    xml = write_mitsuba_scene(scene, tmp_path, RTParams())
    text = xml.read_text()
    for name in ("buildings", "cars", "ground"):
        assert f'value="{name}.ply"' in text
        head = (tmp_path / f"{name}.ply").read_bytes()[:300].decode("ascii", "replace")
        assert f"element vertex {len(meshes[name][0])}" in head
        assert f"element face {len(meshes[name][1])}" in head
    assert 'value="concrete"' in text and 'value="medium_dry_ground"' in text and 'value="metal"' in text


def test_missing_sionna_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sionna.rt", None)  # import fails as if not installed
    with pytest.raises(CkmError, match=r"pip install 'ckmbench\[raytrace\]'.*libllvm19"):
        rtmod.require_sionna()
    scene = Scene(buildings=np.zeros((16, 16), bool), tx=(8, 8, 1.5), pixel_m=2.0)
    with pytest.raises(CkmError, match="ckmbench.raytrace"):
        rtmod.simulate_rt(scene)
    with pytest.raises(CkmError, match="libllvm19"):
        build_city_dataset(name="t", size=32, pixel_m=2.0, n_scenes=2, tx_per_scene=1, cars=False, seed=0,
                           workers=1, progress=False, params=RTParams())


def test_bad_rt_params_raise():
    with pytest.raises(CkmError, match="max_depth"):
        RTParams(max_depth=-1)
    with pytest.raises(CkmError, match="samples_per_tx"):
        RTParams(samples_per_tx=10)


def test_rt_datasets_registered_with_city_splits_and_their_own_key():
    for name, depth in (("city-rt", 2), ("city-rt4", 4)):
        c = builtin.CITY_CONFIGS[name]
        assert c["raytrace"]["max_depth"] == depth
        key = builtin._city_key(name)
        assert f"max_depth={depth}" in key["simulator"] and "sionna-rt=" in key["simulator"]
        assert "IRT" in builtin._city_description(name)
    assert "raytrace" not in builtin._city_key("city") and "sionna" not in builtin._city_key("city")["simulator"]
    # the same layouts as city: same size, pixel, seed and scene count
    for k in ("size", "pixel_m", "seed", "n_scenes", "cars"):
        assert builtin.CITY_CONFIGS["city-rt"][k] == builtin.CITY_CONFIGS["city"][k]


def test_subset_keeps_the_full_datasets_splits():
    cfg = dict(name="t", size=32, pixel_m=2.0, n_scenes=20, tx_per_scene=1, cars=False, seed=7, workers=1,
               progress=False)
    full = build_city_dataset(**cfg)
    part = build_city_dataset(**cfg, subset=dict(train=2, val=1, test=1))
    assert {k: len(v) for k, v in part.splits.items()} == {"train": 2, "val": 1, "test": 1}
    for k, v in part.splits.items():
        assert set(v) <= set(full.splits[k])
        assert sorted(v) == sorted(full.splits[k])[:len(v)]
    for sid in part.scene:
        np.testing.assert_array_equal(part.gain_db[part.scene == sid], full.gain_db[full.scene == sid])


# ----------------------------------------------------------------------------- the ray tracer
@pytest.fixture(scope="module")
def rt():
    try:  # skips without sionna-rt (or with a drjit that cannot start)
        return rtmod.require_sionna()
    except CkmError as exc:
        pytest.skip(str(exc))


FAST = dict(samples_per_tx=2000, max_depth=1, diffraction=False)


def test_free_space_matches_friis(rt):
    scene = Scene(buildings=np.zeros((16, 16), bool), tx=(8, 8, 1.5), pixel_m=2.0)
    g = rtmod.simulate_rt(scene, RTParams(**FAST, ground=False), threads=1)
    rr, cc = np.mgrid[:16, :16]
    d = np.hypot(rr - 8, cc - 8) * 2.0
    far = d > 3
    friis = 20 * np.log10(299_792_458.0 / (4 * np.pi * d[far] * 5.9e9))
    np.testing.assert_allclose(g[far], friis, atol=0.2)
    assert g.max() <= -47.0 and g[8, 8] > -50.0  # the Tx pixel: free space at 1 m, as the DPM


def test_building_shadows_and_floor(rt):
    b = np.zeros((16, 16), bool)
    b[2:14, 7:9] = True  # a wall between the Tx (left) and the right half
    scene = Scene(buildings=b, tx=(8, 3, 1.5), pixel_m=2.0)
    g = rtmod.simulate_rt(scene, RTParams(samples_per_tx=2000, max_depth=0, diffraction=False, ground=False),
                          threads=1)
    assert np.all(g[b] == -147.0)
    assert np.all(g[5:11, 11:] == -147.0)  # LoS only: nothing behind the wall
    assert np.all(g[5:11, :6] > -100.0)


def test_dataset_build_is_deterministic(rt):
    cfg = dict(name="t", size=32, pixel_m=2.0, n_scenes=1, tx_per_scene=1, cars=True, seed=0, workers=1,
               progress=False, params=RTParams(**FAST))
    a = build_city_dataset(**cfg)
    b = build_city_dataset(**cfg)
    assert a.meta["generator"] == "ckmbench.sim.raytrace"
    assert a.gain_db.shape == (1, 32, 32) and a.gain_db.dtype == np.float32
    assert a.gain_db.min() >= -147.0 and a.gain_db.max() <= -47.0
    assert np.all(a.gain_db[a.buildings] == -147.0)
    np.testing.assert_array_equal(a.gain_db, b.gain_db)
