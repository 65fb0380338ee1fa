"""Metrics against hand-computed values, regions, the registry contract and the cost helpers."""

import math
import types

import numpy as np
import pytest
import torch

from ckmbench.errors import CkmError
from ckmbench.hookspecs import hookimpl
from ckmbench.metrics import builtin, cost, diversity, pixel
from ckmbench.metrics.evaluate import evaluate
from ckmbench.metrics.ssim import ssim, ssim_reference
from ckmbench.plugins import load_registry, registry
from ckmbench.specs import MetricSpec

T = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
P = torch.tensor([[0.5, 0.25], [0.5, 0.0]], dtype=torch.float64)
# e = [0, .25, .5, 0]; e^2 = [0, .0625, .25, 0]; sum u^2 = 1.5


def batch(*maps):
    return torch.stack([torch.as_tensor(m, dtype=torch.float64) for m in maps])[:, None]


def test_mse_nmse_psnr_by_hand():
    p, t = batch(P, T), batch(T, T)
    assert pixel.mse(p, t).tolist() == pytest.approx([0.3125 / 4, 0.0])
    assert pixel.nmse(p, t).tolist() == pytest.approx([0.3125 / 1.5, 0.0])
    assert pixel.psnr(p, t).tolist() == pytest.approx([10 * math.log10(4 / 0.3125), 100.0])


def test_psnr_cap_and_exact_match():
    t = batch(T, T)
    p = batch(T, T + 1e-7)  # mse 1e-14 -> 140 dB -> capped
    assert pixel.psnr(p, t).tolist() == [100.0, 100.0]
    assert pixel.psnr(batch(P), batch(T), cap=5.0).item() == 5.0


def test_mse_gain_uses_each_samples_range():
    p, t = batch(P, P), batch(T, T)
    gr = torch.tensor([[-147.0, -47.0], [-250.0, -50.0]])
    # g - ĝ = e * span: span 100 -> mse * 1e4; span 200 -> mse * 4e4
    assert pixel.mse_gain(p, t, gr).tolist() == pytest.approx([0.078125 * 1e4, 0.078125 * 4e4])
    g = -250 + 200 * T
    g_hat = -250 + 200 * P
    assert pixel.mse_gain(p, t, gr)[1].item() == pytest.approx(((g - g_hat) ** 2).mean().item())


def test_region_variants_and_empty_region():
    p, t = batch(P, P), batch(T, T)
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    mask[0, 0, 1, :] = True  # pixels e = .5, 0 ; u = 1, 0
    assert pixel.mse(p, t, mask=mask)[0].item() == pytest.approx(0.25 / 2)
    assert pixel.nmse(p, t, mask=mask)[0].item() == pytest.approx(0.25 / 1.0)
    assert pixel.psnr(p, t, mask=mask)[0].item() == pytest.approx(10 * math.log10(2 / 0.25))
    assert pixel.mse_gain(p, t, torch.tensor([[-147.0, -47.0]] * 2), mask=mask)[0].item() == pytest.approx(0.125 * 1e4)
    assert all(torch.isnan(f(p, t, torch.tensor([[-1.0, 0.0]] * 2), mask=mask)[1]) for f in (pixel.mse, pixel.nmse, pixel.psnr, pixel.mse_gain))


def test_nmse_zero_target_is_nan():
    z = torch.zeros(2, 2, dtype=torch.float64)
    assert torch.isnan(pixel.nmse(batch(P), batch(z))).all()


