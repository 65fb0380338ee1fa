"""The `ckmbench` command: run, evaluate, leaderboard, list, plugins, data, new-plugin."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .data.builtin import DEFAULT_DATASET
from .errors import CkmError


def _split_list(value: str, option: str = "--method") -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise CkmError(f"{option} '{value}' names nothing: give a name, a comma list or 'all' "
                       f"(see `ckmbench list {'methods' if option == '--method' else 'tasks'}`)")
    return names


class Finite(click.ParamType):
    """A finite float within (low, high), bounds open or closed; NaN and inf are refused."""

    name = "number"

    def __init__(self, low=None, high=None, low_open=False, high_open=False, hint=""):
        self.low, self.high, self.low_open, self.high_open, self.hint = low, high, low_open, high_open, hint

    def _range(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)

    def convert(self, value, param, ctx):
        import math

        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number: give one {self._range()}{self.hint}", param, ctx)
        bad = not math.isfinite(v)
        if self.low is not None:
            bad |= v <= self.low if self.low_open else v < self.low
        if self.high is not None:
            bad |= v >= self.high if self.high_open else v > self.high
        if bad:
            self.fail(f"{value} is out of range: give a finite number {self._range()}{self.hint}", param, ctx)
        return v


SEED_MAX = 2**32 - 1


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise CkmError(f"bad --shard '{value}': use i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise CkmError(f"bad --shard '{value}': need 0 <= i < n")
    return i, n


def _parse_sets(values: tuple[str, ...]) -> dict:
    """--set key=value hyper-parameter overrides (values parsed as JSON when possible)."""
    import json

    out = {}
    for item in values:
        if "=" not in item:
            raise CkmError(f"bad --set '{item}': use key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k:
            raise CkmError(f"bad --set '{item}': the key is empty; use key=value")
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, ValueError):
            out[k] = v
    return out


def _method_sets(reg, methods: list[str], profile: str, sets: dict) -> dict[str, dict]:
    """The --set overrides each method gets, checked before any work: a key no method of the
    request knows, or a value of the wrong type, is refused with the valid keys."""
    from .overrides import check_dotted, resolve_overrides
    from .plugins import require_profile
    from .runner import GENERIC_HPARAMS, check_hparams

    per_method = {}
    for m in methods:
        spec = reg.method(m)
        known = set(require_profile(spec, profile)) | set(GENERIC_HPARAMS)
        # a dotted key (cgdm.steps) goes to every method: the one starting from that fit uses it
        mine = {k: v for k, v in sets.items() if k in known or "." in k or len(methods) == 1}
        mine = resolve_overrides(spec, profile, mine)
        check_dotted(reg, spec, profile, mine)
        check_hparams(spec, profile, mine)
        per_method[m] = mine
    unknown = sorted(set(sets) - {k for d in per_method.values() for k in d})
    if unknown:
        valid = sorted({k for m in methods for k in require_profile(reg.method(m), profile)} | set(GENERIC_HPARAMS))
        raise CkmError(f"--set {unknown[0]}: none of the methods {', '.join(methods)} has a hyper-parameter "
                       f"'{unknown[0]}': valid ones are {', '.join(valid)}")
    return per_method


def threads_option(fn):
    """--threads N of a command that computes (ckmbench.threads.choose_threads)."""
    return click.option("--threads", default=None, type=click.IntRange(min=1),
                        help="CPU threads (default $CKMBENCH_THREADS, else $OMP_NUM_THREADS, else the idle cores; "
                             "parallel jobs share them).")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckmbench")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool):
    """ckmbench: benchmark channel-knowledge-map construction methods."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- run / evaluate
@cli.command()
@click.option("--method", "-m", required=True, help="Method name(s), comma-separated, or 'all'.")
@click.option("--task", "-t", required=True, help="Task name(s), comma-separated, or 'all'.")
@click.option("--dataset", "-d", default=DEFAULT_DATASET, show_default=True, help="Dataset scored on.")
@click.option("--train-dataset", default=None, help="Dataset fitted on (transfer); default: --dataset.")
@click.option("--profile", "-p", default="small", show_default=True, type=click.Choice(["tiny", "small", "paper"]))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, SEED_MAX))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--data-root", default=None, help="Folder of a real dataset (RadioMapSeer root, image folder).")
@click.option("--train-data-root", default=None, help="Folder of the --train-dataset, if it is a real one.")
@click.option("--store", default=None,
              help="Results store (default $CKMBENCH_STORE, else your user store; the project's committed store "
                   "only when named: --store results/records.jsonl).")
