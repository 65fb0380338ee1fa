"""Results store: schema check, atomic appends under concurrency, corrupt lines."""

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from ckmbench.errors import CkmError
from ckmbench.results import (RECORD_KEYS, append_record, check_store_writable, default_runs_dir, read_records,
                              store_path)


def make_record(i=0, **over):
    rec = {k: None for k in RECORD_KEYS}
    rec.update(record_id=f"r{i}", status="done", message="", method="bilinear", task="sr4", dataset="city",
               metrics={"mse": 0.1 * i}, metric_notes={}, cost={}, hparams={}, seed=0)
    rec.update(over)
    return rec


def _writer(path, start, count):
    for i in range(start, start + count):
        append_record(make_record(i), path)


def test_append_and_read_back(tmp_path):
    store = tmp_path / "r" / "records.jsonl"
    append_record(make_record(1), store)
    append_record(make_record(2, status="error", message="boom"), store)
    recs = read_records(store)
    assert [r["record_id"] for r in recs] == ["r1", "r2"]
    assert recs[1]["status"] == "error" and recs[1]["message"] == "boom"


def test_missing_keys_are_refused(tmp_path):
    rec = make_record()
    del rec["dataset_hash"]
    with pytest.raises(ValueError, match="dataset_hash"):
        append_record(rec, tmp_path / "s.jsonl")


def test_non_finite_values_are_stored_as_null_with_a_note(tmp_path):
    """A NaN hyper-parameter or metric used to make the append raise and lose the record."""
    store = tmp_path / "s.jsonl"
    append_record(make_record(1), store)
    append_record(make_record(2, metrics={"mse": float("nan"), "psnr": np.float32("inf")},
                              hparams={"lr": float("nan")}), store)
    recs = read_records(store)
    assert len(recs) == 2
    assert recs[1]["metrics"] == {"mse": None, "psnr": None} and recs[1]["hparams"] == {"lr": None}
    assert "metrics.mse" in recs[1]["metric_notes"]["nonfinite"]
    assert "hparams.lr" in recs[1]["metric_notes"]["nonfinite"]


def test_default_store_is_the_users_not_the_projects(tmp_path, monkeypatch):
    """A user's runs never write the committed results/records.jsonl unless it is named."""
    monkeypatch.delenv("CKMBENCH_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert store_path() == tmp_path / "xdg" / "ckmbench" / "results" / "records.jsonl"
    assert default_runs_dir() == tmp_path / "xdg" / "ckmbench" / "results" / "runs"
    assert store_path("results/records.jsonl") == Path("results/records.jsonl")
    monkeypatch.setenv("CKMBENCH_STORE", str(tmp_path / "env.jsonl"))
    assert store_path() == tmp_path / "env.jsonl"


def test_unwritable_store_is_refused_up_front(tmp_path):
    blocker = tmp_path / "blocker"  # a file where the store's folder should be (works as root too)
    blocker.write_text("x")
    with pytest.raises(CkmError, match="not writable"):
        check_store_writable(blocker / "records.jsonl")
    check_store_writable(tmp_path / "ok" / "records.jsonl")
    assert not list((tmp_path / "ok").iterdir())  # the probe is gone


def test_missing_store_is_an_error_when_asked(tmp_path):
    assert read_records(tmp_path / "none.jsonl") == []
    with pytest.raises(CkmError, match="does not exist"):
        read_records(tmp_path / "none.jsonl", missing_ok=False)


@pytest.mark.parametrize("line, match", [
    (b"[1,2,3]", "not a record object"),
    (b'{"metrics": {"mse": "abc"}}', "mse.*not a number"),
    (b'{"record_id": "\xff\xfe"}', "not UTF-8"),
    (b'{"metrics": [1]}', "not an object"),
])
def test_bad_store_lines_are_one_line_errors(tmp_path, line, match):
    store = tmp_path / "s.jsonl"
    store.write_bytes(json.dumps(make_record(1)).encode() + b"\n" + line + b"\n")
    with pytest.raises(CkmError, match=match) as err:
        read_records(store)
    assert "line 2" in str(err.value) and "\n" not in str(err.value)


def test_concurrent_appends_lose_nothing(tmp_path):
    store = tmp_path / "s.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store), k * 100, 15)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    recs = read_records(store)
    assert len(recs) == 45
    assert len({r["record_id"] for r in recs}) == 45
    for line in store.read_text().splitlines():
        json.loads(line)


def test_corrupt_line_names_file_and_line(tmp_path):
    store = tmp_path / "s.jsonl"
    append_record(make_record(1), store)
    with open(store, "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(CkmError, match=r"line 2"):
        read_records(store)
