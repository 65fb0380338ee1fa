"""`ckmbench new-plugin NAME`: write a ready third-party plugin package.

The package registers one method through the "ckmbench" entry-point group; the method is
a real (if simple) learned baseline: a per-pixel least-squares blend of the observation,
upsampled bilinearly through the sampled pixels, and its mean (three ``nn.Parameter``s), so
the skeleton trains, predicts and matches bilinear out of the box.
"""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path

from .errors import CkmError

TEMPLATE_FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "plugin.py.tmpl": "{module}/__init__.py",
    "test_plugin.py.tmpl": "tests/test_{module}.py",
}


def names_for(name: str) -> dict[str, str]:
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise CkmError(f"bad plugin name '{name}': use lowercase letters, digits, '-' or '_', starting with a letter")
    module = "ckmbench_" + name.replace("-", "_")
    if keyword.iskeyword(module):
        raise CkmError(f"bad plugin name '{name}': it makes a Python keyword")
    return {"name": name, "module": module, "dist": f"ckmbench-{name}", "class_name": "".join(
        p.capitalize() for p in re.split(r"[-_]", name)) + "Method"}


def write_plugin_package(name: str, parent: Path) -> Path:
    """Create ``parent/ckmbench-NAME/`` from the templates; refuses to overwrite."""
    subs = names_for(name)
    folder = Path(parent) / subs["dist"]
    if folder.exists():
        raise CkmError(f"{folder} already exists: choose another name or --out folder")
    templates = resources.files("ckmbench") / "templates" / "plugin"
    for tmpl, target in TEMPLATE_FILES.items():
        text = (templates / tmpl).read_text("utf-8")
        for key, value in subs.items():
            text = text.replace("{{" + key + "}}", value)
        path = folder / target.format(**subs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    return folder