@click.option("--runs-dir", default=None, help="Where run folders go (default: beside the store, <store folder>/runs).")
@click.option("--max-test", default=None, type=click.IntRange(min=1), help="Score at most N test maps (evenly spaced).")
@click.option("--time-budget", default=None, type=Finite(0, low_open=True, hint=" (seconds)"), help="Seconds; a learned method stops training there, saves and is scored; "
                   "a classical run past it is stored as timeout.")
@click.option("--checkpoint", default=None, help="Load this checkpoint instead of fitting.")
@click.option("--refit", is_flag=True, help="Do not reuse a finished fit (cached or shipped): train again; an "
                                            "unfinished fit of the same configuration (killed, time budget) resumes.")
@click.option("--restart", is_flag=True, help="Throw the fit's saved train state away and train from step 0 "
                                              "(a teacher fit, e.g. LiCGDM's CGDM, is kept).")
@click.option("--resume", is_flag=True, help="Skip the runs whose configuration already has a done record in the "
                                             "store or its pending folder (a killed sweep goes on where it stopped).")
@click.option("--weights", default=None,
              help="Score a checkpoint published by the method's authors (its state_dict), loaded through the "
                   "method's key map into the paper profile; no training (docs/weights.md).")
@click.option("--save-predictions", default=None, type=click.Path(file_okay=False),
              help="Also write every scored prediction as DIR/<scene>_<tx>.npy (path gain in dB; "
                   "`ckmbench evaluate --npy-unit db` reads them).")
@click.option("--set", "sets", multiple=True,
              help="Hyper-parameter override key=value (repeatable); null clears a key, steps_X=N alone replaces "
                   "epochs_X, <method>.key=value sets the fit a method starts from (cgdm.steps=1000 for licgdm).")
@click.option("--keep-train-state", is_flag=True,
              help="Keep a finished fit's resumable trainer state (deleted by default: GBs at the paper profile).")
@click.option("--fid/--no-fid", default=None,
              help="Compute FID (default: only for inpaint, denoise, generate and the -noisy sr tasks).")
@click.option("--protocol", default=None,
              help="Score under a paper's protocol (envcdiff, ckmdiff): runs the task variant <task>@<protocol> "
                   "(docs/protocol.md §7).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--seeds", default=None, help="Several seeds, e.g. 0,1,2: one run per seed (instead of --seed).")
