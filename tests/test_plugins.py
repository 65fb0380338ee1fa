"""Plugin system: entry points, failure isolation, duplicates, disabling, third-party packages."""

import os
import signal
import subprocess
import sys
import textwrap
import types

import pytest

from ckmbench import plugins as plugins_module
from ckmbench.hookspecs import hookimpl
from ckmbench.plugins import load_registry
from ckmbench.specs import DatasetSpec, MethodSpec


def _module(name, **hooks):
    mod = types.ModuleType(name)
    for k, v in hooks.items():
        setattr(mod, k, hookimpl(v))
    return mod


def test_builtins_register_through_entry_points():
    reg = load_registry()
    names = {p.name for p in reg.plugins}
    assert {"datasets", "tasks", "metrics", "baselines"} <= names
    assert "city" in reg.names("datasets")
    assert "radiomapseer-map0" in reg.names("datasets")
    assert all(p.distribution == "ckmbench" for p in reg.plugins if p.name in {"datasets", "tasks", "metrics"})


def test_broken_plugins_are_recorded_not_fatal():
    def raising(register):
        raise RuntimeError("boom")

    def wrong_type(register):
        register("not a spec")

    good = _module("good", ckmbench_register_datasets=lambda register: register(DatasetSpec("toy-ds", load=lambda **k: None)))
    bad = _module("bad", ckmbench_register_methods=raising)
    odd = _module("odd", ckmbench_register_methods=wrong_type)
    reg = load_registry(extra_plugins=(bad, odd, good))
    assert "toy-ds" in reg.names("datasets")
    errors = {p.name: p.errors for p in reg.plugins}
    assert any("boom" in e for e in errors["bad"])
    assert any("expected MethodSpec" in e for e in errors["odd"])
    assert errors["good"] == []


def test_duplicate_names_name_both_sources():
    spec = MethodSpec(name="dup", factory=lambda p, h: None, tasks=("sr4",))
    a = _module("first", ckmbench_register_methods=lambda register: register(spec))
    b = _module("second", ckmbench_register_methods=lambda register: register(spec))
    reg = load_registry(extra_plugins=(a, b))
    msg = " ".join(next(p for p in reg.plugins if p.name == "second").errors)
    assert "duplicate method name 'dup'" in msg and "first" in msg and "second" in msg


class FakeEntryPoint:
    """An installed entry point of a distribution, as importlib.metadata gives it."""

    def __init__(self, name, dist, load):
        self.name, self.value, self._load = name, f"{name}_module", load
        self.dist = types.SimpleNamespace(name=dist, version="6.6.6")

    def load(self):
        return self._load()


def _with_entry_points(monkeypatch, *fakes):
    """The real entry points plus ``fakes``, fakes first (as a name sorting before "ckmbench" would)."""
    real = plugins_module._entry_points()
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [*fakes, *real])


def test_builtin_names_cannot_be_taken_over(monkeypatch):
    impostor = MethodSpec(name="bilinear", factory=lambda p, h: None, tasks=("sr4",))
    other = MethodSpec(name="impostor-own", factory=lambda p, h: None, tasks=("sr4",))
    mod = _module("aaa_takeover", ckmbench_register_methods=lambda register: (register(impostor), register(other)))
    _with_entry_points(monkeypatch, FakeEntryPoint("takeover", "aaa-takeover", lambda: mod))
    reg = load_registry()
    assert reg.method("bilinear") is not impostor
    assert reg.distribution_of("methods", "bilinear")[0] == "ckmbench"
    assert reg.distribution_of("methods", "impostor-own")[0] == "aaa-takeover"
    info = next(p for p in reg.plugins if p.name == "takeover")
    assert info.registered == {"methods": ["impostor-own"]}
    assert any("duplicate method name 'bilinear'" in e and "aaa-takeover" in e and "not registered" in e
               for e in info.errors)
    assert next(p for p in reg.plugins if p.name == "baselines").errors == []


def test_builtin_loaded_later_still_wins(monkeypatch):
    """Whatever the load order, a built-in takes its name back from a third-party plugin."""
    impostor = MethodSpec(name="toy-m", factory=lambda p, h: None, tasks=("sr4",))
    real = MethodSpec(name="toy-m", factory=lambda p, h: None, tasks=("sr4",))
    third = _module("third", ckmbench_register_methods=lambda register: register(impostor))
    builtin = _module("builtin", ckmbench_register_methods=lambda register: register(real))
    monkeypatch.setattr(plugins_module, "_load_order", lambda ep: 0)  # keep the order given
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [
        FakeEntryPoint("third", "aaa-third", lambda: third), FakeEntryPoint("builtin", "ckmbench", lambda: builtin)])
    reg = load_registry()
    assert reg.method("toy-m") is real and reg.distribution_of("methods", "toy-m")[0] == "ckmbench"
    info = {p.name: p for p in reg.plugins}
    assert info["third"].registered == {} and "not registered" in " ".join(info["third"].errors)
    assert info["builtin"].errors == []


def _exit(*a, **k):
    sys.exit("plugin says bye")


def _interrupt(*a, **k):
    raise KeyboardInterrupt


