"""The trainer: exact resume after kill -9, NaN guard, time budget, EMA, schedules, data order."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ckmbench.errors import CkmError
from ckmbench.method import RunContext
from ckmbench.training import (EMA, STATE_FILE, AdversarialStep, Trainer, TrainConfig, TrainingDiverged,
                               clip_gradients, load_state, lr_lambda, rng_states, set_rng_states)

from train_helpers import ToyData, toy_config, toy_loss, toy_model, train_toy

HERE = Path(__file__).parent


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("script_name", ["train_helpers.py", "test_training.py"])
def test_resume_after_kill_9_gives_bit_identical_weights(tmp_path, script_name):
    """train_helpers.py trains the one-model toy; this file, run as a script, the toy GAN."""
    script = [sys.executable, str(HERE / script_name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 24
    subprocess.run(script + [str(tmp_path / "a"), str(tmp_path / "a.pt"), str(steps)], check=True, env=env)
    state = tmp_path / "b" / "toy" / STATE_FILE
    proc = subprocess.Popen(script + [str(tmp_path / "b"), str(tmp_path / "b.pt"), str(steps), "0.15"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not state.exists():
        time.sleep(0.05)
    first = state.stat().st_mtime_ns
    while time.monotonic() < deadline and state.stat().st_mtime_ns == first:
        time.sleep(0.05)  # wait for a second checkpoint so the kill lands mid-training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_state(state)["step"]
    assert 2 <= killed_at < steps
    assert not (tmp_path / "b.pt").exists()
    subprocess.run(script + [str(tmp_path / "b"), str(tmp_path / "b.pt"), str(steps)], check=True, env=env)
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert weights_equal(a, b)
    # and the weights did move: a run of other length ends elsewhere
    subprocess.run(script + [str(tmp_path / "c"), str(tmp_path / "c.pt"), str(steps - 2)], check=True, env=env)
    assert not weights_equal(a, torch.load(tmp_path / "c.pt", weights_only=True))


def test_resume_in_process_after_a_crash_matches_uninterrupted(tmp_path):
    full, _ = train_toy(tmp_path / "full", 10)

    class Crash(Exception):
        pass

    calls = {"n": 0}
    inner = toy_loss()

    def crashing(net, batch, gen):
        calls["n"] += 1
        if calls["n"] == 8:  # after the checkpoint at step 6, before the one at 8
            raise Crash()
        return inner(net, batch, gen)

    model = toy_model()
    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path / "crash")
    with pytest.raises(Crash):
        Trainer(model, toy_config(10), ctx, name="toy").fit(ToyData(), crashing)
    assert load_state(tmp_path / "crash" / "toy" / STATE_FILE)["step"] == 6
    resumed, result = train_toy(tmp_path / "crash", 10)
    assert result.resumed_from == 6 and result.steps_done == 10
    assert weights_equal(full.state_dict(), resumed.state_dict())


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    inner = toy_loss()
    calls = {"n": 0}

    def nan_at_5(net, batch, gen):
        calls["n"] += 1
        loss = inner(net, batch, gen)
        return loss * float("nan") if calls["n"] == 5 else loss

    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"at step 5.*step 4"):
        Trainer(toy_model(), toy_config(10), ctx, name="toy").fit(ToyData(), nan_at_5)
    assert load_state(tmp_path / "toy" / STATE_FILE)["step"] == 4


def test_time_budget_stops_cleanly_and_saves(tmp_path):
    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path, deadline=time.monotonic() + 0.5)
    model = toy_model()
    result = Trainer(model, toy_config(100_000), ctx, name="toy").fit(ToyData(), toy_loss(0.02))
    assert result.budget_reached and 0 < result.steps_done < 100_000
    assert load_state(tmp_path / "toy" / STATE_FILE)["step"] == result.steps_done
    # a later run without a budget goes on from there
    ctx2 = RunContext(seed=5, progress=False, fit_dir=tmp_path)
    more = Trainer(toy_model(), toy_config(result.steps_done + 3), ctx2, name="toy").fit(ToyData(), toy_loss())
    assert more.resumed_from == result.steps_done and more.steps_done == result.steps_done + 3


def test_resume_refuses_a_state_written_with_other_settings(tmp_path):
    train_toy(tmp_path, 4)
    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path)
    with pytest.raises(CkmError, match="--restart"):
        Trainer(toy_model(), toy_config(4, lr=0.5), ctx, name="toy").fit(ToyData(), toy_loss())


def test_a_corrupt_state_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "toy" / STATE_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path)
    with pytest.raises(CkmError, match="not a ckmbench training state"):
        Trainer(toy_model(), toy_config(4), ctx, name="toy").fit(ToyData(), toy_loss())


def test_loss_falls_and_history_is_recorded(tmp_path):
    _, result = train_toy(tmp_path, 40)
    first, last = result.history[0][1], result.history[-1][1]
    assert last < 0.5 * first
    assert [s for s, _ in result.history] == list(range(2, 41, 2))


def test_seeded_data_order_covers_each_epoch_once(tmp_path):
    ctx = RunContext(seed=3, progress=False)
    trainer = Trainer(toy_model(), toy_config(8), ctx)
    idx = [i for s in range(4) for i in trainer.batch_indices(16, s)]
    assert sorted(idx) == list(range(16))
    assert idx != list(range(16))
    again = Trainer(toy_model(), toy_config(8), RunContext(seed=3, progress=False))
    assert again.batch_indices(16, 5) == trainer.batch_indices(16, 5)
    other = Trainer(toy_model(), toy_config(8), RunContext(seed=4, progress=False))
    assert other.batch_indices(16, 0) != trainer.batch_indices(16, 0)


def test_fresh_degradations_draw_new_observations_per_step(tmp_path):
    seen = []

    def record(net, batch, gen):
        obs = batch[0]
        seen.append({k: obs.y[i].clone() for i, k in enumerate(obs.keys)})
        return toy_loss()(net, batch, gen)

    cfg = toy_config(2, batch_size=16, fresh_degradations=True)
    Trainer(toy_model(), cfg, RunContext(seed=5, progress=False)).fit(ToyData(), record)
    assert all(not torch.equal(seen[0][k], seen[1][k]) for k in seen[0])
    fixed = ToyData().batch_at(range(16))[0].y
    assert all(not torch.equal(seen[0][str(i)], fixed[i]) for i in range(16))
    seen.clear()
    cfg = toy_config(2, batch_size=16, fresh_degradations=False)
    Trainer(toy_model(), cfg, RunContext(seed=5, progress=False)).fit(ToyData(), record)
    assert all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0])
    assert all(torch.equal(seen[0][str(i)], fixed[i]) for i in range(16))


def test_ema_follows_the_weights_before_start_then_averages():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.5, start=2)
    for step, w in enumerate([2.0, 4.0, 8.0, 16.0]):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model, step)
    # steps 0, 1 copy (4.0); step 2: 0.5*4 + 0.5*8 = 6; step 3: 0.5*6 + 0.5*16 = 11
    assert ema.shadow["weight"].item() == pytest.approx(11.0)


def test_ema_fused_update_equals_the_per_tensor_loop():
    """The fused lerp gives the old loop's s = d*s + (1-d)*v (float tolerance) on a net with
    an integer buffer (BatchNorm's num_batches_tracked, copied as it is)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    ema = EMA(model, decay=0.99, start=3)
    loop = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(2, 1, 6, 6))  # moves the BatchNorm statistics and counter
        ema.update(model, step)
        d = 0.99 if step >= 3 else 0.0
        for k, v in model.state_dict().items():  # the loop the fused update replaced
            if v.dtype.is_floating_point:
                loop[k].mul_(d).add_(v, alpha=1.0 - d)
            else:
                loop[k].copy_(v)
    assert ema.shadow.keys() == loop.keys()
    for k in loop:
        assert ema.shadow[k].dtype == loop[k].dtype
        torch.testing.assert_close(ema.shadow[k], loop[k], rtol=1e-6, atol=1e-6)
    assert ema.shadow["1.num_batches_tracked"].item() == 8
    assert not torch.equal(ema.shadow["0.weight"], model.state_dict()["0.weight"])  # it averaged


