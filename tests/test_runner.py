"""The runner end to end on the tiny built-in city data: records, failures, transfer, checkpoints."""

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ckmbench.errors import CkmError
from ckmbench.hookspecs import hookimpl
from ckmbench.method import Method
from ckmbench.plugins import load_registry
from ckmbench.results import read_records
from ckmbench.runner import RunConfig, run
from ckmbench.specs import MethodSpec


def cfg(tmp_path, **kw):
    base = dict(method="bilinear", task="sr4", dataset="city-tiny", profile="tiny", store=str(tmp_path / "r.jsonl"),
                runs_dir=str(tmp_path / "runs"), progress=False)
    base.update(kw)
    return RunConfig(**base)


class Broken(Method):
    name = "broken"

    def predict(self, obs, ctx):
        raise RuntimeError("predict exploded")


class WrongShape(Method):
    name = "wrongshape"

    def predict(self, obs, ctx):
        return torch.zeros(len(obs), 1, 3, 3)


class Slow(Method):
    name = "slow"

    def fit(self, train, val, task, ctx):
        import time

        time.sleep(0.3)

    def predict(self, obs, ctx):
        return torch.zeros(len(obs), 1, *obs.out_shape)


class MeanLearner(Method):
    """Learns the mean training map: a learned method with a real state to checkpoint."""

    name = "meanlearner"

    def fit(self, train, val, task, ctx):
        total, count = None, 0
        for _, target, _ in train.batches(8):
            s = target.sum(0)
            total = s if total is None else total + s
            count += len(target)
        self.mean = total / count

    def predict(self, obs, ctx):
        return self.mean.expand(len(obs), *self.mean.shape).clone()

    def state_dict(self):
        return {"mean": self.mean}

    def load_state_dict(self, state):
        self.mean = state["mean"]

    def inference_parameters(self):
        return self.mean.numel()  # stands for a frozen module used only to predict


def toy_registry():
    mod = types.ModuleType("toy_methods")

    def register_methods(register):
        for cls in (Broken, WrongShape, Slow):
            register(MethodSpec(name=cls.name, factory=lambda p, h, cls=cls: cls(p, h), tasks=("sr4",)))
        register(MethodSpec(name="meanlearner", factory=lambda p, h: MeanLearner(p, h), tasks=("sr4", "generate"),
                            kind="learned"))

    mod.ckmbench_register_methods = hookimpl(register_methods)
    return load_registry(extra_plugins=(mod,))


def test_bilinear_sr4_end_to_end(tmp_path):
    rec = run(cfg(tmp_path))
    assert rec["status"] == "done", rec["message"]
    m = rec["metrics"]
    for key in ("mse", "rmse", "nmse", "mse_gain", "rmse_gain_db", "psnr", "ssim", "mse@outdoor", "ssim@outdoor"):
        assert m[key] is not None and np.isfinite(m[key]), key
    assert 0 < m["mse"] < 0.05 and m["psnr"] > 13
    assert m["rmse"] == pytest.approx(np.sqrt(m["mse"]), rel=1e-6)  # rmse = sqrt(mean over samples of mse)
    assert rec["n_test"] > 0 and rec["map_size"] == [32, 32]
    assert rec["cost"]["params"] == 0 and rec["cost"]["infer_s_per_map"] > 0
    from ckmbench.data.registry import load_dataset

    assert rec["dataset_hash"] == load_dataset("city-tiny").content_hash == rec["train_dataset_hash"]
    assert rec["protocol_version"]
    stored = read_records(tmp_path / "r.jsonl")
    assert [r["record_id"] for r in stored] == [rec["record_id"]]
    run_dir = Path(rec["run_dir"])
    for name in ("config.json", "metrics.json", "per_sample.csv", "record.json", "examples.png"):
        assert (run_dir / name).exists(), name
    with np.load(tmp_path / rec["examples"]) as z:
        assert z["truth"].dtype == np.uint8 and z["prediction"].shape == z["truth"].shape
        assert z["observation"].shape[1] == 8  # 32 / 4
        assert z["gain_range"].shape == (len(z["truth"]), 2)  # the leaderboard draws examples in dB
    with np.load(tmp_path / rec["per_map"]) as z:  # what the leaderboard's bootstrap intervals need
        assert len(z["scene"]) == rec["n_test"] and z["mse"].dtype == np.float32
        assert float(np.mean(z["mse"], dtype=np.float64)) == pytest.approx(m["mse"], rel=1e-5)


