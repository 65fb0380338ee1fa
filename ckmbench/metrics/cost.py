"""Cost figures the runner records: trainable parameters, wall time, peak memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_PAGE_KB = (os.sysconf("SC_PAGE_SIZE") // 1024) if hasattr(os, "sysconf") else 4
SAMPLE_S = 0.002  # RSS sampling period of the background thread


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


def _rss_kb() -> int | None:
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return None


def _release_free_memory() -> None:
    """Give freed heap back to the system (glibc malloc_trim), so memory an earlier run freed
    but kept resident does not hide this run's allocations (its pages would be reused without
    raising the RSS, and the peak would read 0)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory increase of a ``with`` block in MB (``.peak_mb``), per block, so every run of
    a sweep measures its own memory and not the process's history.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at entry (peak stats reset).
    CPU: freed heap is first returned to the system (``malloc_trim``), then the RSS at entry is
    the baseline and the peak is the larger of (a) the kernel's RSS high-water mark, reset at
    entry through ``/proc/self/clear_refs`` where allowed ("linux-vmhwm") and (b) a background
    thread sampling the RSS from ``/proc/self/statm`` every 2 ms ("rss-sampling" when (a) is not
    available); elsewhere the ``getrusage`` max-RSS delta ("getrusage-maxrss"). Do not nest
    two on CPU: the reset is process-wide.
    """

    def __init__(self, device=None):
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = dev.type == "cuda" and torch.cuda.is_available()
        self.device = dev
        self.peak_mb = 0.0
        self.method = ""
        self._base = 0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_kb()
            if rss is not None and rss > self._sampled:
                self._sampled = rss
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda-max-allocated"
            return self
        _release_free_memory()
        rss = _rss_kb()
        if rss is None:
            self._base = _maxrss_kb()
            self.method = "getrusage-maxrss"
            return self
        self._base = self._sampled = rss
        self.method = "linux-vmhwm" if _reset_peak_rss() and _status_kb("VmHWM") is not None else "rss-sampling"
        self._thread = threading.Thread(target=self._sample, name="ckmbench-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.peak_mb = max(0, peak) / 2**20
            return
        if self.method == "getrusage-maxrss":
            self.peak_mb = max(0, _maxrss_kb() - self._base) / 1024
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = max(self._sampled, _rss_kb() or 0)
        if self.method == "linux-vmhwm":
            peak = max(peak, _status_kb("VmHWM") or 0)
        self.peak_mb = max(0, peak - self._base) / 1024