@click.option("--launcher", default="inline", show_default=True, type=click.Choice(["inline", "local", "slurm",
                                                                                   "submitit-local"]),
              help="inline: one run after another here; local: --jobs parallel processes here; slurm: one job per "
                   "(method, task, seed) through submitit; submitit-local: the same through submitit's local "
                   "executor. Launched runs write per-run record files, merged by `ckmbench results collect`.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1), help="Parallel runs (--launcher local).")
@click.option("--launcher-config", default=None, type=click.Path(),
              help="TOML file whose [submitit] table sets the job resources (timeout_min, gpus_per_node, ...).")
@click.option("--wait/--no-wait", default=None,
              help="Wait for submitit jobs and collect their records (default: wait for submitit-local only).")
@click.option("--shard", default=None, help="Score only test-scene shard i/n; `ckmbench results collect` merges "
                                            "the n shards into one record.")
@click.option("--loader-workers", default=None, type=click.IntRange(min=0),
              help="DataLoader worker processes building training batches (default $CKMBENCH_LOADER_WORKERS or 0).")
@threads_option
def run(method, task, dataset, train_dataset, profile, seed, device, data_root, train_data_root, store, runs_dir,
        max_test, time_budget, checkpoint, refit, restart, resume, weights, save_predictions, sets, keep_train_state,
        fid, protocol, no_progress, seeds, launcher, jobs, launcher_config, wait, shard, loader_workers, threads):
    """Fit METHOD on TASK, score it, print the metrics and store a record."""
    from .plugins import registry
    from .report import print_record
    from .results import check_store_writable, check_writable_dir, default_runs_dir
    from .pending import pending_dir
    from .runner import RecordNotStored, RunConfig, check_supported, resolve_device, run as run_one

    methods = _split_list(method, "--method")
    tasks = _split_list(task, "--task")
    overrides = _parse_sets(sets)
    if checkpoint and not Path(checkpoint).is_file():
        raise CkmError(f"--checkpoint {checkpoint} is not a file: pass the checkpoint.pt of a run folder")
    if weights and checkpoint:
        raise CkmError("--weights and --checkpoint both given: pass one (--weights: the authors' file; "
                       "--checkpoint: a ckmbench run's)")
    resolve_device(device)
    reg = registry()
    methods = reg.names("methods") if methods == ["all"] else methods
    if tasks == ["all"]:  # the plain tasks; paper-protocol variants only when a protocol is asked for
        tasks = [t for t in reg.names("tasks") if "@" not in t]
        if protocol:
            from .tasks.protocols import PROTOCOLS

            tasks = list(PROTOCOLS[protocol].tasks) if protocol in PROTOCOLS else tasks
    if protocol:
        from .tasks.protocols import variant_name

        tasks = [variant_name(t, protocol) for t in tasks]
    for name in methods:
        reg.method(name)
    if weights:  # one file is one method's network
        from .weights_import import check_weights_request

        if len(methods) != 1:
            raise CkmError(f"--weights loads one method's network, but {len(methods)} methods were given: "
                           f"pass one with -m")
        check_weights_request(reg.method(methods[0]), profile, weights)
    for name in tasks:
        reg.task(name)
    reg.dataset(dataset)
    if train_dataset:
        reg.dataset(train_dataset)
    pairs = [(m, t) for m in methods for t in tasks if reg.method(m).supports(t)]
    if len(methods) == 1 and len(tasks) == 1:
        check_supported(reg.method(methods[0]), tasks[0])
    if not pairs:
        raise CkmError(f"none of the methods {', '.join(methods)} supports any of the tasks {', '.join(tasks)}")
    per_method = _method_sets(reg, sorted({m for m, _ in pairs}), profile, overrides)
    store_file = check_store_writable(store)  # before any work: a finished run must never lose its record
    check_writable_dir(runs_dir or default_runs_dir(store_file), f"--runs-dir {runs_dir or default_runs_dir(store_file)}",
                       "pass --runs-dir a folder you can write (default: <store folder>/runs)")
    from .leftovers import clean_leftovers

    removed = clean_leftovers(store_file, Path(runs_dir) if runs_dir else default_runs_dir(str(store_file)))
    if removed:
        click.echo(f"removed {len(removed)} leftover(s) of killed runs (run folders without a record, "
                   f"unreferenced examples files)", err=True)
    if seeds and seed:
        raise CkmError(f"--seed {seed} and --seeds {seeds} both given: pass one of them")
    seed_list = _parse_seeds(seeds) if seeds else [seed]
    shard_t = _parse_shard(shard)
    cfgs = [RunConfig(method=m, task=t, dataset=dataset, train_dataset=train_dataset, profile=profile, seed=sd,
                      device=device, data_root=data_root, train_data_root=train_data_root, store=str(store_file),
                      runs_dir=runs_dir, max_test=max_test, time_budget_s=time_budget, checkpoint=checkpoint,
                      refit=refit, restart=restart, resume=resume, progress=not no_progress and launcher == "inline",
                      fid=fid, hparams=per_method[m],
                      shard=shard_t, loader_workers=loader_workers, weights=weights,
                      save_predictions=save_predictions, keep_train_state=keep_train_state,
                      threads=_choose_threads(threads) if launcher == "inline" else threads)
            for m, t in pairs for sd in seed_list]
    if launcher != "inline":  # local jobs share the threads; a cluster job judges them where it runs
        _launch(cfgs, launcher, jobs, launcher_config, wait, store_file)
        return
    failed = 0
    for cfg in cfgs:
        m, t = cfg.method, cfg.task
        try:
            record = run_one(cfg, reg)
        except RecordNotStored as exc:  # the work is done and kept in the run folder; the sweep goes on
            click.echo(f"ckmbench: error: {exc}", err=True)
            failed += 1
            continue
        except CkmError as exc:
            if len(pairs) == 1:
                raise
            click.echo(f"skipped {m} on {t}: {exc}", err=True)  # a sweep goes on past a refused pair
            failed += 1
            continue
        if record.get("rank", 0):
            continue  # under torchrun, rank 0 prints, scores and stores
        if record["status"] == "skipped":  # --resume
            click.echo(f"skipped {m} on {t} seed {cfg.seed}: {record['message']}")
            continue
        print_record(record)
        if cfg.shard:
            click.echo(f"shard {shard} of this run waits in {pending_dir(store_file)}/: merge all shards with "
                       f"`ckmbench results collect --store {store_file}`")
        failed += record["status"] != "done"
    if failed:
        click.echo(f"{failed} of {len(cfgs)} run(s) did not finish; their records hold the message.", err=True)
        sys.exit(1)


def _choose_threads(requested: int | None, jobs: int = 1) -> int:
    from .threads import choose_threads

    return choose_threads(requested, jobs)


def _use_threads(requested: int | None, jobs: int = 1) -> int:
    from .threads import use_threads

    return use_threads(requested, jobs)


def _parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CkmError(f"bad --seeds '{value}': use whole numbers, e.g. 0,1,2") from None
    if not seeds or any(not 0 <= v <= SEED_MAX for v in seeds) or len(set(seeds)) != len(seeds):
        raise CkmError(f"bad --seeds '{value}': give distinct seeds in 0..{SEED_MAX}, e.g. 0,1,2")
    return seeds


def _launch(cfgs, launcher: str, jobs: int, launcher_config, wait, store_file: Path) -> None:
    """Run the configs through a launcher (ckmbench.launch), then collect what finished."""
    from .launch import launch_local, launch_submitit, load_resources
    from .pending import collect

    if launcher == "local":
        click.echo(f"{len(cfgs)} run(s) in {min(jobs, len(cfgs))} parallel process(es)")
        results = launch_local(cfgs, jobs, cfgs[0].threads)
    else:
        cluster = "slurm" if launcher == "slurm" else "local"
        folder = store_file.parent / "submitit"
        wait = (cluster == "local") if wait is None else wait
        submitted, results = launch_submitit(cfgs, cluster, folder, load_resources(launcher_config), wait)
        click.echo(f"submitted {len(submitted)} job(s) ({', '.join(j.job_id for j in submitted)}); logs in {folder}/")
        if results is None:
            click.echo(f"when they end: ckmbench results collect --store {store_file}")
            return
    for r in results:
        click.echo(f"{r['method']} on {r['task']} seed {r['seed']}: {r['status']}"
                   + (f" ({r['message']})" if r.get("message") else ""))
    report = collect(store_file)
    click.echo(report.summary(store_file))
    failed = sum(r["status"] not in ("done", "skipped") for r in results)
    if failed:
        click.echo(f"{failed} of {len(results)} run(s) did not finish; their records hold the message.", err=True)
        sys.exit(1)


# ---------------------------------------------------------------- results
@cli.group()
def results():
    """Manage the results store."""


@results.command(name="collect")
@click.option("--store", default=None, help="Results store (default $CKMBENCH_STORE, else your user store).")
def collect_cmd(store):
    """Merge the per-run record files of launched and sharded runs into the store (exactly once)."""
    from .pending import collect, pending_dir
    from .results import check_store_writable

    target = check_store_writable(store)
    if not pending_dir(target).is_dir():
        click.echo(f"nothing to collect: no {pending_dir(target)}/")
        return
    click.echo(collect(target).summary(target))


@results.command(name="stamp")
@click.option("--store", default=None, help="Results store (default $CKMBENCH_STORE, else your user store).")
def stamp_cmd(store):
    """Add the line checksum (_sum) to every line of a store written before checksums existed."""
    from .results import check_store_writable, stamp_store

    target, stamped, had = stamp_store(check_store_writable(store))
    click.echo(f"{target}: {stamped} line(s) stamped, {had} already had a checksum")


@results.command(name="permap")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--store", default=None, help="Results store holding those runs' records (default $CKMBENCH_STORE, "
                                            "else your user store).")
