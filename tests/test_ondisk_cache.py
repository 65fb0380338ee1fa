"""The on-disk cache of real datasets (docs/scale.md): a RadioMapSeer-layout folder converted
once equals the in-RAM load, is read lazily, detects corruption with one line, and a killed
conversion resumes; training batches from DataLoader workers equal those built in-process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ckmbench.data import builtin, radiomapseer
from ckmbench.data.cache import data_root, entry_dir, load_entry
from ckmbench.data.ondisk import DiskRows
from ckmbench.data.radiomapseer import load_radiomapseer
from ckmbench.errors import CkmError
from ckmbench.method import RunContext, TaskData
from ckmbench.plugins import registry
from ckmbench.training import Trainer, TrainConfig

from rms_folder import write_rms_folder
from train_helpers import ToyData, toy_config, toy_loss, toy_model

MAPS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # ids of the standard split: train, val and test all present


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    return write_rms_folder(tmp_path_factory.mktemp("rms") / "root", maps=MAPS + [701, 702], n_tx=3, size=32,
                            cars=True)


def _ondisk(root, cars=False, **kw):
    name = "radiomapseer-cars-dpm" if cars else "radiomapseer-dpm"
    return builtin.load_rms(name, "DPM", cars, root=root, progress=False, ondisk=True, **kw)


def _entry(root, cars=False):
    name = "radiomapseer-cars-dpm" if cars else "radiomapseer-dpm"
    folders = [p for p in data_root().glob(f"{name}-*") if p.is_dir() and p.suffix not in (".work",)
               and (p / "meta.json").exists() and json.loads((p / "meta.json").read_text())["config"]["root"]
               == str(root.resolve())]
    assert len(folders) == 1
    return folders[0]


@pytest.mark.parametrize("cars", [False, True])
def test_round_trip_equals_the_in_ram_load(rms, cars):
    ram = load_radiomapseer(rms, cars=cars, progress=False)
    disk = _ondisk(rms, cars)
    assert isinstance(disk.gain_db, DiskRows) and isinstance(disk.buildings, DiskRows)
    assert disk.content_hash == ram.content_hash == disk.compute_hash()
    assert disk.splits == ram.splits and disk.meta == ram.meta and disk.name == ram.name
    for name in ("train", "val", "test"):
        a, b = ram.split(name), disk.split(name)
        assert isinstance(b.gain_db, DiskRows)  # a split stays on disk
        for field in ("gain_db", "buildings", "cars", "tx", "gain_range", "tx_index", "scene"):
            assert np.array_equal(getattr(a, field), np.asarray(getattr(b, field))), (name, field)
        assert a[1].key == b[1].key and np.array_equal(a[1].u, b[1].u)
    again = _ondisk(rms, cars)  # from the cache, not converted again
    assert again.content_hash == ram.content_hash
    assert bool(np.any(disk.cars)) == cars


def test_the_registered_dataset_uses_the_cache_and_the_env_switch(rms, monkeypatch):
    spec = registry().dataset("radiomapseer-dpm")
    ds = spec.load(root=rms, progress=False)
    assert isinstance(ds.gain_db, DiskRows)
    monkeypatch.setenv("CKMBENCH_ONDISK", "0")
    ram = spec.load(root=rms, progress=False)
    assert isinstance(ram.gain_db, np.ndarray) and ram.content_hash == ds.content_hash


def test_corruption_is_one_line_naming_the_file_and_the_fix_then_rebuilt(rms, caplog):
    good = _ondisk(rms)
    folder = _entry(rms)
    gray = folder / "gain_gray.npy"
    data = bytearray(gray.read_bytes())
    data[-5] ^= 0xFF
    gray.write_bytes(bytes(data))
    with pytest.raises(ValueError) as info:
        load_entry(folder)
    msg = str(info.value)
    assert "\n" not in msg and str(gray) in msg and "checksum" in msg and "convert --force" in msg
    rebuilt = _ondisk(rms)  # reported and converted again, never used
    assert "invalid" in caplog.text and rebuilt.content_hash == good.content_hash
    (folder / "buildings.npy").write_bytes((folder / "buildings.npy").read_bytes()[:-7])  # truncated
    with pytest.raises(ValueError, match=r"buildings\.npy has \d+ bytes, expected \d+ .*: delete that folder"):
        load_entry(folder)


def test_size_only_verification(rms, monkeypatch):
    _ondisk(rms)
    folder = _entry(rms)
    tx = folder / "tx_index.npy"
    data = bytearray(tx.read_bytes())
    data[-1] ^= 1
    tx.write_bytes(bytes(data))
    monkeypatch.setenv("CKMBENCH_VERIFY", "size")
    load_entry(folder)  # sizes only: the flipped byte goes unseen
    monkeypatch.setenv("CKMBENCH_VERIFY", "full")
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_entry(folder)
    _ondisk(rms, force=True)


def test_interrupted_conversion_resumes_and_is_atomic(tmp_path, monkeypatch):
    root = write_rms_folder(tmp_path / "rms", maps=MAPS, n_tx=2, size=32)
    reference = load_radiomapseer(root, progress=False)
    bad = root / "gain/DPM/9_1.png"
    saved = bad.read_bytes()
    bad.write_bytes(saved[:40])  # a truncated PNG: the conversion stops at map 9
    calls = []
    read_map = radiomapseer._read_map
    monkeypatch.setattr(radiomapseer, "_read_map", lambda lay, m, *a: calls.append(m) or read_map(lay, m, *a))
    monkeypatch.setattr(radiomapseer, "source_fingerprint", lambda *a: "fixed")  # the same entry after the repair
    with pytest.raises(CkmError, match="9_1.png"):
        builtin.load_rms("radiomapseer-dpm", "DPM", False, root=root, progress=False, ondisk=True, workers=1)
    config = {"builder": "radiomapseer", "version": builtin.ONDISK_VERSION, "root": str(root.resolve()),
              "simulation": "DPM", "cars": False, "source": "fixed"}
    folder = entry_dir("radiomapseer-dpm", config)
    assert not folder.exists()  # nothing under the final name
    progress = json.loads((folder.with_name(folder.name + ".work") / "progress.json").read_text())
    assert sorted(progress["done"]) == list(range(8))  # maps 1..8 are written and durable
    bad.write_bytes(saved)
    calls.clear()
    ds = builtin.load_rms("radiomapseer-dpm", "DPM", False, root=root, progress=False, ondisk=True)
    assert sorted(calls) == [9, 10, 11, 12]  # resumed: only the maps not yet written
    assert ds.content_hash == reference.content_hash
    assert np.array_equal(np.asarray(ds.gain_db), reference.gain_db)
    assert folder.is_dir() and not folder.with_name(folder.name + ".work").exists()


def test_data_convert_command(rms, capsys):
    from ckmbench.cli import main

    main(["data", "convert", "-d", "radiomapseer-dpm", "--data-root", str(rms)])
    out = capsys.readouterr().out
    assert "on disk; content hash" in out
    with pytest.raises(SystemExit):
        main(["data", "convert", "-d", "city-tiny"])
    assert "no on-disk conversion" in capsys.readouterr().err


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loader_workers_give_the_same_training(tmp_path):
    """Batches built by two DataLoader workers train to the same weights as in-process ones,
    and a resumed fit with workers ends where an uninterrupted one does."""
    results = {}
    for workers, steps, folder in ((0, 10, "a"), (2, 10, "b"), (2, 6, "c")):
        model = toy_model()
        ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path / folder, loader_workers=workers)
        Trainer(model, toy_config(steps), ctx, name="toy").fit(ToyData(), toy_loss())
        results[folder] = _weights(model)
    model = toy_model()  # c resumed from its step 6 to 10, with workers
    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path / "c", loader_workers=2)
    Trainer(model, toy_config(10), ctx, name="toy").fit(ToyData(), toy_loss())
    for other in ("b",):
        assert all(torch.equal(results["a"][k], results[other][k]) for k in results["a"])
    assert all(torch.equal(results["a"][k], v) for k, v in _weights(model).items())


def test_loader_workers_read_the_on_disk_dataset(rms, tmp_path):
    """A train split of the on-disk dataset through a task, as a learned method sees it."""
    reg = registry()
    task = reg.task("sr4").make(**reg.task("sr4").params)
    weights = []
    for workers, ds in ((0, load_radiomapseer(rms, progress=False)), (2, _ondisk(rms))):
        train = TaskData(ds.split("train"), task, 0)
        torch.manual_seed(0)
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        ctx = RunContext(seed=3, progress=False, fit_dir=tmp_path / f"w{workers}", loader_workers=workers)

        def loss(model, batch, gen):
            obs, target, _ = batch
            up = torch.nn.functional.interpolate(obs.y, size=target.shape[-2:], mode="nearest")
            return ((model(up) - target) ** 2).mean()

        Trainer(net, TrainConfig(steps=6, batch_size=4, lr=1e-2, checkpoint_every=3), ctx, name="net").fit(train, loss)
        weights.append(_weights(net))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_split_reads_nothing(rms, monkeypatch):
    """Taking a split of the on-disk dataset reads no row: its hash derives from the dataset's."""
    from ckmbench.data.ondisk import RowFile

    ds = _ondisk(rms)
    reads = []
    real = RowFile.read_run
    monkeypatch.setattr(RowFile, "read_run", lambda self, *a: reads.append(a) or real(self, *a))
    train, test = ds.split("train"), ds.split("test")
    assert reads == [] and train.content_hash and train.content_hash != test.content_hash != ds.content_hash
    assert _ondisk(rms).split("train").content_hash == train.content_hash


def test_diskrows_indexing(rms):
    ds = _ondisk(rms)
    ram = load_radiomapseer(rms, progress=False)
    rows = ds.gain_db
    assert rows.shape == ram.gain_db.shape and len(rows) == len(ram.gain_db) and rows.ndim == 3
    assert np.array_equal(rows[[5, 1, 5]].read(), ram.gain_db[[5, 1, 5]])
    assert np.array_equal(rows[2:7][1], ram.gain_db[3])
    assert np.array_equal(rows[4, :3, :2], ram.gain_db[4, :3, :2])
    assert np.array_equal(np.asarray(ds.buildings[::4]), ram.buildings[::4])
    assert np.array_equal(ds.u(), ram.u())
    assert os.path.exists(rows.file.path)
