"""Built-in datasets, registered through the "ckmbench" entry-point group like any plugin.

Generated datasets (the synthetic cities and the 3GPP UMa channel-power maps) are built
once and cached (``ckmbench.data.cache``); real datasets are read from the user's folder.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from .. import __version__
from ..errors import CkmError
from ..hookspecs import hookimpl
from ..specs import DatasetSpec
from .cache import cached, data_root, entry_dir, load_entry, merge_datasets

DEFAULT_DATASET = "city"

# name -> builder config; the builder and the simulator's parameters are part of the key.
CITY_CONFIGS = {
    "city": dict(size=64, pixel_m=2.0, n_scenes=150, tx_per_scene=16, cars=False, seed=0),
    "city-cars": dict(size=64, pixel_m=2.0, n_scenes=150, tx_per_scene=16, cars=True, seed=0),
    "city-128": dict(size=128, pixel_m=1.0, n_scenes=60, tx_per_scene=16, cars=False, seed=1),
    "city-tiny": dict(size=32, pixel_m=2.0, n_scenes=12, tx_per_scene=4, cars=False, seed=7),
    "city-tiny-cars": dict(size=32, pixel_m=2.0, n_scenes=12, tx_per_scene=4, cars=True, seed=7),
    # ray traced (Sionna RT, ``pip install ckmbench[raytrace]``): the layouts and transmitters of
    # `city` (same seed and size), only the first scenes of each of its splits, so the splits are
    # city's and a method fitted on city's train split never saw a city-rt test layout
    "city-rt": dict(size=64, pixel_m=2.0, n_scenes=150, tx_per_scene=2, cars=False, seed=0,
                    subset=dict(train=16, val=2, test=8), raytrace=dict(max_depth=2)),
    "city-rt4": dict(size=64, pixel_m=2.0, n_scenes=150, tx_per_scene=2, cars=False, seed=0,
                     subset=dict(train=16, val=2, test=8), raytrace=dict(max_depth=4)),
}
UMA_CONFIGS = {
    "city-uma": dict(size=128, pixel_m=1.0, n_maps=800, seed=0),
    "city-uma-tiny": dict(size=32, pixel_m=1.0, n_maps=48, seed=0),
}


def _simulator_fingerprint() -> str:
    from ..sim import dpm

    return f"{__version__}|{getattr(dpm, 'MODEL_VERSION', '')}|{dpm.DPMParams()!r}"


def _rt_params(name: str):
    """The ray tracer's settings of a ray-traced city dataset, None for the DPM ones."""
    rt = CITY_CONFIGS[name].get("raytrace")
    if rt is None:
        return None
    from ..sim.raytrace import RTParams

    return RTParams(**rt)


def _raytrace_fingerprint(params) -> str:
    from ..sim import raytrace

    return f"{__version__}|rt{raytrace.RT_VERSION}|{params!r}|{raytrace.sionna_version()}"


def _city_key(name: str, shard=None) -> dict:
    rt = _rt_params(name)
    sim = _simulator_fingerprint() if rt is None else _raytrace_fingerprint(rt)
    return {"builder": "city", **CITY_CONFIGS[name], "simulator": sim,
            **({"shard": list(shard)} if shard else {})}


def load_city(name: str, root=None, progress: bool = True, shard: tuple[int, int] | None = None,
              force: bool = False, workers: int = 0):
    """A synthetic city dataset (cached). With ``shard=(i, n)`` only scenes i, i+n, ... are built."""
    from .synthetic import build_city_dataset

    def build(work_dir):
        if shard is None:
            merged = _merge_complete_shards(name)
            if merged is not None:
                return merged
        config = {k: v for k, v in CITY_CONFIGS[name].items() if k != "raytrace"}
        return build_city_dataset(name=name, **config, workers=workers, progress=progress, shard=shard,
                                  work_dir=work_dir, params=_rt_params(name))

    # scenes are kept in <entry>.work as they finish: a killed build resumes where it stopped
    return cached(name, _city_key(name, shard), build, force=force, resumable=True)


def _merge_complete_shards(name: str):
    """If every shard of some --shard i/n split is cached, the merged full dataset."""
    root = data_root()
    if not root.exists():
        return None
    for n in range(2, 257):
        folders = [entry_dir(name, _city_key(name, (i, n))) for i in range(n)]
        if not folders[0].exists():
            continue
        try:
            parts = [load_entry(f) for f in folders]
        except ValueError:
            continue
        return merge_datasets(name, parts)
    return None


def load_uma(name: str, root=None, progress: bool = True, force: bool = False, **_):
    """A 3GPP TR 38.901 UMa channel-power dataset without buildings (cached)."""
    from .uma import build_uma_dataset

    config = {"builder": "uma", **UMA_CONFIGS[name], "version": __version__}
    return cached(name, config, lambda: build_uma_dataset(name=name, **UMA_CONFIGS[name], progress=progress), force=force)


