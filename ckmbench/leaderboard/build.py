"""build_leaderboards: records -> the files of a leaderboard folder (incremental, atomic, pruned)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..errors import CkmError
from ..results import atomic_write_bytes
from .bootstrap import attach_intervals
from .charts import _metrics_figure
from .examples import _examples_figure, _row_examples
from .manifest import MANIFEST, _board_inputs_hash, _code_fingerprint, _read_manifest
from .markdown import _PREAMBLE, _board_markdown, _index_markdown
from .reported import load_reported
from .table import _SAFE_NAME, Board, _attach_protocol_rows, group_boards


def _write(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file untouched (keeps mtimes stable)."""
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def _render(board: Board, store_dir: Path, reported_name: str) -> dict[str, bytes]:
    """One table's files, by name suffix (".png", "_examples.png", ".md"): a worker's job."""
    files: dict[str, bytes] = {}
    figure = _metrics_figure(board)
    if figure is not None:
        files[".png"] = figure
    found, missing = _row_examples(board, store_dir)
    examples = _examples_figure(board, found)
    if examples is not None:
        files["_examples.png"] = examples
    text = _board_markdown(board, f"{board.task}.png" if figure else None,
                           f"{board.task}_examples.png" if examples else None, reported_name, missing)
    files[".md"] = text.encode("utf-8")
    return files


def default_jobs() -> int:
    """The CPUs this process may run on (its affinity mask), as ckmbench's other pools count them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _render_all(boards: list[Board], store_dir: Path, reported_name: str, jobs: int | None) -> list[dict[str, bytes]]:
    """Render the tables, in processes when there are several (matplotlib holds the GIL); the
    largest tables are started first so that no worker is left with a big one at the end."""
    jobs = min(len(boards), jobs or default_jobs())
    if jobs <= 1:
        return [_render(board, store_dir, reported_name) for board in boards]
    import matplotlib.figure  # noqa: F401  imported once here, shared by the forked workers

    order = sorted(range(len(boards)), key=lambda i: -len(boards[i].rows))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {i: pool.submit(_render, boards[i], store_dir, reported_name) for i in order}
        return [futures[i].result() for i in range(len(boards))]


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to clean a folder that is not a generated leaderboard (e.g. --out pointed at docs/)."""
    if not out_dir.is_dir():
        return
    readme = out_dir / "README.md"
    ours = readme.is_file() and readme.read_text("utf-8", errors="replace").startswith(_PREAMBLE)
    foreign = any(p.suffix in (".md", ".png") and p.is_file() for p in out_dir.rglob("*"))
    if foreign and not ours:
        raise CkmError(f"leaderboard folder {out_dir} holds .md/.png files that ckmbench did not generate: "
                       "choose an empty folder (default leaderboards/)")


def _stale_tables(out_dir: Path, boards: list["Board"]) -> list[str]:
    """Tables (.md) under ``out_dir`` that this build would not produce."""
    if not out_dir.is_dir():
        return []
    keep = {(out_dir / b.dataset / f"{b.task}.md").resolve() for b in boards} | {(out_dir / "README.md").resolve()}
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.md")
                  if p.is_file() and p.resolve() not in keep)


def _remove_stale(out_dir: Path, keep: set[Path]) -> None:
    for path in sorted(out_dir.rglob("*")):
        if path.suffix in (".md", ".png") and path.is_file() and path.resolve() not in keep:
            path.unlink()
    for folder in sorted((p for p in out_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


def build_leaderboards(records: list[dict], out_dir: Path, store_dir: Path,
                       reported_csv: Path | None = None, prune: bool = False, allow_mixed: bool = False,
                       incremental: bool = True, jobs: int | None = None, reported_tables: bool = True) -> list[Path]:
    """Rebuild ``out_dir`` from the records; returns the files of the leaderboard, sorted.

    ``store_dir`` is the folder of the results store (``examples`` paths are relative to it);
    ``reported_csv`` defaults to the package's reference/reported.csv. Tables under ``out_dir``
    that the records no longer give are an error listing them, or deleted with ``prune``.
    ``incremental``: tables whose inputs are unchanged since the last build (``.manifest.json``)
    are not re-rendered; the bytes are the same as a full rebuild's. ``jobs``: processes that
    render tables side by side (default: the CPUs this process may use; 1 renders in-process).
    ``reported_tables``: also write the tables that hold only the papers' numbers (no record of
    the store); ``ckmbench leaderboard`` leaves them out unless ``--reported``.
    """
    out_dir, store_dir = Path(out_dir), Path(store_dir)
    _check_out_dir(out_dir)
    reported = load_reported(reported_csv)
    reported_name = "ckmbench/reference/reported.csv" if reported_csv is None else Path(reported_csv).name
    boards = group_boards(list(records), allow_mixed)
    for (dataset, task), part in reported.groupby(["dataset_id", "task_id"], sort=True):
        if not (_SAFE_NAME.match(dataset) and _SAFE_NAME.match(task)):
            raise CkmError(f"reported numbers: dataset_id/task_id {dataset!r}/{task!r} cannot be a file name: fix the CSV")
        boards.setdefault((dataset, task), Board(dataset, task)).reported = part
    _attach_protocol_rows(boards, reported)
    for board in boards.values():
        attach_intervals(board, store_dir)
    ordered = [boards[k] for k in sorted(boards)
               if reported_tables or boards[k].rows or boards[k].failures or boards[k].protocol_rows]
    stale = _stale_tables(out_dir, ordered)
    if stale and not prune:
        shown = ", ".join(stale[:8]) + (f" and {len(stale) - 8} more" if len(stale) > 8 else "")
        paper_only = [s for s in stale if tuple(s[:-len(".md")].split("/", 1)) in boards]
        hint = (f" ({len(paper_only)} of them hold only the papers' numbers: pass --reported to keep them)"
                if paper_only and not reported_tables else "")
        raise CkmError(f"this store ({len(records)} records) would delete {len(stale)} table(s) of {out_dir}: {shown}"
                       f"{hint}; check --store, or pass --prune to delete them")

    code = _code_fingerprint()
    old_manifest = _read_manifest(out_dir) if incremental else {}
    manifest: dict[str, dict] = {}
    written: list[Path] = []
    todo: dict[str, tuple[Board, str]] = {}
    for board in ordered:
        key = f"{board.dataset}/{board.task}"
        digest = _board_inputs_hash(board, store_dir, reported_name, code)
        before = old_manifest.get(key) or {}
        files = [out_dir / f for f in before.get("files", [])]
        if before.get("inputs") == digest and files and all(f.is_file() for f in files):
            manifest[key] = before  # unchanged inputs: the files already hold this table
            written += files
        else:
            todo[key] = (board, digest)
    rendered = _render_all([board for board, _ in todo.values()], store_dir, reported_name, jobs)
    for (key, (board, digest)), files in zip(todo.items(), rendered):
        made = []
        for suffix, data in files.items():
            path = out_dir / board.dataset / f"{board.task}{suffix}"
            _write(path, data)
            written.append(path)
            made.append(f"{board.dataset}/{board.task}{suffix}")
        manifest[key] = {"inputs": digest, "files": made}
    _write(out_dir / "README.md", _index_markdown(ordered).encode("utf-8"))
    written.append(out_dir / "README.md")
    _write(out_dir / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    written.append(out_dir / MANIFEST)
    _remove_stale(out_dir, {p.resolve() for p in written})
    return sorted(written)
