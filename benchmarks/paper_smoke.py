"""Every learned method's ``paper`` profile for two training steps at batch 1, and one sampled map.

Run: ``OMP_NUM_THREADS=1 python benchmarks/paper_smoke.py [--methods drrn,cgan] [--profile paper|tiny]``.
At ``paper`` it simulates a few 256² maps (128² for CGDM and LiCGDM, their papers' size) with the
built-in simulator, writes them as an image folder, and runs each method in its own process
(``ckmbench.runner.run``: the fit, a dependency fit, one test map sampled), so the peak resident
memory (``getrusage`` maxrss) is that method's alone. ``--profile tiny`` does the same on
``city-tiny`` in seconds (tests/test_paper_run.py). It prints one row per method:

- ``fit s / step``: the fit's wall time (dependency fits and every phase included, data set-up
  too) over the steps the record reports (``fit.steps_done``, the last phase's for phased fits);
- ``s / sampling step``: seconds per sampled map over its network evaluations (samplers are cut to
  ``--sample-steps``; a one-pass network is one step);
- ``peak MB``: the child process's maxrss; ``params``: trainable parameters (``cost.params``).

How each profile is shortened (``shortened``): every training length key (``steps``,
``*_steps``, ``steps_*``; the paired ``epochs*`` keys are cleared by ``ckmbench.overrides``) to
``--steps``, every batch size to ``--batch``, a sampler's ``sample_steps`` to ``--sample-steps``,
validation to one map; a method that starts from another fit gets the same for it through
``--set <method>.<key>``. ``benchmarks/gpu_check.py`` reuses all of this on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# methods that start from another method's fit (their --set <dep>.<key> get the same shortening)
DEPENDS_ON = {"licgdm": "cgdm"}
TASKS = ("sr4", "envgen-static", "inpaint", "sparse")  # the first of these that a method runs
SIZE_128 = ("cgdm", "licgdm")  # paper map size 128²; every other learned method 256²
NOT_LENGTHS = ("sample_steps", "physics_ddim_steps", "warmup_steps", "timesteps")
SIM_WORKERS = 1  # processes simulating the maps (1: the CPU here is shared; gpu_check.py uses all)


def learned_methods(reg) -> list[str]:
    return [n for n in reg.names("methods") if getattr(reg.method(n), "kind", "baseline") != "baseline"]


def task_for(spec) -> str:
    return next((t for t in TASKS if t in spec.tasks), spec.tasks[0])


def shorten_keys(profile: dict, steps: int, batch: int, sample_steps: int) -> dict:
    """The overrides that cut one profile to ``steps`` steps at ``batch`` (see the module doc)."""
    out = {}
    for key, value in profile.items():
        if key in NOT_LENGTHS:
            continue
        if key == "steps" or key.endswith("_steps") or key.startswith("steps_"):
            out[key] = steps
        elif (key == "batch_size" or key.endswith("_batch_size") or key == "predict_batch") and value is not None:
            out[key] = batch
        elif key == "value_batches":  # LiCGDM's layer-value estimate: batches of the train split
            out[key] = 1
        elif key == "val_max":
            out[key] = 1
    if profile.get("sample_steps") is not None:
        out["sample_steps"] = min(int(profile["sample_steps"]), sample_steps)
    return out


def shortened(reg, name: str, profile: str, steps: int = 2, batch: int = 1, sample_steps: int = 2,
              amp: str | None = None) -> dict:
    """``--set`` overrides of method ``name`` for a short run, its dependency's as dotted keys."""
    from ckmbench.plugins import require_profile

    hp = require_profile(reg.method(name), profile)
    out = shorten_keys(hp, steps, batch, sample_steps)
    dep = DEPENDS_ON.get(name) or hp.get("init_from")
    if dep:
        dep_hp = require_profile(reg.method(dep), profile)
        out.update({f"{dep}.{k}": v for k, v in shorten_keys(dep_hp, steps, batch, sample_steps).items()})
    if amp:
        out["amp"] = amp
    return out


def write_image_folder(root: Path, size: int, n_scenes: int = 4, tx_per_scene: int = 2) -> Path:
    """``n_scenes`` simulated city scenes at ``size``² as an image folder (gain .npy in dB,
    buildings .png, tx.json, splits.json: the last scene is test, the one before val)."""
    import numpy as np
    from PIL import Image

    from ckmbench.data.synthetic import build_city_dataset

    if (root / "splits.json").is_file():
        return root
    ds = build_city_dataset(name=f"smoke-{size}", size=size, pixel_m=1.0, n_scenes=n_scenes,
                            tx_per_scene=tx_per_scene, cars=False, seed=0, workers=SIM_WORKERS, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix=".smoke-", dir=root.parent))
    (tmp / "gain").mkdir()
    (tmp / "buildings").mkdir()
    tx, scenes = {}, []
    for i in range(len(ds.gain_db)):
        scene = str(ds.scene[i])
        stem = f"{scene}_{int(ds.tx_index[i])}"
        np.save(tmp / "gain" / f"{stem}.npy", ds.gain_db[i].astype(np.float32))
        Image.fromarray(ds.buildings[i].astype(np.uint8) * 255).save(tmp / "buildings" / f"{stem}.png")
        tx[stem] = [float(ds.tx[i][0]), float(ds.tx[i][1])]
        if scene not in scenes:
            scenes.append(scene)
    (tmp / "tx.json").write_text(json.dumps(tx))
    (tmp / "splits.json").write_text(json.dumps({"train": scenes[:-2], "val": [scenes[-2]], "test": [scenes[-1]]}))
    os.replace(tmp, root)
    return root


