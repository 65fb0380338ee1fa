"""Result records -> leaderboards/<dataset>/<task>.md and .png (docs/leaderboards.md).

One markdown table per (dataset, task): reproduced runs first (the newest ``done`` record per
seed, averaged over seeds), then -- in a separate, labelled table -- the numbers the papers
report (``reference/reported.csv``), which never take part in the bold-best choice. Output is
deterministic: the same records give byte-identical files. Tables the store no longer has are
listed and kept unless ``prune`` is given. A table never mixes rows computed on different
versions (content hashes) of its dataset unless ``allow_mixed`` is given, and then says so.
Only the tables whose inputs changed are re-rendered (``.manifest.json`` keeps a hash of each
table's inputs); the result is byte-identical to a full rebuild.

Modules: ``table`` (records -> ranked rows; no rendering), ``reported`` (the papers' numbers),
``formatting`` (numbers as text), ``markdown``, ``charts`` and ``examples`` (the renderers),
``manifest`` (what an incremental build compares) and ``build`` (the entry point).
"""

from .build import build_leaderboards
from .formatting import BASE_METRICS, HEADLINE_METRICS, HIGHER_IS_BETTER, format_count, format_sig, metric_header
from .reported import PROTOCOL_HEADING, REPORTED_HEADING, REPRODUCED_MARK, default_reported_csv, load_reported
from .table import Board, Row, group_boards, ranking_metric

__all__ = ["BASE_METRICS", "HEADLINE_METRICS", "HIGHER_IS_BETTER", "PROTOCOL_HEADING", "REPORTED_HEADING",
           "REPRODUCED_MARK", "Board", "Row", "build_leaderboards", "default_reported_csv", "format_count",
           "format_sig", "group_boards", "load_reported", "metric_header", "ranking_metric"]
