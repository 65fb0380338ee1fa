"""Terminal output: a run's metrics, the registry listing, the plugin table."""

from __future__ import annotations

import click
from tabulate import tabulate

from .plugins import registry

MAIN_METRICS = ("mse", "rmse", "nmse", "mse_gain", "rmse_gain_db", "psnr", "ssim", "fid")


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def print_record(record: dict) -> None:
    fitted = record["train_dataset"] != record["dataset"] and record.get("method_kind", "learned") != "baseline"
    head = (f"{record['method']} on {record['task']} / {record['dataset']}"
            f"{', fitted on ' + record['train_dataset'] if fitted else ''}"
            f" [{record['profile']}, seed {record['seed']}, N={record['n_test']}]")
    click.echo(head)
    if record["status"] != "done":
        click.echo(f"  {record['status']}: {record['message']}")
        return
    metrics = record["metrics"]
    names = [m for m in MAIN_METRICS if m in metrics] + sorted(k for k in metrics if k not in MAIN_METRICS)
    rows = [[n, _fmt(metrics[n])] for n in names]
    rows += [[k, "—" if v is None else _fmt(v)] for k, v in record["cost"].items()]  # — : does not apply
    if isinstance(record["metric_notes"].get("fid"), str):
        rows.append(["fid note", record["metric_notes"]["fid"]])
    click.echo(tabulate(rows, headers=["metric", "value"], tablefmt="simple"))
    click.echo(f"  record {record['record_id'][:12]} -> run folder {record['run_dir']}")


def print_listing(what: str | None) -> None:
    reg = registry()
    kinds = [what] if what else ["methods", "tasks", "datasets", "metrics"]
    for kind in kinds:
        click.echo(f"\n{kind.upper()}")
        rows = []
        for name in reg.names(kind):
            spec = reg.items[kind][name]
            dist, _ = reg.distribution_of(kind, name)
            if kind == "methods":
                rows.append([name, spec.kind, ", ".join(spec.tasks), ", ".join(spec.profiles), dist])
            elif kind == "metrics":
                rows.append([name, spec.kind, "higher" if spec.higher_is_better else "lower", spec.description, dist])
            else:
                rows.append([name, spec.description, dist])
        headers = {
            "methods": ["method", "kind", "tasks", "profiles", "from"],
            "metrics": ["metric", "kind", "better", "description", "from"],
        }.get(kind, [kind[:-1], "description", "from"])
        click.echo(tabulate(rows, headers=headers, tablefmt="simple", maxcolwidths=[None, None, 70, None, None][: len(headers)]))


def print_plugins() -> None:
    reg = registry()
    rows = []
    for p in reg.plugins:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in p.registered.items()) or "-"
        rows.append([p.name, p.distribution, p.version, what, "; ".join(p.errors) or "ok"])
    click.echo(tabulate(rows, headers=["plugin", "distribution", "version", "registers", "status"],
                        tablefmt="simple", maxcolwidths=[None, None, None, 60, 60]))
