"""run(method, task, dataset, profile) -> result record: fit, predict, score, store.

Problems with the request itself (unknown names, unsupported task, missing data folder)
raise ``CkmError`` before anything is written. Once the run starts, any failure is caught
and stored as a record with status "error" (or "timeout"), so a sweep never dies on one
bad run.
"""

from __future__ import annotations

import io
import json
import logging
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoints import load_checkpoint_file
from .data.builtin import DEFAULT_DATASET
from .data.registry import load_dataset
from .errors import CkmError
from .fitcache import GENERIC_PREDICT_HPARAMS
from .fitting import fit_method
from .leftovers import mark_examples, unmark_examples, writer
from .training import dist_info
from .method import Method, RunContext, TaskData
from .metrics.cost import PeakMemory
from .overrides import check_dotted, resolve_overrides
from .plugins import Registry, _short_error, _SigintWatch, registry as default_registry, require_profile
from .permap import write_per_map
from .provenance import base_provenance, config_hash
from .results import append_record, atomic_write_bytes, atomic_write_text, check_store_writable, default_runs_dir
from .textsafe import check_label

log = logging.getLogger("ckmbench.run")


# Tasks whose papers report FID (CKMDiff: inpainting, noisy SR, denoising, generation).
# Inception-v3 features cost ~1 s per map on a 2-core CPU, so other tasks skip it unless asked.
FID_TASKS = ("inpaint", "denoise", "generate", "sr2-noisy", "sr4-noisy", "sr8-noisy", "sr16-noisy")


def wants_fid(cfg: "RunConfig") -> bool:
    # a paper-protocol variant "<task>@<protocol>" follows its task
    return cfg.fid if cfg.fid is not None else cfg.task.partition("@")[0] in FID_TASKS


class RunTimeout(Exception):
    """The run went past its time budget."""


class RecordNotStored(CkmError):
    """The run finished but its record could not be appended to the store (it is in the run folder)."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


# Keys every method accepts with --set besides its profile's: the prediction-only ones (a method
# that supports a training option such as amp lists it in its profiles).
GENERIC_HPARAMS: tuple[str, ...] = GENERIC_PREDICT_HPARAMS
SAMPLE_AMP = ("fp32", "bf16")  # sample_amp values: predict in fp32 (default) or under bf16 autocast


def _kind_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return ""


def _bound_problem(key: str, value) -> str | None:
    """What a value of a key with its own bounds must be (those a profile's null or sign cannot
    tell), or None when it is fine: a gradient clip <= 0 flips or drops gradients, a diffusion
    with fewer than 2 steps trains and then fails when it samples."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "grad_clip" or key.endswith("_grad_clip"):
        if value is not None and not (number and np.isfinite(value) and value > 0):
            return "a number > 0 (null for no clipping; a negative clip flips gradient signs)"
    if key in ("T", "timesteps"):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
            return "an integer >= 2 (diffusion steps)"
    return None


