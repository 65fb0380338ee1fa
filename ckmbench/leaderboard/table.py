"""The table model: records -> rows (averaged over seeds) -> ranked boards; no rendering."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from ..errors import CkmError
from .formatting import (BASE_METRICS, COST_COLUMNS, HEADLINE_METRICS, HIGHER_IS_BETTER, METRIC_SUFFIXES,
                         _finite, _one_line, _short)

PROFILE_ORDER = ("tiny", "small", "paper")
EQUAL_REL_TOL = 1e-5  # rows whose every metric agrees this closely are the same predictions
_REQUIRED = ("record_id", "status", "method", "task", "dataset", "profile", "seed", "date")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]*$")


@dataclass
class Row:
    """One reproduced row: a (method, profile, train_dataset), averaged over its seeds."""

    method: str
    profile: str
    train_dataset: str
    dataset: str
    records: list[dict]  # newest done record per seed, sorted by seed
    metrics: dict[str, float | None] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)  # metric -> std over seeds (2+ finite values)
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> reason
    notes_n: dict[str, list[int]] = field(default_factory=dict)  # metric -> its N per seed
    cost: dict[str, float | None] = field(default_factory=dict)
    distribution: str = "ckmbench"
    variant: str = ""  # the --set overrides of the run ("aft=false"), "" for the profile as it is
    learned: bool = True
    in_sample: str = ""  # why the row is scored on data the method was calibrated on
    partial: str = ""  # "partial: 14 / 4,000 steps" when a fit stopped early (budget): never ranked above complete rows
    reused_fit: str = ""  # "fit reused (trained in N s at commit X)": train_s is not this run's cost
    equals: str = ""  # full label of an earlier row with the very same scores (the same predictions)
    interval: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> 95 % CI (bootstrap.py)

    @property
    def label(self) -> str:
        name = self.method if self.distribution in ("ckmbench", "", None) else f"{self.method} ({self.distribution})"
        if self.variant:
            name = f"{name} with {self.variant}"
        if self.learned and self.train_dataset != self.dataset:
            name = f"{name}, fitted on {self.train_dataset}"
        if self.partial:
            name = f"{name} ({self.partial})"
        return f"{name} (in-sample)" if self.in_sample else name

    @property
    def full_label(self) -> str:
        return f"{self.label} [{self.profile}]"

    @property
    def n_test(self) -> str:
        return _join_range([r.get("n_test") for r in self.records])


def _join_range(values: list, thousands: bool = False) -> str:
    present = sorted({int(v) for v in values if v is not None})
    if not present:
        return ""
    text = (lambda v: f"{v:,}") if thousands else str
    return text(present[0]) if len(present) == 1 else f"{text(present[0])}–{text(present[-1])}"


def _parse_date(record: dict) -> datetime:
    try:
        when = datetime.fromisoformat(str(record["date"]))
    except ValueError:
        raise CkmError(f"result record {record['record_id']}: date {record['date']!r} is not ISO-8601: fix or remove that record") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _check_record(record: dict) -> None:
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        rid = record.get("record_id", "<no record_id>")
        raise CkmError(f"result record {rid} lacks keys {missing}: re-run it or remove it from the store")
    for key in ("dataset", "task"):
        if not _SAFE_NAME.match(str(record[key])):
            raise CkmError(f"result record {record['record_id']}: {key} {record[key]!r} cannot be a file name: use letters, digits, '.', '_', '-' only")


def _profile_rank(profile: str) -> tuple:
    return (PROFILE_ORDER.index(profile), "") if profile in PROFILE_ORDER else (len(PROFILE_ORDER), profile)


def _seed_key(record: dict) -> tuple:
    seed = record["seed"]
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def _is_learned(record: dict) -> bool:
    """Only learned methods are "fitted on" a dataset; records before method_kind: learned if it has parameters."""
    kind = record.get("method_kind")
    if kind is not None:
        return kind != "baseline"
    return bool((record.get("cost") or {}).get("params")) or bool(record.get("fit"))


def _variant(record: dict) -> str:
    """The run's --set overrides as "key=value, ...": an ablation (``--set aft=false``) or another
    sampler is its own row, never the newest attempt of the default one; so is a run of the
    authors' imported weights (``--weights``), never the newest attempt of our trained fit."""
    overrides = dict(record.get("overrides") or {})
    fit = record.get("fit") or {}
    if fit.get("source") == "imported":  # the authors' checkpoint is another network than our trained fit
        overrides["weights"] = f"imported {str(fit.get('weights_sha256', ''))[:8]}"
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(overrides.items()))


def _run_key(record: dict) -> tuple[str, str, str, str]:
    # a classical baseline is not fitted: which dataset it was "trained" on does not make another row
    train = record.get("train_dataset") or record["dataset"]
    return record["method"], record["profile"], train if _is_learned(record) else record["dataset"], _variant(record)


def _mean(values: list) -> float | None:
    """Mean of the finite values; a NaN or inf never takes part (nor ranks)."""
    present = [float(v) for v in values if _finite(v)]
    return math.fsum(present) / len(present) if present else None


