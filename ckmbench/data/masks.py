"""Reading image files (PNG/NPY) as arrays, with one-line errors that name the file.

Shared by the real-dataset loaders and by ``load_building_mask``, which reads a user's
building mask for ``ckmbench data simulate``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CkmError

IMAGE_SUFFIXES = (".png", ".npy")


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (messages from PIL/numpy may span lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def read_png(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """A PNG as a numpy array: (H, W) for gray/16-bit, (H, W, C) for colour.

    Palette and bilevel images are expanded (palette -> RGBA, bilevel -> 8-bit gray), so
    callers only see L / I;16 / I / LA / RGB / RGBA data.
    """
    path = Path(path)
    if not path.is_file():
        raise CkmError(f"{what}: missing file {path}: add it or restrict the selection that needs it")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.array(im)
    except Exception as exc:  # PIL raises many types for corrupt or truncated files
        raise CkmError(f"{what}: cannot read {path} ({_one_line(exc)}): replace it with a valid PNG") from None
    return arr


def read_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """A .npy file as an array (no pickles), with a one-line error on failure."""
    path = Path(path)
    if not path.is_file():
        raise CkmError(f"{what}: missing file {path}: add it or restrict the selection that needs it")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CkmError(f"{what}: cannot read {path} ({_one_line(exc)}): replace it with a valid .npy array") from None


def as_gray(arr: np.ndarray, path, what: str = "image") -> np.ndarray:
    """Colour images whose channels are equal -> one channel; a real colour image is an error."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
        colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        if colour.shape[2] > 1 and not (np.all(colour[..., 0] == colour[..., 1]) and np.all(colour[..., 0] == colour[..., 2])):
            raise CkmError(f"{what}: {path} is a colour image: export it as a gray-level PNG (one channel)")
        return colour[..., 0]
    raise CkmError(f"{what}: {path} has shape {arr.shape}: expected an (H, W) gray image")


def normalize_size(size) -> tuple[int, int] | None:
    """``None``, an int (square) or (H, W) -> ``None`` or (H, W)."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def check_size(arr: np.ndarray, size, path, what: str) -> None:
    """Raise a one-line error when ``arr`` is not (H, W) = ``size``."""
    size = normalize_size(size)
    if size is not None and tuple(arr.shape[:2]) != size:
        raise CkmError(
            f"{what}: {path} is {arr.shape[0]}x{arr.shape[1]} pixels, expected {size[0]}x{size[1]}: "
            f"resize it to {size[0]}x{size[1]}"
        )


def load_building_mask(path: str | os.PathLike, size=None, what: str = "building mask") -> np.ndarray:
    """A user's building mask as (H, W) bool; nonzero = building (``what`` names the mask in
    errors: "car mask" for the cars layer).

    PNG may be gray, 16-bit, RGB or RGBA (a pixel is a building when any colour channel is
    nonzero and it is not fully transparent); NPY must be 2-D (or (H, W, 1)). ``size`` (int or
    (H, W)) is the expected size: a mismatch is an error, never a silent resize.
    """
    path = Path(path)
    thing = what.split()[0]  # "building", "car"
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = read_npy(path, what)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise CkmError(f"{what}: {path} has shape {arr.shape}: expected an (H, W) array, nonzero = {thing}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise CkmError(f"{what}: {path} has dtype {arr.dtype}: expected numbers or booleans, nonzero = {thing}")
        mask = np.asarray(arr != 0)
    elif suffix == ".png":
        arr = read_png(path, what)
        if arr.ndim == 2:
            mask = arr != 0
        elif arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
            mask = (arr[..., 0] != 0) & (arr[..., 1] != 0)
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            mask = np.any(arr[..., :3] != 0, axis=2)
            if arr.shape[2] == 4:
                mask &= arr[..., 3] != 0
        else:
            raise CkmError(f"{what}: {path} has shape {arr.shape}: expected a gray, RGB or RGBA PNG")
    else:
        raise CkmError(f"{what}: {path} has suffix '{path.suffix}': give a .png or .npy file (nonzero = {thing})")
    check_size(mask, size, path, what)
    return np.ascontiguousarray(mask, dtype=bool)