def _require_root(name: str, root, env_var: str) -> Path:
    root = root or os.environ.get(env_var)
    if not root:
        raise CkmError(f"dataset '{name}' needs its folder: pass --data-root PATH or set {env_var}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise CkmError(f"dataset '{name}': folder {path} does not exist: pass --data-root pointing at the dataset root")
    return path


def load_map0(root=None, progress: bool = True, **_):
    from .radiomapseer import load_map0 as _load

    return _load(progress=progress)


def load_samples(root=None, progress: bool = True, **_):
    from .radiomapseer import load_samples as _load

    return _load(progress=progress)


ONDISK_VERSION = 1


def ondisk_default() -> bool:
    """Real datasets go through the on-disk cache unless ``CKMBENCH_ONDISK=0`` (docs/scale.md)."""
    return os.environ.get("CKMBENCH_ONDISK", "1").strip().lower() not in ("0", "false", "no", "off")


def load_rms(name: str, simulation: str, cars: bool, root=None, progress: bool = True, ondisk: bool | None = None,
             force: bool = False, workers: int | None = None, **_):
    """RadioMapSeer from its folder: converted once into the on-disk cache and read lazily
    (``ondisk``, the default), or read whole into RAM (``ondisk=False``)."""
    from .radiomapseer import convert_radiomapseer, load_radiomapseer, source_fingerprint

    path = _require_root(name, root, "CKMBENCH_RADIOMAPSEER")
    if not (ondisk_default() if ondisk is None else ondisk):
        return load_radiomapseer(path, simulation=simulation, cars=cars, name=name, progress=progress, workers=workers)
    # the folder's file list (names, sizes, mtimes) is in the key: an edited folder converts anew
    config = {"builder": "radiomapseer", "version": ONDISK_VERSION, "root": str(path.resolve()),
              "simulation": simulation, "cars": cars, "source": source_fingerprint(path, simulation, cars)}
    return cached(name, config, lambda work: convert_radiomapseer(work, path, simulation=simulation, cars=cars,
                                                                  name=name, progress=progress, workers=workers),
                  force=force, resumable=True, ondisk=True)


def load_ckmimagenet(root=None, progress: bool = True, **_):
    from .imagefolder import load_ckmimagenet as _load

    return _load(_require_root("ckmimagenet", root, "CKMBENCH_CKMIMAGENET"))


def load_imagefolder(root=None, progress: bool = True, g_min: float = -147.0, g_max: float = -47.0,
                     pixel_m: float = 1.0, **_):
    from .imagefolder import load_image_folder

    path = _require_root("imagefolder", root, "CKMBENCH_IMAGEFOLDER")
    return load_image_folder(path, gain_range=(float(g_min), float(g_max)), pixel_m=float(pixel_m))


def _city_description(name: str) -> str:
    c = CITY_CONFIGS[name]
    n_scenes = sum(c["subset"].values()) if c.get("subset") else c["n_scenes"]
    n = n_scenes * c["tx_per_scene"]
    sim = "dominant-path simulator"
    if c.get("raytrace"):
        sim = (f"Sionna RT ray tracing, {c['raytrace']['max_depth']} interactions (IRT{c['raytrace']['max_depth']}-like; "
               "needs ckmbench[raytrace]), city's layouts and splits")
    return (f"synthetic city, {c['size']}x{c['size']} at {c['pixel_m']} m/px, {n} maps "
            f"({n_scenes} scenes x {c['tx_per_scene']} Tx), {'with' if c['cars'] else 'no'} cars, {sim}")


@hookimpl
def ckmbench_register_datasets(register):
    for name in CITY_CONFIGS:
        register(DatasetSpec(name=name, load=partial(load_city, name), description=_city_description(name),
                             options=dict(CITY_CONFIGS[name])))
    for name, c in UMA_CONFIGS.items():
        register(DatasetSpec(name=name, load=partial(load_uma, name), options=dict(c),
                             description=f"3GPP TR 38.901 UMa channel power, no buildings, {c['size']}x{c['size']} "
                                         f"at {c['pixel_m']} m/px, {c['n_maps']} maps, per-map min-max (CGDM setting)"))
    register(DatasetSpec(name="radiomapseer-map0", load=load_map0,
                         description="real RadioMapSeer DPM sample shipped with ckmbench: map 0, 5 Tx, 256x256 (test only)"))
    register(DatasetSpec(name="radiomapseer-samples", load=load_samples,
                         description="25 real RadioMapSeer DPM maps shipped with ckmbench: map 0 (5 Tx) + 20 "
                                     "gain-only maps of other layouts, 256x256 (test only; paper protocols)"))
    for sim in ("DPM", "IRT2", "IRT4"):
        for cars in (False, True):
            name = f"radiomapseer-{'cars-' if cars else ''}{sim.lower()}"
            register(DatasetSpec(name=name, load=partial(load_rms, name, sim, cars), needs_root=True,
                                 env_var="CKMBENCH_RADIOMAPSEER",
                                 description=f"RadioMapSeer {'cars' if cars else ''}{sim} from its own folder layout "
                                             "(standard 501/100/99 map split)"))
    register(DatasetSpec(name="ckmimagenet", load=load_ckmimagenet, needs_root=True, env_var="CKMBENCH_CKMIMAGENET",
                         description="CKMImageNet-style export (image folder, -250..-50 dB)"))
    register(DatasetSpec(name="imagefolder", load=load_imagefolder, needs_root=True, env_var="CKMBENCH_IMAGEFOLDER",
                         description="your own gain maps: root/gain/*.png|npy (+ buildings/, tx.json); "
                                     "options g_min, g_max, pixel_m"))