def _std(values: list) -> float | None:
    """Sample standard deviation (n - 1) of the finite values; None below two of them."""
    present = [float(v) for v in values if _finite(v)]
    if len(present) < 2:
        return None
    mean = math.fsum(present) / len(present)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in present) / (len(present) - 1))


def _make_row(key: tuple[str, str, str, str], dataset: str, records: list[dict]) -> Row:
    method, profile, train, variant = key
    row = Row(method, profile, train, dataset=dataset, records=records, variant=variant)
    names = sorted({name for r in records for name in (r.get("metrics") or {})})
    row.distribution = str(records[0].get("method_distribution") or "ckmbench")
    row.learned = _is_learned(records[0])
    row.in_sample = "; ".join(sorted({str((r.get("metric_notes") or {}).get("in_sample"))
                                      for r in records if (r.get("metric_notes") or {}).get("in_sample")}))
    for name in names:
        row.metrics[name] = _mean([(r.get("metrics") or {}).get(name) for r in records])
        spread = _std([(r.get("metrics") or {}).get(name) for r in records])
        if spread is not None:
            row.spread[name] = spread
        if row.metrics[name] is None:
            reasons = sorted({_one_line(str((r.get("metric_notes") or {}).get(name, "")), 200) for r in records} - {""})
            if any((r.get("metrics") or {}).get(name) is not None for r in records):
                reasons = ["not a finite number"] + reasons
            row.unavailable[name] = "; ".join(reasons)
        ns = [(r.get("metric_notes") or {}).get(f"{name}_n") for r in records
              if (r.get("metrics") or {}).get(name) is not None]
        if any(isinstance(n, (int, float)) for n in ns):
            row.notes_n[name] = [int(n) for n in ns if isinstance(n, (int, float))]
    for name in COST_COLUMNS:
        row.cost[name] = _mean([(r.get("cost") or {}).get(name) for r in records])
    row.partial = _partial(records)
    return row


def _partial(records: list[dict]) -> str:
    """"partial: 14 / 4,000 steps" when a seed's fit stopped before its planned steps (a
    --time-budget run keeps what it has), else ""."""
    stopped = [r["fit"] for r in records if isinstance(r.get("fit"), dict)
               and (r["fit"].get("budget_reached") or r["fit"].get("complete") is False)]
    if not stopped:
        return ""
    count = lambda key: _join_range([f.get(key) for f in stopped], thousands=True) or "?"
    return f"partial: {count('steps_done')} / {count('steps_planned')} steps"


def _describe_reuse(rows: list[Row], trained_by: dict[str, dict]) -> None:
    """Mark rows whose fit was loaded (cache or shipped), naming where its training time comes from."""
    for row in rows:
        fits = [r.get("fit") for r in row.records if isinstance(r.get("fit"), dict)]
        reused = [f for f in fits if f.get("source") in ("cache", "shipped")]
        if not fits or len(reused) < len(fits):
            continue
        seconds = _mean([f.get("train_s") for f in reused])
        commits = sorted({_short(trained_by[f["key"]].get("git_commit"), 10) for f in reused
                          if f.get("key") in trained_by and trained_by[f["key"]].get("git_commit")})
        shipped = any(f.get("source") == "shipped" for f in reused)
        when = f" at commit {', '.join(commits)}" if commits else (" (shipped with the plugin)" if shipped else "")
        took = f"trained in {seconds:.0f} s" if seconds is not None else "training time unknown"
        row.reused_fit = f"fit reused ({took}{when})"


def _mark_equal_rows(rows: list[Row]) -> None:
    """A row whose every metric agrees with an earlier row's to EQUAL_REL_TOL shows the same
    predictions up to float rounding (the same network trained on the same batches, e.g. cdiff
    and cgdm on plain sr4, or the same operation, identity and nearest on SR): it names that row
    instead of passing as independent evidence. Different methods never agree on every metric
    to 6 digits."""
    kept: list[Row] = []
    for row in rows:
        values = {k: v for k, v in row.metrics.items() if v is not None}
        twin = next((other for other in kept if values and other.n_test == row.n_test
                     and other.profile == row.profile and _same_values(values, other.metrics)), None)
        if twin is not None:
            row.equals = twin.full_label
        else:
            kept.append(row)


def _same_values(values: dict[str, float], other: dict[str, float | None]) -> bool:
    theirs = {k: v for k, v in other.items() if v is not None}
    return set(values) == set(theirs) and all(
        math.isclose(values[k], theirs[k], rel_tol=EQUAL_REL_TOL, abs_tol=1e-12) for k in values)


@dataclass
class Board:
    """Everything that goes into one (dataset, task) table."""

    dataset: str
    task: str
    rows: list[Row] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    reported: pd.DataFrame | None = None
    mixed_hashes: list[str] = field(default_factory=list)  # set when rows of several dataset versions are shown
    # Rows reproduced under a paper's protocol that stand beside this table's reported rows:
    # (dataset, task, paper, row) of boards "<task>@<protocol>" (docs/leaderboards.md).
    protocol_rows: list[tuple[str, str, str, "Row"]] = field(default_factory=list)

    @property
    def metric_columns(self) -> list[str]:
        return [m for m in _ordered_metrics()
                if any(r.metrics.get(m) is not None or r.unavailable.get(m) for r in self.rows)]

    @property
    def cost_columns(self) -> list[str]:
        return [c for c in COST_COLUMNS if any(r.cost.get(c) is not None for r in self.rows)]

    @property
    def n_test(self) -> str:
        return _join_range([r.get("n_test") for row in self.rows for r in row.records])


