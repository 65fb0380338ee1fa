"""Plugin manager: entry points of group "ckmbench", loaded and called one by one.

pluggy does not isolate failures, so every entry point is loaded in its own try/except and
every hook implementation is called separately: one broken plugin is recorded (and shown
by ``ckmbench plugins``) and never stops the others — including one that calls
``sys.exit`` or raises ``KeyboardInterrupt`` itself (only a real Ctrl-C stops the load).
Built-ins (distribution ``ckmbench``) are loaded first and always keep their names: a
plugin registering a taken name is reported and its item is not registered.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import CkmError, unknown_name
from .specs import DatasetSpec, MethodSpec, MetricSpec, TaskSpec

GROUP = "ckmbench"
BUILTIN_DISTRIBUTION = "ckmbench"
KINDS = {
    "methods": ("ckmbench_register_methods", MethodSpec),
    "datasets": ("ckmbench_register_datasets", DatasetSpec),
    "tasks": ("ckmbench_register_tasks", TaskSpec),
    "metrics": ("ckmbench_register_metrics", MetricSpec),
}


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin: where it comes from and what it registered."""

    name: str
    distribution: str
    version: str
    value: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class Registry:
    """Everything registered by all plugins, by kind and name."""

    plugins: list[PluginInfo]
    items: dict[str, dict[str, object]]
    owner: dict[tuple[str, str], PluginInfo]

    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])

    def get(self, kind: str, name: str):
        singular = kind.rstrip("s")
        try:
            return self.items[kind][name]
        except KeyError:
            raise unknown_name(singular, name, self.names(kind)) from None

    def method(self, name: str) -> MethodSpec:
        return self.get("methods", name)

    def dataset(self, name: str) -> DatasetSpec:
        return self.get("datasets", name)

    def task(self, name: str) -> TaskSpec:
        return self.get("tasks", name)

    def metric(self, name: str) -> MetricSpec:
        return self.get("metrics", name)

    def distribution_of(self, kind: str, name: str) -> tuple[str, str]:
        info = self.owner[(kind, name)]
        return info.distribution, info.version

    def method_version(self, name: str) -> tuple[str, str]:
        """(distribution, version) of a method, its own revision joined: ``0.1.0+2``."""
        dist, version = self.distribution_of("methods", name)
        revision = self.method(name).version
        return dist, f"{version}+{revision}" if revision else version


def _disabled() -> set[str]:
    raw = os.environ.get("CKMBENCH_DISABLE_PLUGINS", "")
    return {p.strip() for p in raw.split(",") if p.strip()}


def _dist_name(ep) -> str:
    return ep.dist.name if ep.dist else "?"


def _load_order(ep) -> tuple[bool, str, str]:
    """Built-ins first, then by distribution and entry-point name."""
    return (_dist_name(ep) != BUILTIN_DISTRIBUTION, _dist_name(ep), ep.name)


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=GROUP), key=_load_order)


class _SigintWatch:
    """Notes whether a real SIGINT (Ctrl-C) arrived while plugin code ran.

    A ``KeyboardInterrupt`` raised by plugin code while no SIGINT arrived is the plugin's
    failure, not the user's wish to stop. Outside the main thread no handler can be
    installed, and no SIGINT can surface there either.
    """

    def __enter__(self):
        self.received = False
        self._installed = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
            except (ValueError, OSError, TypeError):
                pass
        return self

    def _handle(self, signum, frame):
        self.received = True
        if callable(self._previous):
            self._previous(signum, frame)  # Python's default handler raises KeyboardInterrupt
        elif self._previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._installed:  # a handler set outside Python reads back as None: restore the default then
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
        return False


def _isolated(info: PluginInfo, what: str, fn, *args, **kwargs) -> tuple[bool, object]:
    """(True, fn(...)) or (False, None) with the failure recorded on ``info``: any
    ``BaseException`` from plugin code (``SystemExit`` included), except a real Ctrl-C."""
    with _SigintWatch() as watch:
        try:
            return True, fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            if watch.received:
                raise
            info.errors.append(f"{what}: {_short_error(exc)} raised by the plugin, not by Ctrl-C")
        except BaseException as exc:  # noqa: BLE001 - a broken plugin is recorded, never fatal
            info.errors.append(f"{what}: {_short_error(exc)}")
    return False, None


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def load_registry(extra_plugins: tuple[object, ...] = ()) -> Registry:
    """Load every entry point of group "ckmbench" (plus ``extra_plugins`` modules/objects)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    infos: list[PluginInfo] = []
    loaded: list[tuple[PluginInfo, object]] = []
    sources = [(ep, None) for ep in sorted(_entry_points(), key=_load_order)] + [(None, obj) for obj in extra_plugins]
    for ep, obj in sources:
        if ep is not None:
            info = PluginInfo(ep.name, _dist_name(ep), ep.dist.version if ep.dist else "?", ep.value)
        else:
            info = PluginInfo(getattr(obj, "__name__", repr(obj)), "(in-process)", "-", repr(obj))
        infos.append(info)
        if info.name in disabled or info.distribution in disabled:
            info.errors.append("disabled by CKMBENCH_DISABLE_PLUGINS")
            continue
        ok, plugin = _isolated(info, "failed to load", lambda: ep.load() if ep is not None else obj)
        if ok and _isolated(info, "failed to load", pm.register, plugin, name=f"{info.distribution}:{info.name}")[0]:
            loaded.append((info, plugin))

    items: dict[str, dict[str, object]] = {k: {} for k in KINDS}
    owner: dict[tuple[str, str], PluginInfo] = {}
    for info, plugin in loaded:
        for kind, (hook_name, spec_type) in KINDS.items():
            impl = getattr(plugin, hook_name, None)
            if impl is None:
                continue
            collected: list = []
            if not _isolated(info, f"{hook_name} raised", impl, register=collected.append)[0]:
                continue
            for spec in collected:
                if not isinstance(spec, spec_type):
                    info.errors.append(f"{hook_name} registered {type(spec).__name__}, expected {spec_type.__name__}")
                    continue
                if spec.name in items[kind]:
                    other = owner[(kind, spec.name)]
                    builtin_wins = info.distribution == BUILTIN_DISTRIBUTION != other.distribution
                    loser, winner = (other, info) if builtin_wins else (info, other)
                    loser.errors.append(
                        f"duplicate {kind[:-1]} name '{spec.name}': registered by both "
                        f"{other.distribution} ({other.name}) and {info.distribution} ({info.name}); "
                        + ("built-ins keep their names" if winner.distribution == BUILTIN_DISTRIBUTION
                           else "kept the first") + f", {loser.distribution} ({loser.name}) not registered"
                    )
                    if not builtin_wins:
                        continue
                    other.registered[kind].remove(spec.name)
                    if not other.registered[kind]:
                        del other.registered[kind]
                items[kind][spec.name] = spec
                owner[(kind, spec.name)] = info
                info.registered.setdefault(kind, []).append(spec.name)
    return Registry(infos, items, owner)


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry (cached; call ``registry.cache_clear()`` after installs)."""
    return load_registry()


def require_profile(spec: MethodSpec, profile: str) -> dict:
    """The hyper-parameters of ``profile`` for ``spec``, or a one-line error listing the valid ones."""
    if profile not in spec.profiles:
        raise CkmError(
            f"method '{spec.name}' has no profile '{profile}': choose one of {', '.join(spec.profiles)}"
        )
    return dict(spec.profiles[profile])
