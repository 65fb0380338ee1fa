"""What a run says before training (an estimate timed on the first steps) or when it reuses a
stored fit, and the progress bar's time left to a --time-budget."""

import time
from pathlib import Path
from types import SimpleNamespace

from train_helpers import ToyData, toy_config, toy_loss, toy_model

from ckmbench.fitnotice import TrainingNotice, budget_postfix, stored_fit_message
from ckmbench.method import RunContext
from ckmbench.training import Trainer


def ticking(seconds_per_call: list[float]):
    """A clock returning the given times in turn."""
    it = iter(seconds_per_call)
    return lambda: next(it)


def test_estimate_is_timed_on_three_steps_after_the_warm_up():
    # step 1 (warm-up) ends at t=10 s; steps 2..4 take 2 s each -> 2,500 steps x 2 s
    notice = TrainingNotice("cdiff on sr4 (city, small)", clock=ticking([10.0, 12.0, 14.0, 16.0]))
    for step in range(1, 6):
        notice.step_done("unet", step, 2500)
    assert notice.messages == [
        "no fit for cdiff on sr4 (city, small): training 2,500 steps, about 83 min here (from 3 measured steps)"]


def test_a_resumed_fit_and_a_second_stage_are_told_apart():
    notice = TrainingNotice("physdiff on envgen (city, small)", clock=ticking([0, 1, 2, 3, 0, 0.5, 1.0, 1.5]))
    for step in range(1001, 1005):
        notice.step_done("unet", step, 2000)
    for step in range(1, 5):
        notice.step_done("vae", step, 600)
    assert notice.messages[0].startswith("no fit for physdiff on envgen (city, small): training 1,000 more steps "
                                         "(resuming at step 1,000 of 2,000), about 17 min")
    assert notice.messages[1] == ("physdiff on envgen (city, small): then stage 'vae', 600 steps, about 5 min here "
                                  "(from 3 measured steps)")


def test_a_time_budget_shorter_than_the_estimate_is_said():
    notice = TrainingNotice("cgdm on sr4 (city, small)", deadline=time.monotonic() + 120,
                            clock=ticking([0, 1, 2, 3]))
    for step in range(1, 5):
        notice.step_done("unet", step, 2500)
    assert "; the time budget stops it in about 2 min" in notice.messages[0]


def test_stored_fit_message_names_the_folder_steps_and_time():
    entry = SimpleNamespace(dir=Path("/fits/cgdm-b50d7b59807f3fa9"))
    text = stored_fit_message("cgdm on sr4 (city, small)", "shipped", entry, {"steps_done": 2500, "train_s": 2013})
    assert text == ("cgdm on sr4 (city, small): using the shipped fit /fits/cgdm-b50d7b59807f3fa9 "
                    "(2,500 steps, 34 min of training; --refit trains anew)")


def test_the_trainer_reports_its_steps_to_the_notice(tmp_path, capsys):
    notice = TrainingNotice("toy on sr4 (toy, tiny)")
    ctx = RunContext(seed=5, progress=False, fit_dir=tmp_path, fit_notice=notice)
    Trainer(toy_model(), toy_config(6), ctx, name="toy").fit(ToyData(), toy_loss())
    assert len(notice.messages) == 1
    assert notice.messages[0].startswith("no fit for toy on sr4 (toy, tiny): training 6 steps, about ")
    assert notice.messages[0] in capsys.readouterr().err


def test_progress_bar_shows_the_time_left_to_the_budget(tmp_path, capsys):
    ctx = RunContext(seed=5, progress=True, fit_dir=tmp_path, deadline=time.monotonic() + 600)
    Trainer(toy_model(), toy_config(3), ctx, name="toy").fit(ToyData(), toy_loss())
    err = capsys.readouterr().err
    assert "budget left=9:5" in err or "budget left=10:00" in err
    assert budget_postfix(None) == {}
    ctx = RunContext(seed=5, progress=True, fit_dir=tmp_path / "b")
    Trainer(toy_model(), toy_config(3), ctx, name="toy").fit(ToyData(), toy_loss())
    assert "budget left" not in capsys.readouterr().err
