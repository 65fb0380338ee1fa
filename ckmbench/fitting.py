"""Fit a learned method once, through the fit cache; classical baselines just call ``fit``.

The runner calls :func:`fit_method`. For a learned method it looks the fit up in the cache
(:mod:`ckmbench.fitcache`); when absent (or with ``refit``) it points the trainer at the
cache folder (so a killed fit resumes), calls ``method.fit`` and stores the weights with
what the trainer reported. A method that builds on another method's fit (LiCGDM on CGDM)
gets it from ``ctx.fit_dependency(name)``, fitted or reused the same way.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from .fitcache import FitEntry, describe, drop_train_state, fit_hparams, fit_key
from .training import dist_info, init_distributed

log = logging.getLogger("ckmbench.fit")


def report_fit(ctx, result, **extra) -> None:
    """Called by a method's ``fit``: what the record and the fit cache say about this fit."""
    info = result.as_record() if hasattr(result, "as_record") else dict(result)
    ctx.extras["fit"] = {**info, **extra}


def fit_method(method, spec, *, version: str, train_task, train_name: str, train_hash: str, profile: str,
               hparams: dict, seed: int, train, val, ctx, registry=None, refit: bool = False) -> dict | None:
    """Fit ``method`` (or load its cached fit); returns the record's ``fit`` field (None for baselines)."""
    if spec.kind == "baseline":
        method.fit(train, val, train_task, ctx)
        return None
    key = fit_key(spec.name, version, train_task.name, train_hash, profile, fit_hparams(method, hparams), seed)
    entry = FitEntry.for_run(spec.name, key)
    info = dist_info()
    main = info.is_main
    if refit and main:
        entry.clear()
    if _agreed(entry.complete(), ctx):
        log.info("%s: using the cached fit %s", spec.name, entry.dir)
        _load_fit(method, entry, ctx)
        return describe(entry, "cache", entry.meta())
    shipped = FitEntry.for_run(spec.name, key, Path(spec.fits_dir)) if getattr(spec, "fits_dir", None) else None
    if not refit and shipped is not None and _agreed(shipped.complete(), ctx):
        log.info("%s: using the fit shipped with the plugin %s", spec.name, shipped.dir)
        _load_fit(method, shipped, ctx)
        return describe(shipped, "shipped", shipped.meta())
    ctx.fit_dir = entry.dir
    if registry is not None:
        ctx.fit_dependency = _dependency_fitter(registry, ctx, train_task=train_task, train_name=train_name,
                                                train_hash=train_hash, profile=profile, seed=seed, train=train, val=val)
    ctx.extras.pop("fit", None)
    t0 = time.perf_counter()
    method.fit(train, val, train_task, ctx)
    info = dict(ctx.extras.get("fit") or {})
    meta = {
        **info, "method": spec.name, "method_version": version, "train_task": train_task.name,
        "train_dataset": train_name, "train_dataset_hash": train_hash, "profile": profile, "seed": seed,
        "hparams": fit_hparams(method, hparams), "complete": not info.get("budget_reached", False),
        "fit_wall_s": time.perf_counter() - t0,
    }
    if main:
        entry.save(method.state_dict(), meta)
        if meta["complete"] and not getattr(ctx, "keep_train_state", False):
            drop_train_state(entry.dir)  # resumable state of a finished fit: GBs nothing reads again
    return describe(entry, "trained", meta)


def _load_fit(method, entry, ctx) -> None:
    """Weights of a stored fit into ``method``; weights that no longer fit its code are one clear line."""
    from .errors import CkmError

    state = entry.load(map_location=ctx.device)
    try:
        method.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CkmError(f"the stored fit {entry.dir} does not match the current code of '{method.name}' "
                       f"({first[:160]}): pass --refit to train it again") from None


def _agreed(flag: bool, ctx) -> bool:
    """Under torchrun every rank takes rank 0's decision (train or reuse), or DDP would hang."""
    if not dist_info().enabled:
        return flag
    import torch.distributed as dist

    init_distributed(ctx.device)
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


# Share of the time left that a dependency fit (LiCGDM's CGDM teacher, SRGAN-MSE's SRResNet) may
# use of a run's --time-budget; the method itself trains until the run's deadline.
DEPENDENCY_BUDGET_SHARE = 0.5


def _dependency_fitter(registry, ctx, **common):
    """``ctx.fit_dependency(name)``: method ``name`` fitted on the same data, profile and seed,
    with the run's ``--set name.key=value`` overrides and half of the time budget left."""
    from .overrides import dependency_overrides, resolve_overrides
    from .plugins import require_profile
    from .runner import check_hparams

    def fitted(name: str):
        spec = registry.method(name)
        hparams = dict(require_profile(spec, common["profile"]))
        # the run's bf16 setting carries over; everything else is the dependency's own profile
        if ctx.amp:
            hparams["amp"] = ctx.amp
        mine = resolve_overrides(spec, common["profile"], dependency_overrides(ctx.hparams or {}, name))
        check_hparams(spec, common["profile"], mine)
        hparams.update(mine)
        method = spec.factory(common["profile"], hparams)
        _, version = registry.method_version(spec.name)
        sub = copy.copy(ctx)
        sub.extras = {}
        sub.hparams = hparams
        if ctx.deadline is not None:
            now = time.monotonic()
            sub.deadline = now + max(0.0, ctx.deadline - now) * DEPENDENCY_BUDGET_SHARE
        fit_method(method, spec, version=version, hparams=hparams, ctx=sub, registry=registry, **common)
        return method

    return fitted
