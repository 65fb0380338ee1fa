"""The committed leaderboards are exactly what `ckmbench leaderboard` makes of the committed records."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_committed_leaderboards_rebuild_from_committed_records(tmp_path):
    store = REPO / "results" / "records.jsonl"
    committed = REPO / "leaderboards"
    assert store.is_file(), "results/records.jsonl (the records behind leaderboards/) is missing"
    out = tmp_path / "lb"
    done = subprocess.run([sys.executable, "-m", "ckmbench.cli", "leaderboard", "--store", str(store), "--out", str(out),
                           "--reported"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rebuilt = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(committed).as_posix() for p in committed.rglob("*") if p.is_file())
    assert rebuilt == shipped
    # Tables must match to the byte; figures depend on the installed matplotlib, so only their presence is checked.
    for rel in rebuilt:
        if rel.endswith(".md"):
            assert (out / rel).read_text("utf-8") == (committed / rel).read_text("utf-8"), rel
