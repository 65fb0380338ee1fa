"""The built-in synthetic city dataset: procedural cities simulated by the dominant-path model.

Every scene is seeded from (seed, scene index) alone, with separate streams for the
layout, the cars and the transmitters, so

* the same config gives identical arrays, whatever the worker count or shard;
* a ``cars=True`` dataset has the same layouts and transmitters as ``cars=False`` (the
  transmitters always avoid the cars), which makes static -> dynamic transfer meaningful;
* ``shard=(i, n)`` builds the scenes with index % n == i, and the shards' union is the
  full dataset (splits are drawn over all scene ids, then restricted to the shard).

With a ``work_dir`` every finished scene is kept there as its own file, so a build that was
killed resumes from the scenes already made. Pool workers die with the process that started
them (they never outlive a ``kill -9`` of ``data generate``).

The simulator's numbers go through numpy's transcendental kernels, which numpy picks by CPU:
its AVX-512 kernels round differently from its AVX2 ones, and the tie-breaks of the path search
follow (measured on `city`: 1.3 M of 9.8 M pixels differ in the last bits, 280 by more than
1 dB). So that one config gives one dataset on every x86-64 machine, scenes are simulated in
worker processes started with numpy's AVX-512 kernels switched off (``portable_numpy_env``).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import CkmError
from ..sim.city import generate_city, place_cars, place_transmitters
from ..sim.dpm import DPMParams, PreparedLayout, simulate_layout
from .sample import MapDataset, scene_splits

GAIN_RANGE = (-147.0, -47.0)
TX_HEIGHT_M = 1.5


def scene_id(index: int) -> str:
    return f"s{index:05d}"


def build_scene(index: int, size: int, pixel_m: float, tx_per_scene: int, cars: bool, seed: int,
                params: DPMParams | None = None) -> dict:
    """One scene: its layout, car mask (all False unless ``cars``), transmitters and maps."""
    layout_ss, cars_ss, tx_ss = np.random.SeedSequence([int(seed), int(index)]).spawn(3)
    layout = generate_city(size, pixel_m, np.random.default_rng(layout_ss))
    car_mask = place_cars(layout, np.random.default_rng(cars_ss))
    txs = place_transmitters(layout, tx_per_scene, np.random.default_rng(tx_ss), TX_HEIGHT_M, cars=car_mask)
    used = car_mask if cars else np.zeros_like(car_mask)
    scene = layout.scene(txs[0], cars=used, scene_id=scene_id(index))
    if getattr(params, "backend", "dpm") == "sionna-rt":  # ckmbench.sim.raytrace.RTParams
        from ..sim.raytrace import simulate_layout_rt

        gain = simulate_layout_rt(scene, txs, params)
    else:
        gain = simulate_layout(scene, txs, params, prepared=PreparedLayout(scene))
    return {"index": index, "buildings": layout.buildings, "cars": used, "txs": txs, "gain_db": gain}


def _build_scene_args(args):
    return build_scene(*args)


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: the worker is killed when its parent dies, even by SIGKILL.

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL); everywhere: a watchdog thread that exits once the
    parent pid is gone (re-parented), for systems without prctl.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, name="ckmbench-parent-watch", daemon=True).start()


def worker_pool(workers: int, mp_context=None) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp_context, initializer=_die_with_parent,
                               initargs=(os.getpid(),))


def _numpy_cpu_tables() -> tuple[dict, list]:
    try:  # numpy >= 2
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return dict(__cpu_features__), list(__cpu_dispatch__)


def portable_numpy_env() -> dict[str, str]:
    """The environment for scene workers whose numpy rounds as on an AVX2 machine, or {} if
    this process already does (no AVX-512 here, another architecture, or switched off).

    numpy reads ``NPY_DISABLE_CPU_FEATURES`` once, when it is imported, so the setting only
    reaches freshly started (spawned) processes. Only the AVX-512 targets numpy dispatches to
    are named, so any numpy version accepts the list."""
    features, dispatch = _numpy_cpu_tables()
    active = [f for f in dispatch if (f.startswith("AVX512") or f == "X86_V4") and features.get(f)]
    if not active:
        return {}
    given = os.environ.get("NPY_DISABLE_CPU_FEATURES", "").replace(",", " ").split()
    return {"NPY_DISABLE_CPU_FEATURES": " ".join(dict.fromkeys(given + active))}


@contextlib.contextmanager
def portable_worker_pool(workers: int, env: dict[str, str]):
    """``worker_pool`` whose workers are spawned with ``env`` added to this environment.

    Spawned workers copy the environment when they start, and the executor starts them as jobs
    are submitted, so ``env`` stays set in this process while the pool lives."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with worker_pool(workers, multiprocessing.get_context("spawn")) as pool:
            yield pool
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _scene_file(work_dir: Path, index: int) -> Path:
    return work_dir / f"{scene_id(index)}.npz"


def _save_scene(work_dir: Path, res: dict) -> None:
    """One finished scene, written atomically (temp name + rename) into the work folder."""
    buf = io.BytesIO()
    np.savez(buf, index=res["index"], buildings=res["buildings"], cars=res["cars"],
             txs=np.asarray(res["txs"], np.float64), gain_db=res["gain_db"])
    path = _scene_file(work_dir, res["index"])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _load_scene(work_dir: Path, index: int) -> dict | None:
    path = _scene_file(work_dir, index)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            res = {k: z[k] for k in ("index", "buildings", "cars", "txs", "gain_db")}
    except Exception:  # a damaged file is built again
        return None
    res["index"] = int(res["index"])
    res["txs"] = [tuple(float(v) for v in t) for t in res["txs"]]
    return res if res["index"] == index else None


