"""What the diagnostic scripts share: a method's fit, loaded exactly as ``ckmbench run`` loads it, and
the benchmark's own PSNR."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ckmbench.fitting import fit_method
from ckmbench.method import RunContext
from ckmbench.metrics.pixel import psnr
from ckmbench.plugins import registry
from ckmbench.runner import Prepared, RunConfig, TaskData, prepare


@dataclass
class Fitted:
    method: object
    prep: Prepared
    ctx: RunContext
    train: TaskData
    val: TaskData
    fit: dict


def load_fitted(cfg: RunConfig) -> Fitted:
    """``cfg``'s method with its fit (fit cache, else the fit shipped with the plugin, else trained
    now and stored), on the CPU; prints which fit it is."""
    reg = registry()
    prep = prepare(cfg, reg)
    method = prep.spec.factory(cfg.profile, prep.hparams)
    ctx = RunContext(device=torch.device("cpu"), seed=cfg.seed, profile=cfg.profile, hparams=prep.hparams,
                     run_dir=None, progress=False)
    empty = prep.test.take([])
    train = TaskData(prep.train if prep.train is not None else empty, prep.train_task, cfg.seed)
    val = TaskData(prep.val if prep.val is not None else empty, prep.train_task, cfg.seed)
    _, version = reg.distribution_of("methods", prep.spec.name)
    fit = fit_method(method, prep.spec, version=version, train_task=prep.train_task, train_name=cfg.dataset,
                     train_hash=prep.train_dataset_hash, profile=cfg.profile, hparams=prep.hparams, seed=cfg.seed,
                     train=train, val=val, ctx=ctx, registry=reg)
    print(f"fit: {fit.get('source')} {fit.get('key')} ({fit.get('steps_done')} steps)")
    return Fitted(method, prep, ctx, train, val, fit)


def mean_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """The mean over maps of the PSNR the leaderboards report (peak 1, capped)."""
    return float(psnr(pred, target).mean())
