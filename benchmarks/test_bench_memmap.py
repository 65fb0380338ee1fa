"""Peak resident memory of a RadioMapSeer load: in RAM vs the on-disk cache (pytest-benchmark).

Run: ``pytest benchmarks/test_bench_memmap.py --benchmark-only``. A folder in RadioMapSeer's
layout is generated (``MAPS`` layouts x ``TX`` transmitters at 256 x 256, random 8-bit gain;
the real dataset is 700 x 80), converted once into the on-disk cache, and then each way of
loading runs in a fresh process that loads the dataset and reads every sample of it once
(what an epoch of training does). Each process reports its peak RSS (``ru_maxrss``); a
process that only imports ckmbench gives the baseline. ``extra_info`` holds the three
figures in MB and the in-RAM size of the arrays; docs/scale.md quotes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rms_folder import write_rms_folder  # noqa: E402

MAPS, TX, SIZE = 12, 40, 256

PROBE = r"""
import json, resource, sys
import numpy as np
from ckmbench.data import builtin
mode, root = sys.argv[1], sys.argv[2]
if mode != "baseline":
    ds = builtin.load_rms("radiomapseer-dpm", "DPM", False, root=root, progress=False, ondisk=(mode == "ondisk"))
    total = 0.0
    for i in range(len(ds)):  # one pass over every sample, as an epoch of training reads them
        total += float(ds[i].u.mean())
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _peak_rss(mode: str, root: Path, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(root)], env=env, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_rms_folder(tmp_path_factory.mktemp("rms") / "root", maps=range(1, MAPS + 1), n_tx=TX, size=SIZE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CKMBENCH_DATA": str(tmp_path_factory.mktemp("data"))}
    subprocess.run([sys.executable, "-m", "ckmbench.cli", "data", "convert", "-d", "radiomapseer-dpm",
                    "--data-root", str(root)], env=env, check=True, capture_output=True)
    return root, env


def test_peak_rss_in_ram_vs_on_disk(benchmark, folder):
    root, env = folder
    baseline = _peak_rss("baseline", root, env)
    in_ram = _peak_rss("ram", root, env)
    on_disk = benchmark.pedantic(_peak_rss, args=("ondisk", root, env), rounds=1, iterations=1)
    n = MAPS * TX
    # gain float32 and buildings bool; the all-false cars array is allocated but never touched
    arrays_mb = n * SIZE * SIZE * (4 + 1) / 2**20
    benchmark.extra_info.update(maps=n, size=SIZE, arrays_mb=round(arrays_mb, 1), baseline_mb=round(baseline, 1),
                                in_ram_mb=round(in_ram, 1), on_disk_mb=round(on_disk, 1))
    print(f"\n{n} maps {SIZE}x{SIZE} ({arrays_mb:.0f} MB as arrays): peak RSS baseline {baseline:.0f} MB, "
          f"in RAM {in_ram:.0f} MB, on disk {on_disk:.0f} MB")
    assert in_ram - baseline > 0.8 * arrays_mb  # the in-RAM load holds every map
    assert on_disk - baseline < 0.1 * (in_ram - baseline)  # the on-disk one a few maps at a time
