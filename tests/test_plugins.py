"""Plugin system: entry points, failure isolation, duplicates, disabling, third-party packages."""

import subprocess
import sys
import textwrap
import types

import pytest

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
    site = tmp_path / "site"
    _install_package(pkg, site)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-m", "ckmbench.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("toydata"))
    assert "ckmbench-toydata" in line and "3.1.4" in line and "toy-city" in line
    listed = subprocess.run([sys.executable, "-m", "ckmbench.cli", "list", "datasets"], env=env,
                            capture_output=True, text=True)
    assert "toy-city" in listed.stdout and "ckmbench-toydata" in listed.stdout
