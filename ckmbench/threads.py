"""How many CPU threads a computing command uses, and setting them everywhere at once.

On a machine whose cores are shared, torch's default (one thread per core) makes its threads
spin against the other processes: a small-profile training step ran 15-27x slower at two
threads under load than at one. A command therefore uses ``--threads N``, else
``$CKMBENCH_THREADS``, else ``$OMP_NUM_THREADS``, else the cores that are idle (from the load
average), never more than this process may run on; parallel jobs share that count.
"""

from __future__ import annotations

import logging
import os

from .errors import CkmError

ENV_VAR = "CKMBENCH_THREADS"
# what spawned child processes read when they start (torch, OpenMP, the BLAS libraries)
CHILD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

log = logging.getLogger("ckmbench.threads")
_BLAS_LIMIT = []  # the threadpoolctl limiter kept alive (it holds the limit until it is restored)


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Cores not taken by other processes (1-minute load average, this process counted as
    one), at least 1; all of them where the load is unknown."""
    cores = machine_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cores
    return max(1, min(cores, int(cores - load + 1)))


def _parse(value: str, source: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise CkmError(f"{source}={value!r} is not a whole number: set it to 1 or more") from None
    if n < 1:
        raise CkmError(f"{source}={n}: the thread count must be 1 or more")
    return n


def choose_threads(requested: int | None = None, jobs: int = 1) -> int:
    """Threads of one of ``jobs`` parallel jobs: ``requested`` (--threads), else
    $CKMBENCH_THREADS, else $OMP_NUM_THREADS, else the idle cores; the count is shared out
    between the jobs and is never more than the machine's cores (at least 1 each)."""
    if requested is not None:
        total = _parse(str(requested), "--threads")
    elif os.environ.get(ENV_VAR, "").strip():
        total = _parse(os.environ[ENV_VAR].strip(), ENV_VAR)
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) >= 1:
        total = int(os.environ["OMP_NUM_THREADS"])
    else:
        total = idle_cores()
    return max(1, min(total, machine_cores()) // max(1, int(jobs)))


def apply_threads(n: int) -> int:
    """Make torch (intra- and, while still allowed, inter-op), OpenMP and BLAS use ``n``
    threads in this process, and pass the count to child processes started from now on.
    Returns ``n``."""
    import torch

    n = max(1, int(n))
    torch.set_num_threads(n)
    try:  # allowed once, before any inter-op work started
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency
        threadpool_limits = None
    if threadpool_limits is not None:
        while _BLAS_LIMIT:
            _BLAS_LIMIT.pop().restore_original_limits()
        _BLAS_LIMIT.append(threadpool_limits(limits=n))
    for var in CHILD_ENV_VARS:
        os.environ[var] = str(n)
    log.debug("using %d thread(s)", n)
    return n


def use_threads(requested: int | None = None, jobs: int = 1) -> int:
    """``apply_threads(choose_threads(requested, jobs))``: what a computing command calls first."""
    return apply_threads(choose_threads(requested, jobs))