def permap_cmd(run_dirs, store):
    """Give records made before per-map files existed their per_map file (the leaderboard's
    confidence intervals), from their run folders' per_sample.csv."""
    from .permap import backfill
    from .results import check_store_writable

    target = check_store_writable(store)
    done = backfill(target, [Path(d) for d in run_dirs])
    click.echo(f"{target}: per-map files written for {len(done)} record(s)")


@cli.command()
@click.option("--task", "-t", required=True)
@click.option("--dataset", "-d", default=DEFAULT_DATASET, show_default=True)
@click.option("--predictions", required=True, type=click.Path(), help="Folder of <scene>_<tx>.png|.npy files.")
@click.option("--name", default="external", show_default=True, help="Method name for the record.")
@click.option("--npy-unit", default="u", show_default=True, type=click.Choice(["u", "db"]),
              help="NPY files hold u in [0, 1] or path gain in dB.")
@click.option("--data-root", default=None)
@click.option("--store", default=None)
@click.option("--record/--no-record", default=True, show_default=True, help="Append a record to the store.")
@click.option("--fid/--no-fid", default=None, help="Compute FID (default: as for `ckmbench run`).")
@threads_option
def evaluate(task, dataset, predictions, name, npy_unit, data_root, store, record, fid, threads):
    """Score predictions made outside ckmbench under the same protocol."""
    _use_threads(threads)
    from .external import evaluate_predictions
    from .report import print_record

    rec = evaluate_predictions(task=task, dataset=dataset, predictions=Path(predictions), name=name,
                               npy_unit=npy_unit, data_root=data_root, store=store, record=record, fid=fid)
    print_record(rec)


