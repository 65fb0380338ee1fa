"""Generic image-folder loader, the CKMImageNet preset and user building masks."""

import json

import numpy as np
import pytest
from PIL import Image

from ckmbench.data.imagefolder import load_ckmimagenet, load_image_folder, scene_and_tx
from ckmbench.data.masks import load_building_mask
from ckmbench.errors import CkmError

N = 32


def _peak_map(r, c, scale=255):
    """A gray map falling off from (r, c), its maximum (scale) exactly at the Tx."""
    rows, cols = np.mgrid[0:N, 0:N]
    return np.round(scale * np.exp(-np.hypot(rows - r, cols - c) / 12.0))


def _save(path, arr, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr).astype(dtype)).save(path)


def _error(fn, *args, **kw) -> str:
    with pytest.raises(CkmError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def folder(tmp_path):
    """Scenes 1 (tx 0, 1), 2 (tx 0), city (whole-stem scene); 8-bit, 16-bit and NPY maps."""
    root = tmp_path / "maps"
    _save(root / "gain/1_0.png", _peak_map(5, 6))
    _save(root / "gain/1_1.png", _peak_map(20, 9))
    _save(root / "gain/2_0.png", _peak_map(10, 25, 65535), np.uint16)
    gain = -150.0 + 100.0 * _peak_map(16, 3) / 255.0
    np.save(root / "gain/city.npy", gain.astype(np.float32))
    return root


def test_scene_and_tx_from_stem():
    assert scene_and_tx("12_3") == ("12", 3)
    assert scene_and_tx("berlin_a_07") == ("berlin_a", 7)
    assert scene_and_tx("city") == ("city", 0)
    assert scene_and_tx("city_a") == ("city_a", 0)
    assert scene_and_tx("_5") == ("_5", 0)


def test_gray_levels_and_npy_on_the_gain_range(folder):
    ds = load_image_folder(folder, gain_range=(-150.0, -50.0))
    assert ds.name == "maps" and len(ds) == 4 and ds.shape == (N, N)
    assert ds.scene.tolist() == ["1", "1", "2", "city"] and ds.tx_index.tolist() == [0, 1, 0, 0]
    g8 = np.array(Image.open(folder / "gain/1_0.png"))
    np.testing.assert_allclose(ds.gain_db[0], -150.0 + g8 / 255.0 * 100.0, atol=1e-4)
    g16 = np.array(Image.open(folder / "gain/2_0.png")).astype(float)
    np.testing.assert_allclose(ds.gain_db[2], -150.0 + g16 / 65535.0 * 100.0, atol=1e-4)
    assert ds.gain_db[2].max() == pytest.approx(-50.0)
    np.testing.assert_allclose(ds.gain_db[3], np.load(folder / "gain/city.npy"))
    np.testing.assert_array_equal(ds.gain_range, np.tile([-150.0, -50.0], (4, 1)))
    assert not ds.buildings.any() and not ds.cars.any()


def test_tx_defaults_to_the_gain_argmax(folder):
    ds = load_image_folder(folder)
    np.testing.assert_array_equal(ds.tx, [[5, 6, 1.5], [20, 9, 1.5], [10, 25, 1.5], [16, 3, 1.5]])


def test_tx_from_table_and_per_file(folder):
    (folder / "tx").mkdir()
    (folder / "tx/2_0.json").write_text("[3, 4, 30.0]")
    ds = load_image_folder(folder, tx_height_m=2.0)
    np.testing.assert_array_equal(ds.tx[2], [3, 4, 30.0])
    assert ds.tx[0, 2] == 2.0
    (folder / "tx.json").write_text(json.dumps({"1_0": [1, 2], "1_1": [3, 4], "2_0": [5, 6], "city": [7, 8, 10]}))
    ds = load_image_folder(folder)
    np.testing.assert_array_equal(ds.tx, [[1, 2, 1.5], [3, 4, 1.5], [5, 6, 1.5], [7, 8, 10]])


def test_bad_tx_files(folder):
    (folder / "tx.json").write_text(json.dumps({"1_0": [1, 2]}))
    assert "no entry for '1_1'" in _error(load_image_folder, folder)
    (folder / "tx.json").write_text(json.dumps({"1_0": [1, 2], "1_1": [99, 4], "2_0": [5, 6], "city": [7, 8]}))
    msg = _error(load_image_folder, folder)
    assert "tx.json" in msg and "outside" in msg
    (folder / "tx.json").unlink()
    (folder / "tx").mkdir()
    (folder / "tx/city.json").write_text('{"row": 1}')
    assert str(folder / "tx/city.json") in _error(load_image_folder, folder)


def test_buildings_per_stem_or_per_scene(folder):
    mask = np.zeros((N, N), np.uint8)
    mask[0:4, 0:4] = 255
    _save(folder / "buildings/1.png", mask)
    rgba = np.zeros((N, N, 4), np.uint8)
    rgba[8:10, 8:10] = (255, 255, 255, 255)
    rgba[12:14, 12:14] = (255, 255, 255, 0)  # transparent: not a building
    _save(folder / "buildings/2_0.png", rgba)
    np.save(folder / "buildings/city.npy", np.eye(N))
    ds = load_image_folder(folder)
    assert ds.buildings[0].sum() == 16 and ds.buildings[1].sum() == 16
    assert ds.buildings[2].sum() == 4 and ds.buildings[2, 8, 8]
    np.testing.assert_array_equal(ds.buildings[3], np.eye(N, dtype=bool))
    assert np.all(ds.u()[0][0:4, 0:4] == 0.0)


def test_splits_from_file_option_and_default(folder):
    (folder / "splits.json").write_text(json.dumps({"train": ["1_0", "city"], "test": ["2"]}))
    ds = load_image_folder(folder)
    assert ds.splits == {"train": ["1", "city"], "test": ["2"]}
    ds = load_image_folder(folder, splits={"val": ["1"], "test": ["2_0", "city"]})
    assert ds.splits == {"val": ["1"], "test": ["2", "city"]}
    (folder / "splits.json").unlink()
    ds = load_image_folder(folder)
    scenes = [s for v in ds.splits.values() for s in v]
    assert sorted(scenes) == ["1", "2", "city"]  # each scene in exactly one split


def test_bad_splits(folder):
    (folder / "splits.json").write_text(json.dumps({"train": ["1_0"], "test": ["1_1"]}))
    msg = _error(load_image_folder, folder)
    assert "splits.json" in msg and "both train and test" in msg
    (folder / "splits.json").write_text(json.dumps({"train": ["nope"]}))
    assert "'nope'" in _error(load_image_folder, folder)
    (folder / "splits.json").write_text(json.dumps({"holdout": ["1"]}))
    assert "'holdout'" in _error(load_image_folder, folder)


def test_bad_folders_and_files(folder, tmp_path):
    assert "gain" in _error(load_image_folder, tmp_path / "empty")
    assert "g_min < g_max" in _error(load_image_folder, folder, gain_range=(-50, -150))
    _save(folder / "gain/3_0.png", np.zeros((16, 16)))
    msg = _error(load_image_folder, folder)
    assert str(folder / "gain/3_0.png") in msg and "16x16" in msg
    (folder / "gain/3_0.png").write_bytes(b"garbage")
    assert str(folder / "gain/3_0.png") in _error(load_image_folder, folder)
    (folder / "gain/3_0.png").unlink()
    colour = np.zeros((N, N, 3), np.uint8)
    colour[..., 0] = 200
    _save(folder / "gain/4_0.png", colour)
    assert "colour image" in _error(load_image_folder, folder)
    (folder / "gain/4_0.png").unlink()
    np.save(folder / "gain/1_0.npy", np.zeros((N, N)))
    assert "same stem" in _error(load_image_folder, folder)
    (folder / "gain/1_0.npy").unlink()
    np.save(folder / "gain/1_00.npy", np.zeros((N, N)))
    assert "rename one" in _error(load_image_folder, folder)


def test_ckmimagenet_preset(folder):
    ds = load_ckmimagenet(folder, pixel_m=2.0)
    assert ds.name == "ckmimagenet" and ds.pixel_m == 2.0
    np.testing.assert_array_equal(ds.gain_range[0], [-250.0, -50.0])
    g8 = np.array(Image.open(folder / "gain/1_1.png"))
    np.testing.assert_allclose(ds.gain_db[1], -250.0 + g8 / 255.0 * 200.0, atol=1e-4)


# --- load_building_mask ---------------------------------------------------------------


def test_building_mask_formats(tmp_path):
    gray = np.zeros((N, N), np.uint8)
    gray[2:5, 3:7] = 1
    _save(tmp_path / "g.png", gray)
    assert load_building_mask(tmp_path / "g.png", size=N).sum() == 12
    rgb = np.zeros((N, N, 3), np.uint8)
    rgb[0, :, 2] = 255
    _save(tmp_path / "c.png", rgb)
    m = load_building_mask(tmp_path / "c.png", size=(N, N))
    assert m.dtype == bool and m.sum() == N and m[0].all()
    Image.fromarray(gray * 255).convert("1").save(tmp_path / "b.png")
    assert load_building_mask(tmp_path / "b.png").sum() == 12
    np.save(tmp_path / "m.npy", gray.astype(bool))
    np.testing.assert_array_equal(load_building_mask(tmp_path / "m.npy"), gray > 0)


def test_building_mask_errors(tmp_path):
    _save(tmp_path / "g.png", np.zeros((N, N)))
    msg = _error(load_building_mask, tmp_path / "g.png", size=64)
    assert str(tmp_path / "g.png") in msg and "64x64" in msg
    assert "missing file" in _error(load_building_mask, tmp_path / "none.png")
    (tmp_path / "x.tif").write_bytes(b"")
    assert ".png or .npy" in _error(load_building_mask, tmp_path / "x.tif")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert str(tmp_path / "bad.png") in _error(load_building_mask, tmp_path / "bad.png")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    assert "(H, W)" in _error(load_building_mask, tmp_path / "cube.npy")
