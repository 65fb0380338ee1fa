"""The device check: every learned method's ``paper`` profile for a few steps on one GPU, in fp32
and under bf16 autocast, a torchrun run and the GPU tests; one JSON file of results.

Run through ``benchmarks/gpu_check.sh`` on the GPU machine (it installs the wheels first), or
directly: ``python benchmarks/gpu_check.py [--out results.json] [--device cuda] [--profile paper]``.
On the CPU ``--device cpu --profile tiny`` checks the script itself (tests/test_paper_run.py).

Per method and precision (``amp`` null or ``bf16``) the row is ``paper_smoke.run_one``'s: a fit of
``--steps`` steps at batch 1 (dependency fits shortened alike), one test map sampled with
``sample_steps`` cut to 2, seconds per fit step and per sampling step, peak device memory (CUDA's
``max_memory_allocated``, the record's ``cost.peak_mem_mb``) and whether the last loss is finite.
The torchrun run (``drrn``, NCCL on CUDA) and ``pytest -m gpu`` come first (bounded at 90 s
each); the method runs share this process (no per-run start-up) and the JSON is rewritten after
each, so a check stopped at its time limit still leaves what it measured. Past ``--budget-s``
the remaining runs are listed as ``skipped``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_smoke  # noqa: E402  (same folder)

REPO = Path(__file__).resolve().parents[1]
TORCHRUN_METHOD = ("drrn", "sr4")


def environment(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device, "python": sys.version.split()[0]}
    if device.startswith("cuda") and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    bf16_supported=torch.cuda.is_bf16_supported(), nccl=torch.distributed.is_nccl_available())
    return info


def method_rows(names, args, work: Path, deadline: float, write) -> list[dict]:
    rows = []
    for name in names:
        dataset, root = paper_smoke.dataset_for(name, args.profile, work / "data")
        for amp in (None, "bf16"):
            if time.monotonic() > deadline:
                rows.append({"method": name, "amp": amp, "status": "skipped", "message": "past --budget-s"})
                continue
            try:
                row = paper_smoke.run_one(name, args.profile, dataset, root, work / f"{name}-{amp or 'fp32'}",
                                          device=args.device, steps=args.steps, batch=1, sample_steps=2, amp=amp)
            except Exception as exc:  # a crash of one method is a row, never the end of the check
                row = {"method": name, "amp": amp, "status": "crashed", "message": f"{type(exc).__name__}: {exc}"[:300],
                       "traceback": traceback.format_exc()[-2000:]}
            rows.append(row)
            _release(args.device)
            print(f"{name} {amp or 'fp32'}: {row['status']} {row.get('s_per_train_step')} s/step "
                  f"{row.get('peak_mem_mb')} MB {row.get('message') or ''}", flush=True)
            write(rows)
    return rows


def _release(device: str) -> None:
    """The last run's tensors back to the allocator, so the next run's peak is its own."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def torchrun_row(args, work: Path, timeout: float) -> dict:
    """``torchrun --nproc_per_node=1`` of one short method run (NCCL on CUDA, gloo on the CPU)."""
    import torch

    method, task = TORCHRUN_METHOD
    from ckmbench.plugins import registry

    sets = paper_smoke.shortened(registry(), method, args.profile, args.steps, 1, 2)
    store = work / "torchrun" / "records.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "ckmbench.cli",
           "run", "-m", method, "-t", task, "-d", "city-tiny", "-p", args.profile, "--device", args.device,
           "--max-test", "1", "--no-progress", "--store", str(store), "--runs-dir", str(work / "torchrun" / "runs")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "CKMBENCH_FITS": str(work / "torchrun" / "fits")}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "command": " ".join(cmd)}
    records = [json.loads(ln) for ln in store.read_text().splitlines() if ln.strip()] if store.is_file() else []
    rec = records[-1] if records else {}
    return {"status": rec.get("status", "no record"), "returncode": done.returncode, "wall_s": time.perf_counter() - t0,
            "backend": "nccl" if args.device.startswith("cuda") else "gloo", "method": method,
            "steps_done": (rec.get("fit") or {}).get("steps_done"), "message": rec.get("message", ""),
            "stderr_tail": done.stderr[-1500:] if done.returncode else "", "nccl_available":
            torch.distributed.is_nccl_available()}


def pytest_row(timeout: float) -> dict:
    """The tests marked ``gpu`` (they skip without CUDA)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "command": " ".join(cmd)}
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    return {"returncode": done.returncode, "summary": lines[-1] if lines else "", "wall_s": time.perf_counter() - t0,
            "tail": done.stdout[-3000:] if done.returncode else ""}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON file (default $OUT/gpu_check.json, else ./gpu_check.json)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--profile", default="paper", choices=["paper", "tiny"])
    p.add_argument("--methods", default=None, help="comma-separated (default: every learned method)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=450,
                   help="start no method run after this many seconds from the start (gpu_check.sh stops all at 570)")
    p.add_argument("--skip-torchrun", action="store_true")
    p.add_argument("--skip-pytest", action="store_true")
    p.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    args = p.parse_args(argv)
    out = Path(args.out or Path(os.environ.get("OUT") or ".") / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from ckmbench.plugins import registry
    from ckmbench.runner import resolve_device

    resolve_device(args.device)
    paper_smoke.SIM_WORKERS = 0  # every core of the GPU machine simulates the maps
    reg = registry()
    names = args.methods.split(",") if args.methods else paper_smoke.learned_methods(reg)
    work = Path(args.work or tempfile.mkdtemp(prefix="ckmbench-gpu-check-"))
    os.environ.setdefault("CKMBENCH_DATA", str(work / "cache"))
    t0 = time.monotonic()
    result = {"environment": environment(args.device), "profile": args.profile, "steps": args.steps, "batch": 1,
              "methods": [], "torchrun": None, "pytest": None}

    def write(rows=None):
        if rows is not None:
            result["methods"] = rows
        result["wall_s"] = time.monotonic() - t0
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, out)

    write()
    # the bounded parts first: whatever the method runs leave of the time, these are in the JSON
    if not args.skip_torchrun:
        result["torchrun"] = torchrun_row(args, work, timeout=90)
        write()
    if not args.skip_pytest:
        result["pytest"] = pytest_row(timeout=90)
        write()
    method_rows(names, args, work, t0 + args.budget_s, write)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in result["methods"] if r["status"] not in ("done", "skipped")]
    print(f"wrote {out}: {len(result['methods']) - len(bad)} of {len(result['methods'])} method runs done or skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