@cli.command()
@click.option("--store", default=None,
              help="Results store (default $CKMBENCH_STORE, else your user store); the committed leaderboards "
                   "come from --store results/records.jsonl --out leaderboards --reported.")
@click.option("--out", default=None, type=click.Path(),
              help="Leaderboard folder (default $CKMBENCH_LEADERBOARDS, else <your user folder>/leaderboards, "
                   "never the committed one).")
@click.option("--prune", is_flag=True, help="Delete the tables of the folder that the store no longer has.")
@click.option("--allow-mixed", is_flag=True,
              help="Allow rows computed on different versions (content hashes) of a dataset in one table.")
@click.option("--full", is_flag=True, help="Rebuild every table, not only those whose records changed.")
@click.option("--reported", is_flag=True,
              help="Also write the tables that hold only numbers reported in the papers (the committed leaderboards do).")
@threads_option
def leaderboard(store, out, prune, allow_mixed, full, reported, threads):
    """Rebuild the leaderboard tables and figures from the results store."""
    _use_threads(threads)
    from importlib import resources

    from .leaderboard import build_leaderboards
    from .results import check_writable_dir, read_records, store_path, user_dir

    path = store_path(store)
    records = read_records(path, missing_ok=False)
    out_dir = Path(out or os.environ.get("CKMBENCH_LEADERBOARDS") or user_dir() / "leaderboards")
    check_writable_dir(out_dir, f"leaderboard folder {out_dir}", "pass --out a folder you can write")
    reported_csv = Path(str(resources.files("ckmbench") / "reference" / "reported.csv"))
    written = build_leaderboards(records, out_dir, path.parent, reported_csv, prune=prune, allow_mixed=allow_mixed,
                                 incremental=not full, reported_tables=reported)
    click.echo(f"{len(records)} record(s) from {path} -> {len(written)} file(s) in {out_dir}/")
    from .pending import pending_dir

    waiting = len(list(pending_dir(path).glob("*.json"))) if pending_dir(path).is_dir() else 0
    if waiting:
        click.echo(f"{waiting} record file(s) of launched or sharded runs wait in {pending_dir(path)}/ and are not "
                   f"in these tables: run `ckmbench results collect --store {path}`", err=True)


# ---------------------------------------------------------------- registry views
@cli.command(name="list")
@click.argument("what", required=False, type=click.Choice(["methods", "tasks", "datasets", "metrics"]))
def list_(what):
    """List methods (with tasks and profiles), tasks, datasets and metrics."""
    from .report import print_listing

    print_listing(what)


@cli.command()
@click.option("--card", default=None, metavar="METHOD|FOLDER",
              help="Print the model card of a fit: a method name, a fit folder's name or its path.")
