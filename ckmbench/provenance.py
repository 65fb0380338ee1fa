"""Where a number came from: code version, git state, machine, time, config hash."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from . import PROTOCOL_VERSION, __version__


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(path: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding the ckmbench package, or (None, None).

    Files under results/, leaderboards/ and runs/ are outputs, not code, so they do not make
    the code dirty.
    """
    here = Path(path or Path(__file__).resolve().parent)
    commit = _git(["rev-parse", "HEAD"], here)
    if commit is None:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", ".",
                   ":(exclude)results", ":(exclude)leaderboards", ":(exclude)runs"],
                  Path(_git(["rev-parse", "--show-toplevel"], here) or here))
    return commit, bool(status)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":  # what was asked for, never mislabelled as the CPU
        return str(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def config_hash(config: dict) -> str:
    """sha256 of a canonical JSON encoding of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def base_provenance(device) -> dict:
    commit, dirty = git_state()
    return {
        "ckmbench_version": __version__,
        "protocol_version": PROTOCOL_VERSION,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": torch.__version__,
        "device": device_name(device),
        "date": now_iso(),
    }
