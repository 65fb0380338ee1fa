"""The built-in tasks: registration, determinism, shapes and the statistics of each operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckmbench.data.sample import MapDataset, Sample
from ckmbench.errors import CkmError
from ckmbench.plugins import load_registry
from ckmbench.tasks import builtin, operators
from ckmbench.tasks.base import Observation, Task
from ckmbench.tasks.builtin import builtin_task_specs

TASKS = {spec.name: spec.make(**spec.params) for spec in builtin_task_specs()}
EXPECTED = (
    [f"sr{f}" for f in (2, 4, 8, 16)] + [f"sr{f}-noisy" for f in (2, 4, 8, 16)]
    + [f"sr{f}-envcf" for f in (2, 4, 8, 16)] + [f"zeroshot-sr{f}" for f in (2, 8, 16)]
    + ["inpaint", "denoise", "sparse", "envgen-static", "envgen-dynamic", "generate"]
)


def analytic_sample(size=32, scene="s0", tx=(10.0, 12.0, 1.5), cars=False, buildings=True, dataset="analytic"):
    """A smooth log-distance map with two rectangular buildings (and a car)."""
    rr, cc = np.indices((size, size))
    d = np.maximum(np.hypot(rr - tx[0], cc - tx[1]), 1.0)
    gain = (-50.0 - 22.0 * np.log10(d)).astype(np.float32)
    b = np.zeros((size, size), bool)
    if buildings:
        b[2:6, 20:28] = True
        b[20:27, 3:9] = True
    c = np.zeros((size, size), bool)
    if cars:
        c[14:16, 24:27] = True
    return Sample(gain_db=gain, buildings=b, cars=c, tx=tx, pixel_m=1.0, gain_range=(-147.0, -47.0),
                  dataset=dataset, scene=scene, tx_index=0)


def dataset(cars=False, n=3):
    samples = [analytic_sample(scene=f"s{i}", tx=(5.0 + 7 * i, 12.0 + 3 * i, 1.5), cars=cars) for i in range(n)]
    return MapDataset.from_samples("tiny-cars" if cars else "tiny", samples, {"test": [s.scene for s in samples]})


def test_every_task_is_registered_through_the_entry_point():
    reg = load_registry()
    assert set(EXPECTED) <= set(reg.names("tasks"))
    for name in EXPECTED:
        spec = reg.task(name)
        task = spec.make(**spec.params)
        assert isinstance(task, Task) and task.name == name and task.description
        assert task.kind in ("sr", "inpaint", "denoise", "sparse", "envgen", "generate")


@pytest.mark.parametrize("name", EXPECTED)
def test_same_seed_gives_identical_observations(name):
    task, sample = TASKS[name], analytic_sample()
    a, b = task.observe_seeded(sample, 3), task.observe_seeded(sample, 3)
    assert a.keys() == b.keys() == set(task.provides)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    obs1, t1, r1 = task.batch([sample, analytic_sample(scene="s1")], 3)
    obs2, t2, r2 = task.batch([sample, analytic_sample(scene="s1")], 3)
    for key in task.provides:
        assert torch.equal(getattr(obs1, key), getattr(obs2, key))
    assert torch.equal(t1, t2) and r1.keys() == r2.keys()


@pytest.mark.parametrize("name", ["sr4-noisy", "inpaint", "denoise", "sparse"])
def test_random_choices_change_with_seed_scene_and_task(name):
    task, sample = TASKS[name], analytic_sample()
    base = task.observe_seeded(sample, 0)["y"]
    assert not np.array_equal(base, task.observe_seeded(sample, 1)["y"])
    # the same map under another scene id draws other noise / positions
    assert not np.array_equal(base, task.observe_seeded(analytic_sample(scene="other"), 0)["y"])


def test_task_name_enters_the_seed():
    """denoise and sr2-noisy both draw their noise first, in C order: from one seed the 16x16
    noise of sr2-noisy would be the first 256 values of denoise's. Only the task name differs."""
    sample = analytic_sample(buildings=False)

    def noises(obs_denoise, obs_sr):
        return (obs_denoise["y"] - sample.u).ravel()[:256], (obs_sr["y"] - sample.u[::2, ::2]).ravel()

    same_rng = noises(TASKS["denoise"].observe(sample, np.random.default_rng(7)),
                      TASKS["sr2-noisy"].observe(sample, np.random.default_rng(7)))
    np.testing.assert_allclose(*same_rng, atol=1e-6)  # so the check below can fail
    seeded = noises(TASKS["denoise"].observe_seeded(sample, 0), TASKS["sr2-noisy"].observe_seeded(sample, 0))
    assert not np.allclose(*seeded, atol=1e-3)


