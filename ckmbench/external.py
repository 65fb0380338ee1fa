"""`ckmbench evaluate`: score predictions made outside ckmbench under the same protocol.

Predictions are one file per test sample named ``<scene>_<tx>.png`` (gray/255 = u) or
``<scene>_<tx>.npy`` (u in [0, 1], or path gain in dB with ``npy_unit="db"``). An RGB or RGBA
PNG whose three channels are equal and whose alpha is opaque is read as gray.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .data.registry import load_dataset
from .data.sample import normalize
from .errors import CkmError
from .plugins import registry
from .provenance import base_provenance, config_hash
from .results import append_record, check_store_writable, store_path
from .runner import FID_TASKS, _clean, _save_examples
from .textsafe import check_label


GRAY_FIX = "write gray PNG files (8-bit gray/255 = u, or 16-bit gray/65535)"


def _gray_pixels(img: Image.Image, path: Path) -> np.ndarray:
    """u in [0, 1] of a gray image. Many pipelines write gray maps as RGB(A) PNGs: those are read
    as gray when their three channels are equal and their alpha (if any) is opaque; true colour
    and transparency are refused, since no single u could be read from them."""
    if img.mode.startswith("I;16"):
        return np.asarray(img.convert("I;16"), np.float32) / 65535.0
    if img.mode in ("L", "1"):
        return np.asarray(img.convert("L"), np.float32) / 255.0
    if img.mode not in ("RGB", "RGBA", "LA", "P", "PA"):
        raise CkmError(f"prediction {path} is a {img.mode} image: {GRAY_FIX}")
    mode = {"P": "RGBA", "PA": "RGBA"}.get(img.mode, img.mode)
    px = np.asarray(img.convert(mode))
    if mode in ("RGBA", "LA") and (px[..., -1] != 255).any():
        raise CkmError(f"prediction {path} has transparent pixels ({int((px[..., -1] != 255).sum())} with alpha "
                       f"below 255): {GRAY_FIX}, or colour PNGs with an opaque alpha")
    colour = px[..., :3] if mode in ("RGB", "RGBA") else px[..., :1]
    differ = int((colour != colour[..., :1]).any(axis=-1).sum())
    if differ:
        raise CkmError(f"prediction {path} is a colour image ({differ} pixels with unequal R, G, B): {GRAY_FIX}, "
                       "not colour")
    return colour[..., 0].astype(np.float32) / 255.0


def _read_prediction(path: Path, shape, gain_range, npy_unit: str) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False).astype(np.float32)
            arr = np.squeeze(arr)
            if npy_unit == "db":
                arr = normalize(arr, gain_range)
        else:
            img = Image.open(path)
            arr = _gray_pixels(img, path)
    except Image.DecompressionBombError as exc:
        raise CkmError(f"prediction {path} is too large to read safely ({exc.args[0].split('.')[0]}): "
                       f"write the map at the task's size {tuple(shape)[0]}x{tuple(shape)[1]}") from None
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise CkmError(f"cannot read prediction {path} ({exc}): write PNG (gray/255 = u) or NPY files") from None
    if arr.shape != tuple(shape):
        raise CkmError(f"prediction {path} has shape {arr.shape}, expected {tuple(shape)}: predict at the map size")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise CkmError(f"prediction {path} holds {bad} non-finite value(s) (NaN/inf): write finite values "
                       f"({'path gain in dB' if npy_unit == 'db' else 'u in [0, 1]'})")
    return arr


def evaluate_predictions(task: str, dataset: str, predictions: Path, name: str = "external", npy_unit: str = "u",
                         data_root=None, store=None, record: bool = True, seed: int = 0, fid: bool | None = None) -> dict:
    """Score a folder of predictions on the test split of (task, dataset); returns the record."""
    from .metrics.evaluate import bound_predictions, evaluate

    check_label("--name", name)
    if record:  # before any scoring: a result must not be lost at the end
        check_store_writable(store)
    reg = registry()
    task_spec = reg.task(task)
    t = task_spec.make(**task_spec.params)
    if not predictions.is_dir():
        raise CkmError(f"predictions folder {predictions} does not exist: pass --predictions DIR")
    full = load_dataset(dataset, root=data_root)
    test = full.split("test")
    files = {p.stem: p for p in sorted(predictions.iterdir()) if p.suffix.lower() in (".png", ".npy")}
    wanted = [f"{s}_{i}" for s, i in zip(test.scene, test.tx_index)]
    missing = [w for w in wanted if w not in files]
    if missing:
        raise CkmError(f"{len(missing)} of {len(wanted)} predictions missing in {predictions}, e.g. {missing[0]}.png|.npy: "
                       "write one file per test sample named <scene>_<tx>")
    preds, targets, regions, observations = [], [], {}, []
    for i, stem in enumerate(wanted):
        sample = test[i]
        preds.append(_read_prediction(files[stem], sample.shape, sample.gain_range, npy_unit))
        obs, target, reg_masks = t.batch([sample], seed)
        targets.append(target)
        observations.append(obs.y)
        for k, v in reg_masks.items():
            regions.setdefault(k, []).append(v)
    pred, bound_notes = bound_predictions(torch.from_numpy(np.stack(preds))[:, None])
    target = torch.cat(targets)
    regions_t = {k: torch.cat(v) for k, v in regions.items()}
    use_fid = fid if fid is not None else task in FID_TASKS
    result = evaluate(pred, target, torch.from_numpy(test.gain_range.astype(np.float32)), regions_t,
                      metrics=t.metrics, fid=use_fid)
    record_id = uuid.uuid4().hex
    store_file = store_path(store)
    rec = {
        "record_id": record_id, "status": "done", "message": "", "method": name,
        "method_distribution": "external", "method_version": "-", "task": task, "dataset": dataset,
        "dataset_hash": full.content_hash, "train_dataset": dataset, "train_dataset_hash": "",
        "profile": "external", "seed": seed, "n_test": len(test), "map_size": list(test.shape),
        "metrics": _clean(result.summary), "metric_notes": _clean({**result.notes, **bound_notes}),
        "cost": {"params": None, "train_s": None, "infer_s_per_map": None, "sampling_steps": None, "peak_mem_mb": None},
        "hparams": {"predictions": str(predictions)},
        "config_hash": config_hash({"external": name, "task": task, "dataset_hash": full.content_hash}),
        **base_provenance("cpu"), "run_dir": None, "examples": None,
    }
    if record:
        rec["examples"] = _save_examples(store_file, record_id, test, pred, target, observations, 4)
        append_record(rec, store_file)
    return rec
