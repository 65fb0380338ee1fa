"""CPU wall time of the CGDM paper U-Net (221.27 M parameters, 128 x 128, batch 1).

Heavy and opt-in: ``pytest benchmarks/test_bench_diffusion.py --benchmark-only`` (skipped
otherwise). ``test_bench_train_step`` is one training iteration (noise + forward + backward +
Adam step, through ``GaussianDiffusion.training_loss``); ``test_bench_sampling_step`` is one
forward without grad (= one ancestral/DDIM step). ``extra_info`` extrapolates to the paper's
T = 1000 ancestral steps per map and to 500k iterations.
"""

from __future__ import annotations

import pytest
import torch

from ckmbench.diffusion import GaussianDiffusion, cgdm_paper_unet, make_betas

SIZE, T = 128, 1000


@pytest.fixture(scope="module")
def setup(request):
    if not request.config.getoption("benchmark_only", False):
        pytest.skip("heavy (221 M-parameter model): run with --benchmark-only")
    torch.manual_seed(0)
    model = cgdm_paper_unet()
    diff = GaussianDiffusion(make_betas("linear", T), "eps")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, SIZE, SIZE, generator=g)
    lr_up = torch.rand(1, 3, SIZE, SIZE, generator=g)
    return model, diff, x0, lr_up


def test_bench_train_step(benchmark, setup):
    model, diff, x0, lr_up = setup
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    g = torch.Generator().manual_seed(1)

    def step():
        loss = diff.training_loss(lambda xt, t: model(torch.cat([xt, lr_up], 1), t), x0, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    loss = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    assert loss == loss  # finite
    s = benchmark.stats.stats.mean
    benchmark.extra_info.update(params=sum(p.numel() for p in model.parameters()), s_per_step=s,
                                days_for_500k_steps_batch1=s * 500_000 / 86400, threads=torch.get_num_threads())


def test_bench_sampling_step(benchmark, setup):
    model, _, x0, lr_up = setup
    model.eval()
    x = torch.cat([torch.randn_like(x0), lr_up], 1)
    t = torch.tensor([500])

    def step():
        with torch.no_grad():
            return model(x, t)

    out = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (1, 3, SIZE, SIZE)
    s = benchmark.stats.stats.mean
    benchmark.extra_info.update(s_per_step=s, min_per_map_ancestral_T1000=s * T / 60,
                                threads=torch.get_num_threads())