@pytest.mark.parametrize("f", [2, 4, 8, 16])
def test_sr_shapes_and_values(f):
    sample = analytic_sample()
    obs, targets, regions = TASKS[f"sr{f}"].batch([sample, analytic_sample(scene="s1")], 0)
    assert obs.y.shape == (2, 1, 32 // f, 32 // f) and targets.shape == (2, 1, 32, 32)
    assert obs.factor == f and obs.out_shape == (32, 32) and obs.mask is None
    np.testing.assert_array_equal(obs.y[0, 0].numpy(), sample.u[::f, ::f])
    assert obs.extras == {"noise_std": 0.0, "lr_mode": "subsample"}
    assert torch.equal(regions["outdoor"][0, 0], torch.from_numpy(~sample.buildings))


def test_sr_on_sizes_not_divisible_by_the_factor():
    sample = analytic_sample(size=30)
    y = TASKS["sr4"].observe_seeded(sample, 0)["y"]
    assert y.shape == (8, 8)
    np.testing.assert_array_equal(y, sample.u[::4, ::4])


def test_avg_lr_mode_is_the_block_mean_including_partial_blocks():
    u = np.arange(36, dtype=np.float32).reshape(6, 6)
    y = operators.lowres(u, 4, "avg")
    assert y.shape == (2, 2)
    assert y[0, 0] == pytest.approx(u[:4, :4].mean()) and y[1, 1] == pytest.approx(u[4:, 4:].mean())
    task = builtin.SuperResolution(factor=4, lr_mode="avg")
    sample = analytic_sample()
    np.testing.assert_allclose(task.observe_seeded(sample, 0)["y"], sample.u.reshape(8, 4, 8, 4).mean(axis=(1, 3)),
                               rtol=1e-6)
    obs, _, _ = task.batch([sample], 0)
    assert obs.extras["lr_mode"] == "avg"
    np.testing.assert_allclose(operators.lr_positions(3, 4, "avg"), [1.5, 5.5, 9.5])


def test_noise_std_is_30_over_255_and_not_clipped():
    big = analytic_sample(size=256, tx=(128.0, 128.0, 1.5), buildings=False)
    noise = TASKS["denoise"].observe_seeded(big, 0)["y"] - big.u
    assert noise.std() == pytest.approx(30 / 255, rel=0.02)
    assert abs(noise.mean()) < 0.002
    y = TASKS["denoise"].observe_seeded(big, 0)["y"]
    assert y.min() < 0 and y.max() > 1  # not clipped
    lr_noise = TASKS["sr2-noisy"].observe_seeded(big, 0)["y"] - big.u[::2, ::2]
    assert lr_noise.std() == pytest.approx(30 / 255, rel=0.03)
    obs, _, _ = TASKS["sr2-noisy"].batch([big], 0)
    assert obs.extras["noise_std"] == pytest.approx(30 / 255)


def test_inpaint_hole_is_an_h_over_4_square_inside_the_map():
    sample = analytic_sample(buildings=False)
    corners = set()
    for seed in range(40):
        obs = TASKS["inpaint"].observe_seeded(sample, seed)
        hole = obs["mask"] == 0
        rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
        assert hole.sum() == 8 * 8 and len(rows) == len(cols) == 8
        assert rows[-1] - rows[0] == 7 and cols[-1] - cols[0] == 7  # one contiguous square, inside
        assert np.all(obs["y"][hole] == 0)
        observed = ~hole
        assert np.abs(obs["y"][observed] - sample.u[observed]).std() > 0.05  # observed pixels are noisy
        regions = TASKS["inpaint"].scored_regions(sample, obs)
        np.testing.assert_array_equal(regions["hole"], hole)
        corners.add((rows[0], cols[0]))
    assert len(corners) > 20  # positions vary


def test_sparse_observes_one_percent_of_outdoor_pixels_only():
    big = analytic_sample(size=128, tx=(60.0, 60.0, 1.5))
    big.buildings[40:90, 10:70] = True
    obs = TASKS["sparse"].observe_seeded(big, 0)
    mask = obs["mask"] > 0
    outdoor = ~big.buildings
    assert mask.sum() == round(0.01 * outdoor.sum())
    assert not np.any(mask & big.buildings)
    np.testing.assert_array_equal(obs["y"][mask], big.u[mask])
    assert np.all(obs["y"][~mask] == 0)
    tiny = analytic_sample(size=8, tx=(2.0, 2.0, 1.5), buildings=False)
    assert (TASKS["sparse"].observe_seeded(tiny, 0)["mask"] > 0).sum() == 1  # at least one


@pytest.mark.parametrize("f", [2, 4, 8, 16])
def test_envcf_target_and_input(f):
    sample = analytic_sample()
    task = TASKS[f"sr{f}-envcf"]
    target = task.target(sample)
    assert np.all(target[sample.buildings] == 1.0)
    assert target[10, 12] == 1.0  # the Tx pixel
    outdoor = ~sample.buildings
    outdoor[10, 12] = False
    np.testing.assert_array_equal(target[outdoor], sample.u[outdoor])
    np.testing.assert_array_equal(task.observe_seeded(sample, 0)["y"], target[::f, ::f])
    _, targets, _ = task.batch([sample], 0)
    np.testing.assert_array_equal(targets[0, 0].numpy(), target)


def test_envcf_is_eq5_clipped_to_the_image_range():
    """S0 eq. 5 is F = G + E; ours is max(G, E), equal to min(G + E, 1) for binary E and G in
    [0, 1], and different from the unclipped sum only where E = 1 and G > 0 (the Tx pixel)."""
    sample = analytic_sample()
    e = (sample.buildings | (builtin.tx_one_hot(sample) > 0.5)).astype(np.float32)
    fused = operators.envcf(sample.u, sample.buildings, builtin.tx_one_hot(sample))
    np.testing.assert_array_equal(fused, np.minimum(sample.u + e, 1.0))
    differ = fused != sample.u + e
    assert differ.sum() == 1 and differ[10, 12] and sample.u[10, 12] > 0.9  # the Tx pixel alone


@pytest.mark.parametrize("f", [2, 8, 16])
def test_zero_shot_tasks_fit_on_sr4_and_observe_like_srf(f):
    task = TASKS[f"zeroshot-sr{f}"]
    assert task.fit_task == "sr4" and task.train_task == "sr4" and task.factor == f and task.kind == "sr"
    sample = analytic_sample()
    np.testing.assert_array_equal(task.observe_seeded(sample, 0)["y"], TASKS[f"sr{f}"].observe_seeded(sample, 0)["y"])
    assert TASKS[f"sr{f}"].train_task == f"sr{f}"


def test_envgen_observations():
    sample = analytic_sample(cars=True)
    static = TASKS["envgen-static"].observe_seeded(sample, 0)
    assert set(static) == {"buildings", "tx_map", "tx"}
    np.testing.assert_array_equal(static["buildings"], sample.buildings.astype(np.float32))
    assert static["tx_map"].sum() == 1 and static["tx_map"][10, 12] == 1
    np.testing.assert_array_equal(static["tx"], np.array([10, 12, 1.5], np.float32))
    dynamic = TASKS["envgen-dynamic"].observe_seeded(sample, 0)
    np.testing.assert_array_equal(dynamic["cars"], sample.cars.astype(np.float32))
    obs, targets, _ = TASKS["envgen-dynamic"].batch([sample], 0)
    assert obs.tx.shape == (1, 3) and obs.cars.shape == (1, 1, 32, 32) and obs.y is None
    np.testing.assert_array_equal(targets[0, 0].numpy(), sample.u)


def test_dynamic_task_refuses_a_dataset_without_cars():
    with pytest.raises(CkmError, match="task envgen-dynamic needs a dataset with cars .* dataset tiny has none"):
        TASKS["envgen-dynamic"].check_dataset(dataset(cars=False))
    TASKS["envgen-dynamic"].check_dataset(dataset(cars=True))
    TASKS["envgen-static"].check_dataset(dataset(cars=False))
    TASKS["envgen-static"].check_dataset(dataset(cars=True))


def test_generate_provides_nothing():
    obs, targets, regions = TASKS["generate"].batch([analytic_sample(), analytic_sample(scene="s1")], 0)
    assert isinstance(obs, Observation) and len(obs) == 2 and obs.out_shape == (32, 32)
    assert all(getattr(obs, f) is None for f in ("y", "mask", "buildings", "cars", "tx_map", "tx"))
    assert targets.shape == (2, 1, 32, 32) and "outdoor" in regions


@pytest.mark.parametrize("make, match", [
    (lambda: builtin.SuperResolution(factor=1), "factor must be an integer >= 2"),
    (lambda: builtin.SuperResolution(factor=4, lr_mode="mean"), "lr_mode 'mean' is not one of"),
    (lambda: builtin.SuperResolution(factor=4, noisy=True, noise_std=-1.0), "noise_std must be a number >= 0"),
    (lambda: builtin.Inpaint(hole_fraction=1.5), "hole_fraction must be in"),
    (lambda: builtin.Sparse(fraction=0.0), "fraction must be in"),
])
def test_bad_parameters_raise_one_line_errors(make, match):
    with pytest.raises(CkmError, match=match) as err:
        make()
    assert "\n" not in str(err.value)