def test_shape_errors_are_one_line():
    with pytest.raises(CkmError, match="must both be"):
        pixel.mse(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(CkmError, match="gain_range"):
        pixel.mse_gain(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(3, 2))


# ---------------------------------------------------------------------------- SSIM


def structured_maps(n, size, seed):
    """Path-loss-like maps: log-distance decay from a random Tx with random 'buildings' at 0."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    out = []
    for _ in range(n):
        r, c = (torch.rand(2, generator=g, dtype=torch.float64) * size).tolist()
        u = (1 - torch.log10(((yy - r) ** 2 + (xx - c) ** 2).sqrt() + 1) / 2.2).clamp(0, 1)
        u[torch.rand(size, size, generator=g) > 0.8] = 0.0
        out.append(u)
    return torch.stack(out)[:, None]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("masked", [False, True])
def test_batched_ssim_matches_skimage(size, kind, masked):
    g = torch.Generator().manual_seed(size + masked)
    if kind == "random":
        t = torch.rand(3, 1, size, size, generator=g, dtype=torch.float64)
        p = torch.rand(3, 1, size, size, generator=g, dtype=torch.float64)
    else:
        t = structured_maps(3, size, seed=size)
        p = (t + 0.05 * torch.randn(t.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    mask = (torch.rand(t.shape, generator=g) > 0.3) if masked else None
    got = ssim(p.float(), t.float(), mask)  # float32 inputs: computed in float64 inside
    for i in range(3):
        ref = ssim_reference(p[i, 0].float().numpy(), t[i, 0].float().numpy(), None if mask is None else mask[i, 0].numpy())
        assert abs(got[i].item() - ref) < 1e-6
    assert got.dtype == torch.float64


def test_ssim_identical_is_one_and_mask_outside_crop_is_nan():
    t = structured_maps(2, 32, seed=1)
    assert torch.allclose(ssim(t, t), torch.ones(2, dtype=torch.float64))
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[:, :, :5, :] = True  # only the 5-pixel border the protocol crops
    assert torch.isnan(ssim(t, t, mask)).all()


def test_ssim_too_small_map_is_an_error():
    with pytest.raises(CkmError, match="smaller than the 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------------------- evaluator


def eval_inputs(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, 1, size, size, generator=g)
    p = t + 0.1 * torch.randn(t.shape, generator=g)
    gr = torch.tensor([[-147.0, -47.0], [-250.0, -50.0]] * (n // 2))
    outdoor = torch.rand(t.shape, generator=g) > 0.3
    return p, t, gr, outdoor


def test_evaluate_names_and_values_by_hand():
    p, t, gr, outdoor = eval_inputs()
    hole = torch.zeros_like(outdoor)
    hole[:, :, 4:12, 4:12] = True
    hole[3] = False  # sample 3 has no hole: skipped for @hole
    res = evaluate(p, t, gr, {"outdoor": outdoor, "hole": hole}, fid=False)
    base = ["mse", "rmse", "nmse", "mse_gain", "rmse_gain_db", "psnr", "ssim"]
    assert set(res.summary) == set(base + [f"{m}@{r}" for r in ("outdoor", "hole") for m in base])
    pc = p.double().clamp(0, 1)
    mse = ((t.double() - pc) ** 2).flatten(1).mean(1)
    assert res.summary["mse"] == pytest.approx(mse.mean().item())
    assert res.summary["rmse"] == pytest.approx(math.sqrt(mse.mean().item()))
    span = (gr[:, 1] - gr[:, 0]).double()
    assert res.summary["mse_gain"] == pytest.approx((mse * span**2).mean().item())
    assert res.summary["rmse_gain_db"] == pytest.approx(math.sqrt((mse * span**2).mean().item()))
    assert res.summary["psnr"] == pytest.approx((10 * torch.log10(1 / mse)).mean().item())
    m = outdoor.double()
    mse_out = (((t.double() - pc) ** 2) * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    assert res.summary["mse@outdoor"] == pytest.approx(mse_out.mean().item())
    assert res.summary["ssim"] == pytest.approx(np.mean([ssim_reference(pc[i, 0].numpy(), t[i, 0].numpy()) for i in range(4)]), abs=1e-9)
    assert np.isnan(res.per_sample["mse@hole"][3]) and res.notes["mse@hole_skipped"] == 1
    h = hole[:3].double()
    mse_hole = (((t[:3].double() - pc[:3]) ** 2) * h).flatten(1).sum(1) / h.flatten(1).sum(1)
    assert res.summary["mse@hole"] == pytest.approx(mse_hole.mean().item())
    ssim_out = [ssim_reference(pc[i, 0].numpy(), t[i, 0].numpy(), outdoor[i, 0].numpy()) for i in range(4)]
    assert np.abs(res.per_sample["ssim@outdoor"] - ssim_out).max() < 1e-9  # the shared SSIM map, masked


def test_evaluate_scores_every_region_in_one_pass(monkeypatch):
    """One pass per chunk for all pixel metrics and regions, one SSIM map per chunk, and the
    same values as metric-by-metric, region-by-region scoring."""
    from ckmbench.metrics import evaluate as evaluate_module, ssim as ssim_module

    monkeypatch.setattr(evaluate_module, "idle_cores", lambda: 1)  # one worker: chunks are not cut further
    calls = {"pixel": 0, "ssim": 0}
    pixel_sums, ssim_group = pixel._pixel_sums_memo.fn, ssim_module._ssim_group

    def count(key, fn):
        def wrapped(*args):
            calls[key] += 1
            return fn(*args)
        return wrapped

    monkeypatch.setattr(pixel._pixel_sums_memo, "fn", count("pixel", pixel_sums))
    monkeypatch.setattr(ssim_module, "_ssim_group", count("ssim", ssim_group))
    p, t, gr, outdoor = eval_inputs(n=10)
    hole = torch.zeros_like(outdoor)
    hole[:, :, 2:9, 3:12] = True
    regions = {"outdoor": outdoor, "hole": hole}
    res = evaluate(p, t, gr, regions, fid=False, chunk=8)
    assert calls == {"pixel": 2, "ssim": 2 + 1}  # 2 chunks; SSIM groups of 4: 8 -> 2, 2 -> 1
    pc = p.clamp(0, 1)
    for name, fn in [("mse", pixel.mse), ("nmse", pixel.nmse), ("psnr", pixel.psnr), ("mse_gain", pixel.mse_gain),
                     ("ssim", lambda a, b, g, mask=None: ssim(a, b, mask))]:
        for suffix, mask in [("", None), ("@outdoor", outdoor), ("@hole", hole)]:
            expected = fn(pc, t, gr, mask=mask).numpy()
            np.testing.assert_allclose(res.per_sample[name + suffix], expected, rtol=1e-12, atol=1e-15)


def test_ssim_worker_threads_change_nothing(monkeypatch):
    from ckmbench.metrics import pixel as pixel_module, ssim as ssim_module

    t = structured_maps(9, 32, seed=3)
    p = (t + 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).clamp(0, 1)
    threads = torch.get_num_threads()
    monkeypatch.setattr(ssim_module, "idle_cores", lambda: 1)
    serial = ssim_module.ssim_map(p, t)
    monkeypatch.setattr(ssim_module, "idle_cores", lambda: 3)
    with pixel_module.serial_torch_ops():  # as inside evaluate: the outer thread count is used
        torch.set_num_threads(1)
        with pixel_module.serial_torch_ops() as outer:
            assert outer == threads
            pooled = ssim_module.ssim_map(p, t.clone())
    assert torch.equal(serial, pooled) and torch.get_num_threads() == threads


def test_evaluate_clips_predictions_and_notes_zero_targets():
    t = torch.full((2, 1, 16, 16), 0.5)
    t[1] = 0.0
    p = torch.full((2, 1, 16, 16), 1.7)  # clipped to 1
    res = evaluate(p, t, torch.tensor([[-147.0, -47.0]] * 2), {}, metrics=["mse", "nmse"], fid=False)
    assert res.per_sample["mse"].tolist() == pytest.approx([0.25, 1.0])
    assert res.summary["nmse"] == pytest.approx(1.0) and res.notes["nmse_skipped"] == 1
    assert set(res.summary) == {"mse", "nmse"}


def test_evaluate_chunking_is_invisible():
    p, t, gr, outdoor = eval_inputs(n=6)
    gr = torch.tensor([[-147.0, -47.0]] * 6)
    a = evaluate(p, t, gr, {"outdoor": outdoor}, fid=False, chunk=4)
    b = evaluate(p, t, gr, {"outdoor": outdoor}, fid=False, chunk=64)
    assert a.summary == pytest.approx(b.summary)


def test_parallel_slices_score_exactly_like_one_thread(monkeypatch):
    """Two workers each score half of every chunk with their own memos and buffers: the
    values are bit for bit those of one thread, and the maps stay in order."""
    from ckmbench.metrics import evaluate as evaluate_module

    p, t, gr, outdoor = eval_inputs(n=12)
    p, t, gr, outdoor = p[:11], t[:11], gr[:11], outdoor[:11]
    hole = torch.zeros_like(outdoor)
    hole[:, :, 1:7, 2:9] = True
    regions = {"outdoor": outdoor, "hole": hole}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sliced = []
        monkeypatch.setattr(evaluate_module, "_score_slice", lambda *a, _f=evaluate_module._score_slice: sliced.append(a[-1]) or _f(*a))
        monkeypatch.setattr(evaluate_module, "idle_cores", lambda: 2)
        parallel = evaluate(p, t, gr, regions, fid=False, chunk=8)
        assert sliced == [slice(0, 6), slice(6, 11)]  # half of the 11 maps each
        monkeypatch.setattr(evaluate_module, "idle_cores", lambda: 1)
        serial = evaluate(p, t, gr, regions, fid=False, chunk=8)
    finally:
        torch.set_num_threads(before)
    assert parallel.per_sample.keys() == serial.per_sample.keys() and len(parallel.per_sample) == 15
    for key, values in serial.per_sample.items():
        np.testing.assert_array_equal(parallel.per_sample[key], values)
    one_by_one = evaluate(p[7:8], t[7:8], gr[7:8], {k: m[7:8] for k, m in regions.items()}, fid=False)
    assert parallel.per_sample["ssim@hole"][7] == pytest.approx(one_by_one.per_sample["ssim@hole"][0], abs=1e-15)


def test_evaluate_rejects_bad_input():
    p, t, gr, outdoor = eval_inputs()
    with pytest.raises(CkmError, match="non-finite"):
        evaluate(torch.full_like(p, float("nan")), t, gr, {}, fid=False)
    with pytest.raises(CkmError, match="region 'outdoor'"):
        evaluate(p, t, gr, {"outdoor": outdoor[:, :, :8]}, fid=False)
    with pytest.raises(CkmError, match="unknown metric 'msee'"):
        evaluate(p, t, gr, {}, metrics=["msee"], fid=False)


def test_subset_pulls_in_what_aggregates_need():
    p, t, gr, _ = eval_inputs()
    res = evaluate(p, t, gr, {}, metrics=["rmse_gain_db"], fid=False)
    assert set(res.summary) == {"mse_gain", "rmse_gain_db"}


def test_diversity_is_the_mean_pairwise_rmse_and_only_scored_when_asked():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(7, 1, 5, 4, generator=g, dtype=torch.float64)
    naive = [math.sqrt(float(((maps[i] - maps[j]) ** 2).mean())) for i in range(7) for j in range(i + 1, 7)]
    assert diversity.mean_pairwise_rmse(maps, chunk=3) == pytest.approx(sum(naive) / len(naive))
    assert diversity.mean_pairwise_rmse(maps[:1]) is None
    same = maps[:1].repeat(4, 1, 1, 1)
    out = diversity.diversity(same, maps[:4])
    assert out["value"] == 0 and out["notes"]["diversity_data"] > 0
    p, t, gr, _ = eval_inputs()
    assert "diversity" not in evaluate(p, t, gr, {}, fid=False).summary  # not a default metric
    res = evaluate(p, t, gr, {}, metrics=["diversity"], fid=True)
    assert set(res.summary) == {"diversity"} and res.notes["diversity_data"] > 0


def test_generate_is_scored_by_fid_and_diversity_only():
    from ckmbench.tasks.builtin import Generate

    assert Generate().metrics == ("fid", "diversity")
    assert set(registry().items["metrics"]) >= set(Generate().metrics)


# ---------------------------------------------------------------------------- registry


def test_builtin_specs_registered_with_direction():
    specs = registry().items["metrics"]
    for name in ("mse", "nmse", "mse_gain", "psnr", "ssim"):
        assert specs[name].kind == "per_sample"
    assert specs["rmse"].kind == specs["rmse_gain_db"].kind == "aggregate"
    assert specs["fid"].kind == "distribution"
    higher = {n for n, s in specs.items() if s.higher_is_better}
    assert higher == {"psnr", "ssim", "diversity"}
    assert specs["diversity"].kind == "distribution" and not specs["diversity"].by_default
    for name in ("params", "train_s", "infer_s_per_map", "sampling_steps", "peak_mem_mb"):
        assert specs[name].kind == "cost" and not specs[name].higher_is_better
    assert specs["params"].compute({"params": 12.0}) == 12 and specs["train_s"].compute({}) is None
    assert specs["rmse"].compute({"mse": np.array([0.04, np.nan, 0.0])}) == pytest.approx(math.sqrt(0.02))


def make_plugin(compute):
    plugin = types.SimpleNamespace()

    @hookimpl
    def ckmbench_register_metrics(register):
        register(MetricSpec("max_abs_err", compute, False, "per_sample"))

    plugin.ckmbench_register_metrics = ckmbench_register_metrics
    plugin.__name__ = "third_party_metrics"
    return plugin


def test_third_party_metric_is_scored_with_regions():
    def max_abs_err(pred, target, gain_range, mask=None):
        e = (pred - target).abs()
        if mask is not None:
            e = e * mask
        return e.flatten(1).max(dim=1).values

    reg = load_registry(extra_plugins=(make_plugin(max_abs_err),))
    p, t, gr, outdoor = eval_inputs()
    res = evaluate(p, t, gr, {"outdoor": outdoor}, fid=False, registry=reg)
    expected = (p.clamp(0, 1) - t).abs().flatten(1).max(1).values.double().mean().item()
    assert res.summary["max_abs_err"] == pytest.approx(expected)
    assert "max_abs_err@outdoor" in res.summary


def test_broken_third_party_metric_is_noted_not_fatal():
    def broken(pred, target, gain_range, mask=None):
        raise RuntimeError("boom")

    reg = load_registry(extra_plugins=(make_plugin(broken),))
    p, t, gr, _ = eval_inputs()
    res = evaluate(p, t, gr, {}, fid=False, registry=reg)
    assert res.summary["max_abs_err"] is None and "boom" in res.notes["max_abs_err"]
    assert res.summary["mse"] is not None


# ---------------------------------------------------------------------------- cost


def test_count_parameters():
    from ckmbench.method import Method

    net = torch.nn.Linear(3, 2)  # 6 + 2
    frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    assert cost.count_parameters(net) == 8
    m = Method()
    m.net, m.frozen = net, frozen
    assert cost.count_parameters(m) == 8
    holder = types.SimpleNamespace(a=net, b=net)
    assert cost.count_parameters(holder) == 8
    assert cost.count_parameters(Method()) == 0


def test_timer_and_peak_memory():
    with cost.Timer() as timer:
        sum(range(10000))
    assert 0 < timer.elapsed < 5
    # Anonymous mmap pages are always fresh (never reused, already-resident heap), so the
    # measurement does not depend on what earlier tests left in the allocator.
    import mmap

    def touch(mb):
        buf = mmap.mmap(-1, mb * 2**20)
        for off in range(0, mb * 2**20, 4096):
            buf[off] = 1
        buf.close()

    touch(128)  # raise the high-water mark first ...
    with cost.PeakMemory() as mem:
        touch(64)  # ... then a smaller 64 MB block must still register
    assert mem.method in ("linux-vmhwm", "rss-sampling", "getrusage-maxrss")
    if mem.method == "linux-vmhwm":
        assert 56 <= mem.peak_mb < 400