def check_hparams(spec, profile: str, overrides: dict) -> None:
    """Refuse --set overrides the method does not know, or of the wrong type / sign, before any work.

    The known keys are those of the method's profile dict (plus GENERIC_HPARAMS). A value must
    have the type of the profile's value (an int where an int is, a number where a float is);
    a count (positive int) stays >= 1, a non-negative number stays >= 0 and finite.
    """
    from .overrides import nullable

    defaults = require_profile(spec, profile)
    valid = sorted(set(defaults) | set(GENERIC_HPARAMS))
    for key, value in overrides.items():
        if "." in key:  # a dependency's key: ckmbench.overrides.check_dotted
            continue
        if key not in valid:
            raise CkmError(f"--set {key}: method '{spec.name}' has no hyper-parameter '{key}': "
                           f"valid ones are {', '.join(valid) or 'none'}")
        if isinstance(value, str):  # "key=value" labels the leaderboard row
            check_label(f"--set {key}", value)
        bound = _bound_problem(key, value)
        if bound:
            raise CkmError(f"--set {key}={json.dumps(value)}: '{key}' of method '{spec.name}' must be {bound}")
        if key == "sample_amp" and value not in SAMPLE_AMP:
            raise CkmError(f"--set sample_amp={value}: use {' or '.join(SAMPLE_AMP)} (bf16 predicts the fp32 fit "
                           f"under bf16 autocast)")
        if key not in defaults or defaults[key] is None or (value is None and key in nullable(spec)):
            continue
        want, got, default = _kind_of(defaults[key]), _kind_of(value), defaults[key]
        shown = f"--set {key}={json.dumps(value) if not isinstance(value, str) else value}"
        if want == "float" and got == "int":
            got = "float"
        if want and got != want:
            example = {"bool": "true or false", "int": "a whole number", "float": "a number",
                       "str": "a text"}[want]
            raise CkmError(f"{shown}: '{key}' of method '{spec.name}' takes {example} (profile value {default!r})")
        if want in ("int", "float"):
            if not np.isfinite(float(value)):
                raise CkmError(f"{shown}: '{key}' must be a finite number (profile value {default!r})")
            if want == "int" and default >= 1 and value < 1:
                raise CkmError(f"{shown}: '{key}' of method '{spec.name}' must be >= 1 (profile value {default})")
            if default >= 0 and value < 0:
                raise CkmError(f"{shown}: '{key}' of method '{spec.name}' must be >= 0 (profile value {default})")


@dataclass
class RunConfig:
    """Everything that defines one run."""

    method: str
    task: str
    dataset: str = DEFAULT_DATASET
    profile: str = "small"
    seed: int = 0
    device: str = "cpu"
    train_dataset: str | None = None
    data_root: str | None = None
    train_data_root: str | None = None
    store: str | None = None
    runs_dir: str | None = None  # None: beside the store (<store folder>/runs)
    max_test: int | None = None
    batch_size: int | None = None  # maps predicted at once; None: the method's predict_batch, else 16
    examples: int = 4
    time_budget_s: float | None = None
    checkpoint: str | None = None
    progress: bool = True
    fid: bool | None = None  # None: only for the tasks whose papers report FID (FID_TASKS)
    refit: bool = False  # never reuse a finished fit (an unfinished one of the same key resumes)
    restart: bool = False  # throw an unfinished fit's train state away: train from step 0
    hparams: dict = field(default_factory=dict)
    # DataLoader worker processes for training batches (None: $CKMBENCH_LOADER_WORKERS, else 0)
    loader_workers: int | None = None
    # (i, n): score only the test scenes i, i+n, ... (docs/scale.md); the record waits in the
    # store's pending folder until `ckmbench results collect` merges the n shards
    shard: tuple[int, int] | None = None
    # write the record as a per-run file in the store's pending folder, not into the store
    # (cluster jobs: `ckmbench results collect` merges them, no lock on a shared filesystem)
    pending: bool = False
    # skip the run when the store (or its pending folder) holds a done record of its config hash
    resume: bool = False
    # a checkpoint published by the method's authors, loaded through its key map instead of a
    # fit (paper profile only; ckmbench.weights_import, docs/weights.md)
    weights: str | None = None
    # write every scored prediction as <scene>_<tx>.npy (path gain in dB) into this folder
    save_predictions: str | None = None
    keep_train_state: bool = False  # keep a finished fit's resumable trainer state (GBs at paper)
    # CPU threads of this run (torch, OpenMP, BLAS): None leaves the process's setting
    # (the CLI passes ckmbench.threads.choose_threads: --threads, $CKMBENCH_THREADS, idle cores)
    threads: int | None = None


