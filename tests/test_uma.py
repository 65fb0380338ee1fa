"""3GPP TR 38.901 UMa channel-power maps: formulas, LoS state, shadowing, normalization."""

import numpy as np
import pytest

from ckmbench.errors import CkmError
from ckmbench.data.uma import build_uma_dataset
from ckmbench.sim.uma import (
    UmaParams,
    correlated_gaussian_fields,
    simulate_uma_map,
    uma_breakpoint_m,
    uma_los_probability,
    uma_path_loss_db,
)

H_BS, H_UT, FC = 25.0, 1.5, 2.4


def _pl(d2d, los):
    d3d = np.sqrt(np.asarray(d2d, float) ** 2 + (H_BS - H_UT) ** 2)
    return uma_path_loss_db(d2d, d3d, H_BS, H_UT, FC, los)


def test_breakpoint_distance():
    # d'BP = 4 (25-1)(1.5-1) 2.4e9 / 3e8 = 384 m
    assert uma_breakpoint_m(H_BS, H_UT, FC) == pytest.approx(384.0)


@pytest.mark.parametrize(
    "d2d, los, expected",
    [
        # d3D = sqrt(100^2 + 23.5^2) = 102.7241; PL1 = 28 + 22 log10(d3D) + 20 log10(2.4)
        (100.0, True, 79.86102),
        # NLoS: 13.54 + 39.08 log10(102.7241) + 20 log10(2.4) = 99.76039 > LoS
        (100.0, False, 99.76039),
        # beyond d'BP: PL2 = 28 + 40 log10(1000.2761) + 7.6042 - 9 log10(384^2 + 23.5^2)
        (1000.0, True, 109.07645),
        (1000.0, False, 138.38891),
        (20.0, True, 68.37049),
        (20.0, False, 79.34902),
    ],
)
def test_path_loss_hand_values(d2d, los, expected):
    assert float(_pl(d2d, los)) == pytest.approx(expected, abs=1e-4)


def test_path_loss_continuous_at_breakpoint_and_nlos_not_below_los():
    d_bp = uma_breakpoint_m(H_BS, H_UT, FC)
    assert float(_pl(d_bp - 1e-6, True)) == pytest.approx(float(_pl(d_bp + 1e-6, True)), abs=1e-4)
    d = np.linspace(10, 5000, 500)
    assert np.all(_pl(d, False) >= _pl(d, True))
    assert np.all(np.diff(_pl(d, True)) > 0)


def test_path_loss_rejects_ut_heights_outside_the_model():
    with pytest.raises(CkmError, match="h_ut"):
        uma_path_loss_db(100.0, 105.0, H_BS, 20.0, FC, True)


def test_los_probability_values():
    p = uma_los_probability(np.array([1.0, 10.0, 18.0, 50.0, 100.0, 200.0]))
    # 18/d + exp(-d/63) (1 - 18/d) beyond 18 m
    np.testing.assert_allclose(p, [1.0, 1.0, 1.0, 0.649402, 0.347671, 0.128048], atol=1e-5)


def test_correlated_field_variance_and_exponential_correlation():
    fields = correlated_gaussian_fields((384, 384), 1.0, 30.0, np.random.default_rng(3), count=6)
    assert fields.shape == (6, 384, 384)
    z = fields - fields.mean(axis=(1, 2), keepdims=True)
    var = np.mean(z ** 2)
    assert 0.8 < var < 1.15
    for lag in (10, 30, 60):
        rho = np.mean([np.mean(f[:, :-lag] * f[:, lag:]) for f in z]) / var
        assert rho == pytest.approx(np.exp(-lag / 30.0), abs=0.08)


def test_paired_fields_are_independent():
    # the real and imaginary parts of one transform; a short correlation keeps the check tight
    a, b = correlated_gaussian_fields((256, 256), 1.0, 3.0, np.random.default_rng(4), count=2)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.12
    assert np.std(a) == pytest.approx(1.0, abs=0.1) and np.std(b) == pytest.approx(1.0, abs=0.1)


