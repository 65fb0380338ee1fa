"""User-facing errors: one line that names the thing and the fix."""

from __future__ import annotations

import difflib


class CkmError(Exception):
    """An error caused by user input; the CLI prints its message as one line, no traceback."""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> CkmError:
    """Error for an unknown method/task/dataset/metric, listing the closest valid names."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(sorted(known))}"
    return CkmError(f"unknown {kind} '{name}': {hint} (see `ckmbench list`)")
