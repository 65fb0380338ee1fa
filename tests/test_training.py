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
from ckmbench.training import (EMA, STATE_FILE, Trainer, TrainConfig, TrainingDiverged, load_state, lr_lambda,
                               rng_states, set_rng_states)

from train_helpers import ToyData, toy_config, toy_loss, toy_model, train_toy

HERE = Path(__file__).parent


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_9_gives_bit_identical_weights(tmp_path):
    script = [sys.executable, str(HERE / "train_helpers.py")]
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
    with pytest.raises(CkmError, match="--refit"):
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