def test_map_parts_add_up_and_shadowing_statistics():
    p = UmaParams()
    los_sd, nlos_sd = [], []
    near, far = [], []
    for k in range(6):
        m = simulate_uma_map(256, 1.0, np.random.default_rng(k), p, tx=(128.0, 128.0))
        np.testing.assert_allclose(m.gain_db, -(m.path_loss_db + m.shadowing_db), atol=1e-4)
        assert m.tx == (128.0, 128.0, 25.0)
        los_sd.append(m.shadowing_db[m.los])
        nlos_sd.append(m.shadowing_db[~m.los])
        d = np.hypot(*np.mgrid[0:256, 0:256] - 128.0)
        assert np.all(m.los[d <= 18.0])  # probability 1 within 18 m
        near.append(m.los[(d > 18) & (d < 40)].mean())
        far.append(m.los[d > 110].mean())
    assert np.std(np.concatenate(los_sd)) == pytest.approx(4.0, rel=0.2)
    assert np.std(np.concatenate(nlos_sd)) == pytest.approx(6.0, rel=0.2)
    assert np.mean(near) > 0.6 > 0.4 > np.mean(far)


def test_los_fraction_follows_probability_over_many_maps():
    ring_p, ring_los = [], []
    for k in range(10):
        m = simulate_uma_map(128, 1.0, np.random.default_rng(100 + k), tx=(64.0, 64.0))
        d = np.hypot(*np.mgrid[0:128, 0:128] - 64.0)
        ring = (d > 40) & (d < 60)
        ring_p.append(m.los_probability[ring].mean())
        ring_los.append(m.los[ring].mean())
    assert np.mean(ring_los) == pytest.approx(np.mean(ring_p), abs=0.2)


def test_dataset_min_max_normalization_and_layout():
    ds = build_uma_dataset(size=32, n_maps=6, seed=1, progress=False)
    assert ds.gain_db.shape == (6, 32, 32) and ds.gain_db.dtype == np.float32
    np.testing.assert_array_equal(ds.gain_range[:, 0], ds.gain_db.min(axis=(1, 2)))
    np.testing.assert_array_equal(ds.gain_range[:, 1], ds.gain_db.max(axis=(1, 2)))
    u = ds.u()
    np.testing.assert_allclose(u.min(axis=(1, 2)), 0.0)
    np.testing.assert_allclose(u.max(axis=(1, 2)), 1.0)
    assert not ds.buildings.any() and not ds.cars.any()
    assert np.all(ds.tx[:, 2] == 25.0)
    margin = 0.25 * 31
    assert np.all((ds.tx[:, :2] >= -margin - 1e-3) & (ds.tx[:, :2] <= 31 + margin + 1e-3))
    assert len(set(ds.scene)) == 6 and ds.name == "city-uma"
    split_scenes = [s for v in ds.splits.values() for s in v]
    assert sorted(split_scenes) == sorted(ds.scene.tolist())


def test_dataset_is_deterministic_and_maps_do_not_depend_on_count():
    a = build_uma_dataset(size=32, n_maps=3, seed=5, progress=False)
    b = build_uma_dataset(size=32, n_maps=3, seed=5, progress=False)
    c = build_uma_dataset(size=32, n_maps=5, seed=5, progress=False)
    d = build_uma_dataset(size=32, n_maps=3, seed=6, progress=False)
    assert a.content_hash == b.content_hash
    np.testing.assert_array_equal(a.gain_db, c.gain_db[:3])
    assert a.content_hash != d.content_hash


def test_dataset_rejects_bad_sizes():
    with pytest.raises(CkmError, match="n_maps"):
        build_uma_dataset(size=32, n_maps=0, progress=False)


def test_the_model_stays_in_sim_and_the_dataset_builder_in_data():
    """sim/ holds propagation models; every dataset builder lives in ckmbench.data."""
    from ckmbench.data import builtin
    from ckmbench.sim import uma as sim_uma

    assert not hasattr(sim_uma, "build_uma_dataset")
    assert not any(getattr(v, "__module__", "").startswith("ckmbench.data") for v in vars(sim_uma).values())
    assert build_uma_dataset.__module__ == "ckmbench.data.uma"
    ds = builtin.load_uma("city-uma-tiny", progress=False)
    assert ds.meta["source"] == "3gpp-38901-uma"
