"""Channels-last on CPU: each method's choice, the trainer and runner applying it, same predictions."""

import types

import pytest
import torch

from ckmbench import memformat
from ckmbench.errors import CkmError
from ckmbench.hookspecs import hookimpl
from ckmbench.method import Method, RunContext, TaskData
from ckmbench.plugins import load_registry, registry
from ckmbench.runner import RunConfig, prepare, run
from ckmbench.specs import MethodSpec
from ckmbench.training import Trainer, TrainConfig


def is_channels_last(module) -> bool:
    """Every convolution weight in channels-last, and one at least in no other format (a weight
    with one input channel is both)."""
    weights = [m.weight for m in module.modules() if isinstance(m, memformat.CONVOLUTIONS)]
    return (bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
            and any(not p.is_contiguous() for p in weights))


class Chooser:
    channels_last_cpu = True


def test_the_choice_is_the_methods_on_cpu_only(monkeypatch):
    monkeypatch.delenv(memformat.ENV_VAR, raising=False)
    assert memformat.channels_last_for(Chooser(), torch.device("cpu"))
    assert not memformat.channels_last_for(Chooser(), torch.device("cuda"))  # CUDA keeps its default
    assert not memformat.channels_last_for(object(), torch.device("cpu"))
    monkeypatch.setenv(memformat.ENV_VAR, "0")
    assert not memformat.channels_last_for(Chooser(), torch.device("cpu"))
    monkeypatch.setenv(memformat.ENV_VAR, "1")
    assert memformat.channels_last_for(object(), torch.device("cpu"))
    monkeypatch.setenv(memformat.ENV_VAR, "yes")
    with pytest.raises(CkmError, match=memformat.ENV_VAR):
        memformat.channels_last_for(Chooser(), torch.device("cpu"))


def test_trainer_converts_the_model_when_the_context_says_so():
    def model():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 2, 3))

    on, off = model(), model()
    on.register_parameter("pairs", torch.nn.Parameter(torch.zeros(2, 3, 4, 2)))  # not a convolution's
    Trainer(on, TrainConfig(steps=1), RunContext(progress=False, channels_last=True))
    Trainer(off, TrainConfig(steps=1), RunContext(progress=False))
    assert is_channels_last(on) and not is_channels_last(off)
    assert on.pairs.is_contiguous()  # left as it was (a view_as_complex needs its last stride 1)


@pytest.mark.parametrize("name, task", [("radiounet-c", "envgen-static"), ("drrn", "sr4"), ("srresnet", "sr4")])
def test_same_weights_predict_the_same_in_both_formats(name, task):
    """A method that uses channels-last: its predictions from the same weights agree within 1e-5."""
    torch.set_num_threads(1)
    reg = registry()
    prep = prepare(RunConfig(method=name, task=task, dataset="city-tiny", profile="tiny", progress=False), reg)
    method = prep.spec.factory("tiny", prep.hparams)
    if method.net is None:  # a learned SR baseline builds its network for the train task
        method.meta = method.configure(prep.train_task)
        method.net = method.build_net()
    assert memformat.channels_last_for(method, torch.device("cpu"))
    obs, _, _ = TaskData(prep.test, prep.task, 0).batch_at(list(range(min(4, len(prep.test)))))
    ctx = RunContext(progress=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in method.net.parameters():  # weights away from the initialisation's symmetries
            p.add_(0.05 * torch.randn_like(p))
    default = method.predict(obs, ctx)
    memformat.method_to_channels_last(method)
    assert is_channels_last(method.net)
    last = method.predict(obs, ctx)
    assert default.std() > 0
    torch.testing.assert_close(last, default, atol=1e-5, rtol=0)


class ConvLearner(Method):
    """A one-convolution learned method that chooses channels-last and notes what predict saw."""

    name = "convlearner"
    channels_last_cpu = True
    seen: list = []

    def __init__(self, profile="tiny", hparams=None):
        super().__init__(profile, hparams)
        self.net = self.build()

    @staticmethod
    def build():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 3, padding=1))

    def fit(self, train, val, task, ctx):
        def loss(net, batch, generator):
            obs, target, _ = batch
            return ((net(obs.buildings.float()) - target) ** 2).mean()

        Trainer(self.net, TrainConfig(steps=2, batch_size=2, checkpoint_every=2, log_every=2), ctx).fit(train, loss)

    def predict(self, obs, ctx):
        ConvLearner.seen.append((ctx.channels_last, is_channels_last(self.net)))
        return self.net(obs.buildings.float()).sigmoid()

    def state_dict(self):
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state):
        self.net = self.build()  # a fresh module, in the default format
        self.net.load_state_dict(state["net"])


def test_runner_trains_and_predicts_in_the_methods_format(tmp_path, monkeypatch):
    monkeypatch.delenv(memformat.ENV_VAR, raising=False)
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    mod = types.ModuleType("conv_methods")

    def register_methods(register):
        register(MethodSpec(name="convlearner", factory=lambda p, h: ConvLearner(p, h), tasks=("envgen-static",),
                            kind="learned"))

    mod.ckmbench_register_methods = hookimpl(register_methods)
    reg = load_registry(extra_plugins=(mod,))
    ConvLearner.seen = []
    for _ in range(2):  # trained, then loaded from the fit cache
        rec = run(RunConfig(method="convlearner", task="envgen-static", dataset="city-tiny", profile="tiny",
                            progress=False, store=str(tmp_path / "r.jsonl"), runs_dir=str(tmp_path / "runs")), reg)
        assert rec["status"] == "done", rec["message"]
    assert [rec["fit"]["source"]] == ["cache"]
    assert set(ConvLearner.seen) == {(True, True)}
