"""Arrays that stay on disk: rows of a ``.npy`` file read on demand (docs/scale.md).

Why not ``np.memmap`` views directly: every page a memory map touches counts in the
process's resident memory until the kernel drops it, so a training run that reads each map
once would end up "using" the whole file. Positioned reads (``os.pread``) of the rows a
batch needs keep the resident memory at those rows; the file itself is a plain ``.npy``
that ``np.load(path, mmap_mode="r")`` opens as a memory map anywhere.

:class:`DiskRows` is the lazy stand-in for a stacked ``(N, ...)`` array in a
:class:`~ckmbench.data.sample.MapDataset`: ``rows[i]`` reads one row, ``rows[idx]`` is
another lazy view (no data read), ``np.asarray(rows)`` reads everything (for code that
wants the whole array; small data only). A row map lets several samples share one stored
row (the building mask of a scene is stored once for its 80 transmitters) and a decode
function turns what is stored into what the dataset holds (8-bit gray -> dB).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np


def npy_header(path: Path) -> tuple[int, np.dtype, tuple[int, ...]]:
    """(data offset, dtype, shape) of a C-ordered ``.npy`` file."""
    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered; ckmbench writes C order")
        return fh.tell(), np.dtype(dtype), tuple(shape)


def create_npy(path: Path, dtype, shape: tuple[int, ...]) -> None:
    """A ``.npy`` file of the given shape (sparse zeros), to be filled row by row."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    del mm


class RowFile:
    """Positioned reads and writes of whole rows of one ``.npy`` file (one descriptor per
    process: a DataLoader worker forked from its parent opens its own)."""

    def __init__(self, path: Path, writable: bool = False):
        self.path = Path(path)
        self.writable = writable
        self.offset, self.dtype, self.shape = npy_header(self.path)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR if self.writable else os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read(self, row: int) -> np.ndarray:
        """One row, a fresh array."""
        return self.read_run(row, 1)[0]

    def read_run(self, start: int, count: int) -> np.ndarray:
        """``count`` consecutive rows from ``start`` in one read."""
        size = self.row_bytes * count
        data = os.pread(self._handle(), size, self.offset + start * self.row_bytes)
        if len(data) != size:
            raise ValueError(f"{self.path} is truncated (row {start + len(data) // max(self.row_bytes, 1)} "
                             f"of {self.shape[0]} missing)")
        return np.frombuffer(bytearray(data), self.dtype).reshape((count, *self.row_shape))

    def write(self, row: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, self.dtype).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"row of {len(data)} bytes for {self.path} (rows of {self.row_bytes})")
        os.pwrite(self._handle(), data, self.offset + row * self.row_bytes)

    def sync(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def _read_rows(file: RowFile, stored: np.ndarray) -> np.ndarray:
    """The stored rows ``stored`` (any order, repeats allowed), each run of consecutive rows in one read."""
    if len(stored) == 0:
        return np.empty((0, *file.row_shape), file.dtype)
    uniq, inverse = np.unique(stored, return_inverse=True)
    runs = np.split(uniq, np.flatnonzero(np.diff(uniq) != 1) + 1)
    data = np.concatenate([file.read_run(int(run[0]), len(run)) for run in runs])
    return data[inverse.reshape(-1)]


class DiskRows:
    """A lazy (N, ...) array whose rows live in a ``.npy`` file (see the module docstring).

    ``rows[k]`` is the stored row behind element k; ``decode(stored_rows) -> rows`` maps the
    stored dtype to ``dtype``.
    """

    __array_priority__ = 20

    def __init__(self, file: RowFile, rows: np.ndarray | None = None,
                 decode: Callable[[np.ndarray], np.ndarray] | None = None, dtype=None):
        self.file = file
        self.rows = np.arange(file.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.decode = decode
        self.dtype = np.dtype(dtype) if dtype is not None else file.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.file.row_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def _decoded(self, block: np.ndarray) -> np.ndarray:
        return self.decode(block) if self.decode is not None else block

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._decoded(self.file.read(int(self.rows[key]))[None])[0]
        if isinstance(key, tuple):  # rows first, then the rest in memory: rows[i, :, :5]
            head, rest = key[0], key[1:]
            return np.asarray(self[head])[(slice(None),) * (0 if isinstance(head, (int, np.integer)) else 1) + rest] \
                if rest else self[head]
        return DiskRows(self.file, self.rows[key], self.decode, self.dtype)

    def read(self) -> np.ndarray:
        """Every row of this view, in memory."""
        return self._decoded(_read_rows(self.file, self.rows)).astype(self.dtype, copy=False)

    def chunks(self, rows_per_chunk: int = 256):
        """The rows in memory, a chunk at a time (hashing, copying)."""
        for start in range(0, len(self), rows_per_chunk):
            yield self[start:start + rows_per_chunk].read()

    def any(self, axis=None, out=None):
        """``np.any(rows)`` without holding them all: each distinct stored row is read once."""
        if axis is not None or out is not None:
            return np.any(self.read(), axis=axis, out=out)
        distinct = DiskRows(self.file, np.unique(self.rows), self.decode, self.dtype)
        return any(bool(np.any(block)) for block in distinct.chunks())

    def __array__(self, dtype=None, copy=None):
        out = self.read()
        return out.astype(dtype, copy=False) if dtype is not None else out

    def __repr__(self) -> str:
        return f"DiskRows({self.file.path.name}, shape={self.shape}, dtype={self.dtype})"


def materialize(values) -> np.ndarray:
    """``values`` as an in-memory array (a no-op for one)."""
    return values.read() if isinstance(values, DiskRows) else np.asarray(values)
