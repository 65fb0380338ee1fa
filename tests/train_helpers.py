"""A tiny model and data source for the trainer tests (also run as a script by the kill test).

    python tests/train_helpers.py STATE_DIR OUT.pt STEPS [SLEEP_S]

trains the toy model with checkpoints every 2 steps and writes its final weights to OUT.pt.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from ckmbench.method import RunContext
from ckmbench.plugins import registry
from ckmbench.tasks.base import Observation
from ckmbench.training import Trainer, TrainConfig


# ------------------------------------------------ shared by the learned-method test files
@pytest.fixture(autouse=True)
def one_thread():
    """Learned-method tests run torch on one thread: deterministic and fair to parallel jobs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def reg():
    return registry()


def crash_then_resume(monkeypatch, fit, root, crash_at: int, trainer_name: str | None = None):
    """``fit(root)`` crashing at the ``crash_at``-th training step (of ``trainer_name`` only, when
    given), then ``fit(root)`` again: the second call must resume from the saved state."""
    from ckmbench.training import Trainer

    original, calls = Trainer._one_step, {"n": 0}

    def crashing(self, *args, **kwargs):
        if trainer_name is None or self.name == trainer_name:
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_one_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(root)
    monkeypatch.setattr(Trainer, "_one_step", original)
    return fit(root)


def cache_fitter(monkeypatch, reg, spec, hparams: dict, task, data, train_name: str):
    """``fit(root)``: the method fitted through the fit cache rooted at ``root`` (tiny profile,
    seed 0), as ``ckmbench run`` fits it; the fit's record is on ``method.info``."""
    from ckmbench.fitting import fit_method
    from ckmbench.method import TaskData

    train, val = TaskData(data.split("train"), task, 0), TaskData(data.split("val"), task, 0)

    def fit(root):
        monkeypatch.setenv("CKMBENCH_FITS", str(root))
        method = spec.factory("tiny", dict(hparams))
        method.info = fit_method(method, spec, version="t", train_task=task, train_name=train_name, train_hash="h",
                                 profile="tiny", hparams=dict(hparams), seed=0, train=train, val=val,
                                 ctx=RunContext(seed=0, profile="tiny", progress=False), registry=reg)
        return method

    return fit


def fixed_batch_losses(fixed_loss, params, lr: float, steps: int = 40) -> tuple[float, float]:
    """(first, last) value of ``fixed_loss()`` over ``steps`` Adam steps on one fixed batch: a
    model that can learn at all brings it well down."""
    opt = torch.optim.Adam(params, lr=lr)
    start = float(fixed_loss().detach())
    for _ in range(steps):
        opt.zero_grad()
        fixed_loss().backward()
        opt.step()
    return start, float(fixed_loss().detach())


class ToyData:
    """16 maps of a smooth field; ``batch_at`` draws observation noise from (index, draw)."""

    def __init__(self, n: int = 16, size: int = 8):
        g = torch.Generator().manual_seed(0)
        self.maps = torch.rand(n, 1, size, size, generator=g)
        self.size = size

    def __len__(self) -> int:
        return len(self.maps)

    def batch_at(self, idx, draw=None):
        target = self.maps[list(idx)]
        noise = []
        for i in idx:
            g = torch.Generator().manual_seed(1000 * int(i) + (0 if draw is None else 1 + int(draw)))
            noise.append(0.1 * torch.randn(1, self.size, self.size, generator=g))
        y = target + torch.stack(noise)
        obs = Observation(task="toy", out_shape=(self.size, self.size), gain_range=torch.zeros(len(idx), 2),
                          pixel_m=torch.ones(len(idx)), keys=[str(i) for i in idx], y=y)
        return obs, target, {}


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Dropout(0.2), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1))


def toy_loss(sleep_s: float = 0.0):
    def loss(net, batch, generator):
        obs, target, _ = batch
        if sleep_s:
            time.sleep(sleep_s)
        jitter = 0.01 * torch.randn(target.shape, generator=generator, device=target.device)
        return ((net(obs.y) - target - jitter) ** 2).mean()

    return loss


def toy_config(steps: int, **kw) -> TrainConfig:
    base = dict(steps=steps, batch_size=4, lr=1e-2, ema_decay=0.9, ema_start=3, checkpoint_every=2, log_every=2)
    base.update(kw)
    return TrainConfig(**base)


def train_toy(state_dir: Path, steps: int, sleep_s: float = 0.0, **kw):
    model = toy_model()
    ctx = RunContext(seed=5, progress=False, fit_dir=Path(state_dir))
    trainer = Trainer(model, toy_config(steps, **kw), ctx, name="toy")
    result = trainer.fit(ToyData(), toy_loss(sleep_s))
    return model, result


if __name__ == "__main__":
    torch.set_num_threads(1)
    state, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    sleep = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    model, _ = train_toy(state, n, sleep)
    torch.save(model.state_dict(), out)


def check_sampled_predictions(method, refit, fresh, obs, target, ctx) -> torch.Tensor:
    """What every sampling method's predictions owe: the target's shape in [0, 1], the same maps
    for the same seed and others for another, the same weights from a second fit (``refit``),
    and a stored fit loaded into ``fresh`` predicting the same. Returns the prediction."""
    from ckmbench.method import RunContext

    a = method.predict(obs, ctx)
    assert a.shape == target.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, method.predict(obs, ctx))
    assert not torch.equal(a, method.predict(obs, RunContext(seed=1, progress=False)))
    net, again = method.state_dict()["net"], refit.state_dict()["net"]
    assert list(net) == list(again) and all(torch.equal(net[k], again[k]) for k in net)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.predict(obs, ctx), a)
    return a


def fit_on(method, task, data, fit_dir, seed: int = 0):
    """Fit ``method`` on the train/val splits of ``data`` for ``task`` (tiny profile, no progress);
    returns the run context, whose ``extras["fit"]`` holds what the fit recorded."""
    from ckmbench.method import RunContext, TaskData

    ctx = RunContext(seed=seed, profile="tiny", progress=False, fit_dir=fit_dir)
    method.fit(TaskData(data.split("train"), task, seed), TaskData(data.split("val"), task, seed), task, ctx)
    return ctx
