"""Names and labels that end up in the markdown leaderboards, checked when a record is made.

A method name or label with a newline or ``|`` would add rows or columns to the rendered
tables (``--name $'x\\n| zzz | 0 |'`` injected a row); rendering escapes too, but a record
should not carry such text in the first place.
"""

from __future__ import annotations

from .errors import CkmError

MAX_LABEL = 100


def label_problem(text) -> str | None:
    """Why ``text`` cannot be a recorded name or label, or None when it can."""
    if not isinstance(text, str):
        return f"it is a {type(text).__name__}, not text"
    if not text.strip():
        return "it is empty"
    if len(text) > MAX_LABEL:
        return f"it is {len(text)} characters long (at most {MAX_LABEL})"
    if "|" in text:
        return "it holds '|' (a markdown table column separator)"
    if not text.isprintable():
        bad = next(c for c in text if not c.isprintable())
        return f"it holds the non-printable character {bad!r}"
    return None


def check_label(what: str, text) -> str:
    """``text`` unchanged, or a one-line CkmError naming ``what`` and the fix."""
    problem = label_problem(text)
    if problem:
        raise CkmError(f"{what} {text!r} cannot be recorded: {problem}; use printable text "
                       f"without '|' or newlines, at most {MAX_LABEL} characters")
    return text
