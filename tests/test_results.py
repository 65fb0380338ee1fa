"""Results store: schema check, atomic appends under concurrency, corrupt lines."""

import json
import multiprocessing as mp

import pytest

from ckmbench.errors import CkmError
from ckmbench.results import RECORD_KEYS, append_record, read_records


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


def test_nan_is_refused_not_written(tmp_path):
    store = tmp_path / "s.jsonl"
    append_record(make_record(1), store)
    with pytest.raises(ValueError):
        append_record(make_record(2, metrics={"mse": float("nan")}), store)
    assert len(read_records(store)) == 1


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
