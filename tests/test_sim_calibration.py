"""The simulator against real RadioMapSeer DPM maps of 21 layouts (shipped in the package)."""

from dataclasses import replace

import numpy as np
import pytest

from ckmbench.errors import CkmError
from ckmbench.sim.calibrate import (Calibrator, fit_los_law, fit_params, layout_folds, load_layouts, load_map0,
                                    main, summarize)
from ckmbench.sim.dpm import DPMParams

# In-sample outdoor RMSE (dB) of the shipped DPMParams on three layouts (docs/simulator.md):
# s00 and s13 were the layouts whose shadows fell to the floor before the rooftop path.
IN_SAMPLE_DB = {"map0": 2.37, "s00": 4.70, "s13": 2.84}
MARGIN_DB = 0.15


@pytest.fixture(scope="module")
def cal():
    return Calibrator(load_layouts(["map0", "s00", "s13"]))


def test_layouts_use_user_building_masks_only():
    lays = load_layouts()
    assert [l.name for l in lays] == ["map0"] + [f"s{i:02d}" for i in range(20)]
    m0 = load_map0()
    assert lays[0].buildings is m0["buildings"] or np.array_equal(lays[0].buildings, m0["buildings"])
    assert not np.array_equal(lays[0].buildings, m0["footprint"])  # the shipped raster, not the truth's floor
    for lay in lays:
        assert lay.buildings.shape == (256, 256) and lay.gain_db.shape[1:] == (256, 256)
        assert lay.gain_db.min() >= -147.0 and lay.gain_db.max() <= -47.0
        for (r, c, h), g in zip(lay.txs, lay.gain_db):
            assert not lay.buildings[r, c] and g[r, c] > -50.0 and h == 1.5


def test_folds_split_by_layout():
    names = [l.name for l in load_layouts()]
    folds = layout_folds(names, 5)
    assert set(folds) == set(names) and set(folds.values()) == set(range(5))
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1
    for f in range(5):
        test = {n for n in names if folds[n] == f}
        train = {n for n in names if folds[n] != f}
        assert test and train and not (test & train) and test | train == set(names)
    assert layout_folds(names, 5) == folds  # deterministic
    with pytest.raises(CkmError, match="--folds must be 2..21"):
        layout_folds(names, 1)
    with pytest.raises(CkmError, match="unknown layout"):
        load_layouts(["map0", "s99"])


def test_shipped_defaults_stay_calibrated(cal):
    rows = {r["layout"]: r for r in cal.layout_errors(DPMParams())}
    for name, ref in IN_SAMPLE_DB.items():
        assert rows[name]["rmse"] <= ref + MARGIN_DB, (name, rows[name])
        assert abs(rows[name]["mean"]) < 2.0


def test_no_floor_regions_behind_long_buildings(cal):
    """Where the real map stays well above the floor the simulator does too (before the
    rooftop path half of s00 and a fifth of s13 sat at -147 dB)."""
    for i, lay in enumerate(cal.layouts):
        sim = cal.simulate(DPMParams(), i)
        out = ~lay.buildings
        lit = out & (lay.gain_db > -135.0)
        assert np.mean(sim[lit] <= -146.9) < 0.002, lay.name


def test_rooftop_path_is_what_fills_the_shadows(cal):
    no_roof = {r["layout"]: r["rmse"] for r in cal.layout_errors(replace(DPMParams(), rooftop=False))}
    with_roof = {r["layout"]: r["rmse"] for r in cal.layout_errors(DPMParams())}
    assert no_roof["s00"] > with_roof["s00"] + 5.0 and no_roof["s13"] > with_roof["s13"] + 3.0


def test_los_law_matches_real_los_pixels(cal):
    n, offset = fit_los_law(cal)
    assert 2.3 < n < 2.8 and abs(offset) < 3.0
    p = DPMParams()
    for i, lay in enumerate(cal.layouts):
        sims = cal.simulate(p, i)
        for t, geo in enumerate(cal.geo[i]):
            los = ~geo["prof"].blocked & cal.outdoor[i] & (geo["d"] >= 3.0)
            err = np.abs(sims[t][los] - lay.gain_db[t][los])
            assert np.median(err) < 0.5 and np.mean(err < 1.5) > 0.9


def test_fit_improves_a_perturbed_start(cal):
    start = replace(DPMParams(), exponent_nlos=3.2, diffraction_db=tuple(1.4 * v for v in DPMParams().diffraction_db))
    before = cal.fit_mse(start, [2])
    after = cal.fit_mse(fit_params(start, cal, [2], maxiter=25), [2])
    assert after < before - 1.0


def test_summary_is_rms_over_layouts():
    rows = [{"rmse": 3.0}, {"rmse": 4.0}]
    s = summarize(rows)
    assert s["rms"] == pytest.approx(np.sqrt(12.5)) and s["max"] == 4.0 and s["n_layouts"] == 2


def test_cli_prints_cv_table_and_writes_figure(tmp_path, capsys):
    fig = tmp_path / "fig" / "worst.png"
    assert main(["--layouts", "s06,s12,s16", "--folds", "3", "--maxiter", "3", "--figure", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "3-fold cross-validation by layout" in out
    assert "layout    n pixels  RMSE dB  mean dB  fold" in out
    lines = {l.split()[0]: l.split() for l in out.splitlines() if l.startswith("s")}
    assert set(lines) == {"s06", "s12", "s16"} and sorted(int(v[4]) for v in lines.values()) == [0, 1, 2]
    assert "CV outdoor RMSE: RMS over layouts" in out and fig.stat().st_size > 10_000
