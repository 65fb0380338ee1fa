"""Small-profile cost of CGDM, CDiff and LiCGDM on this machine: training steps per second and
sampling seconds per map (64 x 64, the small profile's widths, crops and DDIM steps).

    pytest benchmarks/test_bench_pixel_diffusion.py --benchmark-only

The paper profile's per-step costs are in ``test_bench_diffusion.py``. LiCGDM's training step
is a distillation step (student forward/backward + teacher forward) on the pruned network.
"""

from __future__ import annotations

import pytest
import torch

from ckmbench.data.registry import load_dataset
from ckmbench.method import RunContext, TaskData
from ckmbench.plugins import registry

METHODS = (("cgdm", "sr4"), ("cdiff", "sr4-envcf"), ("licgdm", "sr4"))


@pytest.fixture(scope="module")
def city(request):
    if not request.config.getoption("benchmark_only", False):
        pytest.skip("builds the city dataset: run with --benchmark-only")
    return load_dataset("city", progress=False)


def setup_method_(name, task_name, city):
    reg = registry()
    spec, ts = reg.method(name), reg.task(task_name)
    method = spec.factory("small", dict(spec.profiles["small"]))
    task = ts.make(**ts.params)
    batch_size = method.hparams.get("batch_size", method.hparams.get("finetune_batch_size"))
    train = TaskData(city.split("train"), task, 0)
    return method, task, train, batch_size


@pytest.mark.parametrize("name,task_name", METHODS)
def test_bench_small_train_step(benchmark, city, name, task_name):
    method, _, train, bs = setup_method_(name, task_name, city)
    batch = train.batch_at(range(bs))
    if name == "licgdm":
        teacher = method.net
        method.net = __import__("copy").deepcopy(teacher)
        values = {k: float(i) for i, k in enumerate(method.net.res_blocks())}
        method.pruned, _ = method.choose(values)
        method.net.prune(method.pruned)
        loss_fn = method.distill_loss(teacher.eval())
    else:
        loss_fn = method.loss
    opt = torch.optim.Adam(method.net.parameters(), lr=5e-5)
    g = torch.Generator().manual_seed(0)
    method.net.train()

    def step():
        loss = loss_fn(method.net, batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    s = benchmark.stats.stats.mean
    benchmark.extra_info.update(steps_per_s=1 / s, batch=bs, threads=torch.get_num_threads())


@pytest.mark.parametrize("name,task_name", METHODS)
def test_bench_small_sampling_per_map(benchmark, city, name, task_name):
    method, task, _, _ = setup_method_(name, task_name, city)
    obs, _, _ = TaskData(city.split("test"), task, 0).batch_at(range(16))
    ctx = RunContext(progress=False)
    benchmark.pedantic(lambda: method.predict(obs, ctx), rounds=3, iterations=1, warmup_rounds=1)
    s = benchmark.stats.stats.mean
    benchmark.extra_info.update(s_per_map=s / 16, sampling_steps=method.sampling_steps(),
                                threads=torch.get_num_threads())