def stand_in_vgg19(folder: Path) -> Path:
    """SRGAN's perceptual loss reads an ImageNet VGG19 file: a random one of the same layout."""
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    path = folder / "vgg19-stand-in.pth"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save({f"features.{k}": v for k, v in make_layers(cfgs["E"])[:36].state_dict().items()}, path)
    return path


def run_one(name: str, profile: str, dataset: str, data_root: str | None, work: Path, device: str = "cpu",
            steps: int = 2, batch: int = 1, sample_steps: int = 2, amp: str | None = None) -> dict:
    """One short run of ``name`` in this process; the row of the table (and of gpu_check's JSON)."""
    import math

    from ckmbench.plugins import registry
    from ckmbench.runner import RunConfig, run

    reg = registry()
    spec = reg.method(name)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["CKMBENCH_VGG19"] = str(stand_in_vgg19(work))
    os.environ["CKMBENCH_FITS"] = str(work / "fits")
    hparams = shortened(reg, name, profile, steps, batch, sample_steps, amp)
    t0 = time.perf_counter()
    rec = run(RunConfig(method=name, task=task_for(spec), dataset=dataset, data_root=data_root, profile=profile,
                        device=device, hparams=hparams, max_test=1, fid=False, examples=0, progress=False,
                        refit=True, store=str(work / "store" / "records.jsonl"), runs_dir=str(work / "runs")), reg)
    cost, fit = rec.get("cost") or {}, rec.get("fit") or {}
    steps_done = fit.get("steps_done") or 0
    loss = fit.get("final_loss")
    return {
        "method": name, "task": rec["task"], "status": rec["status"], "message": rec["message"][:300],
        "map_size": rec.get("map_size"), "device": rec.get("device"), "amp": amp, "fit_s": fit.get("train_s"),
        "steps_done": steps_done,
        "s_per_train_step": (fit["train_s"] / steps_done) if steps_done and fit.get("train_s") else None,
        "s_per_sampling_step": (cost["infer_s_per_map"] / (cost.get("sampling_steps") or 1))
        if cost.get("infer_s_per_map") is not None else None,
        "sampling_steps": cost.get("sampling_steps"), "params": cost.get("params"),
        "peak_mem_mb": cost.get("peak_mem_mb"), "final_loss": loss,
        "finite_loss": loss is not None and math.isfinite(loss), "wall_s": time.perf_counter() - t0,
    }


def child(args) -> None:
    """``--child NAME``: one method, then its row and this process's maxrss as JSON on stdout."""
    work = Path(args.work)
    row = run_one(args.child, args.profile, args.dataset_name, args.data_root, work, steps=args.steps,
                  batch=args.batch, sample_steps=args.sample_steps)
    row["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print("ROW " + json.dumps(row, default=str))


def dataset_for(name: str, profile: str, data_dir: Path) -> tuple[str, str | None]:
    if profile == "tiny":
        return "city-tiny", None
    size = 128 if name in SIZE_128 else 256
    return "imagefolder", str(write_image_folder(data_dir / f"maps-{size}", size))


def table(rows: list[dict]) -> str:
    from tabulate import tabulate

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    body = [[r["method"], r["status"], "x".join(map(str, r.get("map_size") or [])), f(r.get("s_per_train_step"), ".3g"),
             f(r.get("s_per_sampling_step"), ".3g"), f(r.get("maxrss_mb"), ".0f"), f(r.get("params"), ",")]
            for r in rows]
    return tabulate(body, headers=["method", "status", "map", "fit s / step", "s / sampling step", "peak MB",
                                   "params"], tablefmt="github", disable_numparse=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=None, help="comma-separated (default: every learned method)")
    p.add_argument("--profile", default="paper", choices=["paper", "tiny"])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="where the simulated image folders are kept (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per method")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dataset-name", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data-root", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from ckmbench.plugins import registry

    reg = registry()
    names = args.methods.split(",") if args.methods else learned_methods(reg)
    for name in names:
        reg.method(name)
    base = Path(args.data_dir or tempfile.mkdtemp(prefix="ckmbench-paper-smoke-"))
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        dataset, root = dataset_for(name, args.profile, base)
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
        cmd = [sys.executable, __file__, "--child", name, "--profile", args.profile, "--work", str(work),
               "--dataset-name", dataset, "--steps", str(args.steps), "--batch", str(args.batch),
               "--sample-steps", str(args.sample_steps)] + (["--data-root", root] if root else [])
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")), None)
            row = json.loads(line[4:]) if line else {
                "method": name, "status": "crashed", "message": (out.stderr.strip().splitlines() or ["?"])[-1][:300]}
        except subprocess.TimeoutExpired:
            row = {"method": name, "status": "timeout", "message": f"over {args.timeout:.0f} s"}
        rows.append(row)
        print(f"{name}: {row['status']} {row.get('message') or ''}".strip(), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
