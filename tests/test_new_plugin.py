"""`ckmbench new-plugin`: the generated package installs, registers and runs through `ckmbench run`."""

import json
import os
import subprocess
import sys

import pytest

from ckmbench.errors import CkmError
from ckmbench.scaffold import write_plugin_package


def test_generated_plugin_installs_and_runs(tmp_path):
    folder = write_plugin_package("my-method", tmp_path)
    assert (folder / "pyproject.toml").read_text().count("[project.entry-points.ckmbench]") == 1
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(folder)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    plugins = subprocess.run([sys.executable, "-m", "ckmbench.cli", "plugins"], env=env, capture_output=True, text=True)
    assert "ckmbench-my-method" in plugins.stdout and "my-method" in plugins.stdout
    store = tmp_path / "r.jsonl"
    out = subprocess.run([sys.executable, "-m", "ckmbench.cli", "run", "--method", "my-method,bilinear", "--task", "sr4",
                          "--dataset", "city-tiny", "--profile", "tiny", "--store", str(store), "--runs-dir",
                          str(tmp_path / "runs"), "--no-progress"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    recs = {r["method"]: r for r in map(json.loads, store.read_text().splitlines())}
    rec = recs["my-method"]
    assert rec["status"] == "done" and rec["method_distribution"] == "ckmbench-my-method"
    # the scaffold is a working learned method: trainable parameters that count, and at least
    # bilinear's accuracy (it upsamples through the sampled pixels, then fits a blend on top)
    assert rec["cost"]["params"] == 3
    assert rec["metrics"]["psnr"] >= recs["bilinear"]["metrics"]["psnr"] - 0.01
    assert rec["metrics"]["mse"] <= recs["bilinear"]["metrics"]["mse"] * 1.002
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_bad_names_and_existing_folders_are_refused(tmp_path):
    with pytest.raises(CkmError, match="bad plugin name"):
        write_plugin_package("My Method", tmp_path)
    write_plugin_package("dup", tmp_path)
    with pytest.raises(CkmError, match="already exists"):
        write_plugin_package("dup", tmp_path)
