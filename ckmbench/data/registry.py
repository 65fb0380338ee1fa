"""Look up a registered dataset by name and load it."""

from __future__ import annotations

from ..plugins import registry
from .sample import MapDataset


def load_dataset(name: str, root=None, progress: bool = True, **options) -> MapDataset:
    """Load dataset ``name`` (unknown names get a one-line error with the closest names)."""
    spec = registry().dataset(name)
    return spec.load(root=root, progress=progress, **options)
