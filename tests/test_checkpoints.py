"""Checkpoint files are read with weights_only: unsafe or corrupt files are one CkmError line."""

import os
import pickle

import pytest
import torch

from ckmbench.checkpoints import load_checkpoint_file
from ckmbench.errors import CkmError
from ckmbench.runner import RunConfig, run


class Payload:
    """Unpickling this writes a marker file: the proof that a file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "x": Payload(marker)}, path)
    return path, marker


def test_round_trip(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(3.0), "step": 4, "name": "x"}, path)
    state = load_checkpoint_file(path)
    assert state["step"] == 4 and state["name"] == "x" and torch.equal(state["w"], torch.arange(3.0))


def test_unsafe_pickle_is_refused_without_running_it(evil):
    path, marker = evil
    with pytest.raises(CkmError) as info:
        load_checkpoint_file(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "pass a checkpoint.pt written by ckmbench run" in msg
    assert "weights_only" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a torch file", pickle.dumps([1, 2])[:-3]])
def test_corrupt_or_missing_files_are_one_line(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    for p in (path, tmp_path / "missing.pt", tmp_path):
        with pytest.raises(CkmError, match=r"is not a ckmbench checkpoint \(.*\): pass a checkpoint.pt") as info:
            load_checkpoint_file(p)
        assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_generic_wording_for_other_callers(tmp_path):
    with pytest.raises(CkmError, match=r"^training state .*missing.pt is not a training state \(no such file\): use --refit$"):
        load_checkpoint_file(tmp_path / "missing.pt", what="training state", kind="a training state", fix="use --refit")


def test_runner_refuses_an_unsafe_checkpoint(tmp_path, evil):
    path, marker = evil
    rec = run(RunConfig(method="bilinear", task="sr4", dataset="city-tiny", profile="tiny", checkpoint=str(path),
                        store=str(tmp_path / "r.jsonl"), runs_dir=str(tmp_path / "runs"), progress=False))
    assert rec["status"] == "error"
    assert "is not a ckmbench checkpoint" in rec["message"] and "weights_only" not in rec["message"]
    assert not marker.exists()
    assert os.path.exists(tmp_path / "r.jsonl")