@dataclass
class Prepared:
    spec: object
    task: object
    train_task: object
    test: object
    train: object
    val: object
    hparams: dict
    device: torch.device
    dataset_hash: str  # content hash of the whole scored dataset (as `ckmbench data generate` prints)
    train_dataset_hash: str
    positions: np.ndarray | None = None  # a shard's samples: their places in the whole test split
    n_test_total: int | None = None


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CkmError(f"unknown device '{name}': use cpu or cuda (or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CkmError(f"device '{name}' requested but CUDA is not available here: use --device cpu")
    try:  # mps, xpu, a cuda:N past the last GPU...: refused before any work, not as an error record
        usable = device.type != "meta" and torch.empty(1, device=device).device.type == device.type
    except Exception:
        usable = False
    if not usable:
        raise CkmError(f"device '{name}' cannot be used here (torch {torch.__version__} has no working "
                       f"{device.type} backend on this machine): use --device cpu"
                       f"{' or cuda' if torch.cuda.is_available() else ''}")
    return device


def check_supported(spec, task_name: str) -> None:
    if not spec.supports(task_name):
        raise CkmError(
            f"method '{spec.name}' does not support task '{task_name}': it supports {', '.join(spec.tasks) or 'none'}"
        )


def _evenly(n: int, k: int) -> np.ndarray:
    if k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def prepare(cfg: RunConfig, reg: Registry) -> Prepared:
    """Validate the request and load the data; raises CkmError on bad input."""
    spec = reg.method(cfg.method)
    task_spec = reg.task(cfg.task)
    check_supported(spec, cfg.task)
    check_label("method name", spec.name)
    overrides = resolve_overrides(spec, cfg.profile, cfg.hparams)
    check_dotted(reg, spec, cfg.profile, overrides)
    check_hparams(spec, cfg.profile, overrides)
    hparams = {**require_profile(spec, cfg.profile), **overrides}
    device = resolve_device(cfg.device)
    task = task_spec.make(**task_spec.params)
    train_task_spec = reg.task(task.train_task)
    train_task = train_task_spec.make(**train_task_spec.params)
    test_ds = load_dataset(cfg.dataset, root=cfg.data_root, progress=cfg.progress)
    same = cfg.train_dataset in (None, cfg.dataset)
    train_ds = test_ds if same else load_dataset(cfg.train_dataset, root=cfg.train_data_root, progress=cfg.progress)
    if spec.check_dataset is not None:
        spec.check_dataset(test_ds)
    for t, ds in ((task, test_ds), (train_task, train_ds)):
        check = getattr(t, "check_dataset", None)
        if check is not None:
            check(ds)
    test = test_ds.split("test")
    if cfg.max_test:
        test = test.take(_evenly(len(test), cfg.max_test))
    if len(test) == 0:
        raise CkmError(f"dataset '{cfg.dataset}' has an empty test split: check the dataset folder")
    n_total, positions = len(test), None
    if cfg.shard:
        from .shards import shard_positions

        positions = shard_positions(test.scene, *cfg.shard)
        test = test.take(positions)
    train = train_ds.split("train") if "train" in train_ds.splits else None
    val = train_ds.split("val") if "val" in train_ds.splits else None
    if train is None and getattr(spec, "kind", "baseline") != "baseline":
        raise CkmError(
            f"dataset '{train_ds.name}' has no train split to fit '{spec.name}': pass --train-dataset (e.g. city)"
        )
    return Prepared(spec, task, train_task, test, train, val, hparams, device, test_ds.content_hash, train_ds.content_hash,
                    positions, n_total)


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


DEFAULT_PREDICT_BATCH = 16


def predict_batch_size(cfg: RunConfig, hparams: dict) -> int:
    """Maps predicted at once: RunConfig.batch_size when given, else the method's
    ``predict_batch`` hyper-parameter (a profile key, e.g. CGDM's 4), else 16."""
    size = cfg.batch_size if cfg.batch_size is not None else hparams.get("predict_batch") or DEFAULT_PREDICT_BATCH
    if int(size) < 1:
        raise CkmError(f"prediction batch size {size} < 1: give 1 or more")
    return int(size)


def prediction_amp(ctx: RunContext):
    """bf16 autocast around prediction when the run sets ``sample_amp=bf16`` (the fit is the
    same fp32 one: the key is not in the fit key); fp32 otherwise."""
    from .training import autocast

    return autocast(ctx.device, ctx.hparams.get("sample_amp"))


def warm_up(method: Method, task, test, ctx: RunContext, batch_size: int = 1) -> None:
    """One untimed prediction of a real-sized batch (the first test maps) with every sampler cut
    to one step (ckmbench.warmup): lazy initialisation, caches and thread pools are then paid
    for alike in a sweep and in a single run, outside the timed part."""
    from .warmup import warming_up

    if len(test) == 0:
        return
    obs, _, _ = TaskData(test, task, ctx.seed).batch_at(list(range(min(len(test), batch_size))))
    with torch.no_grad(), warming_up(), prediction_amp(ctx):
        method.predict(obs.to(ctx.device), ctx)


def predict_all(method: Method, task, test, ctx: RunContext, batch_size: int, deadline: float | None):
    """Predictions, targets and regions for the whole test split, batch by batch."""
    preds, targets, regions, observations = [], [], {}, []
    data = TaskData(test, task, ctx.seed)
    for obs, target, reg in data.batches(batch_size):
        if deadline is not None and time.monotonic() > deadline:
            raise RunTimeout("time budget exceeded during prediction")
        with torch.no_grad(), prediction_amp(ctx):
            out = method.predict(obs.to(ctx.device), ctx)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(target.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"method '{method.name}' returned {got}, expected a tensor of shape {tuple(target.shape)}")
        preds.append(out.detach().float().cpu())
        targets.append(target)
        observations.append(obs.y if obs.y is not None else None)
        for k, v in reg.items():
            regions.setdefault(k, []).append(v)
    pred = torch.cat(preds)
    return (
        pred,
        torch.cat(targets),
        {k: torch.cat(v) for k, v in regions.items()},
        observations,
    )


def _save_examples(store_file: Path, record_id: str, test, pred, target, observations, k: int) -> str | None:
    if k <= 0:
        return None
    idx = _evenly(len(test), k)
    payload = {
        "keys": np.array([test[int(i)].key for i in idx]),
        "truth": _uint8(target[idx, 0].numpy()),
        "prediction": _uint8(pred[idx, 0].numpy()),
        # (g_min, g_max) dB of each map, so the leaderboard's example grids can be drawn in dB
        "gain_range": np.array([test[int(i)].gain_range for i in idx], np.float32),
    }
    if observations and all(o is not None for o in observations):
        obs = torch.cat(observations)[idx, 0].numpy()
        payload["observation"] = _uint8(obs)
    rel = Path("examples") / f"{record_id}.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, **payload)
    atomic_write_bytes(store_file.parent / rel, buf.getvalue())
    return rel.as_posix()


def save_predictions_db(folder: Path, test, pred: torch.Tensor) -> None:
    """Each prediction as ``<scene>_<tx>.npy``: path gain in dB on the map's own gain range,
    the names and unit ``ckmbench evaluate --npy-unit db`` reads back."""
    from .data.sample import denormalize

    folder.mkdir(parents=True, exist_ok=True)
    for i, (scene, tx) in enumerate(zip(test.scene, test.tx_index)):
        buf = io.BytesIO()
        np.save(buf, denormalize(pred[i, 0].numpy(), test.gain_range[i]).astype(np.float32))
        atomic_write_bytes(folder / f"{scene}_{int(tx)}.npy", buf.getvalue())


def _clean(values: dict) -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, (float, np.floating)):
            v = float(v)
            out[k] = v if np.isfinite(v) else None
        elif isinstance(v, (np.integer,)):
            out[k] = int(v)
        else:
            out[k] = v
    return out