def _ordered_metrics() -> list[str]:
    return list(BASE_METRICS) + [f"{m}@{s}" for s in METRIC_SUFFIXES for m in BASE_METRICS]


def _check_hashes(board: Board, allow_mixed: bool) -> None:
    """One table, one version of its dataset: refuse rows of different content hashes unless allowed."""
    counts: dict[str, int] = defaultdict(int)
    for row in board.rows:
        for r in row.records:
            counts[str(r.get("dataset_hash") or "unknown")] += 1
    if len(counts) < 2:
        return
    listed = ", ".join(f"{_short(h, 12)} ({n} record{'s' if n > 1 else ''})" for h, n in sorted(counts.items()))
    if not allow_mixed:
        raise CkmError(f"table {board.dataset}/{board.task} would mix rows from different versions of dataset "
                       f"'{board.dataset}' (content hashes {listed}): re-run the old rows on the current data, "
                       "or pass --allow-mixed to show them side by side, marked")
    board.mixed_hashes = sorted(counts)


def group_boards(records: list[dict], allow_mixed: bool = False) -> dict[tuple[str, str], Board]:
    boards: dict[tuple[str, str], Board] = {}
    by_run: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    trained_by: dict[str, dict] = {}  # fit key -> the record of the run that trained it
    for record in sorted(records, key=lambda r: str(r.get("date"))):
        fit = record.get("fit")
        if isinstance(fit, dict) and fit.get("source") == "trained" and fit.get("key"):
            trained_by.setdefault(str(fit["key"]), record)
    for record in records:
        _check_record(record)
        where = (record["dataset"], record["task"])
        boards.setdefault(where, Board(*where))
        by_run[where][_run_key(record) + (str(record["seed"]),)].append(record)
    for where, runs in by_run.items():
        chosen: dict[tuple, list[dict]] = defaultdict(list)
        for (*key, _seed), attempts in runs.items():
            attempts = sorted(attempts, key=lambda r: (_parse_date(r), str(r["record_id"])))
            done = [r for r in attempts if r["status"] == "done"]
            if done:
                chosen[tuple(key)].append(done[-1])
            # A failure counts until a later successful run of the same seed replaces it.
            last_done = _parse_date(done[-1]) if done else None
            boards[where].failures += [r for r in attempts if r["status"] != "done"
                                       and (last_done is None or _parse_date(r) > last_done)]
        rows = [_make_row(key, where[0], sorted(recs, key=_seed_key))
                for key, recs in chosen.items()]
        boards[where].rows = _rank(rows)
        _describe_reuse(boards[where].rows, trained_by)
        _mark_equal_rows(boards[where].rows)
        _check_hashes(boards[where], allow_mixed)
        boards[where].failures.sort(key=lambda r: (r["method"], _profile_rank(r["profile"]), _seed_key(r),
                                                   _parse_date(r), str(r["record_id"])))
    return boards


def ranking_metric(rows: list[Row]) -> str | None:
    """The outdoor gain RMSE (dB) when the rows have it, else the first metric column shown."""
    order = list(HEADLINE_METRICS) + _ordered_metrics()
    present = [m for m in order if any(r.metrics.get(m) is not None for r in rows)]
    return present[0] if present else None


def _rank(rows: list[Row]) -> list[Row]:
    """Best first on the ranking metric; rows without a finite value last; ties by name. A partial
    fit (stopped by a budget) comes after every complete row, whatever its score."""
    primary = ranking_metric(rows)

    def key(row: Row) -> tuple:
        value = row.metrics.get(primary) if primary else None
        score = math.inf if value is None else (-value if primary.split("@")[0] in HIGHER_IS_BETTER else value)
        return (bool(row.partial), score, row.method, _profile_rank(row.profile), row.train_dataset != row.dataset,
                row.train_dataset)

    return sorted(rows, key=key)


def _attach_protocol_rows(boards: dict[tuple[str, str], Board], reported: pd.DataFrame) -> None:
    """Rows of a paper-protocol task ``<task>@<protocol>`` join the table that holds that
    paper's reported rows of ``<task>`` (on the dataset the scored maps are a sample of), and
    the protocol's own table shows that paper's reported rows beside its runs."""
    from ..tasks.protocols import reported_home

    for (dataset, task), board in sorted(boards.items()):
        home = reported_home(dataset, task)
        if home is None or not board.rows:
            continue
        home_dataset, home_task, paper = home
        part = reported[(reported["dataset_id"] == home_dataset) & (reported["task_id"] == home_task)
                        & (reported["paper"] == paper)]
        if not len(part):
            continue
        entries = [(dataset, task, paper, row) for row in board.rows]
        boards[(home_dataset, home_task)].protocol_rows += entries
        board.reported = part
        board.protocol_rows = list(entries)
