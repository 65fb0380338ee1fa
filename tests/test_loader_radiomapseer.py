"""RadioMapSeer loader, on the real map-0 sample shipped in the package and fake trees built from it."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ckmbench.data.radiomapseer import (
    SHIPPED_MAP0,
    _standard_order,
    load_map0,
    load_radiomapseer,
    split_of,
    standard_split,
)
from ckmbench.errors import CkmError

TXS = [0, 1, 10, 11, 12]


@pytest.fixture(scope="module")
def map0():
    return load_map0(progress=False)


def _gray(path):
    return np.array(Image.open(path))


def make_tree(tmp_path, map_ids=(0,)):
    """A RadioMapSeer root holding copies of the real map 0 under the given map ids."""
    root = tmp_path / "rms"
    for sub in ("gain/DPM", "png/buildings_complete", "png/antennas", "antenna"):
        (root / sub).mkdir(parents=True)
    for m in map_ids:
        shutil.copy(SHIPPED_MAP0 / "png/buildings_complete/0.png", root / f"png/buildings_complete/{m}.png")
        shutil.copy(SHIPPED_MAP0 / "antenna/0.json", root / f"antenna/{m}.json")
        for t in TXS:
            shutil.copy(SHIPPED_MAP0 / f"gain/DPM/0_{t}.png", root / f"gain/DPM/{m}_{t}.png")
            shutil.copy(SHIPPED_MAP0 / f"png/antennas/0_{t}.png", root / f"png/antennas/{m}_{t}.png")
    return root


def _error(fn, *args, **kw) -> str:
    with pytest.raises(CkmError) as info:
        fn(*args, progress=False, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --- the real sample -------------------------------------------------------------------


def test_map0_shapes_ids_and_split(map0):
    assert map0.name == "radiomapseer-map0"
    assert len(map0) == 5 and map0.shape == (256, 256)
    assert map0.gain_db.dtype == np.float32 and map0.buildings.dtype == bool and map0.cars.dtype == bool
    assert map0.tx.shape == (5, 3) and map0.tx.dtype == np.float32
    assert map0.scene.tolist() == ["0"] * 5
    assert map0.tx_index.tolist() == TXS
    assert map0.pixel_m == 1.0
    assert map0.splits == {"test": ["0"]}
    assert not map0.cars.any()
    np.testing.assert_array_equal(map0.gain_range, np.tile([-147.0, -47.0], (5, 1)))


def test_map0_gain_is_gray_on_the_db_scale(map0):
    assert map0.gain_db.min() >= -147.0 and map0.gain_db.max() <= -47.0
    gray = _gray(SHIPPED_MAP0 / "gain/DPM/0_10.png")
    np.testing.assert_allclose(map0.gain_db[2], -147.0 + gray / 255.0 * 100.0, atol=1e-4)
    np.testing.assert_allclose(map0[2].u[~map0.buildings[2]], (gray / 255.0)[~map0.buildings[2]], atol=1e-5)


def test_map0_tx_at_the_gain_maximum(map0):
    for i in range(len(map0)):
        g = map0.gain_db[i]
        peaks = np.argwhere(g == g.max())
        dist = np.min(np.hypot(peaks[:, 0] - map0.tx[i, 0], peaks[:, 1] - map0.tx[i, 1]))
        assert dist <= 2.0
        assert map0.tx[i, 2] == 1.5


def test_map0_buildings_match_gray_zero_pixels(map0):
    zero_everywhere = np.all(np.stack([_gray(SHIPPED_MAP0 / f"gain/DPM/0_{t}.png") for t in TXS]) == 0, axis=0)
    b = map0.buildings[0]
    iou = (b & zero_everywhere).sum() / (b | zero_everywhere).sum()
    assert iou > 0.9
    assert all(np.array_equal(map0.buildings[i], b) for i in range(5))


# --- the standard split ----------------------------------------------------------------


def test_standard_split_sizes_and_seed():
    split = standard_split()
    assert {k: len(v) for k, v in split.items()} == {"train": 501, "val": 100, "test": 99}
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(1, 701))
    saved = np.random.get_state()
    try:
        np.random.seed(42)
        ids = np.arange(700)
        np.random.shuffle(ids)
    finally:
        np.random.set_state(saved)
    assert split["train"] == (ids[:501] + 1).tolist()
    assert split["val"] == (ids[501:601] + 1).tolist()
    assert split["test"] == (ids[601:] + 1).tolist()


def test_standard_split_leaves_the_global_rng_alone():
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    _standard_order.cache_clear()
    standard_split()
    assert np.random.rand() == expected


def test_maps_outside_the_standard_range_are_test():
    assert split_of(0) == "test" and split_of(701) == "test" and split_of(56000) == "test"
    split = standard_split()
    assert split_of(split["train"][0]) == "train" and split_of(split["val"][0]) == "val"


def test_loaded_splits_follow_the_standard_split(tmp_path):
    split = standard_split()
    tr, va, te = split["train"][3], split["val"][5], split["test"][7]
    root = make_tree(tmp_path, map_ids=(0, tr, va, te, 900))
    ds = load_radiomapseer(root, txs=[0, 1], progress=False, workers=3)
    assert len(ds) == 10 and ds.name == "radiomapseer-dpm"
    assert ds.splits == {"train": [str(tr)], "val": [str(va)], "test": [str(te), "0", "900"]}
    assert ds.split("train").scene.tolist() == [str(tr)] * 2
    assert ds.meta["simulation"] == "DPM"


# --- options ---------------------------------------------------------------------------


def test_maps_and_txs_restrict_what_is_read(tmp_path):
    root = make_tree(tmp_path, map_ids=(0, 3))
    ds = load_radiomapseer(root, maps=[3], txs=[1, 10], progress=False)
    assert ds.scene.tolist() == ["3", "3"] and ds.tx_index.tolist() == [1, 10]
    assert load_radiomapseer(root, maps="3", txs="1, 10", progress=False).content_hash == ds.content_hash
    assert "must be integers" in _error(load_radiomapseer, root, maps="3,x")
    full = load_radiomapseer(root, progress=False)
    assert len(full) == 10 and full.tx_index.tolist() == TXS * 2


def test_threaded_and_serial_loads_agree(tmp_path):
    root = make_tree(tmp_path, map_ids=(0, 3, 8))
    a = load_radiomapseer(root, progress=False, workers=1)
    b = load_radiomapseer(root, progress=False, workers=4)
    assert a.content_hash == b.content_hash


def test_tx_from_antenna_images_when_json_is_missing(tmp_path, map0):
    root = make_tree(tmp_path)
    (root / "antenna/0.json").unlink()
    ds = load_radiomapseer(root, progress=False)
    np.testing.assert_array_equal(ds.tx, map0.tx)


def test_cars_variant(tmp_path, map0):
    root = make_tree(tmp_path)
    (root / "gain/carsDPM").mkdir()
    (root / "png/cars").mkdir()
    for t in TXS:
        shutil.copy(root / f"gain/DPM/0_{t}.png", root / f"gain/carsDPM/0_{t}.png")
    cars = np.zeros((256, 256), np.uint8)
    cars[10:12, 20:25] = 255
    Image.fromarray(cars).save(root / "png/cars/0.png")
    ds = load_radiomapseer(root, cars=True, progress=False)
    assert ds.name == "radiomapseer-cars-dpm"
    assert ds.cars.shape == (5, 256, 256) and ds.cars.sum() == 5 * 10
    assert np.all(ds.cars[:, 10:12, 20:25])
    np.testing.assert_array_equal(ds.gain_db, map0.gain_db)


# --- bad input -------------------------------------------------------------------------


def test_missing_root_and_folders(tmp_path):
    assert "--data-root" in _error(load_radiomapseer, tmp_path / "nope")
    root = make_tree(tmp_path)
    msg = _error(load_radiomapseer, root, simulation="IRT2")
    assert str(root / "gain/IRT2") in msg
    msg = _error(load_radiomapseer, root, cars=True)
    assert str(root / "gain/carsDPM") in msg
    assert "choose one of DPM, IRT2, IRT4" in _error(load_radiomapseer, root, simulation="IRT9")
    shutil.rmtree(root / "png/buildings_complete")
    assert str(root / "png/buildings_complete") in _error(load_radiomapseer, root)


def test_missing_pngs(tmp_path):
    root = make_tree(tmp_path, map_ids=(0, 4))
    assert str(root / "gain/DPM/0_2.png") in _error(load_radiomapseer, root, txs=[0, 2])
    assert "no gain files for map 9" in _error(load_radiomapseer, root, maps=[0, 9])
    (root / "png/buildings_complete/4.png").unlink()
    assert str(root / "png/buildings_complete/4.png") in _error(load_radiomapseer, root)


def test_corrupt_and_truncated_png(tmp_path):
    root = make_tree(tmp_path)
    bad = root / "gain/DPM/0_1.png"
    bad.write_bytes(b"not a png at all")
    msg = _error(load_radiomapseer, root)
    assert str(bad) in msg and "valid PNG" in msg
    data = (SHIPPED_MAP0 / "gain/DPM/0_11.png").read_bytes()
    truncated = root / "gain/DPM/0_11.png"
    truncated.write_bytes(data[: len(data) // 2])
    assert str(truncated) in _error(load_radiomapseer, root, txs=[11])


def test_wrong_size(tmp_path):
    root = make_tree(tmp_path)
    small = root / "gain/DPM/0_10.png"
    Image.open(small).resize((128, 128)).save(small)
    msg = _error(load_radiomapseer, root)
    assert str(small) in msg and "128x128" in msg and "256x256" in msg


def test_colour_gain_png_is_rejected(tmp_path):
    root = make_tree(tmp_path)
    path = root / "gain/DPM/0_0.png"
    rgb = np.stack([_gray(path)] * 3, axis=-1)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    assert str(path) in _error(load_radiomapseer, root)


def _set_antenna(root, tx, xy):
    path = root / "antenna/0.json"
    points = json.loads(path.read_text())
    points[tx] = list(xy)
    path.write_text(json.dumps(points))
    return path


def test_tx_outside_the_map(tmp_path):
    root = make_tree(tmp_path)
    path = _set_antenna(root, 10, (300, 20))
    msg = _error(load_radiomapseer, root)
    assert str(path) in msg and "outside" in msg


def test_tx_inside_a_building(tmp_path, map0):
    root = make_tree(tmp_path)
    depth = ndimage.distance_transform_edt(map0.buildings[0])
    r, c = np.argwhere(depth >= 3)[0]
    path = _set_antenna(root, 1, (int(c), int(255 - r)))
    msg = _error(load_radiomapseer, root)
    assert str(path) in msg and "inside a building" in msg


def test_antenna_json_without_that_tx(tmp_path):
    root = make_tree(tmp_path)
    path = root / "antenna/0.json"
    path.write_text(json.dumps([[1, 1]]))
    assert str(path) in _error(load_radiomapseer, root)
