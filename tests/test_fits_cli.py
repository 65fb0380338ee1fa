"""`ckmbench fits`: the shipped and cached fits listed; model cards from fit.json and a store."""

import json
from pathlib import Path

from click.testing import CliRunner

from ckmbench.cards import card_markdown, write_shipped_cards
from ckmbench.cli import cli
from ckmbench.fitcache import stamp_fit
from ckmbench.fitlist import fit_folders

KEY = "0123456789abcdef"
HASH = "feedbeef" * 8


def make_fit(root, method="cgdm", key=KEY, complete=True, steps=(12, 12)):
    folder = root / f"{method}-{key}"
    folder.mkdir(parents=True)
    (folder / "fit.pt").write_bytes(b"\0" * 2048)
    meta = {"method": method, "method_version": "0.1.0+2", "train_task": "sr4", "train_dataset": "city-tiny",
            "train_dataset_hash": HASH, "profile": "tiny", "seed": 3, "steps_done": steps[0],
            "steps_planned": steps[1], "train_s": 125.0, "fit_wall_s": 130.0, "complete": complete,
            "final_loss": 0.25}
    (folder / "fit.json").write_text(json.dumps(meta))
    stamp_fit(folder)  # a stored fit carries its checksum (an unstamped cached fit counts as unfinished)
    return folder


def record(method, value, fit=None, rid=None, task="sr4", dataset="city-tiny"):
    return {"record_id": rid or method, "status": "done", "method": method, "task": task, "dataset": dataset,
            "dataset_hash": HASH, "train_dataset": dataset, "profile": "tiny", "seed": 3, "n_test": 4,
            "date": "2026-12-01T00:00:00+00:00", "method_kind": "baseline" if fit is None else "diffusion",
            "metrics": {"rmse_gain_db@outdoor": value, "psnr": 20.0}, "metric_notes": {}, "cost": {},
            "fit": fit, "git_commit": "abc123def4567890", "device": "cpu (x86_64, 2 cores)"}


def test_fits_lists_cached_fits_with_their_facts(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path))
    make_fit(tmp_path)
    make_fit(tmp_path, method="radiodiff", key="fedcba9876543210", complete=False, steps=(40, 6000))
    out = CliRunner().invoke(cli, ["fits"])
    assert out.exit_code == 0, out.output
    cached = [line for line in out.output.splitlines() if str(tmp_path) in line]
    assert len(cached) == 2
    cgdm = next(line for line in cached if "cgdm-" + KEY in line)
    for fact in ("sr4", "city-tiny", "tiny", "12/12", "2 min", "KB", "yes", "cache"):
        assert fact in cgdm
    assert "0.1.0+2 " in cgdm or "0.1.0+2 (now " in cgdm  # the version it was made with (and today's if newer)
    rd = next(line for line in cached if "radiodiff-" in line)
    assert "40/6,000" in rd and " no " in rd


def test_card_holds_the_fit_facts_and_a_weakness_against_interpolation(tmp_path):
    folder = make_fit(tmp_path)
    fit = fit_folders(tmp_path, "cache")[0]
    fit_field = {"key": KEY, "source": "trained", "dir": str(folder)}
    records = [record("cgdm", 11.0, fit=fit_field), record("bicubic", 10.0), record("bilinear", 12.0),
               record("cgdm", 5.0, fit={"key": "another", "source": "trained"}, rid="other", dataset="city-uma")]
    card = card_markdown(fit, records)
    for fact in (HASH[:12], "abc123def456", "12/12 (complete)", "cpu (x86_64, 2 cores)", "2 min",
                 "| city-tiny | sr4 | cgdm [tiny] | rmse_gain_db@outdoor ↓ | 11.00 | 10.00 | 12.00 | 4 |"):
        assert fact in card, fact
    assert "loses to bicubic on city-tiny sr4 at the tiny profile" in card
    assert "bilinear on" not in card and "city-uma" not in card  # beats bilinear; the other fit's row is not its


def test_card_of_a_fit_that_beats_interpolation_lists_no_weakness(tmp_path):
    make_fit(tmp_path)
    fit = fit_folders(tmp_path, "cache")[0]
    records = [record("cgdm", 9.0, fit={"key": KEY, "source": "cache"}), record("bicubic", 10.0)]
    assert "- none found" in card_markdown(fit, records)


def test_fits_card_and_write_cards_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("CKMBENCH_FITS", str(tmp_path / "fits"))
    folder = make_fit(tmp_path / "fits")
    store = tmp_path / "records.jsonl"
    store.write_text(json.dumps(record("cgdm", 11.0, fit={"key": KEY, "source": "trained"})) + "\n"
                     + json.dumps(record("bicubic", 10.0)) + "\n")
    out = CliRunner().invoke(cli, ["fits", "--card", str(folder), "--store", str(store)])
    assert out.exit_code == 0, out.output
    assert "# cgdm on sr4 (city-tiny, tiny, seed 3)" in out.output and "loses to bicubic" in out.output
    bad = CliRunner().invoke(cli, ["fits", "--card", "no-such-fit"])
    assert bad.exit_code != 0 and "no fit named 'no-such-fit'" in str(bad.exception)


def test_write_cards_writes_card_md_beside_shipped_fits_only(tmp_path):
    shipped = fit_folders(make_fit(tmp_path / "shipped").parent, "shipped")
    cached = fit_folders(make_fit(tmp_path / "cache").parent, "cache")
    store = tmp_path / "records.jsonl"
    store.write_text(json.dumps(record("cgdm", 11.0, fit={"key": KEY, "source": "trained"})) + "\n")
    written = write_shipped_cards(shipped + cached, store)
    assert written == [shipped[0].entry.dir / "card.md"]
    assert "| city-tiny | sr4 | cgdm [tiny]" in written[0].read_text()
    assert not (cached[0].entry.dir / "card.md").exists()


def test_a_killed_fit_is_listed_as_incomplete_with_its_saved_step(tmp_path):
    import torch

    folder = tmp_path / "cgdm-00000000deadbeef"
    (folder / "unet").mkdir(parents=True)
    torch.save({"format": "ckmbench-train-state-1", "step": 750, "model": {"w": torch.zeros(3)}},
               folder / "unet" / "train_state.pt")
    (tmp_path / "not-a-fit").mkdir()
    [fit] = fit_folders(tmp_path, "cache")
    assert fit.method == "cgdm" and fit.steps() == "750" and not fit.complete


def test_a_fit_of_older_code_says_so():
    from ckmbench.fitcache import FitEntry
    from ckmbench.fitlist import StoredFit

    entry = FitEntry(KEY, Path("cgdm-" + KEY))
    assert StoredFit(entry, "shipped", {"method_version": "0.1.0"}, "0.1.0+2").version() == "0.1.0 (now 0.1.0+2)"
    assert StoredFit(entry, "shipped", {"method_version": "0.1.0+2"}, "0.1.0+2").version() == "0.1.0+2"
