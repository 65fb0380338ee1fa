"""Launchers (docs/scale.md): one job per (method, task, seed), in parallel processes here
(``--launcher local --jobs N``) or on Slurm through submitit (``--launcher slurm``).

Every job runs :func:`ckmbench.runner.run` with ``pending=True``: its record becomes a file
of its own in the store's pending folder, and ``ckmbench results collect`` merges those
files into the store (a local sweep collects when its jobs end). Resources of a cluster job
come from a TOML file (``--launcher-config``): its ``[submitit]`` table is passed to
``submitit.AutoExecutor.update_parameters`` as it is (``timeout_min``, ``gpus_per_node``,
``cpus_per_task``, ``mem_gb``, ``slurm_partition``, ``slurm_array_parallelism``, ...).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .errors import CkmError

LAUNCHERS = ("inline", "local", "slurm", "submitit-local")
DEFAULT_RESOURCES = {"timeout_min": 240, "cpus_per_task": 4}


def run_job(cfg: dict) -> dict:
    """One job: the run of ``cfg`` (a RunConfig as a dict), its record written as a pending file.
    Returns what the launcher prints (never raises for a failed run: the record says it).
    A job whose config names no thread count (a cluster job) judges it where it runs."""
    from .runner import RecordNotStored, RunConfig, run
    from .threads import choose_threads

    config = RunConfig(**{**cfg, "pending": True})
    config.threads = config.threads or choose_threads()
    try:
        record = run(config)
    except RecordNotStored as exc:
        record = {**exc.record, "status": "error", "message": str(exc)}
    except CkmError as exc:
        return {"method": config.method, "task": config.task, "seed": config.seed, "status": "error",
                "message": str(exc), "record_id": None}
    return {k: record.get(k) for k in ("record_id", "method", "task", "dataset", "seed", "status", "message")}


def load_resources(path: str | None) -> dict:
    """The ``[submitit]`` table of a TOML file (default resources without one)."""
    if not path:
        return dict(DEFAULT_RESOURCES)
    import tomllib

    file = Path(path)
    try:
        data = tomllib.loads(file.read_text("utf-8"))
    except OSError as exc:
        raise CkmError(f"--launcher-config {file}: cannot read it ({exc.strerror}): pass a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise CkmError(f"--launcher-config {file} is not valid TOML ({exc}): fix it") from None
    table = data.get("submitit")
    if not isinstance(table, dict):
        raise CkmError(f"--launcher-config {file} has no [submitit] table: put the job resources under [submitit]")
    return {**DEFAULT_RESOURCES, **table}


def _as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named or [str(i) for i in range(torch.cuda.device_count())]


def pin_gpu(counter, gpus: list[str]) -> None:
    """Worker initializer: the k-th worker process sees only GPU k mod len(gpus), so ``--jobs 4
    --device cuda`` on a 4-GPU node runs one job per GPU (before torch is imported there)."""
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Worker side: this process dies with the one that launched it, ``kill -9`` included, so a
    killed sweep leaves no orphan workers. On Linux the kernel sends SIGKILL when the parent
    ends (``PR_SET_PDEATHSIG``); a thread that polls the parent's pid is the fallback elsewhere
    (and when prctl is unavailable)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent ended before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ckmbench-parent-watch", daemon=True).start()


def _worker_init(parent_pid: int, counter, gpus: list[str]) -> None:
    end_with_parent(parent_pid)
    pin_gpu(counter, gpus)


def worker_pool(jobs: int, gpus: list[str]):
    """``jobs`` spawned worker processes (each loads torch afresh) that end with this process
    (:func:`end_with_parent`) and, for CUDA runs, see one GPU each (:func:`pin_gpu`)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    context = get_context("spawn")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                               initargs=(os.getpid(), context.Value("i", 0), gpus))


def launch_local(cfgs: list, jobs: int, threads: int | None = None) -> list[dict]:
    """The runs in ``jobs`` parallel processes (:func:`worker_pool`), the threads (``threads``, else
    :func:`ckmbench.threads.choose_threads`) shared out between them so they never oversubscribe
    the cores."""
    from .threads import choose_threads

    share = choose_threads(threads, jobs=min(jobs, len(cfgs)) or 1)
    cfgs = [dataclasses.replace(c, threads=share) for c in cfgs]
    gpus = visible_gpus() if any(str(c.device).startswith("cuda") for c in cfgs) else []
    with worker_pool(jobs, gpus) as pool:
        futures = [pool.submit(run_job, _as_dict(c)) for c in cfgs]
        return [f.result() for f in futures]


def submitit_executor(cluster: str, folder: Path, resources: dict):
    try:
        import submitit
    except ImportError:
        raise CkmError("--launcher slurm needs submitit: pip install 'ckmbench[cluster]'") from None
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except RuntimeError as exc:  # no srun/sbatch: not on a Slurm cluster
        raise CkmError(f"--launcher {cluster}: submitit cannot use Slurm here ({' '.join(str(exc).split())}): "
                       "run it on a Slurm login node, or use --launcher local") from None
    params = {k: v for k, v in resources.items() if cluster != "local" or not k.startswith("slurm_")}
    try:
        executor.update_parameters(name="ckmbench", **params)
    except (ValueError, TypeError) as exc:
        raise CkmError(f"launcher resources: {' '.join(str(exc).split())[:300]}: fix the [submitit] table") from None
    return executor


def launch_submitit(cfgs: list, cluster: str, folder: Path, resources: dict, wait: bool):
    """One job per run through submitit (a Slurm job array, or local processes); returns the
    jobs, and their summaries when ``wait``."""
    executor = submitit_executor(cluster, folder, resources)
    jobs = executor.map_array(run_job, [_as_dict(c) for c in cfgs])
    return jobs, ([job.result() for job in jobs] if wait else None)
