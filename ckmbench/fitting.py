"""Fit a learned method once, through the fit cache; classical baselines just call ``fit``.

The runner calls :func:`fit_method`. For a learned method it looks the fit up in the cache
(:mod:`ckmbench.fitcache`); when absent (or with ``refit``) it points the trainer at the
cache folder (so a killed fit resumes), calls ``method.fit`` and stores the weights with
what the trainer reported. ``refit`` only refuses to reuse a *finished* fit: an unfinished
one (killed, or stopped by a time budget) of the same key resumes, so the same ``--refit``
command run again goes on; ``restart`` throws the train state away and starts at step 0.
A method that builds on another method's fit (LiCGDM on CGDM) gets it from
``ctx.fit_dependency(name)``, fitted or reused the same way (neither flag reaches it).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from .fitcache import FitEntry, describe, drop_train_state, fit_hparams, fit_key
from .fitnotice import TrainingNotice, announce_stored, fit_label, say
from .training import dist_info, init_distributed

log = logging.getLogger("ckmbench.fit")


def report_fit(ctx, result, **extra) -> None:
    """Called by a method's ``fit``: what the record and the fit cache say about this fit."""
    info = result.as_record() if hasattr(result, "as_record") else dict(result)
    ctx.extras["fit"] = {**info, **extra}


def fit_method(method, spec, *, version: str, train_task, train_name: str, train_hash: str, profile: str,
               hparams: dict, seed: int, train, val, ctx, registry=None, refit: bool = False,
               restart: bool = False) -> dict | None:
    """Fit ``method`` (or load its cached fit); returns the record's ``fit`` field (None for baselines).

    ``refit``: never reuse a finished fit (cached or shipped); an unfinished one resumes.
    ``restart``: also throw an unfinished fit's train state away. Neither reaches the fits of
    ``ctx.fit_dependency`` (a teacher is reused or resumed as usual)."""
    if spec.kind == "baseline":
        method.fit(train, val, train_task, ctx)
        return None
    spec, version = shared_fit_owner(method, spec, version, train_task, registry)
    key = fit_key(spec.name, version, train_task.name, train_hash, profile, fit_hparams(method, hparams), seed)
    entry = FitEntry.for_run(spec.name, key)
    info = dist_info()
    main = info.is_main
    if main and (restart or (refit and entry.complete())):
        entry.clear()
    if _agreed(entry.complete(), ctx):
        announce_stored(fit_label(spec.name, train_task.name, train_name, profile), "cached", entry, entry.meta())
        _load_fit(method, entry, ctx)
        return describe(entry, "cache", entry.meta())
    shipped = FitEntry.for_run(spec.name, key, Path(spec.fits_dir)) if getattr(spec, "fits_dir", None) else None
    if not (refit or restart) and shipped is not None and _agreed(shipped.complete(), ctx):
        announce_stored(fit_label(spec.name, train_task.name, train_name, profile), "shipped", shipped, shipped.meta())
        _load_fit(method, shipped, ctx)
        return describe(shipped, "shipped", shipped.meta())
    ctx.fit_dir = entry.dir
    if registry is not None:
        ctx.fit_dependency = _dependency_fitter(registry, ctx, train_task=train_task, train_name=train_name,
                                                train_hash=train_hash, profile=profile, seed=seed, train=train, val=val)
    ctx.extras.pop("fit", None)
    ctx.fit_notice = TrainingNotice(fit_label(spec.name, train_task.name, train_name, profile), ctx.deadline)
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


def shared_fit_owner(method, spec, version: str, train_task, registry):
    """(spec, version) of the method whose fit ``method`` uses on ``train_task``: its own, or
    that of the method it names in ``shares_fit_with(task)`` (the same model trained on the same
    batches, e.g. CDiff on plain sr tasks is CGDM), so one fit is trained and stored, not two."""
    owner = getattr(method, "shares_fit_with", lambda task: None)(train_task)
    if not owner or owner == spec.name or registry is None:
        return spec, version
    say(f"{spec.name} on {train_task.name} is the same model as {owner} on the same batches: it uses {owner}'s fit")
    return registry.method(owner), registry.method_version(owner)[1]


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