@click.option("--write-cards", is_flag=True, help="Write card.md beside every shipped fit (from the store).")
@click.option("--store", default=None, help="Results store the cards read (default: the checkout's committed "
              "results/records.jsonl, else $CKMBENCH_STORE or your user store).")
def fits(card, write_cards, store):
    """List the shipped and cached fits (method, task, dataset, profile, steps, size, path)."""
    from .cards import print_card, write_shipped_cards
    from .fitlist import all_fits, fits_table
    from .plugins import registry

    found = all_fits(registry())
    if card:
        print_card(found, card, store)
    elif write_cards:
        for path in write_shipped_cards(found, store):
            click.echo(f"wrote {path}")
    elif not found:
        click.echo("no fits: none shipped with the plugins and none in the fit cache ($CKMBENCH_FITS)")
    else:
        click.echo(fits_table(found))


@cli.command()
def plugins():
    """List every plugin: distribution, version, what it registers, failures."""
    from .report import print_plugins

    print_plugins()


@cli.command(name="new-plugin")
@click.argument("name")
@click.option("--out", default=".", show_default=True, type=click.Path(), help="Parent folder of the new package.")
def new_plugin(name, out):
    """Write a ready plugin package NAME (pyproject with entry point, method, test)."""
    from .scaffold import write_plugin_package

    folder = write_plugin_package(name, Path(out))
    click.echo(f"wrote {folder}; install it with: pip install -e {folder}")


# ---------------------------------------------------------------- data
@cli.group()
def data():
    """Generate, inspect and simulate datasets."""


@data.command()
@click.option("--dataset", "-d", "datasets", multiple=True, help="Dataset(s) to build (default: city, city-128).")
@click.option("--shard", default=None, help="Build only shard i/n of the scenes (for clusters).")
@click.option("--force", is_flag=True, help="Rebuild even when cached.")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="Processes (0 = one per thread of --threads).")
@threads_option
def generate(datasets, shard, force, workers, threads):
    """Generate (and cache) built-in datasets."""
    workers = workers or _choose_threads(threads)
    _use_threads(threads, jobs=workers)  # each worker process its share (spawned ones read the environment)
    from .data import builtin
    from .plugins import registry

    reg = registry()
    names = list(datasets) or ["city", "city-128"]
    shard_t = _parse_shard(shard)
    for name in names:
        reg.dataset(name)
        started = time.perf_counter()
        if name in builtin.CITY_CONFIGS:
            ds = builtin.load_city(name, shard=shard_t, force=force, workers=workers)
        elif name in builtin.UMA_CONFIGS:
            if shard_t:
                raise CkmError(f"--shard is supported for the city datasets, not '{name}'")
            ds = builtin.load_uma(name, force=force)
        else:
            raise CkmError(f"'{name}' is not a generated dataset: only {', '.join(builtin.CITY_CONFIGS)}, "
                           f"{', '.join(builtin.UMA_CONFIGS)} are built by `data generate`")
        sizes = ", ".join(f"{k} {len(v)} scenes" for k, v in ds.splits.items())
        click.echo(f"{name}{' shard ' + shard if shard else ''}: {len(ds)} maps {ds.shape[0]}x{ds.shape[1]} "
                   f"({sizes}); content hash {ds.content_hash[:12]}; cache {builtin.data_root()}; "
                   f"{time.perf_counter() - started:.1f} s")


@data.command()
@click.option("--dataset", "-d", "datasets", multiple=True, required=True,
              help="Real dataset(s) to convert, e.g. radiomapseer-dpm.")
@click.option("--data-root", default=None, help="The dataset's folder (or its environment variable).")
@click.option("--force", is_flag=True, help="Convert again even when the cache entry is valid.")
def convert(datasets, data_root, force):
    """Convert a real dataset's folder once into the on-disk cache (read lazily; docs/scale.md)."""
    from .data import builtin
    from .plugins import registry

    reg = registry()
    for name in datasets:
        spec = reg.dataset(name)
        if getattr(spec.load, "func", None) is not builtin.load_rms:
            raise CkmError(f"'{name}' has no on-disk conversion: only the radiomapseer-* datasets with a folder do")
        ds = spec.load(root=data_root, progress=True, ondisk=True, force=force)
        click.echo(f"{name}: {len(ds)} maps {ds.shape[0]}x{ds.shape[1]} on disk; content hash {ds.content_hash[:12]}; "
                   f"cache {builtin.data_root()}")