@pytest.mark.parametrize("failing", [_exit, _interrupt])
def test_plugin_exiting_on_import_or_in_a_hook_is_recorded(monkeypatch, failing):
    hooky = _module("hooky", ckmbench_register_methods=failing)
    good = _module("good", ckmbench_register_datasets=lambda register: register(DatasetSpec("toy-ds", load=lambda **k: None)))
    _with_entry_points(monkeypatch, FakeEntryPoint("exits", "aaa-exits", failing),
                       FakeEntryPoint("hooky", "aaa-hooky", lambda: hooky))
    reg = load_registry(extra_plugins=(good,))
    errors = {p.name: " ".join(p.errors) for p in reg.plugins}
    expected = "SystemExit" if failing is _exit else "KeyboardInterrupt"
    assert "failed to load" in errors["exits"] and expected in errors["exits"]
    assert "ckmbench_register_methods raised" in errors["hooky"] and expected in errors["hooky"]
    assert "bilinear" in reg.names("methods") and "toy-ds" in reg.names("datasets")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_real_ctrl_c_during_plugin_load_still_stops(monkeypatch):
    def slow_import():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the signal is delivered between bytecodes
            pass
        raise AssertionError("SIGINT not delivered")

    _with_entry_points(monkeypatch, FakeEntryPoint("slow", "aaa-slow", slow_import))
    with pytest.raises(KeyboardInterrupt):
        load_registry()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_disable_plugins_by_name(monkeypatch):
    monkeypatch.setenv("CKMBENCH_DISABLE_PLUGINS", "baselines")
    reg = load_registry()
    info = next(p for p in reg.plugins if p.name == "baselines")
    assert info.errors == ["disabled by CKMBENCH_DISABLE_PLUGINS"]
    assert "bilinear" not in reg.names("methods")


def test_unknown_name_suggests_closest():
    from ckmbench.errors import CkmError

    reg = load_registry()
    with pytest.raises(CkmError, match="did you mean city"):
        reg.dataset("ctiy")


def _install_package(src, target):
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, text=True)


def test_third_party_dataset_plugin_is_listed(tmp_path):
    """A package with a `ckmbench` entry point, installed for real, shows up in `ckmbench plugins`."""
    pkg = tmp_path / "src"
    (pkg / "ckmbench_toydata").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "ckmbench-toydata"
        version = "3.1.4"
        [project.entry-points.ckmbench]
        toydata = "ckmbench_toydata"
        toyexit = "ckmbench_toydata.exits"
        [tool.setuptools]
        packages = ["ckmbench_toydata"]
    """))
    (pkg / "ckmbench_toydata" / "__init__.py").write_text(textwrap.dedent("""
        import numpy as np
        from ckmbench.hookspecs import hookimpl
        from ckmbench.specs import DatasetSpec

        def load(root=None, progress=True, **options):
            raise NotImplementedError

        @hookimpl
        def ckmbench_register_datasets(register):
            register(DatasetSpec(name="toy-city", load=load, description="a third-party dataset"))
    """))
    (pkg / "ckmbench_toydata" / "exits.py").write_text("import sys\nsys.exit('a plugin must not end the command')\n")
    site = tmp_path / "site"
    _install_package(pkg, site)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-m", "ckmbench.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("toydata"))
    assert "ckmbench-toydata" in line and "3.1.4" in line and "toy-city" in line
    assert "SystemExit" in next(l for l in out.stdout.splitlines() if l.startswith("toyexit"))
    listed = subprocess.run([sys.executable, "-m", "ckmbench.cli", "list", "datasets"], env=env,
                            capture_output=True, text=True)
    assert "toy-city" in listed.stdout and "ckmbench-toydata" in listed.stdout


def _doc_example(heading: str) -> types.ModuleType:
    """The python block under ``heading`` in docs/plugins.md, run as a module."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text("utf-8")
    section = text[text.index(heading):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]
    mod = types.ModuleType("doc_example")
    exec(compile(code, "docs/plugins.md", "exec"), mod.__dict__)
    return mod


def test_the_guides_classical_method_runs_and_matches_the_builtin_upsamplers(tmp_path):
    from ckmbench.runner import RunConfig, run

    reg = load_registry(extra_plugins=(_doc_example("## A classical (untrained) method"),))
    assert reg.method("cubic-linear").kind == "baseline"
    common = dict(task="sr4", dataset="city-tiny", profile="tiny", runs_dir=str(tmp_path / "runs"),
                  store=str(tmp_path / "s.jsonl"), progress=False, examples=0)
    recs = {name: run(RunConfig(method=name, **common), reg) for name in ("bicubic", "bilinear")}
    for weight, same_as in ((1.0, "bicubic"), (0.0, "bilinear")):
        rec = run(RunConfig(method="cubic-linear", hparams={"weight": weight}, **common), reg)
        assert rec["status"] == "done" and rec["fit"] is None and rec["cost"]["train_s"] is None, rec["message"]
        assert rec["metrics"] == pytest.approx(recs[same_as]["metrics"], rel=1e-6), same_as


def test_the_public_upsampler_beats_torchs_bicubic_on_sr4():
    import torch
    import torch.nn.functional as F

    from ckmbench.data.registry import load_dataset
    from ckmbench.upsample import upsample

    test = load_dataset("city-tiny", progress=False).split("test")
    spec = load_registry().task("sr4")
    obs, target, _ = spec.make(**spec.params).batch([test[i] for i in range(len(test))], 0)
    ours = upsample(obs).clamp(0, 1)
    theirs = F.interpolate(obs.y, size=tuple(obs.out_shape), mode="bicubic", align_corners=False).clamp(0, 1)
    assert ours.shape == theirs.shape == target.shape
    assert torch.equal(upsample(obs, "nearest")[..., ::4, ::4], obs.y)  # the samples stay where they were measured
    assert torch.mean((ours - target) ** 2) < torch.mean((theirs - target) ** 2)
