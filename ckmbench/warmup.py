"""The runner's untimed warm-up prediction, and the samplers' way of knowing about it.

A run predicts one real-sized batch before the timed part, so that lazy initialisation,
allocator caches and thread pools are paid for alike in a sweep and in a single run. One
network call at that batch size warms the same caches as a whole sample (the old warm-up's
full 25-step CGDM sample was 13 % of a run's wall time), so inside :func:`warming_up` every
iterative sampler runs :func:`sampler_steps` = 1 step. A plugin's own sampler loop calls
``sampler_steps(steps)`` too.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

_WARMING_UP = contextvars.ContextVar("ckmbench_warming_up", default=False)


@contextmanager
def warming_up():
    """Within the block the prediction is a warm-up: samplers take one step."""
    token = _WARMING_UP.set(True)
    try:
        yield
    finally:
        _WARMING_UP.reset(token)


def is_warming_up() -> bool:
    return _WARMING_UP.get()


def sampler_steps(steps: int) -> int:
    """``steps``, or 1 during the warm-up."""
    return 1 if _WARMING_UP.get() else steps
