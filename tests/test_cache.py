"""Dataset cache: round trip, corruption detected and rebuilt, shards merge to the full set."""

import numpy as np

from ckmbench.data import cache
from ckmbench.data.sample import MapDataset, scene_splits


def toy(n_scenes=4, tx=2, size=8, offset=0.0):
    n = n_scenes * tx
    rng = np.random.default_rng(0)
    scenes = np.array([f"s{i // tx:03d}" for i in range(n)])
    return MapDataset(name="toy", gain_db=(rng.uniform(-140, -50, (n, size, size)) + offset).astype(np.float32),
                      buildings=rng.random((n, size, size)) < 0.2, cars=np.zeros((n, size, size), bool),
                      tx=np.zeros((n, 3), np.float32), gain_range=np.tile([-147.0, -47.0], (n, 1)).astype(np.float32),
                      scene=scenes, tx_index=np.arange(n) % tx, pixel_m=1.0,
                      splits=scene_splits(sorted(set(scenes.tolist()))))


def test_round_trip_keeps_content_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_DATA", str(tmp_path))
    calls = []
    ds = cache.cached("toy", {"a": 1}, lambda: calls.append(1) or toy())
    again = cache.cached("toy", {"a": 1}, lambda: calls.append(1) or toy())
    assert calls == [1]
    assert again.content_hash == ds.content_hash
    np.testing.assert_array_equal(again.gain_db, ds.gain_db)
    assert again.splits == ds.splits


def test_corrupt_entry_is_rebuilt_not_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CKMBENCH_DATA", str(tmp_path))
    cache.cached("toy", {"a": 2}, toy)
    folder = cache.entry_dir("toy", {"a": 2})
    blob = bytearray((folder / "arrays.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (folder / "arrays.npz").write_bytes(bytes(blob))
    calls = []
    ds = cache.cached("toy", {"a": 2}, lambda: calls.append(1) or toy(offset=1.0))
    assert calls == [1]
    assert "invalid" in caplog.text
    assert cache.load_entry(folder).content_hash == ds.content_hash


def test_half_written_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_DATA", str(tmp_path))
    folder = cache.entry_dir("toy", {"a": 3})
    folder.mkdir(parents=True)
    (folder / "arrays.npz").write_bytes(b"partial")
    calls = []
    cache.cached("toy", {"a": 3}, lambda: calls.append(1) or toy())
    assert calls == [1]


def test_merge_of_shards_equals_full():
    full = toy(n_scenes=6)
    parts = [full.take(np.flatnonzero(np.isin(full.scene, [f"s{k:03d}" for k in range(i, 6, 3)]))) for i in range(3)]
    for p in parts:
        p.splits = {k: [s for s in v if s in set(p.scene.tolist())] for k, v in full.splits.items()}
    merged = cache.merge_datasets("toy", parts)
    assert merged.content_hash == full.content_hash
    assert {k: sorted(v) for k, v in merged.splits.items()} == {k: sorted(v) for k, v in full.splits.items()}


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_folders_of_killed_builds_are_swept(tmp_path, monkeypatch):
    """A build killed mid-save left a temp folder nothing removed; a live owner's stays."""
    import os

    monkeypatch.setenv("CKMBENCH_DATA", str(tmp_path))
    folder = cache.entry_dir("toy", {"a": 1})
    dead = tmp_path / f".{folder.name}.tmp-{_dead_pid()}-abc"
    live = tmp_path / f".{folder.name}.tmp-{os.getppid()}-def"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "arrays.npz").write_bytes(b"x" * 1000)
    cache.cached("toy", {"a": 1}, toy)
    assert not dead.exists() and live.exists()


def test_killed_city_build_resumes_from_the_scenes_made(tmp_path, monkeypatch):
    from ckmbench.data import synthetic

    monkeypatch.setenv("CKMBENCH_DATA", str(tmp_path))
    cfg = dict(size=16, pixel_m=2.0, n_scenes=5, tx_per_scene=2, cars=False, seed=3)
    real = synthetic.build_scene
    built = []

    def dies_after_three(index, *args, **kw):
        if len(built) == 3:
            raise KeyboardInterrupt("killed")  # as a kill mid-build
        built.append(index)
        return real(index, *args, **kw)

    monkeypatch.setattr(synthetic, "build_scene", dies_after_three)
    # scenes built here, not in spawned portable-numpy workers, so the patched build_scene runs
    monkeypatch.setattr(synthetic, "portable_numpy_env", lambda: {})
    build = lambda work: synthetic.build_city_dataset("toy-city", **cfg, workers=1, progress=False, work_dir=work)
    try:
        cache.cached("toy-city", cfg, build, resumable=True)
    except KeyboardInterrupt:
        pass
    assert built == [0, 1, 2]
    built.clear()
    monkeypatch.setattr(synthetic, "build_scene", lambda index, *a, **kw: built.append(index) or real(index, *a, **kw))
    resumed = cache.cached("toy-city", cfg, build, resumable=True)
    assert built == [3, 4]  # only the scenes the killed build had not made
    fresh = synthetic.build_city_dataset("toy-city", **cfg, workers=1, progress=False)
    assert resumed.content_hash == fresh.content_hash
    assert not cache.entry_dir("toy-city", cfg).with_name(cache.entry_dir("toy-city", cfg).name + ".work").exists()
