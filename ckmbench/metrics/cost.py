"""Cost figures the runner records: trainable parameters, wall time, peak memory."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def count_parameters(obj) -> int:
    """Trainable parameters of an ``nn.Module``, a ``Method`` (its ``num_parameters()``),
    or any object holding modules as attributes; 0 for classical baselines."""
    if isinstance(obj, torch.nn.Module):
        return int(sum(p.numel() for p in obj.parameters() if p.requires_grad))
    if hasattr(obj, "num_parameters") and callable(obj.num_parameters):
        return int(obj.num_parameters())
    return attribute_parameters(obj)


def attribute_parameters(obj) -> int:
    """Trainable parameters of the ``nn.Module`` attributes of ``obj``, each counted once
    even when two attributes share a module."""
    seen: set[int] = set()
    total = 0
    for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(value, torch.nn.Module):
            for p in value.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return int(total)


class Timer:
    """Wall-clock seconds of a ``with`` block (``.elapsed``); synchronizes CUDA when given a CUDA device."""

    def __init__(self, device=None):
        self.cuda = device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.elapsed = 0.0
        self._start = 0.0

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __enter__(self) -> "Timer":
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.elapsed = time.perf_counter() - self._start


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False if not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _maxrss_kb() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if sys.platform == "darwin" else value  # macOS reports bytes, Linux kB


class PeakMemory:
    """Peak memory increase of a ``with`` block in MB (``.peak_mb``).

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at entry. CPU: the process
    RSS high-water mark above the RSS at entry. On Linux the mark is reset at entry through
    ``/proc/self/clear_refs``, so an earlier, larger peak does not hide this one; elsewhere
    it falls back to the ``getrusage`` max-RSS delta (0 when an earlier peak was larger).
    ``.method`` says which was used. Do not nest two on CPU: the reset is process-wide.
    """

    def __init__(self, device=None):
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = dev.type == "cuda" and torch.cuda.is_available()
        self.device = dev
        self.peak_mb = 0.0
        self.method = ""
        self._base = 0

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda-max-allocated"
        else:
            rss = _status_kb("VmRSS")
            if rss is not None and _reset_peak_rss() and _status_kb("VmHWM") is not None:
                self._base = rss
                self.method = "linux-vmhwm"
            else:
                self._base = _maxrss_kb()
                self.method = "getrusage-maxrss"
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.peak_mb = max(0, peak) / 2**20
        elif self.method == "linux-vmhwm":
            self.peak_mb = max(0, (_status_kb("VmHWM") or 0) - self._base) / 1024
        else:
            self.peak_mb = max(0, _maxrss_kb() - self._base) / 1024
