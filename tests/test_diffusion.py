"""ckmbench.diffusion: beta schedules, GaussianDiffusion (q_sample, targets, loss) and its samplers.

Sampling runs on tiny shapes with T <= 50; the diffusers comparisons drive diffusers'
schedulers with the same model outputs and noise and compare every intermediate state.
"""

from __future__ import annotations

import math

import pytest
import torch

from ckmbench.diffusion import GaussianDiffusion, ddim_timesteps, make_betas

SHAPE = (2, 1, 4, 4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and does not fight a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _x0(dtype=torch.float64, seed=1):
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def _oracle(diff: GaussianDiffusion, x0: torch.Tensor):
    """The model that returns the exact target for the known x0, whatever x_t it is given."""
    def model_fn(xt, t):
        assert t.dtype == torch.long and t.shape == (xt.shape[0],)
        eps = diff.eps_from_x0(xt, t, x0.to(xt.dtype)).to(xt.dtype)
        return diff.target(x0.to(xt.dtype), eps, t)
    return model_fn


def _fake_model(xt, t):
    """A deterministic, t-dependent stand-in for a network (not an oracle)."""
    return torch.tanh(xt * 0.7 + 0.01 * t.to(xt.dtype).reshape(-1, 1, 1, 1))


# ----------------------------------------------------------------- schedules
def test_linear_betas_closed_form():
    b = make_betas("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-6, rel=1e-12) and b[-1].item() == pytest.approx(1e-2, rel=1e-12)
    ref = torch.tensor([1e-6 + (1e-2 - 1e-6) * i / 999 for i in range(1000)], dtype=torch.float64)
    torch.testing.assert_close(b, ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(make_betas("linear", 10, 1e-4, 2e-2), torch.linspace(1e-4, 2e-2, 10, dtype=torch.float64))


def test_cosine_betas_closed_form():
    T, s = 50, 0.008
    b = make_betas("cosine", T)
    assert b.dtype == torch.float64 and b.shape == (T,) and b.max().item() <= 0.999
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    ab = torch.cumprod(1 - b, 0)
    unclipped = b < 0.999
    for t in range(T):
        if bool(unclipped[: t + 1].all()):
            assert ab[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert b[-1].item() == pytest.approx(0.999)  # f(1) = 0 forces the clip at the last step
    with pytest.raises(ValueError):
        make_betas("sigmoid", 10)


def test_schedules_match_diffusers():
    from diffusers import DDPMScheduler

    for kind, dname in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        ours = make_betas(kind, 40, 1e-4, 2e-2)
        theirs = DDPMScheduler(num_train_timesteps=40, beta_start=1e-4, beta_end=2e-2, beta_schedule=dname).betas
        torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-7)


def test_diffusion_constants():
    d = GaussianDiffusion(make_betas("linear", 20, 1e-3, 0.2))
    assert d.T == 20 and d.alphas_cumprod_prev[0].item() == 1.0
    torch.testing.assert_close(d.alphas_cumprod_prev[1:], d.alphas_cumprod[:-1])
    pv = d.betas * (1 - d.alphas_cumprod_prev) / (1 - d.alphas_cumprod)
    torch.testing.assert_close(d.posterior_variance, pv)
    assert d.posterior_variance[0].item() == 0.0
    for name in ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance"):
        assert getattr(d, name).dtype == torch.float64
    with pytest.raises(ValueError):
        GaussianDiffusion(make_betas("linear", 5), prediction="score")


# ----------------------------------------------------------- forward process
def test_q_sample_closed_form_and_statistics():
    d = GaussianDiffusion(make_betas("linear", 50, 1e-4, 0.1))
    x0 = _x0()
    t = torch.tensor([0, 49])
    noise = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ab = d.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(d.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # statistics: x0 = 0.5 everywhere, t = 30, many draws
    g = torch.Generator().manual_seed(3)
    n = 20000
    x0c = torch.full((n, 1), 0.5, dtype=torch.float64)
    tt = torch.full((n,), 30)
    xt = d.q_sample(x0c, tt, torch.randn(n, 1, generator=g, dtype=torch.float64))
    a = d.alphas_cumprod[30].item()
    assert xt.mean().item() == pytest.approx(0.5 * math.sqrt(a), abs=4 / math.sqrt(n))
    assert xt.var().item() == pytest.approx(1 - a, rel=0.05)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_target_split_round_trip(prediction):
    d = GaussianDiffusion(make_betas("cosine", 30), prediction)
    x0 = _x0()
    noise = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 29]) if prediction != "x0" else torch.tensor([3, 17])
    xt = d.q_sample(x0, t, noise)
    x0_hat, eps_hat = d.split(xt, t, d.target(x0, noise, t))
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-9, atol=1e-9)
    if prediction == "v":
        ab = d.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        torch.testing.assert_close(d.target(x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0)


def test_training_loss_draws_from_generator_and_decreases():
    torch.manual_seed(0)
    d = GaussianDiffusion(make_betas("linear", 50, 1e-4, 0.05))
    x0 = _x0(torch.float32).repeat(4, 1, 1, 1)  # fixed batch of 8
    # explicit t/noise: same as computing it by hand
    t = torch.arange(8) * 6
    noise = torch.randn_like(x0)
    manual = ((_fake_model(d.q_sample(x0, t, noise), t) - noise) ** 2).mean()
    torch.testing.assert_close(d.training_loss(_fake_model, x0, t=t, noise=noise), manual)
    # generator: t first, then noise
    g = torch.Generator().manual_seed(5)
    t_ref = torch.randint(0, 50, (8,), generator=g)
    n_ref = torch.randn(x0.shape, generator=g)
    seen = {}

    def spy(xt, tt):
        seen["t"] = tt
        return xt * 0

    loss = d.training_loss(spy, x0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(seen["t"], t_ref)
    torch.testing.assert_close(loss, (n_ref ** 2).mean())

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 1, 3, padding=1))
    model_fn = lambda xt, tt: net(torch.cat([xt, (tt.float() / 50).reshape(-1, 1, 1, 1).expand_as(xt)], 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(6)
    fixed_t, fixed_noise = torch.randint(0, 50, (8,), generator=g), torch.randn(x0.shape, generator=g)
    losses = []
    for _ in range(50):
        loss = d.training_loss(model_fn, x0, t=fixed_t, noise=fixed_noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


# ----------------------------------------------------------------- samplers
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_oracle_samplers_return_x0(prediction, kind):
    d = GaussianDiffusion(make_betas(kind, 40, 1e-4, 0.2), prediction)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        x0 = _x0(dtype)
        oracle = _oracle(d, x0)
        runs = [d.sample(oracle, SHAPE, generator=torch.Generator().manual_seed(0), dtype=dtype)]
        for steps, eta, spacing in ((40, 1.0, "trailing"), (10, 0.0, "trailing"), (8, 0.5, "leading"),
                                    (7, 1.0, "linspace")):
            runs.append(d.ddim_sample(oracle, SHAPE, steps=steps, eta=eta, spacing=spacing, dtype=dtype,
                                      generator=torch.Generator().manual_seed(0)))
        for out in runs:
            assert out.dtype == dtype and out.shape == SHAPE
            torch.testing.assert_close(out, x0, rtol=tol, atol=tol)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip", [None, (-0.5, 0.5)])
def test_ddim_full_steps_eta1_equals_ancestral(prediction, clip):
    d = GaussianDiffusion(make_betas("linear", 30, 1e-3, 0.2), prediction)
    traj_a, traj_d = [], []
    a = d.sample(_fake_model, SHAPE, generator=torch.Generator().manual_seed(7), clip_x0=clip,
                 callback=lambda t, x: traj_a.append((t, x.clone())), dtype=torch.float64)
    b = d.ddim_sample(_fake_model, SHAPE, steps=30, eta=1.0, generator=torch.Generator().manual_seed(7), clip_x0=clip,
                      callback=lambda t, x: traj_d.append((t, x.clone())), dtype=torch.float64)
    assert [t for t, _ in traj_a] == [t for t, _ in traj_d] == list(range(29, -1, -1))
    for (_, xa), (_, xd) in zip(traj_a, traj_d):
        torch.testing.assert_close(xa, xd, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # float32 too, same generator stream
    a32 = d.sample(_fake_model, SHAPE, generator=torch.Generator().manual_seed(7), clip_x0=clip)
    b32 = d.ddim_sample(_fake_model, SHAPE, steps=30, eta=1.0, generator=torch.Generator().manual_seed(7), clip_x0=clip)
    torch.testing.assert_close(a32, b32, rtol=1e-5, atol=1e-5)


def test_sampler_determinism_and_generator_use():
    d = GaussianDiffusion(make_betas("linear", 20, 1e-3, 0.2))
    run = lambda seed: d.sample(_fake_model, SHAPE, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    # DDIM eta = 0 uses the generator only for x_T
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    a = d.ddim_sample(_fake_model, SHAPE, steps=5, generator=torch.Generator().manual_seed(3))
    b = d.ddim_sample(_fake_model, SHAPE, steps=5, x_T=x_T)
    assert torch.equal(a, b)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 50, "trailing")[:3] == [999, 979, 959] and ddim_timesteps(1000, 50)[-1] == 19
    assert ddim_timesteps(1000, 50, "leading")[:2] == [980, 960] and ddim_timesteps(1000, 50, "leading")[-1] == 0
    for sp in ("trailing", "leading", "linspace"):
        assert ddim_timesteps(12, 12, sp) == list(range(11, -1, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


# --------------------------------------------------------------- diffusers
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ancestral_equals_diffusers_ddpm(prediction):
    """Same generator stream: diffusers draws x_T-style noise with torch.randn on the generator, for t > 0 only."""
    d = GaussianDiffusion(make_betas("linear", 25, 1e-3, 0.2), prediction)
    ours = []
    d.sample(_fake_model, SHAPE, generator=torch.Generator().manual_seed(11), callback=lambda t, x: ours.append(x.clone()))
    sch = d.to_diffusers("ddpm")
    sch.set_timesteps(d.T)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(SHAPE, generator=g)
    assert [int(t) for t in sch.timesteps] == list(range(d.T - 1, -1, -1))
    for i, t in enumerate(sch.timesteps):
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
        x = sch.step(_fake_model(x, tt), int(t), x, generator=g).prev_sample
        torch.testing.assert_close(ours[i], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction,steps,eta,spacing",
                         [("eps", 10, 0.0, "trailing"), ("v", 6, 0.7, "trailing"), ("x0", 5, 1.0, "leading"),
                          ("eps", 30, 1.0, "leading")])
def test_ddim_equals_diffusers_ddim(prediction, steps, eta, spacing):
    d = GaussianDiffusion(make_betas("cosine", 30), prediction)
    g = torch.Generator().manual_seed(12)
    x_T = torch.randn(SHAPE, generator=g)
    noises = [torch.randn(SHAPE, generator=g) for _ in range(steps)]
    ours = []
    d.ddim_sample(_fake_model, SHAPE, steps=steps, eta=eta, spacing=spacing,
                  generator=torch.Generator().manual_seed(12), callback=lambda t, x: ours.append((t, x.clone())))
    sch = d.to_diffusers("ddim", timestep_spacing=spacing)
    sch.set_timesteps(steps)
    assert [int(t) for t in sch.timesteps] == [t for t, _ in ours] == ddim_timesteps(30, steps, spacing)
    x = x_T
    for i, t in enumerate(sch.timesteps):
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
        vn = noises[i] if eta > 0 else None
        x = sch.step(_fake_model(x, tt), int(t), x, eta=eta, variance_noise=vn).prev_sample
        torch.testing.assert_close(ours[i][1], x, rtol=1e-4, atol=5e-5)


def test_per_pixel_clip_range_bounds_each_pixel_of_x0_hat():
    """clip_x0 may be per-pixel tensors (e.g. the range that keeps bicubic + residual in [0, 1])."""
    d = GaussianDiffusion(make_betas("linear", 20, 1e-3, 0.2), "eps")
    lo = -torch.rand(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hi = lo + 0.1
    out = d.ddim_sample(_fake_model, SHAPE, steps=1, generator=torch.Generator().manual_seed(0), clip_x0=(lo, hi),
                        dtype=torch.float64)  # one step from t = T-1: the output is the clipped x0_hat
    assert bool(((out >= lo) & (out <= hi)).all())
    assert bool((out == lo).any() or (out == hi).any())
    x0 = (lo + hi) / 2  # an oracle inside the range is untouched
    torch.testing.assert_close(d.ddim_sample(_oracle(d, x0), SHAPE, steps=5, clip_x0=(lo, hi), dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(0)), x0, rtol=1e-9, atol=1e-9)
