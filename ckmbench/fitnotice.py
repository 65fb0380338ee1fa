"""What a run says about its fit before the work starts: which stored fit it scores, or that
it trains one and about how long that takes here (timed on the trainer's first steps), and
how much of a ``--time-budget`` is left while it trains."""

from __future__ import annotations

import os
import sys
import time

from .fitlist import human_duration

# The first step allocates and warms caches: the estimate times the next ones.
WARM_UP_STEPS = 1
MEASURED_STEPS = 3


def say(message: str) -> None:
    """One line on stderr that does not break a progress bar (under torchrun, rank 0 alone)."""
    from tqdm.auto import tqdm

    if int(os.environ.get("RANK", 0)) != 0:
        return

    tqdm.write(message, file=sys.stderr)


def fit_label(method: str, train_task: str, train_dataset: str, profile: str) -> str:
    return f"{method} on {train_task} ({train_dataset}, {profile})"


def stored_fit_message(label: str, where: str, entry, meta: dict | None) -> str:
    """"cgdm on sr4 (city, small): using the shipped fit <folder> (2,500 steps, 34 min of training; ...)"."""
    meta = meta or {}
    facts = []
    if meta.get("steps_done") is not None:
        facts.append(f"{int(meta['steps_done']):,} steps")
    if meta.get("train_s") is not None:
        facts.append(f"{human_duration(meta['train_s'])} of training")
    told = f" ({', '.join(facts)}; --refit trains anew)" if facts else " (--refit trains anew)"
    return f"{label}: using the {where} fit {entry.dir}{told}"


def announce_stored(label: str, where: str, entry, meta: dict | None) -> None:
    say(stored_fit_message(label, where, entry, meta))


class TrainingNotice:
    """Times the first steps of each trainer of a fit and then says how long training will take.

    The trainer calls :meth:`step_done` after every step; the first call of a trainer after
    ``WARM_UP_STEPS + MEASURED_STEPS`` steps prints the estimate once.
    """

    def __init__(self, label: str, deadline: float | None = None, clock=time.perf_counter):
        self.label = label
        self.deadline = deadline  # time.monotonic() at which a --time-budget stops training
        self.clock = clock
        self._trainers: dict[str, dict] = {}
        self.messages: list[str] = []

    def step_done(self, trainer: str, step: int, planned: int) -> None:
        state = self._trainers.setdefault(trainer, {"first": step, "times": [], "done": False})
        if state["done"]:
            return
        state["times"].append(self.clock())
        if len(state["times"]) < WARM_UP_STEPS + MEASURED_STEPS:
            return
        state["done"] = True
        times = state["times"]
        per_step = (times[-1] - times[WARM_UP_STEPS - 1]) / MEASURED_STEPS
        start = state["first"] - 1
        self._say(self.estimate_message(trainer, start, planned, per_step))

    def estimate_message(self, trainer: str, start: int, planned: int, per_step: float) -> str:
        left = max(planned - start, 0)
        about = human_duration(left * per_step)
        what = f"{left:,} steps" if not start else f"{left:,} more steps (resuming at step {start:,} of {planned:,})"
        head = f"no fit for {self.label}: training" if not self.messages else f"{self.label}: then stage '{trainer}',"
        text = f"{head} {what}, about {about} here (from {MEASURED_STEPS} measured steps)"
        if self.deadline is not None:
            budget_left = self.deadline - time.monotonic()
            if budget_left < left * per_step:
                text += f"; the time budget stops it in about {human_duration(max(budget_left, 0.0))}"
        return text

    def _say(self, message: str) -> None:
        self.messages.append(message)
        say(message)


def budget_postfix(deadline: float | None) -> dict:
    """The progress bar's field for the time left to a --time-budget (empty without one)."""
    if deadline is None:
        return {}
    left = max(deadline - time.monotonic(), 0.0)
    return {"budget left": f"{int(left // 60)}:{int(left % 60):02d}"}