def build_city_dataset(name: str, size: int, pixel_m: float, n_scenes: int, tx_per_scene: int, cars: bool,
                       seed: int, workers: int = 0, progress: bool = True,
                       shard: tuple[int, int] | None = None, params=None,
                       work_dir: Path | None = None, subset: dict | None = None) -> MapDataset:
    """Build the synthetic city dataset (scene-level splits, gain range (-147, -47) dB).

    ``work_dir``: keep each finished scene there and reuse the scenes found there (resume).
    ``params``: the simulator's settings: :class:`DPMParams` (default) or a ray tracer's
    ``ckmbench.sim.raytrace.RTParams`` (built serially in this process on one drjit thread).
    ``subset``: {"train": k, "val": k, "test": k} builds only the first k scene ids (sorted)
    of each split of the full ``n_scenes`` dataset, so its splits are those of the full one.
    """
    if n_scenes < 1 or tx_per_scene < 1:
        raise CkmError(f"dataset '{name}': n_scenes and tx_per_scene must be >= 1, got {n_scenes}, {tx_per_scene}")
    if shard is not None:
        i, n = shard
        if not (isinstance(i, (int, np.integer)) and isinstance(n, (int, np.integer)) and 0 <= i < n):
            raise CkmError(f"dataset '{name}': shard must be (i, n) with 0 <= i < n, got {shard}")
        indices = [k for k in range(n_scenes) if k % n == i]
    else:
        indices = list(range(n_scenes))
    if subset:
        full = scene_splits([scene_id(k) for k in range(n_scenes)], seed=seed)
        chosen = {int(s[1:]) for part, k in subset.items() for s in sorted(full[part])[:int(k)]}
        indices = [k for k in indices if k in chosen]
    if not indices:
        raise CkmError(f"dataset '{name}': shard {shard} holds no scene of {n_scenes}; use fewer shards")
    raytraced = getattr(params, "backend", "dpm") == "sionna-rt"
    workers = (os.cpu_count() or 1) if workers == 0 else int(workers)
    done: dict[int, dict] = {}
    if work_dir is not None:
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        for k in indices:
            res = _load_scene(work_dir, k)
            if res is not None:
                done[k] = res
    jobs = [(k, size, pixel_m, tx_per_scene, cars, seed, params) for k in indices if k not in done]
    bar = tqdm(total=len(indices), initial=len(done), desc=f"{name} scenes", unit="scene", disable=not progress)

    def keep(res: dict) -> None:
        if work_dir is not None:
            _save_scene(work_dir, res)
        done[res["index"]] = res
        bar.update()

    try:
        if raytraced and jobs:
            from ..sim.raytrace import require_sionna

            require_sionna()  # a clear error before any scene is made
            import drjit as dr

            # one drjit thread: with more, sionna-rt's paths change with the thread count and
            # from run to run (docs/simulator.md), and the cache promises the same maps
            dr.set_thread_count(1)
        portable = {} if raytraced or not jobs else portable_numpy_env()
        if raytraced or ((workers <= 1 or len(jobs) <= 1) and not portable):
            for job in jobs:
                keep(_build_scene_args(job))
        else:
            n = max(1, min(workers, len(jobs)))
            with portable_worker_pool(n, portable) if portable else worker_pool(n) as pool:
                for res in pool.map(_build_scene_args, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                    keep(res)
    finally:
        bar.close()
    results = [done[k] for k in indices]
    t = tx_per_scene
    n = len(results) * t
    gain = np.empty((n, size, size), np.float32)
    buildings = np.empty((n, size, size), bool)
    car_masks = np.empty((n, size, size), bool)
    tx = np.empty((n, 3), np.float32)
    scenes = []
    for j, res in enumerate(results):
        sl = slice(j * t, (j + 1) * t)
        gain[sl] = res["gain_db"]
        buildings[sl] = res["buildings"]
        car_masks[sl] = res["cars"]
        tx[sl] = np.array(res["txs"], np.float32)
        scenes += [scene_id(res["index"])] * t
    all_ids = [scene_id(k) for k in range(n_scenes)]
    present = set(scenes)
    splits = {k: [s for s in v if s in present] for k, v in scene_splits(all_ids, seed=seed).items()}
    meta = {"generator": "ckmbench.sim.raytrace" if raytraced else "ckmbench.sim.dpm", "size": size,
            "pixel_m": pixel_m, "n_scenes": n_scenes, "tx_per_scene": tx_per_scene, "cars": bool(cars), "seed": seed,
            "shard": list(shard) if shard else None, "params": repr(params or DPMParams())}
    return MapDataset(
        name=name, gain_db=gain, buildings=buildings, cars=car_masks, tx=tx,
        gain_range=np.tile(np.array(GAIN_RANGE, np.float32), (n, 1)), scene=np.array(scenes),
        tx_index=np.tile(np.arange(t, dtype=np.int64), len(results)), pixel_m=float(pixel_m),
        splits=splits, meta=meta,
    )
