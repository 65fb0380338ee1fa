"""Shared fixtures: every test session gets its own data cache and results store."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_ckmbench_dirs(tmp_path_factory):
    """Point the dataset cache and the results store at temporary folders."""
    root = tmp_path_factory.mktemp("ckmbench")
    old = {k: os.environ.get(k) for k in ("CKMBENCH_DATA", "CKMBENCH_STORE", "CKMBENCH_FITS", "MPLBACKEND")}
    os.environ["CKMBENCH_DATA"] = str(root / "data")
    os.environ["CKMBENCH_STORE"] = str(root / "results" / "records.jsonl")
    os.environ["CKMBENCH_FITS"] = str(root / "fits")
    os.environ["MPLBACKEND"] = "Agg"
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