@data.command()
@click.option("--dataset", "-d", default=DEFAULT_DATASET, show_default=True)
@click.option("--data-root", default=None)
@click.option("--split", default="test", show_default=True)
@click.option("-n", "count", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--out", default=None, help="PNG path (default <dataset>-samples.png).")
def show(dataset, data_root, split, count, out):
    """Write a PNG figure of samples (gain map, buildings, Tx)."""
    import numpy as np

    from .data.registry import load_dataset
    from .figures import sample_figure

    ds = load_dataset(dataset, root=data_root).split(split)
    idx = np.unique(np.linspace(0, len(ds) - 1, min(count, len(ds))).round().astype(int))
    path = sample_figure([ds[int(i)] for i in idx], Path(out or f"{dataset}-samples.png"))
    g = np.asarray(ds.gain_db)[~np.asarray(ds.buildings)]
    click.echo(f"{dataset} [{split}]: {len(ds)} maps {ds.shape[0]}x{ds.shape[1]} at {ds.pixel_m:g} m/px; outdoor gain "
               f"{g.min():.1f} .. {g.max():.1f} dB (mean {g.mean():.1f}); figure {path}")


@data.command()
@click.option("--buildings", required=True, type=click.Path(), help="Building mask PNG/NPY (nonzero = building).")
@click.option("--tx", required=True, help="Transmitter pixel ROW,COL.")
@click.option("--out", required=True, type=click.Path(), help="Output .npy (path gain in dB); a PNG goes beside it.")
@click.option("--pixel-m", default=1.0, show_default=True, type=Finite(0, 100, low_open=True), help="Metres per pixel.")
@click.option("--tx-height", default=1.5, show_default=True, type=Finite(0, 1000, low_open=True, hint=" (metres)"),
              help="Transmitter height in metres.")
@click.option("--cars", default=None, type=click.Path(), help="Optional car mask PNG/NPY.")
@click.option("--frequency-ghz", default=5.9, show_default=True, type=Finite(0.1, 100, hint=" (GHz)"))
@threads_option
def simulate(buildings, tx, out, pixel_m, tx_height, cars, frequency_ghz, threads):
    """Simulate the path-gain map of any building layout with the built-in simulator."""
    _use_threads(threads)
    from .simulate_cli import simulate_layout_file

    path, png, gain = simulate_layout_file(Path(buildings), tx, Path(out), pixel_m, tx_height,
                                           Path(cars) if cars else None, frequency_ghz)
    click.echo(f"wrote {path} ({gain.shape[0]}x{gain.shape[1]}, {gain.min():.1f} .. {gain.max():.1f} dB) and {png}")


@data.command()
@click.option("--folds", default=5, show_default=True, type=int, help="k of the k-fold cross-validation by layout.")
@click.option("--maxiter", default=100, show_default=True, type=int, help="Objective evaluations per fit.")
@click.option("--layouts", default=None, help="Comma-separated subset of map0,s00..s19 (default: all 21).")
@click.option("--in-sample", is_flag=True, help="Only score the shipped defaults (fitted on all layouts: in-sample).")
@click.option("--fit", is_flag=True, help="After the CV, fit on all layouts and print the constants.")
@click.option("--figure", default=None, type=click.Path(), help="Write real | simulated | error of the 3 worst layouts here.")
def calibrate(folds, maxiter, layouts, in_sample, fit, figure):
    """Score the built-in simulator on 21 real RadioMapSeer layouts, k-fold cross-validated by layout."""
    from .sim import calibrate as cal

    args = ["--folds", str(folds), "--maxiter", str(maxiter)] + (["--layouts", layouts] if layouts else [])
    args += (["--in-sample"] if in_sample else []) + (["--fit"] if fit else []) + (["--figure", figure] if figure else [])
    cal.main(args)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="ckmbench", standalone_mode=False)
    except CkmError as exc:
        click.echo(f"ckmbench: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # one line naming the value and the fix, no usage dump
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"ckmbench: error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"ckmbench: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # a path the checks above missed: still one line, naming the file
        where = f" {exc.filename}" if exc.filename else ""
        click.echo(f"ckmbench: error: cannot use{where} ({exc.strerror or exc}): check the path, its permissions "
                   "and free space", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