def run(cfg: RunConfig, reg: Registry | None = None) -> dict:
    """Fit, predict, score and store one run; returns the stored record.

    Raises CkmError before any work when the request or the store is unusable, and
    RecordNotStored (the record kept in the run folder) when the final append fails.
    """
    reg = reg or default_registry()
    store_file = check_store_writable(cfg.store)
    if cfg.threads is not None:
        from .threads import apply_threads

        apply_threads(cfg.threads)
    prep = prepare(cfg, reg)
    workers = loader_workers(cfg)
    spec = prep.spec
    imported = None  # (method, fit field): the authors' weights, loaded before any work (or refused)
    if cfg.weights:
        from .weights_import import check_weights_request, import_weights

        check_weights_request(spec, cfg.profile, cfg.weights)
        preloaded = spec.factory(cfg.profile, prep.hparams)
        imported = preloaded, import_weights(preloaded, cfg.weights, prep.train_task, prep.device)
    dist, version = reg.method_version(spec.name)
    record_id = uuid.uuid4().hex
    train_name = cfg.train_dataset or cfg.dataset
    train_hash = prep.train_dataset_hash
    config = {
        "method": spec.name, "task": cfg.task, "dataset": cfg.dataset, "dataset_hash": prep.dataset_hash,
        "train_dataset": train_name, "train_dataset_hash": train_hash, "profile": cfg.profile,
        "hparams": prep.hparams, "seed": cfg.seed, "max_test": cfg.max_test,
    }
    if imported:  # another network than the fit of the same settings: another config
        config["weights_sha256"] = imported[1]["weights_sha256"]
    chash = config_hash({**config, "protocol_version": base_provenance(prep.device)["protocol_version"]})
    if cfg.resume:
        from .pending import finished_record

        done = finished_record(chash, store_file, cfg.shard)
        if done:
            return {"record_id": done, "status": "skipped", "method": spec.name, "task": cfg.task,
                    "dataset": cfg.dataset, "seed": cfg.seed, "config_hash": chash,
                    "message": f"done already: record {done[:8]} of config {chash} in {store_file}"}
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = Path(cfg.runs_dir or default_runs_dir(cfg.store)) / f"{stamp}-{spec.name}-{cfg.task}-{cfg.dataset}-{record_id[:8]}"
    if not dist_info().is_main:  # under torchrun only rank 0 writes a run folder
        import tempfile

        run_dir = Path(tempfile.mkdtemp(prefix=f"ckmbench-rank{dist_info().rank}-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "record_id": record_id, "status": "done", "message": "", "method": spec.name,
        "method_distribution": dist, "method_version": version, "task": cfg.task, "dataset": cfg.dataset,
        "dataset_hash": prep.dataset_hash, "train_dataset": train_name, "train_dataset_hash": train_hash,
        "method_kind": getattr(spec, "kind", "baseline"),
        "profile": cfg.profile, "seed": cfg.seed, "n_test": len(prep.test), "map_size": list(prep.test.shape),
        "metrics": {}, "metric_notes": {}, "cost": {}, "hparams": prep.hparams,
        "overrides": {k: cfg.hparams[k] for k in sorted(cfg.hparams)},
        "config_hash": chash,
        **base_provenance(prep.device), "run_dir": str(run_dir), "examples": None,
        "fit": None,
    }
    payload = None
    if cfg.shard:
        from .shards import shard_field

        record["shard"] = shard_field(cfg.shard, record["config_hash"], prep.n_test_total)
    atomic_write_text(run_dir / "config.json", json.dumps({**asdict(cfg), **config, "record_id": record_id,
                                                          "writer": writer()}, indent=1, sort_keys=True, default=str))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    deadline = time.monotonic() + cfg.time_budget_s if cfg.time_budget_s else None
    learned = getattr(spec, "kind", "baseline") != "baseline"
    ctx = RunContext(device=prep.device, seed=cfg.seed, profile=cfg.profile, hparams=prep.hparams, run_dir=run_dir,
                     time_budget_s=cfg.time_budget_s, progress=cfg.progress, amp=prep.hparams.get("amp"),
                     deadline=deadline if learned else None, loader_workers=workers,
                     keep_train_state=cfg.keep_train_state)
    # A learned method's budget bounds its training: it stops, saves and is scored on what it
    # learned (record: fit.budget_reached). A baseline past the budget is a timeout.
    predict_deadline = None if learned else deadline
    stage = "building the method"  # where plugin code was when it failed: named in the record
    watch = _SigintWatch().__enter__()
    try:
        method = imported[0] if imported else spec.factory(cfg.profile, prep.hparams)
        stage = "fit"
        from .memformat import channels_last_for, method_to_channels_last

        ctx.channels_last = channels_last_for(method, prep.device)
        empty = prep.test.take([])
        train = TaskData(prep.train if prep.train is not None else empty, prep.train_task, cfg.seed)
        val = TaskData(prep.val if prep.val is not None else empty, prep.train_task, cfg.seed)
        with PeakMemory(prep.device) as peak:
            t0 = time.perf_counter()
            if imported:
                record["fit"] = imported[1]
            elif cfg.checkpoint:
                from .runweights import run_weights_path

                method.load_state_dict(load_checkpoint_file(run_weights_path(cfg.checkpoint), map_location=prep.device))
            else:
                record["fit"] = fit_method(
                    method, spec, version=version, train_task=prep.train_task, train_name=train_name,
                    train_hash=train_hash, profile=cfg.profile, hparams=prep.hparams, seed=cfg.seed, train=train,
                    val=val, ctx=ctx, registry=reg, refit=cfg.refit,
                    restart=cfg.restart)
            train_s = time.perf_counter() - t0
            if not dist_info().is_main:
                return {**record, "rank": dist_info().rank}  # under torchrun, rank 0 alone scores and stores
            if predict_deadline is not None and time.monotonic() > predict_deadline:
                raise RunTimeout(f"time budget of {cfg.time_budget_s:.0f} s exceeded during fit")
            state = method.state_dict()
            if state:
                from .runweights import write_run_weights

                write_run_weights(run_dir, state, record["fit"], cfg.checkpoint)
            stage = "predict"
            if ctx.channels_last:  # a fit loaded from a file comes in the default format
                method_to_channels_last(method)
            batch_size = predict_batch_size(cfg, prep.hparams)
            warm_up(method, prep.task, prep.test, ctx, batch_size)
            t1 = time.perf_counter()
            pred, target, regions, observations = predict_all(method, prep.task, prep.test, ctx, batch_size,
                                                                     predict_deadline)
            infer_s = time.perf_counter() - t1
        stage = "scoring"
        from .metrics.evaluate import bound_predictions, evaluate

        pred, bound_notes = bound_predictions(pred)  # NaN/inf refused; far out of [0, 1] noted, then clamped
        if cfg.save_predictions:
            save_predictions_db(Path(cfg.save_predictions), prep.test, pred)

        gain_range = torch.from_numpy(prep.test.gain_range.astype(np.float32))
        result = evaluate(pred, target, gain_range, regions, metrics=prep.task.metrics,
                          fid=wants_fid(cfg) and not cfg.shard)
        if cfg.shard:  # per-sample values and FID features wait for `ckmbench results collect`
            from .shards import shard_payload

            payload = shard_payload(result, prep.positions, pred, target, wants_fid(cfg), prep.task, regions)
        from .tasks.protocols import apply_conventions

        apply_conventions(prep.task, result.summary, result.notes, pred, target, regions)
        record["metrics"] = _clean(result.summary)
        record["metric_notes"] = _clean({**result.notes, **bound_notes})
        in_sample = (getattr(method, "in_sample", None) or {}).get(cfg.dataset)
        if in_sample:  # scored on data the method was calibrated on
            record["metric_notes"]["in_sample"] = in_sample
        record["cost"] = _clean({
            "params": int(method.num_parameters()),
            # a reused fit reports the training time and steps it cost when it was made
            # no training (a classical baseline, a loaded checkpoint): no training time, shown "—"
            "train_s": (record["fit"] or {}).get("train_s", train_s) if record["fit"] else
                       (train_s if learned and not cfg.checkpoint else None),
            "train_steps": (record["fit"] or {}).get("steps_done"),
            "infer_s_per_map": infer_s / len(prep.test),
            "sampling_steps": method.sampling_steps(),
            "peak_mem_mb": peak.peak_mb,
            "threads": torch.get_num_threads(),  # CPU threads the run computed on
        })
        inference_params = method.inference_parameters()
        if inference_params is not None:  # frozen modules used to predict (S3's count), e.g. a VAE decoder
            record["cost"]["params_inference"] = int(inference_params)
        if cfg.examples > 0:  # the file is this process's until the record is stored (ckmbench.leftovers)
            mark_examples(store_file, record_id)
        record["examples"] = _save_examples(store_file, record_id, prep.test, pred, target, observations, cfg.examples)
        if not cfg.shard:
            record["per_map"] = write_per_map(store_file, record_id, prep.test.scene, result.per_sample,
                                              record["metric_notes"])
        _write_run_outputs(run_dir, result, prep.test, record, store_file)
    except RunTimeout as exc:
        record.update(status="timeout", message=str(exc))
    except CkmError as exc:
        record.update(status="error", message=str(exc))
    except Exception as exc:  # recorded, never fatal to a sweep
        log.debug("run failed", exc_info=True)
        record.update(status="error", message=f"{type(exc).__name__}: {exc}")
        atomic_write_text(run_dir / "error.txt", traceback.format_exc())
    except BaseException as exc:  # SystemExit, a KeyboardInterrupt not from Ctrl-C...: the plugin's failure
        if isinstance(exc, KeyboardInterrupt) and watch.received:
            raise
        owner = reg.owner[("methods", spec.name)]
        record.update(status="error", message=f"method '{spec.name}' of plugin '{owner.name}' (distribution "
                                              f"{owner.distribution}) ended with {_short_error(exc)} in {stage}")
        atomic_write_text(run_dir / "error.txt", traceback.format_exc())
    finally:
        watch.__exit__(None, None, None)
    try:
        atomic_write_text(run_dir / "record.json", json.dumps(record, indent=1, sort_keys=True, default=str))
    except OSError as exc:
        log.warning("could not write %s: %s", run_dir / "record.json", exc)
    if cfg.pending or cfg.shard:  # a per-run record file; `ckmbench results collect` merges it
        from .pending import write_pending

        try:
            write_pending(record, store_file, payload)
        except (OSError, ValueError, TypeError) as exc:
            raise RecordNotStored(f"{spec.name} on {cfg.task}: record not written to the pending folder of "
                                  f"{store_file} ({exc}); it is kept in {run_dir / 'record.json'}", record) from None
        unmark_examples(store_file, record_id)
        return record
    try:
        append_record(record, store_file)
    except (OSError, ValueError, TypeError) as exc:  # one failed append never stops a sweep
        log.debug("append failed", exc_info=True)
        raise RecordNotStored(f"{spec.name} on {cfg.task}: record not stored in {store_file} ({exc}); "
                              f"it is kept in {run_dir / 'record.json'}", record) from None
    unmark_examples(store_file, record_id)
    return record


def loader_workers(cfg: RunConfig) -> int:
    """DataLoader workers of a run: --loader-workers, else $CKMBENCH_LOADER_WORKERS, else 0."""
    import os

    value = cfg.loader_workers if cfg.loader_workers is not None else os.environ.get("CKMBENCH_LOADER_WORKERS", "0")
    try:
        workers = int(value)
    except ValueError:
        raise CkmError(f"CKMBENCH_LOADER_WORKERS={value!r} is not a whole number: set it to 0 or more") from None
    if workers < 0:
        raise CkmError(f"loader workers {workers} < 0: pass 0 (batches built in the training process) or more")
    return workers


def _write_run_outputs(run_dir: Path, result, test, record: dict, store_file: Path) -> None:
    """metrics.json, per-sample CSV and the example figure in the run folder."""
    import pandas as pd

    atomic_write_text(run_dir / "metrics.json", json.dumps(
        {"metrics": record["metrics"], "notes": record["metric_notes"], "cost": record["cost"]}, indent=1, sort_keys=True))
    table = pd.DataFrame({k: np.asarray(v) for k, v in result.per_sample.items() if np.ndim(v) == 1 and len(v) == len(test)})
    table.insert(0, "sample", [f"{s}/{t}" for s, t in zip(test.scene, test.tx_index)])
    atomic_write_text(run_dir / "per_sample.csv", table.to_csv(index=False))
    if record.get("examples"):
        try:
            from .figures import example_grid

            title = f"{record['method']} on {record['task']} ({record['dataset']})"
            example_grid(run_dir / "examples.png", store_file.parent / record["examples"], title)
        except Exception as exc:  # a figure must never fail a run
            log.warning("could not draw the example figure: %s", exc)
