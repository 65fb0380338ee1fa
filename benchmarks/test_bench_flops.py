"""How close each small profile's training step comes to this CPU's matmul rate, at one thread.

    pytest benchmarks/test_bench_flops.py --benchmark-only -s

For each learned method: the FLOPs of one real training step (the method's own loss, backward
and optimizer step, through ``Trainer._one_step``; counted by ``torch.utils.flop_counter``:
convolutions and matmuls, forward and backward) over its measured time, as a fraction of a
large fp32 matmul's FLOP/s measured in the same process. Elementwise work (norms,
activations, Adam) is not counted, so a method rich in it scores lower than its cores are
busy. The fraction is in each benchmark's ``extra_info`` and printed (``-s``).
"""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ckmbench.method import RunContext, TaskData
from ckmbench.memformat import channels_last_for
from ckmbench.plugins import registry, require_profile
from ckmbench.runner import RunConfig, prepare
from ckmbench.training import Trainer

# (method, task it trains on, the trainer whose step is measured: the main network's)
METHODS = (
    ("cgdm", "sr4", "unet"), ("radiounet-c", "envgen-static", "u2"), ("uvm-net", "envgen-static", "u2"),
    ("rme-gan", "envgen-static", None), ("radiodiff", "envgen-static", "ddm"), ("ckmdiff", "inpaint", "ddm"),
    ("drrn", "sr4", None), ("srresnet", "sr4", None), ("srgan-mse", "sr4", None), ("cvae", "sr4", None),
    ("cgan", "inpaint", None),
)
# training lengths of every stage, cut to two steps so the fit reaches the measured trainer quickly
STAGE_STEPS = ("steps", "vae_steps", "sr_steps", "region_steps", "steps_u1", "steps_u2", "steps_global",
               "steps_local")
MATMUL_N = 2048


@pytest.fixture(scope="module")
def one_thread(request):
    if not request.config.getoption("benchmark_only", False):
        pytest.skip("trains on the city dataset: run with --benchmark-only")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def matmul_flops_per_s(n: int = MATMUL_N, repeats: int = 5) -> float:
    """The best FLOP/s of an n x n fp32 matmul (2 n^3 FLOPs) over a few tries."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


class Captured(Exception):
    """Stops the fit once the measured trainer's first step has run."""


def captured_step(name: str, task: str, trainer_name: str | None):
    """(trainer, args) of the measured trainer's training step, after one real step of it."""
    reg = registry()
    spec = reg.method(name)
    profile = require_profile(spec, "small")
    over = {k: 2 for k in STAGE_STEPS if k in profile}
    prep = prepare(RunConfig(method=name, task=task, dataset="city", profile="small", hparams=over,
                             progress=False), reg)
    # a fine-tuning method (srgan-mse starts from srresnet) starts from random weights here
    method = spec.factory("small", {**prep.hparams, **({"init_from": None} if "init_from" in profile else {})})
    ctx = RunContext(seed=0, profile="small", hparams=prep.hparams, progress=False)
    ctx.channels_last = channels_last_for(method, ctx.device)
    original, box = Trainer._one_step, {}

    def capture(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if trainer_name in (None, self.name):
            box.update(trainer=self, args=args, kwargs=kwargs)
            raise Captured
        return out

    Trainer._one_step = capture
    try:
        method.fit(TaskData(prep.train, prep.train_task, 0), TaskData(prep.val, prep.train_task, 0), prep.train_task,
                   ctx)
    except Captured:
        pass
    finally:
        Trainer._one_step = original
    if not box:
        pytest.fail(f"{name}: no training step of trainer {trainer_name!r} ran")
    return lambda: original(box["trainer"], *box["args"], **box["kwargs"])


@pytest.mark.parametrize("name,task,trainer_name", METHODS, ids=[m[0] for m in METHODS])
def test_bench_training_step_flops(benchmark, one_thread, name, task, trainer_name):
    step = captured_step(name, task, trainer_name)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    peak = matmul_flops_per_s()
    benchmark.pedantic(step, rounds=4, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.min
    peak = max(peak, matmul_flops_per_s())  # before and after: the better of the two
    fraction = flops / seconds / peak
    benchmark.extra_info.update(step_gflop=flops / 1e9, step_s=seconds, gflops=flops / seconds / 1e9,
                                matmul_gflops=peak / 1e9, fraction_of_matmul=fraction, threads=1)
    print(f"\n{name:12s} step {flops / 1e9:7.2f} GFLOP in {seconds:.3f} s = {flops / seconds / 1e9:6.1f} GFLOP/s; "
          f"matmul {peak / 1e9:6.1f} GFLOP/s; fraction {fraction:.2f}")
    assert flops > 0