def test_a_record_without_per_map_values_gets_them_from_its_run_folder(tmp_path):
    """`ckmbench results permap RUN_DIR`: the same per-map file a run writes today, made from the
    per_sample.csv of a run stored before per-map files existed, and named in its record."""
    import json

    from click.testing import CliRunner

    from ckmbench.cli import cli
    from ckmbench.results import update_records

    rec = run(cfg(tmp_path))
    made = tmp_path / rec["per_map"]
    with np.load(made) as z:
        written = {k: z[k] for k in z.files}
    made.unlink()
    store = tmp_path / "r.jsonl"
    assert update_records(store, {rec["record_id"]: {"per_map": None}}) == 1  # as an older record
    out = CliRunner().invoke(cli, ["results", "permap", rec["run_dir"], "--store", str(store)])
    assert out.exit_code == 0, out.output
    again = read_records(store)[0]
    assert again["per_map"] == rec["per_map"] and json.loads(store.read_text())["_sum"]
    with np.load(tmp_path / again["per_map"]) as z:
        assert sorted(z.files) == sorted(written)
        for name in written:
            if name == "scene":
                assert list(z[name]) == list(written[name])
            else:
                np.testing.assert_allclose(z[name], written[name], rtol=1e-6)
    other = tmp_path / "other.jsonl"
    other.write_text("")
    out = CliRunner().invoke(cli, ["results", "permap", rec["run_dir"], "--store", str(other)])
    assert out.exit_code != 0 and "is not in" in str(out.exception)  # the CLI's main prints it in one line


def test_same_run_twice_gives_identical_metrics(tmp_path):
    a = run(cfg(tmp_path, task="inpaint", method="idw", fid=False))
    b = run(cfg(tmp_path, task="inpaint", method="idw", fid=False))
    assert a["metrics"] == b["metrics"]
    assert a["config_hash"] == b["config_hash"]
    assert a["overrides"] == {}
    c = run(cfg(tmp_path, task="inpaint", method="idw", fid=False, hparams={"power": 3.0}))
    assert c["overrides"] == {"power": 3.0} and c["hparams"]["power"] == 3.0
    assert c["metrics"] != a["metrics"]


def test_generate_is_scored_by_fid_and_diversity_only(tmp_path):
    """No pixel metric against an arbitrarily paired test map; a generator that always gives the
    same map (the mean) has diversity 0 against the data's own."""
    rec = run(cfg(tmp_path, method="meanlearner", task="generate", fid=True), toy_registry())
    assert rec["status"] == "done", rec["message"]
    assert set(rec["metrics"]) == {"fid", "diversity"}
    assert rec["metrics"]["diversity"] == 0 and rec["metric_notes"]["diversity_data"] > 0


def test_unsupported_task_lists_supported(tmp_path):
    with pytest.raises(CkmError, match=r"does not support task 'envgen-static': it supports .*sr4"):
        run(cfg(tmp_path, task="envgen-static"))
    assert not (tmp_path / "r.jsonl").exists()


def test_unknown_names_and_profile(tmp_path):
    with pytest.raises(CkmError, match="unknown method 'bilinera'.*bilinear"):
        run(cfg(tmp_path, method="bilinera"))
    with pytest.raises(CkmError, match="unknown task"):
        run(cfg(tmp_path, task="sr5"))
    with pytest.raises(CkmError, match="no profile"):
        run(cfg(tmp_path, profile="huge"))


