"""Leaderboards from synthetic, schema-complete result records."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from ckmbench import leaderboard
from ckmbench.errors import CkmError
from ckmbench.leaderboard import REPORTED_HEADING, build_leaderboards, format_count, format_sig
from ckmbench.results import RECORD_KEYS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORTED_CSV = """paper,dataset_id,task_id,method,metric,value,dataset,task,note
Paper A (Doe et al.),city,sr4,cdiff,psnr,31.15,city 256,sr4 (64->256),
Paper A (Doe et al.),city,sr4,cdiff,mse_pixel,0.0011,city 256,sr4 (64->256),
Paper A (Doe et al.),city,sr4,bilinear,psnr,27.24,city 256,sr4 (64->256),
Paper B (Roe et al.),other,inpaint,knn,fid,394.16,other 256,inpaint,RTX 5090
"""


def make_record(method="bilinear", *, dataset="city", task="sr4", seed=0, status="done",
                metrics=None, notes=None, date="2026-11-20T10:00:00+00:00", train_dataset=None,
                profile="tiny", examples=None, message="", n_test=8, cost=None, kind=None,
                distribution="ckmbench", dataset_hash="d" * 64, in_sample=None) -> dict:
    """A record with every schema key (ckmbench.results.RECORD_KEYS) filled in."""
    record = {
        "record_id": hashlib.md5(repr((method, dataset, task, seed, date, status, profile,
                                       train_dataset)).encode()).hexdigest(),
        "status": status, "message": message, "method": method,
        "method_distribution": distribution, "method_version": "0.1.0", "task": task,
        "dataset": dataset, "dataset_hash": dataset_hash, "train_dataset": train_dataset or dataset,
        "train_dataset_hash": "e" * 64, "profile": profile, "seed": seed, "n_test": n_test,
        "map_size": [32, 32],
        "metrics": ({"mse": 0.01, "psnr": 20.0, "ssim": 0.5} if metrics is None else metrics)
        if status == "done" else {},
        "metric_notes": notes or {},
        "cost": cost or {"params": 0, "train_s": 0.0, "infer_s_per_map": 0.001, "sampling_steps": None,
                         "peak_mem_mb": None},
        "hparams": {}, "config_hash": "c" * 64, "ckmbench_version": "0.1.0",
        "protocol_version": "1.0", "git_commit": "0123456789abcdef", "git_dirty": True,
        "torch_version": "2.14.1", "device": "cpu (x86_64, 2 cores)", "date": date,
        "run_dir": None, "examples": examples,
    }
    assert set(record) == set(RECORD_KEYS)
    record["method_kind"] = kind or ("learned" if method == "cdiff" else "baseline")
    if in_sample:
        record["metric_notes"] = {**record["metric_notes"], "in_sample": in_sample}
    return record


def write_examples(store_dir: Path, name: str, value: int, observation=True) -> str:
    keys = np.array(["city/s0/t0", "city/s1/t2"])
    arrays = {"keys": keys, "truth": np.full((2, 32, 32), 200, np.uint8),
              "prediction": np.full((2, 32, 32), value, np.uint8)}
    if observation:
        arrays["observation"] = np.full((2, 8, 8), 100, np.uint8)
    rel = f"examples/{name}.npz"
    (store_dir / "examples").mkdir(parents=True, exist_ok=True)
    np.savez(store_dir / rel, **arrays)
    return rel


@pytest.fixture
def reported(tmp_path) -> Path:
    path = tmp_path / "reported.csv"
    path.write_text(REPORTED_CSV)
    return path


@pytest.fixture
def records(tmp_path) -> list[dict]:
    store = tmp_path / "store"
    return [
        # two seeds of bilinear; seed 0 has an older superseded record
        make_record("bilinear", seed=0, date="2026-11-19T09:00:00+00:00",
                    metrics={"mse": 0.9, "psnr": 1.0, "ssim": 0.1}),
        make_record("bilinear", seed=0, metrics={"mse": 0.010, "psnr": 20.0, "ssim": 0.60},
                    examples=write_examples(store, "bilinear", 150)),
        make_record("bilinear", seed=1, metrics={"mse": 0.020, "psnr": 18.0, "ssim": 0.40}),
        make_record("nearest", metrics={"mse": 0.030, "psnr": 15.0, "ssim": 0.70, "fid": None},
                    notes={"fid": "unavailable: no Inception weights found"},
                    examples=write_examples(store, "nearest", 90, observation=False)),
        make_record("cdiff", metrics={"mse": 0.005, "psnr": 25.0, "ssim": 0.65, "fid": 123.456,
                                      "mse@outdoor": 0.007},
                    notes={"fid_n": 240, "fid_weights": "/w/default_1.pt", "fid_weights_sha256": "7ff4a85c3a6378f0"},
                    cost={"params": 221_210_000, "train_s": 12.5,
                                                "infer_s_per_map": 0.25, "sampling_steps": 50}),
        make_record("cdiff", train_dataset="town", metrics={"mse": 0.040, "psnr": 14.0, "ssim": 0.30}),
        make_record("kriging", seed=3, status="timeout", message="ran past the 600 s budget"),
        make_record("idw", dataset="town", task="inpaint", status="error", message="boom |\nsecond line"),
    ]


def _build(records, tmp_path, reported, out="lb", **kw):
    return build_leaderboards(records, tmp_path / out, tmp_path / "store", reported_csv=reported, **kw)


def _table_rows(text: str, first_header: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [rows[0]] + rows[2:]


def test_table_content(records, tmp_path, reported):
    _build(records, tmp_path, reported)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    header, *rows = _table_rows(text, "method")
    assert header[:4] == ["method", "profile", "N", "seeds"]
    assert "psnr ↑" in header and "ssim ↑" in header and "mse ↓" in header and "fid ↓" in header
    assert "params" in header and "sampling_steps" in header
    assert "nmse ↓" not in header  # no values -> no column
    assert not any("@" in h for h in header)  # region metrics have their own table
    region_header, *region_rows = _table_rows(text.split("### Metrics over regions", 1)[1], "method")
    assert region_header == ["method", "profile", "N", "seeds", "mse@outdoor ↓"]
    assert {r[0]: r[4] for r in region_rows}["cdiff"] == "**0.007000**"
    by_label = {r[0]: dict(zip(header, r)) for r in rows}
    assert set(by_label) == {"cdiff", "bilinear", "nearest", "cdiff, fitted on town"}
    # ranked on mse (first metric column, no outdoor gain RMSE here): best first
    assert [r[0] for r in rows] == ["cdiff", "bilinear", "nearest", "cdiff, fitted on town"]
    bil = by_label["bilinear"]
    assert bil["seeds"] == "2" and bil["N"] == "8" and bil["profile"] == "tiny"
    # mean ± sample std of the seeds, the old record dropped
    assert bil["mse ↓"] == "0.01500 ± 0.0071" and bil["psnr ↑"] == "19.00 ± 1.4"
    assert by_label["nearest"]["mse ↓"] == "0.03000"  # one seed: no spread
    assert "mean ± sample standard deviation over them" in text
    assert by_label["cdiff"]["mse ↓"] == "**0.005000**"
    assert by_label["cdiff"]["psnr ↑"] == "**25.00**"
    assert by_label["nearest"]["ssim ↑"] == "**0.7000**"  # higher is better
    assert by_label["cdiff"]["fid ↓"] == "**123.5** (N=240)"
    assert by_label["nearest"]["fid ↓"] == "n/a"
    assert by_label["cdiff"]["params"] == "221.2M"
    assert "fid n/a for nearest [tiny]: unavailable: no Inception weights found" in text
    # failures in the notes with their message; provenance footer
    assert re.search(r"kriging \[tiny\], seed 3: \*\*timeout\*\* .*ran past the 600 s budget", text)
    assert "FID weights: default_1.pt (sha256 7ff4a85c3a63)" in text
    assert "0123456789 (dirty)" in text and "torch: 2.14.1" in text and "dddddddddddd" in text
    assert records[1]["record_id"][:8] in text and records[0]["record_id"][:8] not in text


def test_reported_rows_are_separate(records, tmp_path, reported):
    _build(records, tmp_path, reported)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    reproduced, reported_part = text.split(f"## {REPORTED_HEADING}")
    assert "Paper A" not in reproduced and "27.24" not in reproduced
    header, *rows = _table_rows(reported_part, "paper")
    assert header[:2] == ["paper", "method"] and "mse ↓" in header  # mse_pixel is mse
    assert dict(zip(header, rows[0])) == {"paper": "Paper A (Doe et al.)", "method": "cdiff",
                                          "mse ↓": "0.0011", "psnr ↑": "31.15"}
    assert dict(zip(header, rows[1])) == {"paper": "Paper A (Doe et al.)", "method": "bilinear",
                                          "mse ↓": "", "psnr ↑": "27.24"}
    assert not any("**" in cell for row in rows for cell in row)  # never part of the best choice
    # reported 31.15 dB beats every reproduced psnr but the reproduced best is still cdiff's 25.00
    assert "**25.00**" in reproduced
    # a reported-only (dataset, task) still gets a table, with its figure
    other = (tmp_path / "lb" / "other" / "inpaint.md").read_text()
    assert "No reproduced results yet." in other and "394.16" in other and "RTX 5090" in other
    assert (tmp_path / "lb" / "other" / "inpaint.png").read_bytes().startswith(PNG_MAGIC)


def test_index_and_failed_only_table(records, tmp_path, reported):
    written = _build(records, tmp_path, reported)
    index = (tmp_path / "lb" / "README.md").read_text()
    header, *rows = _table_rows(index, "dataset")
    by_table = {(r[0], r[1]): dict(zip(header, r)) for r in rows}
    assert set(by_table) == {("city", "sr4"), ("other", "inpaint"), ("town", "inpaint")}
    assert by_table[("city", "sr4")]["methods"] == "3" and by_table[("city", "sr4")]["N"] == "8"
    assert "(city/sr4.md)" in by_table[("city", "sr4")]["table"]
    town = (tmp_path / "lb" / "town" / "inpaint.md").read_text()
    assert "**error**" in town and "boom / second line" in town
    assert all(p.is_file() for p in written)


def test_figures_are_png(records, tmp_path, reported):
    _build(records, tmp_path, reported)
    for name in ("sr4.png", "sr4_examples.png"):
        data = (tmp_path / "lb" / "city" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    from PIL import Image
    with Image.open(tmp_path / "lb" / "city" / "sr4_examples.png") as image:
        image.verify()
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    assert "(sr4.png)" in text and "(sr4_examples.png)" in text
    assert not (tmp_path / "lb" / "town" / "inpaint_examples.png").exists()


def test_deterministic_and_order_independent(records, tmp_path, reported):
    first = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in _build(records, tmp_path, reported, "a")}
    second = {p.relative_to(tmp_path / "b"): p.read_bytes()
              for p in _build(list(reversed(records)), tmp_path, reported, "b")}
    assert first == second


def test_stale_files_removed(records, tmp_path, reported):
    _build(records, tmp_path, reported)
    keep = tmp_path / "lb" / "notes.txt"
    keep.write_text("not ours")
    with pytest.raises(CkmError, match=r"would delete 1 table.*town/inpaint.md.*--prune"):
        _build([r for r in records if r["dataset"] != "town"], tmp_path, reported)
    assert (tmp_path / "lb" / "town" / "inpaint.md").exists()
    with pytest.raises(CkmError, match=r"\(0 records\) would delete 1 table"):  # e.g. a --store typo
        _build([], tmp_path, reported)
    _build([r for r in records if r["dataset"] != "town"], tmp_path, reported, prune=True)
    assert not (tmp_path / "lb" / "town").exists()
    assert (tmp_path / "lb" / "city" / "sr4.md").exists() and keep.exists()


def test_refuses_foreign_folder(records, tmp_path, reported):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# hand-written")
    with pytest.raises(CkmError, match="did not generate"):
        build_leaderboards(records, tmp_path / "docs", tmp_path / "store", reported_csv=reported)
    assert (tmp_path / "docs" / "guide.md").exists()


def test_bad_input_errors(records, tmp_path, reported):
    broken = dict(records[0])
    del broken["date"]
    with pytest.raises(CkmError, match="lacks keys"):
        _build([broken], tmp_path, reported)
    with pytest.raises(CkmError, match="cannot be a file name"):
        _build([make_record(dataset="../x")], tmp_path, reported)
    with pytest.raises(CkmError, match="no file"):
        build_leaderboards(records, tmp_path / "lb", tmp_path, reported_csv=tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(REPORTED_CSV.replace("31.15", "n.a."))
    with pytest.raises(CkmError, match="line 2"):
        build_leaderboards(records, tmp_path / "lb", tmp_path, reported_csv=bad)


def test_default_reported_csv_builds(tmp_path, monkeypatch):
    # 13 bar charts would dominate this file's run time; charts are covered above.
    monkeypatch.setattr(leaderboard.charts, "_bar_chart", lambda *args, **kwargs: PNG_MAGIC)
    written = build_leaderboards([], tmp_path / "lb", tmp_path)
    text = (tmp_path / "lb" / "radiomapseer-dpm" / "inpaint.md").read_text()
    assert REPORTED_HEADING in text and "CKMDiff (Fu et al.)" in text and "ckmdiff" in text
    assert len([p for p in written if p.suffix == ".md"]) == 14  # 13 reported pairs + index


def test_number_formats():
    assert format_sig(394.16) == "394.2" and format_sig(0.0118) == "0.01180"
    assert format_sig(1.2e-5) == "1.200e-05" and format_sig(1234.5) == "1234" and format_sig(None) == ""
    assert format_count(221_210_000) == "221.2M" and format_count(532) == "532"


def test_superseded_failure_and_missing_examples(tmp_path, reported):
    recs = [
        make_record("idw", status="error", message="old crash", date="2026-11-19T09:00:00+00:00"),
        make_record("idw", metrics={"mse": 0.02}, examples="examples/gone.npz"),
        make_record("idw", seed=1, status="error", message="new crash", date="2026-11-21T09:00:00"),
    ]
    _build(recs, tmp_path, reported)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    assert "old crash" not in text and "new crash" in text  # seed 0 was re-run successfully
    assert "examples file missing for idw [tiny]: examples/gone.npz" in text
    assert not (tmp_path / "lb" / "city" / "sr4_examples.png").exists()
    header, *rows = _table_rows(text, "method")
    assert [r[:4] for r in rows] == [["idw", "tiny", "8", "1"]]


def _main_rows(text: str) -> dict[str, dict[str, str]]:
    header, *rows = _table_rows(text, "method")
    return {r[0]: dict(zip(header, r)) for r in rows}


def test_non_finite_metrics_never_rank_and_print_a_dash(tmp_path, reported):
    recs = [make_record("knn", metrics={"mse": float("nan"), "psnr": float("inf")}),
            make_record("idw", metrics={"mse": 0.02, "psnr": 17.0})]
    _build(recs, tmp_path, reported)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    header, *rows = _table_rows(text, "method")
    assert [r[0] for r in rows] == ["idw", "knn"]
    by = _main_rows(text)
    assert by["knn"]["mse ↓"] == "—" and by["knn"]["psnr ↑"] == "—" and "****" not in text
    assert by["idw"]["mse ↓"] == "**0.02000**"


def test_outdoor_gain_rmse_is_in_the_main_table_and_ranks(tmp_path, reported):
    recs = [make_record("identity", metrics={"mse": 0.010, "rmse_gain_db@outdoor": 9.0}),
            make_record("kriging", metrics={"mse": 0.012, "rmse_gain_db@outdoor": 4.0})]
    _build(recs, tmp_path, reported)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    header, *rows = _table_rows(text, "method")
    assert header[4] == "rmse_gain_db@outdoor ↓" and "mse ↓" in header
    assert [r[0] for r in rows] == ["kriging", "identity"]  # whole-map mse would say the opposite
    assert "Ranked on `rmse_gain_db@outdoor`" in text


def test_labels_fitted_on_distribution_in_sample_and_costs(tmp_path, reported):
    recs = [make_record("bilinear", dataset="real", train_dataset="city", kind="baseline",
                        cost={"params": 0, "train_s": None, "infer_s_per_map": 0.001, "sampling_steps": None,
                              "peak_mem_mb": 12.0}),
            make_record("unet", dataset="real", train_dataset="city", kind="learned", distribution="ckm-unet",
                        cost={"params": 1000, "train_s": 30.0, "infer_s_per_map": 0.01, "sampling_steps": None,
                              "peak_mem_mb": 50.0}),
            make_record("simulator", dataset="real", in_sample="fitted to Tx 0, 10, 12 of this map")]
    for i, rec in enumerate(recs):  # distinct scores: equal ones would be marked as the same predictions
        rec["metrics"]["mse"] += i / 1000
    _build(recs, tmp_path, reported)
    text = (tmp_path / "lb" / "real" / "sr4.md").read_text()
    by = _main_rows(text)
    assert set(by) == {"bilinear", "unet (ckm-unet), fitted on city", "simulator (in-sample)"}
    assert by["bilinear"]["train_s"] == "—" and by["unet (ckm-unet), fitted on city"]["train_s"] == "30.0"
    assert "simulator [tiny] is in-sample, not a fair comparison: fitted to Tx 0, 10, 12" in text


def test_runs_with_set_overrides_are_their_own_rows(tmp_path, reported):
    """An ablation (--set aft=false) must not replace the default run as its newer attempt."""
    plain = make_record("radiodiff", kind="diffusion", metrics={"mse": 0.01}, date="2026-11-20T10:00:00+00:00")
    ablated = make_record("radiodiff", kind="diffusion", metrics={"mse": 0.03}, date="2026-11-21T10:00:00+00:00")
    ablated["overrides"] = {"aft": False, "sampler": "ddim"}
    ablated["record_id"] = "f" * 32
    _build([plain, ablated], tmp_path, reported)
    by = _main_rows((tmp_path / "lb" / "city" / "sr4.md").read_text())
    assert set(by) == {"radiodiff", "radiodiff with aft=false, sampler=ddim"}
    assert by["radiodiff"]["mse ↓"] == "**0.01000**"
    assert by["radiodiff with aft=false, sampler=ddim"]["mse ↓"] == "0.03000"


def test_a_run_of_imported_weights_is_its_own_row(tmp_path, reported):
    """`--weights` scores the authors' network: it must not replace our trained fit's row."""
    trained = make_record("radiounet-c", kind="learned", metrics={"mse": 0.01}, date="2026-11-20T10:00:00+00:00")
    imported = make_record("radiounet-c", kind="learned", metrics={"mse": 0.02}, date="2026-11-21T10:00:00+00:00")
    imported["fit"] = {"source": "imported", "weights_sha256": "abcdef0123456789" * 4, "steps_done": 0}
    imported["record_id"] = "e" * 32
    _build([trained, imported], tmp_path, reported)
    by = _main_rows((tmp_path / "lb" / "city" / "sr4.md").read_text())
    assert set(by) == {"radiounet-c", "radiounet-c with weights=imported abcdef01"}


def test_rows_of_different_dataset_versions_are_refused_unless_allowed(tmp_path, reported):
    recs = [make_record("idw", metrics={"mse": 0.02}), make_record("knn", metrics={"mse": 0.03}, dataset_hash="f" * 64)]
    with pytest.raises(CkmError, match=r"city/sr4 would mix .*dddddddddddd \(1 record\), ffffffffffff.*--allow-mixed"):
        _build(recs, tmp_path, reported)
    _build(recs, tmp_path, reported, allow_mixed=True)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    assert "Mixed dataset versions (--allow-mixed)" in text
    assert _main_rows(text)["knn"]["data version"] == "ffffffffffff"


def test_incremental_rebuild_renders_only_changed_tables_same_bytes(records, tmp_path, reported, monkeypatch):
    _build(records, tmp_path, reported, out="inc")
    changed = records + [make_record("idw", dataset="town", task="inpaint", metrics={"mse": 0.5},
                                     date="2026-11-21T10:00:00+00:00")]
    rendered = []
    real = leaderboard.build._board_markdown
    monkeypatch.setattr(leaderboard.build, "_board_markdown", lambda board, *a: rendered.append(board.task) or real(board, *a))
    inc = _build(changed, tmp_path, reported, out="inc", jobs=1)  # in-process: the patch sees each render
    assert rendered == ["inpaint"]  # town/inpaint only; city/sr4 and other/inpaint untouched
    full = _build(changed, tmp_path, reported, out="full", incremental=False)
    as_bytes = lambda files, root: {p.relative_to(root).as_posix(): p.read_bytes() for p in files}
    assert as_bytes(inc, tmp_path / "inc") == as_bytes(full, tmp_path / "full")


def test_metric_names_and_directions_agree_with_the_builtin_metric_specs():
    """The leaderboard's copy of the scored metrics and their directions is the built-in
    MetricSpecs' own: a metric added to one and not the other would be shown or ranked wrongly."""
    from ckmbench.metrics.builtin import METRICS

    scored = {s.name: s for s in METRICS if s.kind != "cost"}
    assert set(leaderboard.BASE_METRICS) == set(scored)
    assert leaderboard.HIGHER_IS_BETTER == {name for name, s in scored.items() if s.higher_is_better}


