"""pluggy hook specifications: register-callback hooks in the style of llm/datasette."""

from __future__ import annotations

import pluggy

PROJECT = "ckmbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ckmbench_register_methods(register):
    """Call ``register(MethodSpec(...))`` once per method or baseline."""


@hookspec
def ckmbench_register_datasets(register):
    """Call ``register(DatasetSpec(...))`` once per dataset."""


@hookspec
def ckmbench_register_tasks(register):
    """Call ``register(TaskSpec(...))`` once per task."""


@hookspec
def ckmbench_register_metrics(register):
    """Call ``register(MetricSpec(...))`` once per metric."""