def test_failures_are_recorded_and_do_not_stop_a_sweep(tmp_path):
    reg = toy_registry()
    broken = run(cfg(tmp_path, method="broken"), reg)
    shape = run(cfg(tmp_path, method="wrongshape"), reg)
    slow = run(cfg(tmp_path, method="slow", time_budget_s=0.05), reg)
    ok = run(cfg(tmp_path, method="bilinear"), reg)
    assert broken["status"] == "error" and "predict exploded" in broken["message"]
    assert shape["status"] == "error" and "expected a tensor of shape" in shape["message"]
    assert slow["status"] == "timeout"
    assert ok["status"] == "done"
    statuses = [r["status"] for r in read_records(tmp_path / "r.jsonl")]
    assert statuses == ["error", "error", "timeout", "done"]
    assert (Path(broken["run_dir"]) / "error.txt").read_text().count("predict exploded")


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    reg = toy_registry()
    first = run(cfg(tmp_path, method="meanlearner"), reg)
    ckpt = Path(first["run_dir"]) / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    assert set(state) == {"mean"}
    second = run(cfg(tmp_path, method="meanlearner", checkpoint=str(ckpt)), reg)
    assert second["status"] == "done"
    assert second["metrics"]["mse"] == pytest.approx(first["metrics"]["mse"])


def test_transfer_from_simulator_to_real_map0(tmp_path):
    rec = run(cfg(tmp_path, method="bilinear", dataset="radiomapseer-map0", train_dataset="city-tiny"))
    assert rec["status"] == "done", rec["message"]
    assert rec["train_dataset"] == "city-tiny" and rec["dataset"] == "radiomapseer-map0"
    assert rec["n_test"] == 5 and rec["map_size"] == [256, 256]
    assert rec["train_dataset_hash"] != rec["dataset_hash"]


def test_learned_method_needs_a_train_split(tmp_path):
    with pytest.raises(CkmError, match="no train split.*--train-dataset"):
        run(cfg(tmp_path, method="meanlearner", dataset="radiomapseer-map0"), toy_registry())


def test_config_is_written_before_the_run(tmp_path):
    rec = run(cfg(tmp_path, max_test=3))
    config = json.loads((Path(rec["run_dir"]) / "config.json").read_text())
    assert config["max_test"] == 3 and rec["n_test"] == 3


def test_simulator_is_refused_on_its_own_data_and_marked_in_sample_on_its_calibration_map(tmp_path):
    """radiomapseer-map0 holds maps the simulator's parameters were fitted to (with the 20 sample
    layouts): its score there is in-sample, and the record says so."""
    with pytest.raises(CkmError, match="simulator.*generated it"):
        run(cfg(tmp_path, method="simulator", task="envgen-static"))
    rec = run(cfg(tmp_path, method="simulator", task="envgen-static", dataset="radiomapseer-map0"))
    assert rec["status"] == "done" and rec["metrics"]["rmse_gain_db@outdoor"] < 3.5
    note = rec["metric_notes"]["in_sample"]
    assert note.startswith("in-sample") and "map 0 and the 20 sample layouts" in note and "cross-validated" in note
    assert "in_sample" not in run(cfg(tmp_path, method="distance", task="envgen-static",
                                      dataset="radiomapseer-map0"))["metric_notes"]