@pytest.mark.parametrize("schedule,at_end", [("constant", 1.0), ("linear", 0.1), ("cosine", 0.1)])
def test_lr_schedules_reach_their_end(schedule, at_end):
    f = lr_lambda(TrainConfig(steps=100, lr=1e-3, lr_end=1e-4, lr_schedule=schedule))
    assert f(0) == pytest.approx(1.0)
    assert f(100) == pytest.approx(at_end)
    if schedule == "cosine":
        assert f(50) == pytest.approx(0.55)
    warm = lr_lambda(TrainConfig(steps=100, lr=1e-3, warmup_steps=10))
    assert warm(0) == pytest.approx(0.1) and warm(9) == pytest.approx(1.0)


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    import io
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    buf = io.BytesIO()
    torch.save(rng_states(), buf)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    buf.seek(0)
    set_rng_states(torch.load(buf, weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_bad_training_settings_are_one_line_errors():
    with pytest.raises(CkmError, match="lr=-1.*steps=-3|steps=-3.*lr=-1"):
        TrainConfig.from_hparams({"lr": -1, "steps": -3})
    with pytest.raises(CkmError, match="amp='fp8'"):
        TrainConfig.from_hparams({"amp": "fp8"})


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    _, result = train_toy(tmp_path, 4, amp="bf16")
    assert result.steps_done == 4 and math.isfinite(result.final_loss)


# ------------------------------------------------------------------ adversarial training
def toy_discriminator() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(4, 1, 3, padding=1))


def toy_gan_step(sleep_s: float = 0.0, seen: dict | None = None, nan_d_at: int | None = None) -> AdversarialStep:
    """A conditional toy GAN: MSE content + 0.01 BCE adversarial term; jitter from the step's generator."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    calls = {"d": 0}

    def generate(net, batch, generator):
        obs, target, _ = batch
        if sleep_s:
            time.sleep(sleep_s)
        jitter = 0.01 * torch.randn(target.shape, generator=generator, device=target.device)
        return {"fake": net(obs.y), "real": target + jitter}

    def d_loss(disc, out, batch, generator):
        calls["d"] += 1
        assert not out["fake"].requires_grad  # D learns on G(x).detach()
        if seen is not None:
            seen["d_weight_in_d_step"] = disc[0].weight.detach().clone()
        real, fake = disc(out["real"]), disc(out["fake"])
        loss = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
        return loss * float("nan") if calls["d"] == nan_d_at else loss

    def g_loss(disc, out, batch, generator):
        if seen is not None:
            seen["d_weight_in_g_step"] = disc[0].weight.detach().clone()
            seen["d_frozen"] = not any(p.requires_grad for p in disc.parameters())
        judged = disc(out["fake"])
        return ((out["fake"] - out["real"]) ** 2).mean() + 0.01 * bce(judged, torch.ones_like(judged))

    return AdversarialStep(generate, d_loss, g_loss)


def gan_config(steps: int, **kw) -> TrainConfig:
    return toy_config(steps, **kw)


def train_toy_gan(state_dir: Path, steps: int, sleep_s: float = 0.0, d_lr: float = 5e-3, step=None):
    gen, disc = toy_model(), toy_discriminator()
    ctx = RunContext(seed=5, progress=False, fit_dir=Path(state_dir))
    trainer = Trainer(gen, gan_config(steps), ctx, name="toy", discriminator=disc,
                      d_cfg=TrainConfig(lr=d_lr, adam_betas=(0.5, 0.999), lr_schedule="step", lr_step_every=5))
    result = trainer.fit(ToyData(), step or toy_gan_step(sleep_s))
    return gen, disc, trainer, result


def gan_weights(gen, disc) -> dict:
    return {**{f"g.{k}": v for k, v in gen.state_dict().items()}, **{f"d.{k}": v for k, v in disc.state_dict().items()}}


def test_gan_resume_after_a_crash_matches_uninterrupted(tmp_path):
    gen, disc, trainer, result = train_toy_gan(tmp_path / "full", 10)
    assert result.final_d_loss is not None and len(result.d_history) == 5
    assert "final_d_loss" in result.as_record() and "d_history" not in result.as_record()

    class Crash(Exception):
        pass

    inner = toy_gan_step()
    calls = {"n": 0}

    def crashing_generate(net, batch, g):
        calls["n"] += 1
        if calls["n"] == 8:  # after the checkpoint at step 6, before the one at 8
            raise Crash()
        return inner.generate(net, batch, g)

    with pytest.raises(Crash):
        train_toy_gan(tmp_path / "crash", 10, step=AdversarialStep(crashing_generate, inner.d_loss, inner.g_loss))
    saved = load_state(tmp_path / "crash" / "toy" / STATE_FILE)
    assert saved["step"] == 6 and saved["adversarial"]["optimizer"]["state"]
    gen2, disc2, trainer2, resumed = train_toy_gan(tmp_path / "crash", 10)
    assert resumed.resumed_from == 6 and resumed.steps_done == 10
    assert weights_equal(gan_weights(gen, disc), gan_weights(gen2, disc2))
    assert resumed.d_history == result.d_history and resumed.history == result.history
    assert trainer2.d_scheduler.get_last_lr() == trainer.d_scheduler.get_last_lr() == [pytest.approx(5e-5)]  # 0.1 every 5


def test_gan_step_order_d_first_then_g_through_the_updated_frozen_d(tmp_path):
    seen: dict = {}
    gen, disc = toy_model(), toy_discriminator()
    ctx = RunContext(seed=5, progress=False)
    Trainer(gen, gan_config(1), ctx, name="toy", discriminator=disc,
            d_cfg=TrainConfig(lr=0.1)).fit(ToyData(), toy_gan_step(seen=seen))
    assert not torch.equal(seen["d_weight_in_d_step"], seen["d_weight_in_g_step"])  # D stepped before G's loss
    assert seen["d_frozen"] and all(p.requires_grad for p in disc.parameters())  # frozen only for G's pass


def test_gan_nan_guard_names_the_discriminator_loss_and_the_step(tmp_path):
    gen, disc = toy_model(), toy_discriminator()
    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path)
    trainer = Trainer(gen, gan_config(10), ctx, name="toy", discriminator=disc, d_cfg=TrainConfig(lr=1e-3))
    with pytest.raises(TrainingDiverged, match=r"discriminator loss became nan at step 5.*step 4"):
        trainer.fit(ToyData(), toy_gan_step(nan_d_at=5))
    assert load_state(tmp_path / "toy" / STATE_FILE)["step"] == 4


def test_gan_ema_is_the_generators_and_settings_are_checked(tmp_path):
    gen, disc, trainer, _ = train_toy_gan(tmp_path, 4)
    assert trainer.ema.shadow.keys() == toy_model().state_dict().keys()
    assert weights_equal(gen.state_dict(), trainer.ema.shadow)  # the scored weights are G's EMA
    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path)
    with pytest.raises(CkmError, match="d_ema_decay.*generator only"):
        Trainer(toy_model(), gan_config(4), ctx, discriminator=toy_discriminator(),
                d_cfg=TrainConfig.from_hparams({"d_ema_decay": 0.9}, "d_"))
    with pytest.raises(CkmError, match="--restart"):  # another discriminator lr: not the same training
        train_toy_gan(tmp_path, 4, d_lr=1e-2)
    with pytest.raises(CkmError, match="AdversarialStep"):
        Trainer(toy_model(), gan_config(4), ctx).fit(ToyData(), toy_gan_step())
    with pytest.raises(CkmError, match="AdversarialStep"):
        Trainer(toy_model(), gan_config(4), ctx, discriminator=toy_discriminator()).fit(ToyData(), toy_loss())
    assert "final_d_loss" not in train_toy(tmp_path / "single", 2)[1].as_record()


def test_sgd_and_adjustable_gradient_clipping():
    model = torch.nn.Linear(3, 1, bias=False)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, grad_clip=0.01, grad_clip_mode="adjustable")
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    model.weight.grad = torch.tensor([[5.0, -0.05, -3.0]])
    clip_gradients(list(model.parameters()), cfg, opt)
    assert torch.allclose(model.weight.grad, torch.tensor([[0.1, -0.05, -0.1]]))  # theta / lr = 0.1
    assert TrainConfig().fingerprint() == TrainConfig(momentum=0.9, grad_clip_mode="norm").fingerprint()
    assert TrainConfig(optimizer="sgd").fingerprint() != TrainConfig().fingerprint()
    with pytest.raises(CkmError, match="grad_clip_mode='max'"):
        TrainConfig.from_hparams({"grad_clip_mode": "max"})


if __name__ == "__main__":  # the toy GAN for the kill -9 test: STATE_DIR OUT.pt STEPS [SLEEP_S]
    torch.set_num_threads(1)
    g, d, _, _ = train_toy_gan(Path(sys.argv[1]), int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
    torch.save(gan_weights(g, d), sys.argv[2])
