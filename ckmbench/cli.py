"""The `ckmbench` command: run, evaluate, leaderboard, list, plugins, data, new-plugin."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from . import __version__
from .data.builtin import DEFAULT_DATASET
from .errors import CkmError


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


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
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


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
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--data-root", default=None, help="Folder of a real dataset (RadioMapSeer root, image folder).")
@click.option("--train-data-root", default=None, help="Folder of the --train-dataset, if it is a real one.")
@click.option("--store", default=None, help="Results store (default $CKMBENCH_STORE or results/records.jsonl).")
@click.option("--runs-dir", default="runs", show_default=True, help="Where run folders go.")
@click.option("--max-test", default=None, type=int, help="Score at most N test maps (evenly spaced).")
@click.option("--time-budget", default=None, type=float, help="Seconds; a learned method stops training there, saves and is scored; "
                   "a classical run past it is stored as timeout.")
@click.option("--checkpoint", default=None, help="Load this checkpoint instead of fitting.")
@click.option("--refit", is_flag=True, help="Train again even when the fit cache holds this fit.")
@click.option("--set", "sets", multiple=True, help="Hyper-parameter override key=value (repeatable).")
@click.option("--fid/--no-fid", default=None,
              help="Compute FID (default: only for inpaint, denoise, generate and the -noisy sr tasks).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def run(method, task, dataset, train_dataset, profile, seed, device, data_root, train_data_root, store, runs_dir,
        max_test, time_budget, checkpoint, refit, sets, fid, no_progress):
    """Fit METHOD on TASK, score it, print the metrics and store a record."""
    from .plugins import registry
    from .report import print_record
    from .runner import RunConfig, check_supported, run as run_one

    reg = registry()
    methods = reg.names("methods") if method == "all" else _split_list(method)
    tasks = reg.names("tasks") if task == "all" else _split_list(task)
    for name in methods:
        reg.method(name)
    for name in tasks:
        reg.task(name)
    pairs = [(m, t) for m in methods for t in tasks if reg.method(m).supports(t)]
    if len(methods) == 1 and len(tasks) == 1:
        check_supported(reg.method(methods[0]), tasks[0])
    if not pairs:
        raise CkmError(f"none of the methods {', '.join(methods)} supports any of the tasks {', '.join(tasks)}")
    failed = 0
    for m, t in pairs:
        cfg = RunConfig(method=m, task=t, dataset=dataset, train_dataset=train_dataset, profile=profile, seed=seed,
                        device=device, data_root=data_root, train_data_root=train_data_root, store=store,
                        runs_dir=runs_dir, max_test=max_test, time_budget_s=time_budget, checkpoint=checkpoint,
                        refit=refit, progress=not no_progress, fid=fid, hparams=_parse_sets(sets))
        try:
            record = run_one(cfg, reg)
        except CkmError as exc:
            if len(pairs) == 1:
                raise
            click.echo(f"skipped {m} on {t}: {exc}", err=True)  # a sweep goes on past a refused pair
            failed += 1
            continue
        print_record(record)
        failed += record["status"] != "done"
    if failed:
        click.echo(f"{failed} of {len(pairs)} run(s) did not finish; their records hold the message.", err=True)
        sys.exit(1)


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
def evaluate(task, dataset, predictions, name, npy_unit, data_root, store, record, fid):
    """Score predictions made outside ckmbench under the same protocol."""
    from .external import evaluate_predictions
    from .report import print_record

    rec = evaluate_predictions(task=task, dataset=dataset, predictions=Path(predictions), name=name,
                               npy_unit=npy_unit, data_root=data_root, store=store, record=record, fid=fid)
    print_record(rec)


@cli.command()
@click.option("--store", default=None, help="Results store (default $CKMBENCH_STORE or results/records.jsonl).")
@click.option("--out", default="leaderboards", show_default=True, type=click.Path())
def leaderboard(store, out):
    """Rebuild the leaderboard tables and figures from the results store."""
    from importlib import resources

    from .leaderboard import build_leaderboards
    from .results import read_records, store_path

    path = store_path(store)
    records = read_records(path)
    reported = Path(str(resources.files("ckmbench") / "reference" / "reported.csv"))
    written = build_leaderboards(records, Path(out), path.parent, reported)
    click.echo(f"{len(records)} record(s) -> {len(written)} file(s) in {out}/")


# ---------------------------------------------------------------- registry views
@cli.command(name="list")
@click.argument("what", required=False, type=click.Choice(["methods", "tasks", "datasets", "metrics"]))
def list_(what):
    """List methods (with tasks and profiles), tasks, datasets and metrics."""
    from .report import print_listing

    print_listing(what)


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
@click.option("--workers", default=0, type=int, help="Processes (0 = all cores).")
def generate(datasets, shard, force, workers):
    """Generate (and cache) built-in datasets."""
    from .data import builtin
    from .plugins import registry

    reg = registry()
    names = list(datasets) or ["city", "city-128"]
    shard_t = _parse_shard(shard)
    for name in names:
        reg.dataset(name)
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
                   f"({sizes}); content hash {ds.content_hash[:12]}; cache {builtin.data_root()}")


@data.command()
@click.option("--dataset", "-d", default=DEFAULT_DATASET, show_default=True)
@click.option("--data-root", default=None)
@click.option("--split", default="test", show_default=True)
@click.option("-n", "count", default=8, show_default=True, type=int)
@click.option("--out", default=None, help="PNG path (default <dataset>-samples.png).")
def show(dataset, data_root, split, count, out):
    """Write a PNG figure of samples (gain map, buildings, Tx)."""
    import numpy as np

    from .data.registry import load_dataset
    from .figures import sample_figure

    ds = load_dataset(dataset, root=data_root).split(split)
    idx = np.unique(np.linspace(0, len(ds) - 1, min(count, len(ds))).round().astype(int))
    path = sample_figure([ds[int(i)] for i in idx], Path(out or f"{dataset}-samples.png"))
    g = ds.gain_db[~ds.buildings]
    click.echo(f"{dataset} [{split}]: {len(ds)} maps {ds.shape[0]}x{ds.shape[1]} at {ds.pixel_m:g} m/px; outdoor gain "
               f"{g.min():.1f} .. {g.max():.1f} dB (mean {g.mean():.1f}); figure {path}")


@data.command()
@click.option("--buildings", required=True, type=click.Path(), help="Building mask PNG/NPY (nonzero = building).")
@click.option("--tx", required=True, help="Transmitter pixel ROW,COL.")
@click.option("--out", required=True, type=click.Path(), help="Output .npy (path gain in dB); a PNG goes beside it.")
@click.option("--pixel-m", default=1.0, show_default=True, type=float, help="Metres per pixel.")
@click.option("--tx-height", default=1.5, show_default=True, type=float)
@click.option("--cars", default=None, type=click.Path(), help="Optional car mask PNG/NPY.")
@click.option("--frequency-ghz", default=5.9, show_default=True, type=float)
def simulate(buildings, tx, out, pixel_m, tx_height, cars, frequency_ghz):
    """Simulate the path-gain map of any building layout with the built-in simulator."""
    from .simulate_cli import simulate_layout_file

    path, png, gain = simulate_layout_file(Path(buildings), tx, Path(out), pixel_m, tx_height,
                                           Path(cars) if cars else None, frequency_ghz)
    click.echo(f"wrote {path} ({gain.shape[0]}x{gain.shape[1]}, {gain.min():.1f} .. {gain.max():.1f} dB) and {png}")


@data.command()
@click.option("--fit", is_flag=True, help="Refit the simulator's parameters on some transmitters, check on the rest.")
@click.option("--figure", default=None, type=click.Path(), help="Write a real | simulated | error figure here.")
def calibrate(fit, figure):
    """Compare the built-in simulator with the real RadioMapSeer map-0 maps (outdoor RMSE in dB)."""
    from .sim import calibrate as cal

    args = (["--fit"] if fit else []) + (["--figure", figure] if figure else [])
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
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