# ----------------------------------------------------------------------------- figures and speed

def test_observation_is_drawn_on_its_true_pixels():
    """A subsampled SR input's sample (i, j) belongs at pixel (f*i, f*j): the grid draws it as the
    identity method upsamples it, so against the identity prediction 0 % of pixels disagree (the
    old stretched drawing disagreed on most); block-mean inputs sit at the blocks' centres."""
    import torch

    from ckmbench.leaderboard.examples import lowres_offset, observation_on_grid
    from ckmbench.leaderboard.mosaic import Panel, PanelRow, compose, to_rgb
    from ckmbench.upsample import upsample_grid

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    for f in (2, 4, 8):
        for obs, offset in ((truth[::f, ::f], 0.0),
                            (truth.reshape(32 // f, f, 32 // f, f).mean(axis=(1, 3)).round().astype(np.uint8), (f - 1) / 2)):
            assert lowres_offset(obs, truth) == offset
            identity = upsample_grid(torch.from_numpy(obs[None, None].astype(np.float64)), truth.shape, f, offset,
                                     mode="nearest", edge="edge")[0, 0].numpy()
            drawn = observation_on_grid(obs, truth.shape, offset)
            assert np.array_equal(drawn, identity)
            stretched = np.repeat(np.repeat(obs, f, 0), f, 1)  # imshow of the small array
            assert offset or (stretched != identity).mean() > 0.5
        # and the mosaic puts it there: observed pixels show the truth's colour
        on_grid = observation_on_grid(truth[::f, ::f], truth.shape)
        index, layout = compose("t", ["truth", "observation"],
                                [PanelRow("k", [Panel(truth, "viridis", 0, 255), Panel(on_grid, "viridis", 0, 255)],
                                          ("viridis", 0, 255, "u"))])
        rgb = to_rgb(index)
        (y0, x0, h, w), (y1, x1, _, _) = layout.boxes[(0, 0)], layout.boxes[(0, 1)]
        up = h // truth.shape[0]
        shown_truth = rgb[y0:y0 + h:up, x0:x0 + w:up][::f, ::f]
        shown_obs = rgb[y1:y1 + h:up, x1:x1 + w:up][::f, ::f]
        assert (shown_truth != shown_obs).any(axis=-1).mean() == 0.0


def test_example_grid_is_in_db_with_an_error_row(tmp_path):
    from ckmbench.leaderboard.examples import _example_rows

    truth = np.full((8, 8), 255, np.uint8)
    pred = np.full((8, 8), 204, np.uint8)  # u = 0.8
    ex = {"truth": truth, "prediction": pred, "gain_range": (-150.0, -50.0)}
    maps, errors = _example_rows("k", [ex, None], has_obs=False)
    assert maps.bar[3] == "dB" and (maps.bar[1], maps.bar[2]) == (-150.0, -50.0)
    assert np.allclose(maps.panels[1].image, -70.0) and maps.panels[2] is None
    assert errors.bar[0] == "magma" and errors.bar[3] == "|error| dB"
    assert errors.panels[0] is None and np.allclose(errors.panels[1].image, 20.0)
    # without gain_range (older example files) the width comes from the record: error still in dB
    width_only = {"truth": truth, "prediction": pred, "gain_width": 100.0}
    maps, errors = _example_rows("k", [width_only], has_obs=False)
    assert maps.bar[3] == "gain, 0–1" and errors.bar[3] == "|error| dB"


def test_bar_chart_leads_with_ranking_metric_and_reported_gaps_say_so(tmp_path, reported, monkeypatch):
    calls = []
    monkeypatch.setattr(leaderboard.charts, "_bar_chart",
                        lambda title, labels, panels, missing="": calls.append((title, panels, missing)) or PNG_MAGIC)
    recs = [make_record("idw", metrics={"mse": 0.02, "ssim": 0.5, "rmse_gain_db@outdoor": 4.0}),
            make_record("knn", metrics={"mse": 0.03, "ssim": 0.4, "rmse_gain_db@outdoor": 5.0})]
    _build(recs, tmp_path, reported, jobs=1)
    city = next(c for c in calls if c[0].startswith("sr4 on city"))
    assert city[1][0][0].startswith("rmse_gain_db@outdoor ↓") and city[1][0][1] == [4.0, 5.0]
    other = next(c for c in calls if c[0].startswith("inpaint on other"))
    assert other[2] == "not reported"


def test_bar_chart_ssim_axis_ends_at_one():
    from ckmbench.leaderboard.charts import _bar_chart
    png = _bar_chart("t", ["a", "b"], [("ssim ↑", [0.9, 0.5]), ("psnr ↑", [20.0, None])], missing="not reported")
    assert png.startswith(PNG_MAGIC)


def test_parallel_build_is_byte_identical_to_serial(records, tmp_path, reported):
    serial = _build(records, tmp_path, reported, out="one", jobs=1)
    parallel = _build(records, tmp_path, reported, out="two", jobs=2)
    as_bytes = lambda files, root: {p.relative_to(root).as_posix(): p.read_bytes() for p in files}
    assert as_bytes(serial, tmp_path / "one") == as_bytes(parallel, tmp_path / "two")


def test_manifest_does_not_depend_on_the_matplotlib_version(monkeypatch):
    import matplotlib

    from ckmbench.leaderboard.manifest import _code_fingerprint

    before = _code_fingerprint()
    monkeypatch.setattr(matplotlib, "__version__", "0.0.1")
    assert _code_fingerprint() == before


def test_leaderboard_folder_from_environment(records, tmp_path, monkeypatch):
    import json

    from ckmbench import cli

    store = tmp_path / "store" / "records.jsonl"
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text("".join(json.dumps(r) + "\n" for r in records if r["task"] == "inpaint"))
    monkeypatch.setenv("CKMBENCH_LEADERBOARDS", str(tmp_path / "mine"))
    monkeypatch.setattr(leaderboard.charts, "_bar_chart", lambda *a, **k: PNG_MAGIC)
    cli.main(["leaderboard", "--store", str(store)])
    assert (tmp_path / "mine" / "town" / "inpaint.md").is_file()


# ----------------------------------------------------------------------------- rows that say what they are

def _with_fit(record: dict, **fit) -> dict:
    record["fit"] = {"source": "trained", "key": "k0", "complete": True, "budget_reached": False, **fit}
    return record


def test_partial_fit_is_labelled_ranked_last_and_never_bold(tmp_path, reported):
    recs = [_with_fit(make_record("cdiff", metrics={"mse": 0.001}), key="k1", complete=False, budget_reached=True,
                      steps_done=14, steps_planned=4000),
            make_record("bilinear", metrics={"mse": 0.02})]
    _build(recs, tmp_path, reported, jobs=1)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    header, *rows = _table_rows(text, "method")
    assert [r[0] for r in rows] == ["bilinear", "cdiff (partial: 14 / 4,000 steps)"]
    by = _main_rows(text)
    assert by["bilinear"]["mse ↓"] == "**0.02000**" and by["cdiff (partial: 14 / 4,000 steps)"]["mse ↓"] == "0.001000"
    assert "cdiff (partial: 14 / 4,000 steps) [tiny]: the fit stopped before its planned steps" in text


def test_rows_with_identical_scores_name_the_row_they_equal(tmp_path, reported):
    same = {"mse": 0.03, "psnr": 15.0}
    retrained = {"mse": 0.03 * (1 + 2e-7), "psnr": 15.0 * (1 - 1e-7)}  # the same network, another float rounding
    recs = [make_record("nearest", metrics=retrained), make_record("identity", metrics=dict(same)),
            make_record("bilinear", metrics={"mse": 0.03 * 1.001, "psnr": 15.0})]
    _build(recs, tmp_path, reported, jobs=1)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    assert set(_main_rows(text)) == {"bilinear", "identity", "nearest (= identity [tiny])"}
    assert "- nearest [tiny] equals identity [tiny]: every metric agrees to 5 significant digits" in text


def test_reused_fit_names_its_training_run_and_notes_are_true(tmp_path, reported):
    trained = _with_fit(make_record("cgdm", task="sr8", kind="diffusion", metrics={"mse": 0.01},
                                    date="2026-11-19T09:00:00+00:00"), key="kk", train_s=1234.0)
    trained["git_commit"] = "abcdef123456789"
    reused = _with_fit(make_record("cgdm", kind="diffusion", metrics={"mse": 0.01},
                                   cost={"params": 10, "train_s": 1234.0, "infer_s_per_map": 0.1,
                                         "sampling_steps": 25, "peak_mem_mb": None}),
                       key="kk", source="cache", train_s=1234.0)
    transfer = make_record("cdiff", train_dataset="town", metrics={"mse": 0.04})
    _build([trained, reused, transfer, make_record("bilinear")], tmp_path, reported, jobs=1)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    assert _main_rows(text)["cgdm"]["train_s"] == "fit reused (trained in 1234 s at commit abcdef1234)"
    assert "not trained on any data" not in text
    assert "learned rows without it are trained on city's own training split" in text
    assert _main_rows((tmp_path / "lb" / "city" / "sr8.md").read_text())["cgdm"]["train_s"] == "0.00"


def test_names_with_pipes_and_newlines_stay_on_one_table_line(tmp_path, reported):
    rec = make_record("odd", metrics={"mse": 0.02})
    rec["overrides"] = {"note": "a|b\nc"}
    _build([rec], tmp_path, reported, jobs=1)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    line = next(l for l in text.splitlines() if l.startswith("| odd"))
    assert "odd with note=a\\|b c" in line and line.count(" | ") == len(_table_rows(text, "method")[0]) - 1


def test_user_leaderboard_holds_the_users_tables_and_reported_adds_the_papers(records, tmp_path, monkeypatch, capsys):
    import json

    from ckmbench import cli

    store = tmp_path / "store" / "records.jsonl"
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text("".join(json.dumps(r) + "\n" for r in records if r["dataset"] == "town"))
    monkeypatch.setattr(leaderboard.charts, "_bar_chart", lambda *a, **k: PNG_MAGIC)
    out = tmp_path / "mine"
    run = lambda *extra: cli.main(["leaderboard", "--store", str(store), "--out", str(out), *extra])
    run()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.md")) == ["README.md", "town/inpaint.md"]
    run("--reported")
    assert (out / "radiomapseer-dpm" / "inpaint.md").is_file()
    with pytest.raises(SystemExit):
        run()
    assert "pass --reported to keep them" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bootstrap intervals

def _per_map(store: Path, name: str, scenes: list[str], values: list[float]) -> str:
    rel = f"per_map/{name}.npz"
    (store / "per_map").mkdir(parents=True, exist_ok=True)
    np.savez(store / rel, scene=np.array(scenes), mse=np.array(values, np.float32),
             **{"mse_gain@outdoor": np.array(values, np.float32) * 800})  # mean 16 dB^2: 4 dB
    return rel


def test_scene_bootstrap_is_seeded_paired_and_resamples_scenes():
    from ckmbench.leaderboard.bootstrap import PerMap, scene_bootstrap

    rng = np.random.default_rng(1)
    scenes = np.repeat([f"s{i}" for i in range(12)], 8)  # 12 scenes x 8 maps
    shared = np.repeat(rng.normal(0, 1, 12), 8)  # a scene effect every row shares
    a = PerMap(scenes, {"mse": 5 + shared + rng.normal(0, 0.1, 96)})
    b = PerMap(scenes, {"mse": 5.2 + shared + rng.normal(0, 0.1, 96)})
    first = scene_bootstrap([[a], [b]], "mse")
    assert first == scene_bootstrap([[a], [b]], "mse")  # seeded
    (lo_a, hi_a), (lo_b, hi_b) = first
    assert lo_a < a.values["mse"].mean() < hi_a
    # scene-level: the interval is as wide as the scene effect, not the (much smaller) map noise
    assert hi_a - lo_a > 0.5
    # the same maps as independent scenes would give a far narrower interval
    (lo_i, hi_i), = scene_bootstrap([[PerMap(np.arange(96).astype(str), a.values)]], "mse")
    assert (hi_i - lo_i) < (hi_a - lo_a)
    # rmse-type metrics are the square root of the resampled mean of their squares
    (lo_r, hi_r), = scene_bootstrap([[PerMap(scenes, {"mse_gain": a.values["mse"]})]], "rmse_gain_db")
    assert lo_r == pytest.approx(np.sqrt(lo_a)) and hi_r == pytest.approx(np.sqrt(hi_a))


def test_tables_show_intervals_where_records_keep_per_map_values(tmp_path, reported):
    store = tmp_path / "store"
    scenes = [f"s{i // 2}" for i in range(10)]
    values = [0.01, 0.02, 0.03, 0.02, 0.01, 0.03, 0.02, 0.02, 0.015, 0.025]
    with_values = make_record("idw", metrics={"mse": 0.02, "rmse_gain_db@outdoor": 4.0})
    with_values["per_map"] = _per_map(store, "idw", scenes, values)
    without = make_record("knn", metrics={"mse": 0.03, "rmse_gain_db@outdoor": 5.0})
    _build([with_values, without], tmp_path, reported, jobs=1)
    text = (tmp_path / "lb" / "city" / "sr4.md").read_text()
    by = _main_rows(text)
    cell = re.fullmatch(r"\*\*4\.000\*\* \[(\d\.\d+), (\d\.\d+)\]", by["idw"]["rmse_gain_db@outdoor ↓"])
    assert cell and float(cell[1]) < 4.0 < float(cell[2])
    assert by["idw"]["mse ↓"] == "**0.02000**"  # intervals for the ranking metric, psnr, ssim, nmse only
    assert by["knn"]["rmse_gain_db@outdoor ↓"] == "5.000" and "paired, scene-level bootstrap" in text
    chart = (tmp_path / "lb" / "city" / "sr4.png").read_bytes()  # the interval drawn as an error bar
    _build([dict(with_values, per_map=None), without], tmp_path, reported, out="plain", jobs=1)
    assert chart.startswith(PNG_MAGIC) and chart != (tmp_path / "plain" / "city" / "sr4.png").read_bytes()
    few = dict(with_values, per_map=_per_map(store, "few", scenes[:8], values[:8]))  # 4 scenes: no interval
    _build([few], tmp_path, reported, out="few", jobs=1)
    assert _main_rows((tmp_path / "few" / "city" / "sr4.md").read_text())["idw"]["rmse_gain_db@outdoor ↓"] == "**4.000**"