def test_a_record_that_cannot_be_stored_does_not_stop_the_sweep(tmp_path, monkeypatch, capsys):
    from ckmbench import cli, runner

    real, calls = runner.append_record, []

    def full_disk_once(record, path):
        calls.append(record["task"])
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(record, path)

    monkeypatch.setattr(runner, "append_record", full_disk_once)
    store = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "-m", "identity", "-t", "sr4,sr8", "-d", "city-tiny", "-p", "tiny", "--store", str(store),
                  "--no-progress", "--max-test", "2"])
    assert stop.value.code == 1 and calls == ["sr4", "sr8"]
    err = capsys.readouterr().err
    assert "record not stored" in err and "No space left" in err and "record.json" in err
    assert [r["task"] for r in read_records(store)] == ["sr8"]
    kept = list(tmp_path.glob("runs/*sr4*/record.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["status"] == "done"


def test_costs_say_what_applies(tmp_path):
    base = run(cfg(tmp_path, method="identity", max_test=2))
    assert base["cost"]["train_s"] is None and base["method_kind"] == "baseline"
    learned = run(cfg(tmp_path, method="meanlearner", max_test=2), toy_registry())
    assert learned["cost"]["train_s"] > 0 and learned["method_kind"] == "learned"


def test_peak_memory_is_per_run_in_a_sweep(monkeypatch):
    """Where the kernel's high-water mark cannot be reset, later runs of a sweep measured 0 MB."""
    from ckmbench.metrics import cost

    monkeypatch.setattr(cost, "_reset_peak_rss", lambda: False)

    def run_like():
        with cost.PeakMemory() as mem:
            blocks = [np.ones(2**19) for _ in range(40)]  # 40 x 4 MB, held a moment
            import time

            time.sleep(0.05)
            del blocks
        return mem.peak_mb

    first, second = run_like(), run_like()
    assert first > 120 and second > 120, (first, second)


def test_identity_is_the_observation_as_given():
    from ckmbench.plugins import registry
    from ckmbench.data.registry import load_dataset

    reg = registry()
    test = load_dataset("city-tiny", progress=False).split("test")
    samples = [test[i] for i in range(3)]
    ident = reg.method("identity").factory("tiny", {})
    for task in ("inpaint", "sparse", "denoise", "sr4"):
        t = reg.task(task)
        obs, target, _ = t.make(**t.params).batch(samples, 0)
        pred = ident.predict(obs, None)
        assert pred.shape == target.shape
        if task == "sr4":
            nearest = reg.method("nearest").factory("tiny", {}).predict(obs, None)
            assert torch.equal(pred, nearest)
        elif obs.mask is not None:
            assert torch.equal(pred, (obs.y * (obs.mask > 0.5)).clamp(0, 1))
            assert (pred[obs.mask < 0.5] == 0).all()
        else:
            assert torch.equal(pred, obs.y.clamp(0, 1))


def test_inference_parameters_are_recorded_only_where_a_method_reports_them(tmp_path):
    reg = toy_registry()
    learned = run(cfg(tmp_path, method="meanlearner"), reg)
    assert learned["status"] == "done", learned["message"]
    assert learned["cost"]["params_inference"] == 32 * 32
    assert "params_inference" not in run(cfg(tmp_path))["cost"]


# ---------------------------------------------------------------- prediction batches and warm-up
class CountingSampler(Method):
    """A 'diffusion' method: DDIM over ``sample_steps`` steps; records each predict's batch
    size and how many network calls it made."""

    name = "countingsampler"
    calls: list = []

    def predict(self, obs, ctx):
        from ckmbench.diffusion import GaussianDiffusion

        diffusion = GaussianDiffusion.from_schedule("linear", 50, 1e-4, 2e-2)
        n = {"calls": 0}

        def model_fn(x, t):
            n["calls"] += 1
            return torch.zeros_like(x)

        shape = (len(obs), 1, *obs.out_shape)
        x = diffusion.ddim_sample(model_fn, shape, int(self.hparams["sample_steps"]), generator=torch.Generator())
        CountingSampler.calls.append((len(obs), n["calls"]))
        return x.clamp(0, 1)


def sampler_registry(profile: dict):
    mod = types.ModuleType("sampler_methods")

    def register_methods(register):
        register(MethodSpec(name="countingsampler", factory=lambda p, h: CountingSampler(p, h), tasks=("sr4",),
                            profiles={p: dict(profile) for p in ("tiny", "small", "paper")}))

    mod.ckmbench_register_methods = hookimpl(register_methods)
    return load_registry(extra_plugins=(mod,))


@pytest.mark.parametrize("profile, batch_size, expected", [
    ({"sample_steps": 5, "predict_batch": 3}, None, [3, 1]),  # the method's predict_batch
    ({"sample_steps": 5}, None, [4]),  # no predict_batch: 16 at a time (city-tiny tests 4 maps)
    ({"sample_steps": 5, "predict_batch": 3}, 2, [2, 2]),  # RunConfig.batch_size wins
])
def test_prediction_batches_follow_predict_batch(tmp_path, profile, batch_size, expected):
    CountingSampler.calls = []
    rec = run(cfg(tmp_path, method="countingsampler", batch_size=batch_size), sampler_registry(profile))
    assert rec["status"] == "done", rec["message"]
    warm, timed = CountingSampler.calls[0], CountingSampler.calls[1:]
    assert [b for b, _ in timed] == expected
    assert warm[0] == expected[0]  # the warm-up predicts one real-sized batch


def test_warm_up_takes_one_sampler_step(tmp_path):
    CountingSampler.calls = []
    rec = run(cfg(tmp_path, method="countingsampler", max_test=4), sampler_registry({"sample_steps": 25,
                                                                                     "predict_batch": 4}))
    assert rec["status"] == "done", rec["message"]
    assert CountingSampler.calls == [(4, 1), (4, 25)]  # warm-up: one network call; the scored pass: 25


def test_every_sampler_takes_one_step_while_warming_up():
    from ckmbench.diffusion import GaussianDiffusion
    from ckmbench.latent.ddm import DecoupledDiffusion
    from ckmbench.warmup import warming_up

    calls = []

    def eps(x, t):
        calls.append(1)
        return torch.zeros_like(x)

    def ddm_fn(z, t):
        calls.append(1)
        return torch.zeros_like(z), torch.zeros_like(z)

    gauss = GaussianDiffusion.from_schedule("linear", 20, 1e-4, 2e-2)
    ddm = DecoupledDiffusion()
    samplers = [lambda: gauss.sample(eps, (1, 1, 4, 4)), lambda: gauss.ddim_sample(eps, (1, 1, 4, 4), 10),
                lambda: ddm.sample(ddm_fn, (1, 1, 4, 4), 6), lambda: ddm.sample_corrected(ddm_fn, (1, 1, 4, 4), 6)]
    full = []
    for sample in samplers:
        calls.clear()
        sample()
        full.append(len(calls))
        calls.clear()
        with warming_up():
            sample()
        assert len(calls) in (1, 2)  # one step (the corrected sampler splits its last step: two calls)
    assert full == [20, 10, 6, 7]


def test_sample_amp_bf16_reuses_the_fp32_fit_and_predicts_close(tmp_path, monkeypatch):
    """--set sample_amp=bf16 samples the same fit (same key, from the cache) under bf16 autocast:
    the maps change a little (bf16 rounding), the scores stay close."""
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    torch.set_num_threads(1)
    fp32 = run(cfg(tmp_path, method="cgdm", examples=4))
    bf16 = run(cfg(tmp_path, method="cgdm", examples=4, hparams={"sample_amp": "bf16"}))
    assert fp32["status"] == bf16["status"] == "done", (fp32["message"], bf16["message"])
    assert bf16["fit"]["key"] == fp32["fit"]["key"] and bf16["fit"]["source"] == "cache"
    assert bf16["hparams"]["sample_amp"] == "bf16" and bf16["config_hash"] != fp32["config_hash"]
    with np.load(tmp_path / fp32["examples"]) as a, np.load(tmp_path / bf16["examples"]) as b:
        diff = np.abs(a["prediction"].astype(int) - b["prediction"].astype(int))
    assert 0 < diff.max() and diff.mean() < 3  # uint8 levels: changed, but within ~1 % of the range
    assert abs(bf16["metrics"]["psnr"] - fp32["metrics"]["psnr"]) < 0.5
    with pytest.raises(CkmError, match="sample_amp=fp16: use fp32 or bf16"):
        run(cfg(tmp_path, method="cgdm", hparams={"sample_amp": "fp16"}))
